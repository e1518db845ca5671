//! The admin client: connects to one of several meshd addresses, adds the
//! token, and fails over to the next address when one is unreachable.

use std::future::Future;

use raftmesh_api::v1::admin_client::AdminClient;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::Channel;
use tonic::{Request, Status};

use crate::network::{endpoint, never_sent};

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<tonic::metadata::Ascii>>);

impl Interceptor for Bearer {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// An admin client bound to one address.
pub type Client = AdminClient<InterceptedService<Channel, Bearer>>;

/// Where and as whom meshctl talks to meshd.
pub struct Conn {
    servers: Vec<String>,
    bearer: Bearer,
    tls: Option<tonic::transport::ClientTlsConfig>,
}

impl Conn {
    /// Addresses (`host:port`, tried in order) and an optional admin token.
    pub fn new(servers: Vec<String>, token: Option<String>) -> Result<Self, String> {
        if servers.is_empty() {
            return Err("no server given: pass --server HOST:PORT or set RAFTMESH_SERVER".into());
        }
        let bearer = match token {
            Some(t) => {
                let v = format!("Bearer {}", t.trim()).parse().map_err(|_| {
                    "the token holds characters that cannot be sent in a header".to_string()
                })?;
                Bearer(Some(v))
            }
            None => Bearer(None),
        };
        Ok(Self {
            servers,
            bearer,
            tls: None,
        })
    }

    /// Verifies meshd with this TLS setting (`--ca-file`).
    pub fn with_tls(mut self, tls: Option<tonic::transport::ClientTlsConfig>) -> Self {
        self.tls = tls;
        self
    }

    /// The addresses, in the order they are tried.
    pub fn servers(&self) -> &[String] {
        &self.servers
    }

    fn client(&self, server: &str) -> Result<Client, Status> {
        let ep = endpoint(server, self.tls.as_ref())
            .map_err(|e| Status::invalid_argument(format!("bad server address {server}: {e}")))?;
        Ok(
            AdminClient::with_interceptor(ep.connect_lazy(), self.bearer.clone())
                .max_decoding_message_size(crate::network::MAX_MESSAGE_BYTES),
        )
    }

    /// Calls `f` on the first server that answers. A server that could not
    /// be reached is skipped; when `idempotent`, so is one that answered
    /// UNAVAILABLE (no leader, shutting down). Otherwise the first answer,
    /// success or error, is final, so a write is never sent twice.
    pub async fn call<T, F, Fut>(&self, idempotent: bool, f: F) -> Result<T, Status>
    where
        F: Fn(Client) -> Fut,
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
}
