//! TLS to meshd: the server CA a client verifies meshd against
//! (`--ca-file`, `RAFTMESH_CA_FILE`).

use std::path::Path;

use tonic::transport::{Certificate, ClientTlsConfig};

use crate::ClientError;

/// Reads a PEM file holding a certificate (a `--ca-file`), checking that it
/// parses; the error names `what` and the path.
pub fn read_ca_file(path: &Path, what: &'static str) -> Result<String, ClientError> {
    Ok(read_certificate(path, what)?.pem)
}

/// A certificate read from a PEM file.
#[derive(Debug, Clone)]
pub struct PemCertificate {
    /// The file's text.
    pub pem: String,
    /// Its expiry, Unix seconds.
    pub not_after_unix: i64,
}

/// Reads a PEM file holding a certificate, checking that it parses, with
/// its expiry; the error names `what` and the path.
pub fn read_certificate(path: &Path, what: &'static str) -> Result<PemCertificate, ClientError> {
    let pem = read_pem(path, what)?;
    let not_cert = |reason: String| ClientError::NotCertificate {
        what,
        path: path.display().to_string(),
        reason,
    };
    let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|e| not_cert(format!("not PEM: {e}")))?;
    let cert = p
        .parse_x509()
        .map_err(|e| not_cert(format!("not an X.509 certificate: {e}")))?;
    let not_after_unix = cert.validity().not_after.timestamp();
    Ok(PemCertificate {
        pem,
        not_after_unix,
    })
}

/// Reads a file that must hold a PEM block (a certificate or a key).
pub fn read_pem(path: &Path, what: &'static str) -> Result<String, ClientError> {
    let pem = std::fs::read_to_string(path).map_err(|source| ClientError::Read {
        what,
        path: path.display().to_string(),
        source,
    })?;
    if !pem.contains("-----BEGIN") {
        return Err(ClientError::NotCertificate {
            what,
            path: path.display().to_string(),
            reason: "no PEM block".into(),
        });
    }
    Ok(pem)
}

/// TLS for a client of meshd: verify the server against `ca_pem`.
pub fn client_tls(ca_pem: &str) -> ClientTlsConfig {
    ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_file_that_is_missing_or_not_a_certificate_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("junk.pem"), "hello").unwrap();
        let e = read_ca_file(&dir.path().join("junk.pem"), "--ca-file")
            .unwrap_err()
            .to_string();
        assert!(e.contains("--ca-file") && e.contains("not a PEM"), "{e}");
        std::fs::write(
            dir.path().join("bad.pem"),
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let e = read_ca_file(&dir.path().join("bad.pem"), "--ca-file")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a PEM certificate"), "{e}");
        let e = read_ca_file(&dir.path().join("absent.pem"), "--ca-file")
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot read --ca-file"), "{e}");
    }
}
