//! Mesh DNS (`--dns ADDR`, the port `mesh-proxy capture install
//! --dns-port` sends the workload's DNS to): mesh names answered with the
//! service's virtual address, every other query forwarded unchanged to the
//! host's resolver (`--dns-upstream`, by default the first `nameserver` of
//! `/etc/resolv.conf`).
//!
//! Mesh names, case-insensitive, with or without the final dot:
//! `web` (the proxy's namespace), `web.NS`, `web.NS.<trust domain>` and
//! `web.NS.svc.<trust domain>` (the name in the workload's certificate).
//! A name the proxy does not hold yet is learned from the control plane
//! (at most [`LEARN_WAIT`]); a miss is remembered for
//! [`crate::state::MISS_TTL`] so
//! an outside name costs the look-up at most once per 5 s. `web.NS` is taken for a mesh
//! name only when NS is a namespace the proxy knows (its own or one of a
//! service it holds), so `example.com` goes straight to the resolver.
//! A mesh name answers A with the virtual address, and every other type
//! with no records (so clients do not wait for an AAAA). Malformed queries
//! get FORMERR, other opcodes NOTIMP, and responses are never answered.
//! UDP only: a workload's DNS over TCP is relayed by the capture listener.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::{rdata::A, DNSClass, RData, Record, RecordType};
use tokio::net::UdpSocket;
use tokio::sync::{watch, Semaphore};

use crate::compiled::ServiceId;
use crate::state::Config;

/// How long a query for a name the proxy does not hold waits for the
/// control plane.
pub const LEARN_WAIT: Duration = Duration::from_secs(1);
/// TTL of a mesh answer (virtual addresses do not change for a service's
/// life).
const TTL: u32 = 30;
/// How long a forwarded query waits for the resolver.
const UPSTREAM_WAIT: Duration = Duration::from_secs(3);
/// Queries handled at once; more are dropped (the client retries).
const IN_FLIGHT: usize = 256;

/// The DNS server's state.
pub struct Dns {
    config: Arc<Config>,
    workload: Option<Arc<crate::tls::Workload>>,
    upstream: Option<SocketAddr>,
    in_flight: Arc<Semaphore>,
}

/// The trust domain in the proxy's certificate, if it has one.
fn trust_domain(workload: Option<&crate::tls::Workload>) -> Option<String> {
    let tls = workload?.tls()?;
    raftmesh_api::identity::parse_spiffe_id(&tls.spiffe).map(|w| w.trust_domain.to_string())
}

/// The service a host name means, if it is a mesh name — `web`, `web.NS`
/// (NS a namespace the proxy knows), `web.NS.<trust domain>` or
/// `web.NS.svc.<trust domain>`, nothing else — and whether it can only be
/// a mesh name (a name under the trust domain). Mesh DNS and the capture
/// listener both decide by it, so `admin.prod.example.com` is never taken
/// for service `admin` of namespace `prod`.
pub(crate) fn mesh_name(
    config: &Config,
    workload: Option<&crate::tls::Workload>,
    name: &str,
) -> Option<(ServiceId, bool)> {
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    let labels: Vec<&str> = name.split('.').collect();
    let valid = |l: &str| raftmesh_api::validate::dns_label(l).is_ok();
    if !valid(labels[0]) || labels.get(1).is_some_and(|l| !valid(l)) {
        return None;
    }
    let id = |ns: &str| (ns.to_string(), labels[0].to_string());
    match labels.len() {
        1 => Some((id(&config.namespace), false)),
        2 => config
            .knows_namespace(labels[1])
            .then(|| (id(labels[1]), false)),
        // `web.NS.<peer>`: the import of `web` from a peer.
        3 if config.is_peer(labels[2]) => Some((
            (
                labels[1].to_string(),
                format!("{}.{}", labels[0], labels[2]),
            ),
            true,
        )),
        _ => {
            let td = trust_domain(workload)?;
            let rest = labels[2..].join(".");
            (rest == td || rest.strip_prefix("svc.") == Some(td.as_str()))
                .then(|| (id(labels[1]), true))
        }
    }
}

/// The resolver `/etc/resolv.conf` names first (port 53).
pub fn host_resolver(resolv_conf: &str) -> Option<SocketAddr> {
    resolv_conf.lines().find_map(|l| {
        let mut w = l.split_whitespace();
        (w.next() == Some("nameserver"))
            .then(|| w.next())
            .flatten()
            .and_then(|a| a.parse::<std::net::IpAddr>().ok())
            .map(|ip| SocketAddr::new(ip, 53))
    })
}

impl Dns {
    /// A server answering from `config`, forwarding to `upstream`.
    pub fn new(
        config: Arc<Config>,
        workload: Option<Arc<crate::tls::Workload>>,
        upstream: Option<SocketAddr>,
    ) -> Arc<Self> {
        Arc::new(Self {
            config,
            workload,
            upstream,
            in_flight: Arc::new(Semaphore::new(IN_FLIGHT)),
        })
    }

    fn mesh_name(&self, name: &str) -> Option<(ServiceId, bool)> {
        mesh_name(&self.config, self.workload.as_deref(), name)
    }

    /// The virtual address of a mesh service: held, or learned now.
    async fn vip(&self, id: &ServiceId) -> Option<Ipv4Addr> {
        self.config.lookup(id, LEARN_WAIT).await?;
        self.config.current().vip_of(id)
    }

    /// The answer to one query datagram; `None` sends nothing.
    pub async fn answer(&self, query: &[u8]) -> Option<Vec<u8>> {
        let msg = match Message::from_vec(query) {
            Ok(m) => m,
            // A header we can read gets FORMERR; anything shorter nothing.
            Err(_) if query.len() >= 12 && query[2] & 0x80 == 0 => {
                let id = u16::from_be_bytes([query[0], query[1]]);
                return Message::error_msg(id, OpCode::Query, ResponseCode::FormErr)
                    .to_vec()
                    .ok();
            }
            Err(_) => return None,
        };
        if msg.metadata.message_type != MessageType::Query {
            return None;
        }
        if msg.metadata.op_code != OpCode::Query || msg.queries.len() != 1 {
            let code = if msg.metadata.op_code != OpCode::Query {
                ResponseCode::NotImp
            } else {
                ResponseCode::FormErr
            };
            return Message::error_msg(msg.metadata.id, msg.metadata.op_code, code)
                .to_vec()
                .ok();
        }
        let q = &msg.queries[0];
        if q.query_class() == DNSClass::IN {
            if let Some((id, certain)) = self.mesh_name(&q.name().to_ascii()) {
                match self.vip(&id).await {
                    Some(vip) => return mesh_answer(&msg, Some(vip)),
                    None if certain => return mesh_answer(&msg, None),
                    None => {}
                }
            }
        }
        self.forward(&msg, query).await
    }

    /// Sends the query unchanged to the resolver; its answer, or SERVFAIL.
    async fn forward(&self, msg: &Message, query: &[u8]) -> Option<Vec<u8>> {
        let servfail = || {
            let mut m = Message::error_msg(msg.metadata.id, OpCode::Query, ResponseCode::ServFail);
            m.queries = msg.queries.clone();
            m.metadata.recursion_desired = msg.metadata.recursion_desired;
            m.to_vec().ok()
        };
        let Some(up) = self.upstream else {
            return servfail();
        };
        let bind: SocketAddr = if up.is_ipv4() {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let exchange = async {
            let s = UdpSocket::bind(bind).await.ok()?;
            s.connect(up).await.ok()?;
            s.send(query).await.ok()?;
            let mut buf = vec![0u8; 65535];
            loop {
                let n = s.recv(&mut buf).await.ok()?;
                // The reply to this query (same id), nothing else.
                if n >= 12 && buf[..2] == query[..2] && buf[2] & 0x80 != 0 {
                    buf.truncate(n);
                    return Some(buf);
                }
            }
        };
        match tokio::time::timeout(UPSTREAM_WAIT, exchange).await {
            Ok(Some(reply)) => Some(reply),
            _ => {
                self.config.metrics.error("dns-upstream");
                tracing::debug!(upstream = %up, "the resolver did not answer");
                servfail()
            }
        }
    }
}

/// The authoritative answer for a mesh name: its virtual address for A,
/// no records for any other type (or when it has none).
fn mesh_answer(query: &Message, vip: Option<Ipv4Addr>) -> Option<Vec<u8>> {
    let q = &query.queries[0];
    let mut m = Message::response(query.metadata.id, OpCode::Query);
    m.metadata.authoritative = true;
    m.metadata.recursion_desired = query.metadata.recursion_desired;
    m.metadata.recursion_available = true;
    m.metadata.response_code = match vip {
        Some(_) => ResponseCode::NoError,
        None => ResponseCode::NXDomain,
    };
    m.queries.push(q.clone());
    if let (Some(ip), RecordType::A) = (vip, q.query_type()) {
        m.answers
            .push(Record::from_rdata(q.name().clone(), TTL, RData::A(A(ip))));
    }
    if query.edns.is_some() {
        let mut e = Edns::new();
        e.set_max_payload(1232);
        m.edns = Some(e);
    }
    m.to_vec().ok()
}

/// Serves DNS on `socket` until `shutdown` turns true.
pub async fn serve(socket: UdpSocket, dns: Arc<Dns>, mut shutdown: watch::Receiver<bool>) {
    let socket = Arc::new(socket);
    let mut buf = vec![0u8; 65535];
    loop {
        let (n, peer) = tokio::select! {
            r = socket.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::debug!(error = %e, "dns receive");
                    continue;
                }
            },
            _ = crate::stopped(&mut shutdown) => return,
            _ = crate::health::handing_over(&dns.config.life) => return,
        };
        let Ok(permit) = dns.in_flight.clone().try_acquire_owned() else {
            dns.config.metrics.error("dns-overload");
            continue;
        };
        let (query, dns, socket) = (buf[..n].to_vec(), dns.clone(), socket.clone());
        tokio::spawn(async move {
            if let Some(reply) = dns.answer(&query).await {
                let _ = socket.send_to(&reply, peer).await;
            }
            drop(permit);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::host_resolver;

    #[test]
    fn the_first_nameserver_of_resolv_conf_is_the_resolver() {
        let conf = "# generated\nsearch corp.example\nnameserver  10.0.0.2\nnameserver 10.0.0.3\n";
        assert_eq!(host_resolver(conf), Some("10.0.0.2:53".parse().unwrap()));
        assert_eq!(host_resolver("nameserver fe80::1%eth0\n"), None);
        assert_eq!(host_resolver("search x\n"), None);
    }
}
