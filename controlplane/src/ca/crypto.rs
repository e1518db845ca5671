//! The workload CA's cryptography: roots, workload certificates issued
//! from proxies' CSRs, checks of the certificates proxies present later and
//! of their proofs of key possession. Pure functions of their inputs; the
//! CA's life in the cluster is `ca/mod.rs`.
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

/// Why a certificate could not be made, issued or checked.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// rcgen could not make a key or certificate.
    #[error("cannot make the certificate: {0}")]
    Make(#[source] rcgen::Error),
    /// The CA has no root marked signing.
    #[error("the workload CA has no signing root")]
    NoSigningRoot,
    /// The signing root's key does not load.
    #[error("the CA key is unusable: {0}")]
    BadKey(#[source] rcgen::Error),
    /// The signing root's certificate does not load.
    #[error("the CA certificate is unusable: {0}")]
    BadRoot(#[source] rcgen::Error),
    /// The proxy's CSR does not parse.
    #[error("the certificate signing request is invalid: {0}")]
    BadCsr(#[source] rcgen::Error),
    /// A certificate (or root) is not PEM.
    #[error("the certificate is not PEM: {0}")]
    NotPem(#[source] rustls_pki_types::pem::Error),
    /// The roots do not make a trust store.
    #[error("the CA's roots are unusable: {0}")]
    BadTrustStore(String),
    /// The certificate does not chain to a root, or is not valid now.
    #[error("the certificate is not valid here: {0}")]
    Untrusted(#[source] rustls::Error),
    /// The certificate names no workload.
    #[error("the certificate carries no SPIFFE ID")]
    NoSpiffeId,
    /// The certificate's key cannot be read.
    #[error("the certificate has no public key")]
    NoPublicKey,
    /// The signature does not match the certificate's key.
    #[error("the proof of key possession does not verify")]
    BadProof,
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
    let key = KeyPair::generate().map_err(CaError::Make)?;
    let not_after_ms = now_ms + ROOT_TTL.as_millis() as u64;
    let p = root_params(
        format!("Raftmesh workload CA {trust_domain} {now_ms}"),
        at(now_ms.saturating_sub(60_000)),
        at(not_after_ms),
    );
    let cert = p.self_signed(&key).map_err(CaError::Make)?;
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
        .ok_or(CaError::NoSigningRoot)?;
    let key = KeyPair::from_pem(&root.key_pem).map_err(CaError::BadKey)?;
    let issuer = Issuer::from_ca_cert_pem(&root.cert_pem, key).map_err(CaError::BadRoot)?;
    let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(CaError::BadCsr)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("{service}.{namespace}"));
    let id = raftmesh_api::spiffe_id(trust_domain, namespace, service);
    let dns = raftmesh_api::workload_dns_name(trust_domain, namespace, service);
    let sans = vec![
        SanType::URI(id.try_into().map_err(CaError::Make)?),
        SanType::DnsName(dns.try_into().map_err(CaError::Make)?),
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
    let cert = csr.signed_by(&issuer).map_err(CaError::Make)?;
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
    let leaf = CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(CaError::NotPem)?;
    let mut roots = rustls::RootCertStore::empty();
    for r in &ca.roots {
        let der = CertificateDer::from_pem_slice(r.cert_pem.as_bytes()).map_err(CaError::NotPem)?;
        roots
            .add(der)
            .map_err(|e| CaError::BadTrustStore(e.to_string()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| CaError::BadTrustStore(e.to_string()))?;
    let now = UnixTime::since_unix_epoch(Duration::from_millis(now_ms));
    verifier
        .verify_client_cert(&leaf, &[], now)
        .map_err(CaError::Untrusted)?;
    raftmesh_api::identity::spiffe_of_der(&leaf).ok_or(CaError::NoSpiffeId)
}

/// The public key (SubjectPublicKeyInfo's key bits) of a DER certificate.
pub fn public_key_of(der: &[u8]) -> Option<Vec<u8>> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(cert.public_key().subject_public_key.data.to_vec())
}

/// Checks a proxy's proof that it holds its certificate's key: an ECDSA
/// P-256 signature over the instance, the node's nonce and the Hello's CSR
/// (`raftmesh_api::identity::hello_proof_message`). The nonce's freshness
/// and single use are the caller's (`discovery::challenge`).
pub fn verify_proof(
    cert_pem: &str,
    instance: &str,
    nonce: &[u8],
    csr_pem: &str,
    proof: &[u8],
) -> Result<(), CaError> {
    let der = CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(CaError::NotPem)?;
    let key = public_key_of(&der).ok_or(CaError::NoPublicKey)?;
    let msg = raftmesh_api::identity::hello_proof_message(instance, nonce, csr_pem);
    ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_ASN1, key)
        .verify(&msg, proof)
        .map_err(|_| CaError::BadProof)
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
        let nonce = [7u8; 56];
        let msg = raftmesh_api::identity::hello_proof_message("web-1", &nonce, "CSR");
        let sig = rcgen::SigningKey::sign(&key, &msg).unwrap();
        verify_proof(&issued.cert_pem, "web-1", &nonce, "CSR", &sig).unwrap();
        assert!(verify_proof(&issued.cert_pem, "web-2", &nonce, "CSR", &sig).is_err());
        assert!(
            verify_proof(&issued.cert_pem, "web-1", &[8u8; 56], "CSR", &sig).is_err(),
            "another nonce"
        );
        assert!(
            verify_proof(&issued.cert_pem, "web-1", &nonce, "ATTACKER'S CSR", &sig).is_err(),
            "another CSR"
        );
        let other_key = KeyPair::generate().unwrap();
        let bad = rcgen::SigningKey::sign(&other_key, &msg).unwrap();
        assert!(verify_proof(&issued.cert_pem, "web-1", &nonce, "CSR", &bad).is_err());
    }
}
