//! The outgoing half of the RPC transport: a small hyper client that POSTs JSON to a peer's
//! Raft listener, signs it, and maps failures to openraft's error kinds (connect errors become
//! `Unreachable` so the leader backs off instead of spinning on a dead peer, openraft #1051).
//! Every outcome feeds [`Reachability`], which logs a peer going down and coming back once.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Timeout, Unreachable,
};
use openraft::network::{Backoff, RPCOption};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, RPCTypes, RaftNetwork, RaftNetworkFactory};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::auth::{Auth, FROM_HEADER, MAC_HEADER, NONCE_HEADER, TS_HEADER};
use crate::config::Peer;
use crate::faults::Faults;
use crate::fence::AckClock;
use crate::reachability::Reachability;
use crate::rpc_server::{MAX_BODY, PATH_APPEND, PATH_SNAPSHOT, PATH_VOTE};
use crate::types::{NodeId, TypeConfig};

/// Why one RPC failed on our side of the wire.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("peer {0} is not in the configured peers")]
    UnknownPeer(NodeId),
    #[error("traffic to {0} is blocked by fault injection")]
    Blocked(String),
    #[error("connecting to {addr}: {msg}")]
    Connect { addr: String, msg: String },
    #[error("sending to {addr}: {msg}")]
    Send { addr: String, msg: String },
    #[error("{addr} answered HTTP {status}: {body}")]
    Status {
        addr: String,
        status: u16,
        body: String,
    },
    #[error("decoding the answer of {addr}: {msg}")]
    Decode { addr: String, msg: String },
    #[error("encoding the request: {0}")]
    Encode(String),
    #[error("no answer from {addr} within {timeout:?}")]
    Timeout { addr: String, timeout: Duration },
}

impl TransportError {
    /// Whether the peer should be treated as down (back off) rather than retried at once.
    fn is_unreachable(&self) -> bool {
        match self {
            TransportError::UnknownPeer(_)
            | TransportError::Blocked(_)
            | TransportError::Connect { .. }
            // Accepted, then reset or closed without an answer (a dying process, a
            // middlebox), or answered garbage: retried at once, that was a few hundred
            // connections a second.
            | TransportError::Send { .. }
            | TransportError::Decode { .. } => true,
            // 401/403: a misconfigured secret will not fix itself; 503: peer shutting down.
            TransportError::Status { status, .. } => matches!(status, 401 | 403 | 503),
            _ => false,
        }
    }
}

/// Signed JSON-over-HTTP client shared by every per-peer connection.
#[derive(Clone)]
pub struct RpcClient {
    client: Client<HttpConnector, Full<Bytes>>,
    auth: Auth,
    faults: Faults,
    /// Our own name, sent in the `from` header (part of the MAC).
    me: String,
    /// name and address of every peer, by Raft id.
    peers: Arc<BTreeMap<NodeId, Peer>>,
    reach: Reachability,
}

impl RpcClient {
    pub fn new(
        me: String,
        peers: Arc<BTreeMap<NodeId, Peer>>,
        auth: Auth,
        faults: Faults,
        connect_timeout: Duration,
    ) -> Self {
        let mut conn = HttpConnector::new();
        conn.set_connect_timeout(Some(connect_timeout));
        conn.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(conn);
        RpcClient {
            client,
            auth,
            faults,
            me,
            peers,
            reach: Reachability::default(),
        }
    }

    pub fn peer(&self, id: NodeId) -> Option<&Peer> {
        self.peers.get(&id)
    }

    /// POST `req` as JSON to `path` on peer `target`, decode the JSON answer.
    pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        target: NodeId,
        path: &str,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, TransportError> {
        let peer = self
            .peers
            .get(&target)
            .ok_or(TransportError::UnknownPeer(target))?;
        let res = self.exchange(peer, path, req, timeout).await;
        match &res {
            Ok(_) => self.reach.answered(target, &peer.id),
            // Our own bug, not the peer's state.
            Err(TransportError::Encode(_)) => {}
            Err(e) => self.reach.failed(target, &peer.id, e),
        }
        res
    }

    async fn exchange<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        peer: &Peer,
        path: &str,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, TransportError> {
        if self.faults.is_blocked(&peer.id) {
            return Err(TransportError::Blocked(peer.id.clone()));
        }
        let addr = peer.raft.clone();
        let body = serde_json::to_vec(req).map_err(|e| TransportError::Encode(e.to_string()))?;
        let mut builder = http::Request::post(format!("http://{addr}{path}"))
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(FROM_HEADER, self.me.as_str());
        if let Some((ts, mac, nonce)) = self.auth.sign(path, &self.me, &body) {
            builder = builder
                .header(TS_HEADER, ts)
                .header(MAC_HEADER, mac)
                .header(NONCE_HEADER, nonce);
        }
        let request = builder
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| TransportError::Encode(e.to_string()))?;

        let exchange = async {
            let resp = self.client.request(request).await.map_err(|e| {
                if e.is_connect() {
                    TransportError::Connect {
                        addr: addr.clone(),
                        msg: error_chain(&e),
                    }
                } else {
                    TransportError::Send {
                        addr: addr.clone(),
                        msg: error_chain(&e),
                    }
                }
            })?;
            let status = resp.status();
            let bytes = Limited::new(resp.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| TransportError::Send {
                    addr: addr.clone(),
                    msg: e.to_string(),
                })?
                .to_bytes();
            if !status.is_success() {
                return Err(TransportError::Status {
                    addr: addr.clone(),
                    status: status.as_u16(),
                    body: String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned(),
                });
            }
            serde_json::from_slice(&bytes).map_err(|e| TransportError::Decode {
                addr: addr.clone(),
                msg: e.to_string(),
            })
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(r) => r,
            Err(_) => Err(TransportError::Timeout { addr, timeout }),
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}

/// Creates one [`PeerConnection`] per replication target.
#[derive(Clone)]
pub struct NetworkFactory {
    pub client: RpcClient,
    /// Our Raft id, for `Timeout` errors.
    pub me: NodeId,
    /// Pause after `Unreachable` before openraft retries that peer.
    pub backoff: Duration,
    /// Accepted AppendEntries, by send time: the leader's own measure of its quorum.
    pub acks: AckClock,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeId, _node: &BasicNode) -> Self::Network {
        PeerConnection {
            factory: self.clone(),
            target,
        }
    }
}

/// openraft's view of one peer.
pub struct PeerConnection {
    factory: NetworkFactory,
    target: NodeId,
}

impl PeerConnection {
    async fn rpc<Req, Resp, E>(
        &self,
        action: RPCTypes,
        path: &str,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let timeout = option.hard_ttl();
        let mut res: Result<Result<Resp, E>, TransportError> = self
            .factory
            .client
            .call(self.target, path, req, timeout)
            .await;
        // A pooled connection the peer had closed fails once; a new one is tried at once
        // (Raft RPCs may be sent twice). A second failure is the peer's state: back off.
        if matches!(res, Err(TransportError::Send { .. })) {
            res = self
                .factory
                .client
                .call(self.target, path, req, timeout)
                .await;
        }
        match res {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(remote)) => Err(RPCError::RemoteError(RemoteError::new(self.target, remote))),
            Err(TransportError::Timeout { timeout, .. }) => Err(RPCError::Timeout(Timeout {
                action,
                id: self.factory.me,
                target: self.target,
                timeout,
            })),
            Err(e) if e.is_unreachable() => {
                tracing::debug!(target_node = self.target, error = %e, "peer unreachable");
                Err(RPCError::Unreachable(Unreachable::new(&e)))
            }
            Err(e) => {
                tracing::debug!(target_node = self.target, error = %e, "rpc failed");
                Err(RPCError::Network(NetworkError::new(&e)))
            }
        }
    }
}

impl RaftNetwork<TypeConfig> for PeerConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let (vote, sent_at) = (rpc.vote, Instant::now());
        let res = self
            .rpc(RPCTypes::AppendEntries, PATH_APPEND, &rpc, &option)
            .await;
        // Anything but HigherVote means the follower took us as its leader at `vote`.
        if matches!(&res, Ok(r) if !matches!(r, AppendEntriesResponse::HigherVote(_))) {
            self.factory.acks.record(self.target, vote, sent_at);
        }
        res
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.rpc(RPCTypes::InstallSnapshot, PATH_SNAPSHOT, &rpc, &option)
            .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.rpc(RPCTypes::Vote, PATH_VOTE, &rpc, &option).await
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(std::iter::repeat(self.factory.backoff))
    }
}
