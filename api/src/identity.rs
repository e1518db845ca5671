//! Workload identity names every part of the mesh agrees on: SPIFFE IDs,
//! the DNS name a workload certificate carries, the workload CA's resource
//! name, and the message a proxy signs to prove it holds its key.
//!
//! The proxy and meshd both read these; they live here once so the two
//! sides cannot drift apart.

/// Name of the Authority resource holding the workload CA.
pub const CA_NAME: &str = "workload-ca";

/// What a bootstrap token's secret starts with, so a program can tell one
/// from an admin secret (`rmt_...`) before sending it anywhere.
pub const BOOTSTRAP_TOKEN_PREFIX: &str = "rmb_";

/// The SPIFFE ID of a workload: `spiffe://<trust-domain>/ns/<ns>/sa/<service>`.
pub fn spiffe_id(trust_domain: &str, namespace: &str, service: &str) -> String {
    format!("spiffe://{trust_domain}/ns/{namespace}/sa/{service}")
}

/// The DNS name in a workload certificate (`<service>.<ns>.svc.<trust-domain>`),
/// which TLS clients verify the server against.
pub fn workload_dns_name(trust_domain: &str, namespace: &str, service: &str) -> String {
    format!("{service}.{namespace}.svc.{trust_domain}")
}

/// A SPIFFE ID of the form [`spiffe_id`] makes, taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadId<'a> {
    /// The trust domain.
    pub trust_domain: &'a str,
    /// The namespace.
    pub namespace: &'a str,
    /// The service.
    pub service: &'a str,
}

impl WorkloadId<'_> {
    /// The DNS name the workload's certificate carries.
    pub fn dns_name(&self) -> String {
        workload_dns_name(self.trust_domain, self.namespace, self.service)
    }
}

/// Parses `spiffe://<td>/ns/<ns>/sa/<service>`; `None` for anything else.
pub fn parse_spiffe_id(id: &str) -> Option<WorkloadId<'_>> {
    let rest = id.strip_prefix("spiffe://")?;
    let mut parts = rest.split('/');
    let trust_domain = parts.next().filter(|s| !s.is_empty())?;
    let (ns_tag, namespace, sa_tag, service) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if ns_tag != "ns" || sa_tag != "sa" || parts.next().is_some() {
        return None;
    }
    if namespace.is_empty() || service.is_empty() {
        return None;
    }
    Some(WorkloadId {
        trust_domain,
        namespace,
        service,
    })
}

/// The SPIFFE ID (the first `spiffe://` URI SAN) of a DER certificate.
pub fn spiffe_of_der(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|n| match n {
        x509_parser::extensions::GeneralName::URI(u) if u.starts_with("spiffe://") => {
            Some(u.to_string())
        }
        _ => None,
    })
}

/// The bytes a proxy signs with its workload key in `Hello.proof`, and
/// meshd verifies against the certificate it presents: the instance, the
/// single-use nonce meshd handed out (`Discovery/Challenge`) and the
/// Hello's CSR (empty when none). A captured Hello is useless later (the
/// nonce is spent) and with another key (the CSR is signed over).
pub fn hello_proof_message(instance: &str, nonce: &[u8], csr_pem: &str) -> Vec<u8> {
    let mut m = format!("raftmesh-hello-v2|{instance}|");
    for b in nonce {
        m.push_str(&format!("{b:02x}"));
    }
    m.push('|');
    m.push_str(csr_pem);
    m.into_bytes()
}

/// The default trust domain of a cluster.
pub fn default_trust_domain(cluster_name: &str) -> String {
    format!("{cluster_name}.mesh")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spiffe_id_round_trips_and_names_its_certificate_dns_name() {
        let id = spiffe_id("east.mesh", "default", "web");
        let w = parse_spiffe_id(&id).unwrap();
        assert_eq!(
            (w.trust_domain, w.namespace, w.service),
            ("east.mesh", "default", "web")
        );
        assert_eq!(w.dns_name(), "web.default.svc.east.mesh");
    }

    #[test]
    fn malformed_spiffe_ids_are_refused() {
        for bad in [
            "http://x",
            "spiffe://",
            "spiffe://td/ns/default",
            "spiffe://td/xx/default/sa/web",
            "spiffe://td/ns/default/sa/web/extra",
            "spiffe://td/ns//sa/web",
        ] {
            assert!(parse_spiffe_id(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn the_proof_message_binds_the_instance_the_nonce_and_the_csr() {
        assert_eq!(
            hello_proof_message("web-1", &[0xab, 0x01], "CSR"),
            b"raftmesh-hello-v2|web-1|ab01|CSR"
        );
        assert_ne!(
            hello_proof_message("web-1", &[1], ""),
            hello_proof_message("web-1", &[1], "CSR")
        );
    }
}
