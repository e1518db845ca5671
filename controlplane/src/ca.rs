//! The workload CA: roots kept in the replicated state (so any node can
//! sign), workload certificates issued from proxies' CSRs, and checks of the
//! certificates proxies present later.
//!
//! A workload certificate names the workload twice: its SPIFFE ID as a URI
//! SAN (`spiffe://<td>/ns/<ns>/sa/<service>`, what authorization reads) and
//! `<service>.<ns>.svc.<td>` as a DNS SAN (what TLS clients verify the
//! server against). The names come from the checked token or certificate,
//! never from the CSR, whose subject and SANs are ignored: only its public
//! key is used.

use std::sync::Arc;
use std::time::Duration;

use raftmesh_api::{AuthoritySpec, CaRoot};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls_pki_types::pem::PemObject;
use time::OffsetDateTime;

/// Lifetime of a root.
pub const ROOT_TTL: Duration = Duration::from_secs(10 * 365 * 86_400);

/// Why a certificate could not be issued or checked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CaError(pub String);

fn err(e: impl std::fmt::Display) -> CaError {
    CaError(e.to_string())
}

fn at(ms: u64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// The parameters of a root that signs leaves only (no intermediates),
/// named `common_name` in organization Raftmesh. Both CAs use it: the
/// workload CA here and the server CA of `meshd tls init`.
pub(crate) fn root_params(
    common_name: String,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, "Raftmesh");
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.not_before = not_before;
    p.not_after = not_after;
    p
}

/// The parameters of a leaf that both serves and calls over mutual TLS
/// (workload certificates, meshd node certificates).
pub(crate) fn mtls_leaf_params(
    dn: DistinguishedName,
    sans: Vec<SanType>,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name = dn;
    p.subject_alt_names = sans;
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    p.not_before = not_before;
    p.not_after = not_after;
    p
}

/// A new root for `trust_domain`, valid from `now_ms`.
pub fn new_root(trust_domain: &str, now_ms: u64) -> Result<CaRoot, CaError> {
    let key = KeyPair::generate().map_err(err)?;
    let not_after_ms = now_ms + ROOT_TTL.as_millis() as u64;
    let p = root_params(
        format!("Raftmesh workload CA {trust_domain} {now_ms}"),
        at(now_ms.saturating_sub(60_000)),
        at(not_after_ms),
    );
    let cert = p.self_signed(&key).map_err(err)?;
    Ok(CaRoot {
        id: format!("root-{now_ms}"),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        not_after_ms,
        signing: true,
    })
}

/// A certificate issued to a workload.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The leaf (PEM).
    pub cert_pem: String,
    /// Unix milliseconds.
    pub not_after_ms: u64,
}

/// Signs `csr_pem`'s public key as workload `service` in `namespace`.
pub fn issue(
    ca: &AuthoritySpec,
    trust_domain: &str,
    namespace: &str,
    service: &str,
    csr_pem: &str,
    ttl: Duration,
    now_ms: u64,
) -> Result<Issued, CaError> {
    let root = ca
        .roots
        .iter()
        .find(|r| r.signing)
        .ok_or_else(|| CaError("the workload CA has no signing root".into()))?;
    let key = KeyPair::from_pem(&root.key_pem)
        .map_err(|e| CaError(format!("the CA key is unusable: {e}")))?;
    let issuer = Issuer::from_ca_cert_pem(&root.cert_pem, key)
        .map_err(|e| CaError(format!("the CA certificate is unusable: {e}")))?;
    let csr = CertificateSigningRequestParams::from_pem(csr_pem)
        .map_err(|e| CaError(format!("the certificate signing request is invalid: {e}")))?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("{service}.{namespace}"));
    let id = raftmesh_api::spiffe_id(trust_domain, namespace, service);
    let dns = raftmesh_api::workload_dns_name(trust_domain, namespace, service);
    let sans = vec![
        SanType::URI(id.try_into().map_err(err)?),
        SanType::DnsName(dns.try_into().map_err(err)?),
    ];
    let not_after_ms = (now_ms + ttl.as_millis() as u64).min(root.not_after_ms);
    let mut p = mtls_leaf_params(
        dn,
        sans,
        at(now_ms.saturating_sub(60_000)),
        at(not_after_ms),
    );
    p.use_authority_key_identifier_extension = true;
    let csr = CertificateSigningRequestParams {
        params: p,
        public_key: csr.public_key,
    };
    let cert = csr.signed_by(&issuer).map_err(err)?;
    Ok(Issued {
        cert_pem: cert.pem(),
        not_after_ms,
    })
}

/// Every root's certificate (PEM): the trust bundle.
pub fn bundle(ca: &AuthoritySpec) -> Vec<String> {
    ca.roots.iter().map(|r| r.cert_pem.clone()).collect()
}

/// The identity a certificate proves, once it chains to one of `ca`'s
/// roots and is valid at `now_ms`: its SPIFFE ID.
pub fn verify_workload(ca: &AuthoritySpec, cert_pem: &str, now_ms: u64) -> Result<String, CaError> {
    let leaf = CertificateDer::from_pem_slice(cert_pem.as_bytes())
        .map_err(|e| CaError(format!("the certificate is not PEM: {e}")))?;
    let mut roots = rustls::RootCertStore::empty();
    for r in &ca.roots {
        let der = CertificateDer::from_pem_slice(r.cert_pem.as_bytes()).map_err(err)?;
        roots.add(der).map_err(err)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(err)?;
    let now = UnixTime::since_unix_epoch(Duration::from_millis(now_ms));
    verifier
        .verify_client_cert(&leaf, &[], now)
        .map_err(|e| CaError(format!("the certificate is not valid here: {e}")))?;
    spiffe_of(&leaf).ok_or_else(|| CaError("the certificate carries no SPIFFE ID".into()))
}

/// The SPIFFE ID (URI SAN) of a DER certificate.
pub fn spiffe_of(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|n| match n {
        x509_parser::extensions::GeneralName::URI(u) if u.starts_with("spiffe://") => {
            Some(u.to_string())
        }
        _ => None,
    })
}

/// The public key (SubjectPublicKeyInfo's key bits) of a DER certificate.
pub fn public_key_of(der: &[u8]) -> Option<Vec<u8>> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(cert.public_key().subject_public_key.data.to_vec())
}

/// Checks a proxy's proof that it holds its certificate's key: an ECDSA
/// P-256 signature over `raftmesh-hello|<instance>|<unix_ms>`, at most five
/// minutes old.
pub fn verify_proof(
    cert_pem: &str,
    instance: &str,
    unix_ms: u64,
    proof: &[u8],
    now_ms: u64,
) -> Result<(), CaError> {
    if now_ms.abs_diff(unix_ms) > 300_000 {
        return Err(CaError(
            "the proof of key possession is stale (check the clocks)".into(),
        ));
    }
    let der = CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(err)?;
    let key =
        public_key_of(&der).ok_or_else(|| CaError("the certificate has no public key".into()))?;
    let msg = format!("raftmesh-hello|{instance}|{unix_ms}");
    ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_ASN1, key)
        .verify(msg.as_bytes(), proof)
        .map_err(|_| CaError("the proof of key possession does not verify".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_csr_is_signed_with_the_names_the_ca_chooses_and_verifies() {
        let now = 1_800_000_000_000;
        let ca = AuthoritySpec {
            roots: vec![new_root("east.mesh", now).unwrap()],
        };
        let key = KeyPair::generate().unwrap();
        // The CSR asks for another identity: ignored.
        let csr = CertificateParams::new(vec!["evil.example".to_string()])
            .unwrap()
            .serialize_request(&key)
            .unwrap()
            .pem()
            .unwrap();
        let issued = issue(
            &ca,
            "east.mesh",
            "default",
            "web",
            &csr,
            Duration::from_secs(3600),
            now,
        )
        .unwrap();
        let id = verify_workload(&ca, &issued.cert_pem, now + 1000).unwrap();
        assert_eq!(id, "spiffe://east.mesh/ns/default/sa/web");
        assert!(
            verify_workload(&ca, &issued.cert_pem, now + 2 * 3_600_000).is_err(),
            "expired"
        );
        let other = AuthoritySpec {
            roots: vec![new_root("east.mesh", now).unwrap()],
        };
        assert!(
            verify_workload(&other, &issued.cert_pem, now + 1000).is_err(),
            "another CA"
        );
        // Proof of possession.
        let msg = format!("raftmesh-hello|web-1|{now}");
        let sig = rcgen::SigningKey::sign(&key, msg.as_bytes()).unwrap();
        verify_proof(&issued.cert_pem, "web-1", now, &sig, now).unwrap();
        assert!(verify_proof(&issued.cert_pem, "web-2", now, &sig, now).is_err());
        let other_key = KeyPair::generate().unwrap();
        let bad = rcgen::SigningKey::sign(&other_key, msg.as_bytes()).unwrap();
        assert!(verify_proof(&issued.cert_pem, "web-1", now, &bad, now).is_err());
    }
}
