//! Server TLS: the files `meshd tls init` makes (a server CA and one
//! certificate per node), and the tonic TLS settings built from them for
//! meshd's gRPC port and node-to-node calls. Clients verify meshd with
//! `--ca-file` through `raftmesh_client::client_tls`.
//!
//! This CA is not the workload CA (which lives in the Raft state and signs
//! proxies): it is made once by an operator, kept in files, and only
//! authenticates meshd nodes. See docs/security.md.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _};
use raftmesh_client::{read_certificate, read_pem};
use rcgen::{DistinguishedName, DnType, Issuer, KeyPair, SanType};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// The server CA's certificate, in a `--tls-dir`.
pub const CA_CERT: &str = "ca.pem";
/// The server CA's key (only `meshd tls init` needs it; keep it offline).
pub const CA_KEY: &str = "ca-key.pem";
/// A cluster secret (`--cluster-secret-file`), for clusters run without
/// `--tls-dir`.
pub const CLUSTER_SECRET: &str = "cluster.secret";

/// File name of node `id`'s certificate.
pub fn node_cert(id: u64) -> String {
    format!("node-{id}.pem")
}

/// File name of node `id`'s key.
pub fn node_key(id: u64) -> String {
    format!("node-{id}-key.pem")
}

/// What `meshd tls init` makes.
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// The folder to write (created; must not already hold a CA).
    pub out: PathBuf,
    /// Node ids 1..=nodes.
    pub nodes: u64,
    /// Names and IP addresses every node certificate is valid for.
    pub hosts: Vec<String>,
    /// Lifetime of node certificates.
    pub validity: Duration,
}

fn san(host: &str) -> anyhow::Result<SanType> {
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    raftmesh_api::validate::dns_subdomain(host).map_err(|e| {
        anyhow::anyhow!("--hosts: {host:?} is neither an IP address nor a DNS name: {e}")
    })?;
    Ok(SanType::DnsName(host.try_into().with_context(|| {
        format!("--hosts: {host:?} is not a valid DNS name")
    })?))
}

fn write_file(path: &Path, contents: &str, secret: bool) -> anyhow::Result<()> {
    raftmesh_api::files::create_new(path, contents.as_bytes(), secret)
        .with_context(|| format!("cannot create {}", path.display()))
}

/// Makes a server CA and `nodes` node certificates in `out`; answers the
/// files written. Refuses to overwrite an existing CA.
pub fn init(o: &InitOptions) -> anyhow::Result<Vec<PathBuf>> {
    if o.nodes == 0 || o.nodes > 99 {
        bail!("--nodes must be between 1 and 99, got {}", o.nodes);
    }
    if o.hosts.is_empty() {
        bail!("--hosts must name at least one host");
    }
    let sans = o
        .hosts
        .iter()
        .map(|h| san(h))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if o.out.join(CA_CERT).exists() {
        bail!(
            "{} already holds a server CA ({CA_CERT}); choose another --out or remove it first",
            o.out.display()
        );
    }
    std::fs::create_dir_all(&o.out)
        .with_context(|| format!("cannot create {}", o.out.display()))?;
    let now = time::OffsetDateTime::now_utc();

    let ca_key = KeyPair::generate()?;
    let ca = crate::ca::crypto::root_params(
        "Raftmesh meshd server CA".into(),
        now - time::Duration::minutes(5),
        now + time::Duration::days(3650),
    );
    let ca_cert = ca.self_signed(&ca_key)?;
    let mut written = Vec::new();
    let ca_path = o.out.join(CA_CERT);
    write_file(&ca_path, &ca_cert.pem(), false)?;
    written.push(ca_path);
    let key_path = o.out.join(CA_KEY);
    write_file(&key_path, &ca_key.serialize_pem(), true)?;
    written.push(key_path);
    let secret_path = o.out.join(CLUSTER_SECRET);
    write_file(&secret_path, &crate::tokens::new_secret(), true)?;
    written.push(secret_path);

    let issuer = Issuer::new(ca, ca_key);
    let validity = time::Duration::try_from(o.validity).context("validity out of range")?;
    for id in 1..=o.nodes {
        let key = KeyPair::generate()?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("meshd node {id}"));
        dn.push(DnType::OrganizationName, "Raftmesh");
        let p = crate::ca::crypto::mtls_leaf_params(
            dn,
            sans.clone(),
            now - time::Duration::minutes(5),
            now + validity,
        );
        let cert = p.signed_by(&key, &issuer)?;
        let c = o.out.join(node_cert(id));
        write_file(&c, &cert.pem(), false)?;
        written.push(c);
        let k = o.out.join(node_key(id));
        write_file(&k, &key.serialize_pem(), true)?;
        written.push(k);
    }
    Ok(written)
}

/// TLS for one meshd node: what its gRPC port serves with, and what it
/// connects to other nodes with.
#[derive(Clone)]
pub struct NodeTls {
    /// The server side (client certificates optional here; the Raft
    /// service demands one).
    pub server: ServerTlsConfig,
    /// The server CA (PEM): peers of federation verify this cluster's
    /// nodes with it.
    pub ca_pem: String,
    /// The client side: verifies other nodes, presents this node's pair.
    pub client: ClientTlsConfig,
}

impl std::fmt::Debug for NodeTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodeTls")
    }
}

/// Loads node `id`'s TLS from a `--tls-dir`, checking every file.
pub fn load(dir: &Path, id: u64) -> anyhow::Result<NodeTls> {
    let ca = read_certificate(&dir.join(CA_CERT), "--tls-dir: the server CA")?.pem;
    let cert = read_certificate(
        &dir.join(node_cert(id)),
        "--tls-dir: this node's certificate",
    )?;
    let key = read_pem(&dir.join(node_key(id)), "--tls-dir: this node's key")?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    if cert.not_after_unix <= now {
        bail!(
            "--tls-dir: {} expired; make new node certificates with `meshd tls init`",
            dir.join(node_cert(id)).display()
        );
    }
    let identity = Identity::from_pem(cert.pem, key);
    let root = Certificate::from_pem(ca.clone());
    Ok(NodeTls {
        ca_pem: ca,
        server: ServerTlsConfig::new()
            .identity(identity.clone())
            .client_ca_root(root.clone())
            .client_auth_optional(true),
        client: ClientTlsConfig::new()
            .ca_certificate(root)
            .identity(identity),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_writes_a_ca_and_node_pairs_that_load_and_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let o = InitOptions {
            out: dir.path().join("tls"),
            nodes: 3,
            hosts: vec!["localhost".into(), "127.0.0.1".into()],
            validity: Duration::from_secs(86_400),
        };
        let files = init(&o).unwrap();
        assert_eq!(
            files.len(),
            3 + 3 * 2,
            "CA, CA key, cluster secret, node pairs"
        );
        for id in 1..=3 {
            load(&o.out, id).unwrap();
        }
        let e = load(&o.out, 4).unwrap_err().to_string();
        assert!(e.contains("node-4.pem"), "{e}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for secret in [CA_KEY, CLUSTER_SECRET] {
                let m = std::fs::metadata(o.out.join(secret))
                    .unwrap()
                    .permissions()
                    .mode();
                assert_eq!(m & 0o777, 0o600, "{secret}");
            }
        }
        let e = init(&o).unwrap_err().to_string();
        assert!(e.contains("already holds a server CA"), "{e}");
    }

    #[test]
    fn bad_options_and_files_are_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = InitOptions {
            out: dir.path().to_path_buf(),
            nodes: 0,
            hosts: vec!["localhost".into()],
            validity: Duration::from_secs(60),
        };
        assert!(init(&o).unwrap_err().to_string().contains("--nodes"));
        o.nodes = 1;
        o.hosts = vec!["not a host!".into()];
        assert!(init(&o).unwrap_err().to_string().contains("--hosts"));
        // A bad --ca-file is refused by raftmesh-client (tls.rs tests).
    }
}
