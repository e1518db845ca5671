//! Certificate verification bound to trust domains: a certificate is
//! checked against the roots of the trust domain it belongs to, and no
//! other. With peers (federation), a proxy trusts several CAs; without
//! this binding, a peer's CA could issue a certificate for an identity of
//! this cluster (`spiffe://local.mesh/...`) and be believed.
//!
//! A client certificate's trust domain is the one in its SPIFFE ID; a
//! server's is the one in the name the caller asked for
//! (`svc.ns.svc.<trust domain>`), so a workload is reached only with a
//! certificate its own cluster's CA issued.

use std::collections::HashMap;
use std::sync::Arc;

use raftmesh_api::identity;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme,
};

fn refused() -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure)
}

/// The trust domain of a workload certificate (its SPIFFE ID's).
fn cert_domain(cert: &CertificateDer<'_>) -> Option<String> {
    let id = identity::spiffe_of_der(cert)?;
    Some(identity::parse_spiffe_id(&id)?.trust_domain.to_string())
}

/// Verifies client certificates by the roots of their trust domain.
#[derive(Debug)]
pub struct ClientVerifier {
    by_domain: HashMap<String, Arc<dyn ClientCertVerifier>>,
    /// The local trust domain's, for what does not depend on the domain.
    local: Arc<dyn ClientCertVerifier>,
}

impl ClientVerifier {
    /// `domains[0]` is the local trust domain; `required` makes a client
    /// certificate mandatory.
    pub fn new(
        domains: &[(String, Arc<RootCertStore>)],
        required: bool,
        provider: Arc<CryptoProvider>,
    ) -> Result<Self, String> {
        let mut by_domain = HashMap::new();
        let mut local = None;
        for (td, roots) in domains {
            let b = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone());
            let v = if required {
                b.build()
            } else {
                b.allow_unauthenticated().build()
            }
            .map_err(|e| e.to_string())?;
            local.get_or_insert_with(|| v.clone());
            by_domain.entry(td.clone()).or_insert(v);
        }
        Ok(Self {
            by_domain,
            local: local.ok_or("no trust domain to verify callers with")?,
        })
    }
}

impl ClientCertVerifier for ClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.local.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.local.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // No hints: a caller has one certificate and sends it.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let td = cert_domain(end_entity).ok_or_else(refused)?;
        self.by_domain
            .get(&td)
            .ok_or_else(refused)?
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.local.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.local.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.local.supported_verify_schemes()
    }
}

/// Verifies a server by the roots of the trust domain of the name asked
/// for (`svc.ns.svc.<td>`).
#[derive(Debug)]
pub struct ServerVerifier {
    by_domain: Vec<(String, Arc<WebPkiServerVerifier>)>,
    local: Arc<WebPkiServerVerifier>,
}

impl ServerVerifier {
    /// `domains[0]` is the local trust domain.
    pub fn new(
        domains: &[(String, Arc<RootCertStore>)],
        provider: Arc<CryptoProvider>,
    ) -> Result<Self, String> {
        let mut by_domain = Vec::new();
        for (td, roots) in domains {
            let v = WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
                .build()
                .map_err(|e| e.to_string())?;
            by_domain.push((td.clone(), v));
        }
        let local = by_domain
            .first()
            .map(|(_, v)| v.clone())
            .ok_or("no trust domain to verify servers with")?;
        Ok(Self { by_domain, local })
    }

    fn for_name(&self, name: &ServerName<'_>) -> Option<&Arc<WebPkiServerVerifier>> {
        let ServerName::DnsName(d) = name else {
            return None;
        };
        let host = d.as_ref();
        // The longest trust domain the name ends in, after `.svc.`.
        self.by_domain
            .iter()
            .filter(|(td, _)| {
                host.strip_suffix(td.as_str())
                    .is_some_and(|rest| rest.ends_with(".svc."))
            })
            .max_by_key(|(td, _)| td.len())
            .map(|(_, v)| v)
    }
}

impl ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let v = self.for_name(server_name).ok_or_else(refused)?;
        // The certificate's own trust domain must be the name's too.
        let td = cert_domain(end_entity).ok_or_else(refused)?;
        let ServerName::DnsName(d) = server_name else {
            return Err(refused());
        };
        if !d.as_ref().ends_with(&format!(".svc.{td}")) {
            return Err(refused());
        }
        // A subset of a peer's service (`s<id>.api.default.svc.<td>`, for
        // its gateway) is served by the service's own certificate.
        let (subset, base) = crate::tls::split_subset(d.as_ref(), &td);
        if subset.is_some() {
            let base = ServerName::try_from(base.to_string()).map_err(|_| refused())?;
            return v.verify_server_cert(end_entity, intermediates, &base, ocsp_response, now);
        }
        v.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.local.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.local.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.local.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};

    struct Ca {
        issuer: Issuer<'static, KeyPair>,
        der: CertificateDer<'static>,
    }

    fn ca() -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = p.self_signed(&key).unwrap();
        Ca {
            der: cert.der().clone(),
            issuer: Issuer::new(p, key),
        }
    }

    /// A workload certificate `ca` issues for `spiffe` and `dns`.
    fn leaf(ca: &Ca, spiffe: &str, dns: &str) -> CertificateDer<'static> {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(vec![dns.to_string()]).unwrap();
        p.subject_alt_names
            .push(SanType::URI(spiffe.try_into().unwrap()));
        p.signed_by(&key, &ca.issuer).unwrap().der().clone()
    }

    fn store(ca: &Ca) -> Arc<RootCertStore> {
        let mut r = RootCertStore::empty();
        r.add(ca.der.clone()).unwrap();
        Arc::new(r)
    }

    fn provider() -> Arc<CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    #[test]
    fn a_peer_s_ca_cannot_vouch_for_an_identity_of_another_trust_domain() {
        let (west, east) = (ca(), ca());
        let domains = vec![
            ("west.mesh".to_string(), store(&west)),
            ("east.mesh".to_string(), store(&east)),
        ];
        let now = UnixTime::now();
        let client = ClientVerifier::new(&domains, true, provider()).unwrap();
        let ok = |c: &CertificateDer<'_>| client.verify_client_cert(c, &[], now).is_ok();
        assert!(ok(&leaf(
            &west,
            "spiffe://west.mesh/ns/default/sa/web",
            "web.default.svc.west.mesh"
        )));
        assert!(ok(&leaf(
            &east,
            "spiffe://east.mesh/ns/default/sa/client",
            "client.default.svc.east.mesh"
        )));
        // East's CA claiming a west identity: refused, though east is trusted.
        assert!(!ok(&leaf(
            &east,
            "spiffe://west.mesh/ns/default/sa/admin",
            "admin.default.svc.west.mesh"
        )));
        // A trust domain no one vouches for, and no SPIFFE ID at all.
        assert!(!ok(&leaf(
            &east,
            "spiffe://north.mesh/ns/default/sa/x",
            "x.default.svc.north.mesh"
        )));

        let server = ServerVerifier::new(&domains, provider()).unwrap();
        let name = |s: &str| ServerName::try_from(s.to_string()).unwrap();
        let serves = |c: &CertificateDer<'_>, n: &str| {
            server
                .verify_server_cert(c, &[], &name(n), &[], now)
                .is_ok()
        };
        let w = leaf(
            &west,
            "spiffe://west.mesh/ns/default/sa/api",
            "api.default.svc.west.mesh",
        );
        assert!(serves(&w, "api.default.svc.west.mesh"));
        // East's CA impersonating west's api (name and ID forged): refused.
        let forged = leaf(
            &east,
            "spiffe://west.mesh/ns/default/sa/api",
            "api.default.svc.west.mesh",
        );
        assert!(!serves(&forged, "api.default.svc.west.mesh"));
        // An east certificate naming itself into west's domain: refused.
        let sneaky = leaf(
            &east,
            "spiffe://east.mesh/ns/default/sa/api",
            "api.default.svc.west.mesh",
        );
        assert!(!serves(&sneaky, "api.default.svc.west.mesh"));
        // A name in no trusted domain.
        assert!(!serves(&w, "api.default.svc.north.mesh"));

        // A subset of west's api, as its gateway is asked for it: served by
        // api's own certificate, and by nothing else.
        let v2 = crate::tls::subset_id(&std::collections::BTreeMap::from([(
            "version".to_string(),
            "v2".to_string(),
        )]));
        let subset = format!("{v2}.api.default.svc.west.mesh");
        assert!(serves(&w, &subset));
        assert!(!serves(&forged, &subset));
        assert!(!serves(&sneaky, &subset));
        let web = leaf(
            &west,
            "spiffe://west.mesh/ns/default/sa/web",
            "web.default.svc.west.mesh",
        );
        assert!(!serves(&web, &subset), "another service's certificate");
        // Not a subset label: the name is checked whole (and matches no
        // certificate).
        assert!(!serves(&w, "sXYZ.api.default.svc.west.mesh"));
        assert!(!serves(&w, &format!("{v2}.x.api.default.svc.west.mesh")));
    }

    #[test]
    fn a_subset_label_is_recognised_only_in_its_place() {
        use crate::tls::{split_subset, subset_id};
        let id = subset_id(&std::collections::BTreeMap::from([(
            "version".to_string(),
            "v2".to_string(),
        )]));
        assert_eq!(id.len(), 17);
        // Stable across builds: a caller and a gateway of different
        // versions must agree.
        assert_eq!(id, "s1f0afdb26e849887");
        let sni = format!("{id}.api.default.svc.west.mesh");
        assert_eq!(
            split_subset(&sni, "west.mesh"),
            (Some(id.as_str()), "api.default.svc.west.mesh")
        );
        assert_eq!(
            split_subset("api.default.svc.west.mesh", "west.mesh"),
            (None, "api.default.svc.west.mesh")
        );
        // Wrong domain, upper-case hex, or too few labels: no subset.
        assert_eq!(split_subset(&sni, "east.mesh").0, None);
        let upper = format!("S{}.api.default.svc.west.mesh", &id[1..]);
        assert_eq!(split_subset(&upper, "west.mesh").0, None);
        assert_eq!(
            split_subset(&format!("{id}.default.svc.west.mesh"), "west.mesh").0,
            None
        );
        assert_ne!(
            subset_id(&std::collections::BTreeMap::from([(
                "version".to_string(),
                "v1".to_string()
            )])),
            id
        );
        // `a=b\nc=d` in one value cannot pass for two labels.
        assert_ne!(
            subset_id(&std::collections::BTreeMap::from([(
                "a".to_string(),
                "b\nc=d".to_string()
            )])),
            subset_id(&std::collections::BTreeMap::from([
                ("a".to_string(), "b".to_string()),
                ("c".to_string(), "d".to_string())
            ]))
        );
    }
}
