//! `meshctl revoke identity|instance`: a `Revocation` resource, committed
//! through Raft like any write. From its commit meshd issues the workload
//! no certificate and closes its discovery streams, and every proxy refuses
//! its certificate and drops its endpoints.

use clap::Subcommand;
use raftmesh_api::{Metadata, Resource, RevocationSpec, Spec, DEFAULT_NAMESPACE};

use super::{Conn, CtlError, CtlResult, ExitCode};

/// `meshctl revoke`.
#[derive(Debug, Subcommand)]
pub enum RevokeCmd {
    /// Deny a workload identity (every instance of a service): a SPIFFE ID.
    Identity {
        /// spiffe://<trust domain>/ns/<namespace>/sa/<service>
        spiffe_id: String,
        /// Why (shown in refusals).
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Deny one instance (a proxy's --instance).
    Instance {
        /// The instance id.
        instance: String,
        /// Its namespace.
        #[arg(short = 'n', long, default_value = DEFAULT_NAMESPACE)]
        namespace: String,
        /// Why (shown in refusals).
        #[arg(long, default_value = "")]
        reason: String,
    },
}

/// The resource a revocation is, named after what it denies.
pub fn resource(cmd: &RevokeCmd) -> Resource {
    let (name, namespace, spec) = match cmd {
        RevokeCmd::Identity { spiffe_id, reason } => {
            let digest = sha2_hex(spiffe_id);
            (
                format!("identity-{digest}"),
                DEFAULT_NAMESPACE.to_string(),
                RevocationSpec {
                    identity: spiffe_id.clone(),
                    instance: String::new(),
                    reason: reason.clone(),
                },
            )
        }
        RevokeCmd::Instance {
            instance,
            namespace,
            reason,
        } => (
            format!("instance-{instance}"),
            namespace.clone(),
            RevocationSpec {
                identity: String::new(),
                instance: instance.clone(),
                reason: reason.clone(),
            },
        ),
    };
    Resource {
        metadata: Metadata {
            name,
            namespace,
            revision: None,
        },
        spec: Spec::Revocation(spec),
    }
}

/// A short stable name for a SPIFFE ID (DNS-label safe).
fn sha2_hex(s: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(s.as_bytes())
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Runs `meshctl revoke …`.
pub async fn run(conn: &Conn, cmd: RevokeCmd) -> CtlResult {
    let r = resource(&cmd);
    r.validate()
        .map_err(|e| CtlError::new(ExitCode::Usage, e.to_string()))?;
    let done = conn.apply(std::slice::from_ref(&r)).await?;
    let what = match &r.spec {
        Spec::Revocation(x) if !x.identity.is_empty() => format!("identity {}", x.identity),
        Spec::Revocation(x) => format!("instance {}/{}", r.metadata.namespace, x.instance),
        _ => unreachable!("built above"),
    };
    outln!(
        "revoked {what} (revocation/{}, revision {}): no certificate is issued to it, and proxies refuse it",
        r.metadata.name,
        done.revision
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_revocation_is_a_valid_resource_named_after_what_it_denies() {
        let r = resource(&RevokeCmd::Identity {
            spiffe_id: "spiffe://east.mesh/ns/default/sa/batch".into(),
            reason: "key leaked".into(),
        });
        r.validate().unwrap();
        assert!(r.metadata.name.starts_with("identity-"));
        let r = resource(&RevokeCmd::Instance {
            instance: "web-1".into(),
            namespace: "prod".into(),
            reason: String::new(),
        });
        r.validate().unwrap();
        assert_eq!(
            (r.metadata.name.as_str(), r.metadata.namespace.as_str()),
            ("instance-web-1", "prod")
        );
        let bad = resource(&RevokeCmd::Identity {
            spiffe_id: "web".into(),
            reason: String::new(),
        });
        assert!(bad.validate().unwrap_err().to_string().contains("SPIFFE"));
    }
}
