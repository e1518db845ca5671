//! openraft's network over tonic: a pool of gRPC clients to other nodes, the
//! JSON payload every node-to-node message travels in, and the
//! `RaftNetwork` that sends openraft's messages (with injected faults, for
//! the chaos tests, when `--fault-file` is given).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use raftmesh_api::v1::raft_client::RaftClient;
use raftmesh_api::v1::RaftPayload;
use raftmesh_client::{endpoint, never_sent, ClientError, MAX_MESSAGE_BYTES};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, ClientTlsConfig};

use super::credential::{ClusterSecret, NodeAuth};

use crate::{NodeId, TypeConfig};

/// A gRPC client to another node, carrying this node's credential.
pub type RaftRpcClient = RaftClient<InterceptedService<Channel, NodeAuth>>;

/// Lazily connected gRPC clients to other nodes, by address. Cheap to clone.
#[derive(Clone, Default)]
pub struct ClientPool {
    clients: Arc<Mutex<HashMap<String, RaftRpcClient>>>,
    tls: Option<ClientTlsConfig>,
    auth: NodeAuth,
}

impl ClientPool {
    /// A pool whose connections use `tls` (server TLS on: the node
    /// certificate is the credential) or plaintext with proofs under
    /// `secret` on every call.
    pub fn new(tls: Option<ClientTlsConfig>, secret: Option<ClusterSecret>) -> Self {
        Self {
            clients: Arc::default(),
            tls,
            auth: NodeAuth::new(secret),
        }
    }

    /// A client for `addr` (`host:port`), created on first use; the
    /// connection is made, and remade after failures, by tonic.
    pub fn get(&self, addr: &str) -> Result<RaftRpcClient, ClientError> {
        let mut clients = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(c) = clients.get(addr) {
            return Ok(c.clone());
        }
        let channel = endpoint(addr, self.tls.as_ref())?.connect_lazy();
        let client = RaftClient::with_interceptor(channel, self.auth.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        clients.insert(addr.to_string(), client.clone());
        Ok(client)
    }
}

/// Encodes a value as a JSON payload.
pub fn to_payload<T: Serialize>(v: &T) -> Result<RaftPayload, serde_json::Error> {
    Ok(RaftPayload {
        json: serde_json::to_vec(v)?,
    })
}

/// Decodes a JSON payload, as a gRPC error naming what was expected.
pub fn from_payload<T: DeserializeOwned>(p: &RaftPayload, what: &str) -> Result<T, tonic::Status> {
    serde_json::from_slice(&p.json)
        .map_err(|e| tonic::Status::invalid_argument(format!("malformed {what}: {e}")))
}

/// Creates a connection per target node.
#[derive(Clone)]
pub struct Network {
    pool: ClientPool,
    faults: Option<Arc<super::faults::Faults>>,
}

impl Network {
    /// A network using `pool`'s clients, with injected faults if any.
    pub fn new(pool: ClientPool, faults: Option<Arc<super::faults::Faults>>) -> Self {
        Self { pool, faults }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Connection;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Connection {
        Connection {
            target,
            client: self.pool.get(&node.addr).map_err(Arc::new),
            faults: self.faults.clone(),
        }
    }
}

/// openraft's view of one other node.
pub struct Connection {
    target: NodeId,
    client: Result<RaftRpcClient, Arc<ClientError>>,
    faults: Option<Arc<super::faults::Faults>>,
}

type RpcResult<T, E> = Result<T, RPCError<NodeId, BasicNode, E>>;

impl Connection {
    async fn call<Req, Resp, E>(
        &mut self,
        req: &Req,
        option: &RPCOption,
        kind: Rpc,
    ) -> RpcResult<Resp, E>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let client = match &self.client {
            Ok(c) => c.clone(),
            Err(e) => return Err(RPCError::Unreachable(Unreachable::new(e.as_ref()))),
        };
        if let Some(f) = &self.faults {
            match f.outgoing(self.target) {
                None => {
                    return Err(RPCError::Unreachable(Unreachable::new(
                        &std::io::Error::other("dropped by fault injection"),
                    )))
                }
                Some(d) if !d.is_zero() => tokio::time::sleep(d).await,
                Some(_) => {}
            }
        }
        let payload = to_payload(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let mut request = tonic::Request::new(payload);
        request.set_timeout(option.hard_ttl());
        let mut client = client;
        let result = match kind {
            Rpc::Append => client.append_entries(request).await,
            Rpc::Vote => client.vote(request).await,
            Rpc::Snapshot => client.install_snapshot(request).await,
        };
        let reply = match result {
            Ok(r) => r.into_inner(),
            Err(status) if never_sent(&status) => {
                return Err(RPCError::Unreachable(Unreachable::new(&status)));
            }
            Err(status) => return Err(RPCError::Network(NetworkError::new(&status))),
        };
        let decoded: Result<Resp, E> = serde_json::from_slice(&reply.json)
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        decoded.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

#[derive(Clone, Copy)]
enum Rpc {
    Append,
    Vote,
    Snapshot,
}

impl RaftNetwork<TypeConfig> for Connection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>, RaftError<NodeId>> {
        self.call(&rpc, &option, Rpc::Append).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>> {
        self.call(&rpc, &option, Rpc::Snapshot).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>, RaftError<NodeId>> {
        self.call(&rpc, &option, Rpc::Vote).await
    }
}
