//! Revoked identities and instances (`Revocation` resources): meshd issues
//! them no certificate, refuses their discovery streams and closes open
//! ones; proxies refuse their certificates and drop their endpoints.

use raftmesh_api::{Kind, Spec};
use raftmesh_storage::StateReader;

/// Why a workload is revoked, if it is: `identity` (its SPIFFE ID) or its
/// instance in `namespace`.
pub fn revoked(
    reader: &StateReader,
    identity: &str,
    namespace: &str,
    instance: &str,
) -> Option<String> {
    reader.view(|v| {
        v.of_kind(Kind::Revocation).iter().find_map(|r| {
            let Spec::Revocation(x) = &r.spec else {
                return None;
            };
            let what = if !x.identity.is_empty() && x.identity == identity {
                format!("identity {identity}")
            } else if !x.instance.is_empty()
                && x.instance == instance
                && r.metadata.namespace == namespace
            {
                format!("instance {namespace}/{instance}")
            } else {
                return None;
            };
            let why = if x.reason.is_empty() {
                String::new()
            } else {
                format!(": {}", x.reason)
            };
            Some(format!(
                "{what} is revoked (revocation/{}{why})",
                r.metadata.name
            ))
        })
    })
}
