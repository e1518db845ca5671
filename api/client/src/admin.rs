//! The admin client: the bearer token on every call, and [`Conn`], which
//! tries meshd addresses in order and fails over only when that cannot
//! send a write twice.

use std::future::Future;

use raftmesh_api::v1 as pb;
use raftmesh_api::v1::admin_client::AdminClient;
use raftmesh_api::Resource;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Channel, ClientTlsConfig};
use tonic::{Request, Status};

use crate::{endpoint, never_sent, ClientError, MAX_MESSAGE_BYTES};

/// Adds `authorization: Bearer <token>` to every call (nothing without a
/// token, so the server's "missing token" answer reaches the user).
#[derive(Clone, Default)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Bearer {
    /// The header for `token` (trimmed), or none.
    pub fn new(token: Option<&str>) -> Result<Self, ClientError> {
        token
            .map(|t| {
                format!("Bearer {}", t.trim())
                    .parse()
                    .map_err(|_| ClientError::BadToken)
            })
            .transpose()
            .map(Self)
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// An admin client bound to one address.
pub type Admin = AdminClient<InterceptedService<Channel, Bearer>>;

/// A lazily connected admin client to `addr` (`host:port`) carrying `token`.
pub fn admin_client(
    addr: &str,
    token: Option<&str>,
    tls: Option<&ClientTlsConfig>,
) -> Result<Admin, ClientError> {
    with_bearer(addr, Bearer::new(token)?, tls)
}

fn with_bearer(
    addr: &str,
    bearer: Bearer,
    tls: Option<&ClientTlsConfig>,
) -> Result<Admin, ClientError> {
    let channel = endpoint(addr, tls)?.connect_lazy();
    Ok(AdminClient::with_interceptor(channel, bearer)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES))
}

/// Where and as whom a program talks to meshd.
#[derive(Clone)]
pub struct Conn {
    servers: Vec<String>,
    bearer: Bearer,
    tls: Option<ClientTlsConfig>,
}

impl Conn {
    /// Addresses (`host:port`, tried in order) and an optional admin token.
    pub fn new(servers: Vec<String>, token: Option<&str>) -> Result<Self, ClientError> {
        if servers.is_empty() {
            return Err(ClientError::NoServer);
        }
        Ok(Self {
            servers,
            bearer: Bearer::new(token)?,
            tls: None,
        })
    }

    /// Verifies meshd with this TLS setting (`--ca-file`).
    pub fn with_tls(mut self, tls: Option<ClientTlsConfig>) -> Self {
        self.tls = tls;
        self
    }

    /// The addresses, in the order they are tried.
    pub fn servers(&self) -> &[String] {
        &self.servers
    }

    /// A client to one of the addresses (or any other).
    pub fn client(&self, server: &str) -> Result<Admin, Status> {
        with_bearer(server, self.bearer.clone(), self.tls.as_ref())
            .map_err(|e| Status::invalid_argument(e.to_string()))
    }

    /// Calls `f` on the first server that answers. A server that could not
    /// be reached is skipped; when `idempotent`, so is one that answered
    /// UNAVAILABLE (no leader, shutting down). Otherwise the first answer,
    /// success or error, is final, so a write is never sent twice.
    pub async fn call<T, F, Fut>(&self, idempotent: bool, f: F) -> Result<T, Status>
    where
        F: Fn(Admin) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let mut last = None;
        for server in &self.servers {
            let client = self.client(server)?;
            match f(client).await {
                Ok(v) => return Ok(v),
                Err(s) if never_sent(&s) => {
                    last = Some(Status::unavailable(format!("{server}: {}", s.message())));
                }
                Err(s)
                    if idempotent
                        && s.code() == tonic::Code::Unavailable
                        && self.servers.len() > 1 =>
                {
                    last = Some(Status::unavailable(format!("{server}: {}", s.message())));
                }
                Err(s) => return Err(s),
            }
        }
        Err(last.unwrap_or_else(|| Status::unavailable("no server could be reached")))
    }

    /// Applies `resources`, all or none, each compare-and-set on its
    /// `metadata.revision` when it has one. A write: sent once.
    pub async fn apply(&self, resources: &[Resource]) -> Result<pb::ApplyResponse, Status> {
        let items: Vec<pb::ApplyItem> = resources
            .iter()
            .map(|r| pb::ApplyItem {
                expected_revision: r.metadata.revision,
                resource: Some(r.clone().into()),
            })
            .collect();
        let bytes = prost::Message::encoded_len(&pb::ApplyRequest {
            items: items.clone(),
        });
        if bytes > crate::MAX_ADMIN_REQUEST_BYTES {
            return Err(Status::invalid_argument(format!(
                "this apply of {} resources is {:.1} MiB encoded; meshd reads at most {} MiB in one request: split it into several files (each is applied all or none); nothing was sent",
                items.len(),
                bytes as f64 / (1024.0 * 1024.0),
                crate::MAX_ADMIN_REQUEST_BYTES / (1024 * 1024)
            )));
        }
        self.call(false, |mut c| {
            let items = items.clone();
            async move {
                c.apply(pb::ApplyRequest { items })
                    .await
                    .map(|r| r.into_inner())
            }
        })
        .await
    }
}

/// Creates a bootstrap token for proxies of `service` in `namespace` (""
/// = default): no expiry beyond the server's default, unlimited uses.
/// Answers its secret.
pub async fn bootstrap_token(
    adm: &mut Admin,
    service: &str,
    namespace: &str,
) -> Result<String, Status> {
    Ok(adm
        .create_token(pb::CreateTokenRequest {
            scope: Some(pb::create_token_request::Scope::Service(pb::ServiceScope {
                service: service.into(),
                namespace: namespace.into(),
            })),
            ttl_ms: 0,
            max_uses: 0,
        })
        .await?
        .into_inner()
        .secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_sent_as_a_bearer_header_and_none_sends_nothing() {
        let mut b = Bearer::new(Some(" rmt_abc\n")).unwrap();
        let req = b.call(Request::new(())).unwrap();
        assert_eq!(
            req.metadata().get("authorization").unwrap(),
            "Bearer rmt_abc"
        );
        let mut none = Bearer::new(None).unwrap();
        assert!(none
            .call(Request::new(()))
            .unwrap()
            .metadata()
            .get("authorization")
            .is_none());
        assert!(matches!(
            Bearer::new(Some("bad\u{7}token")),
            Err(ClientError::BadToken)
        ));
    }

    #[test]
    fn a_connection_needs_a_server() {
        assert!(matches!(
            Conn::new(vec![], None),
            Err(ClientError::NoServer)
        ));
    }

    #[tokio::test]
    async fn a_write_is_not_retried_on_another_server_after_an_answer() {
        // Nothing listens on port 1: unreachable, so the next server is tried
        // and the error names each; the closure counts the attempts.
        let conn = Conn::new(vec!["127.0.0.1:1".into(), "127.0.0.1:1".into()], None).unwrap();
        let tries = std::sync::atomic::AtomicU32::new(0);
        let r: Result<(), Status> = conn
            .call(false, |_c| {
                tries.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                async { Err(Status::unavailable("tcp connect error: Connection refused")) }
            })
            .await;
        assert_eq!(tries.load(std::sync::atomic::Ordering::SeqCst), 2);
        assert!(r.unwrap_err().message().contains("127.0.0.1:1"));
        let tries = std::sync::atomic::AtomicU32::new(0);
        let r: Result<(), Status> = conn
            .call(false, |_c| {
                tries.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                async { Err(Status::unavailable("the outcome is unknown")) }
            })
            .await;
        assert_eq!(
            tries.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "a write that may have been applied is not sent again"
        );
        assert!(r.is_err());
    }
}
