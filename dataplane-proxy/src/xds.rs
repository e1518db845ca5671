//! The discovery client: keeps a stream to one of the control-plane nodes
//! (failing over, with jittered backoff), applies deltas, persists the last
//! good config, and ACKs or NACKs. With every node gone, the proxy goes on
//! with the config it holds.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use raftmesh_api::v1 as pb;
use raftmesh_api::v1::discovery_client::DiscoveryClient;
use raftmesh_api::v1::proxy_message::Msg as In;
use raftmesh_api::v1::server_message::Msg as Out;
use raftmesh_api::{Resource, ResourceKey};
use rand::Rng;
use tokio::sync::{mpsc, watch};

type ServiceIdOf = crate::compiled::ServiceId;
use crate::compiled::{compile, validate_all, Source};
use crate::config::ProxyConfig;
use crate::persist::{self, Saved};
use crate::state::Config;
use crate::state::Interest;
use crate::subscriptions::{Learned, Subscriptions, MAX_SUBSCRIPTIONS};
use crate::tls::Workload;
use crate::unix_ms;

/// What the client needs from the proxy's configuration.
#[derive(Clone)]
pub struct XdsSettings {
    /// meshd addresses.
    pub control_plane: Vec<String>,
    /// The Hello the proxy sends (last revision and subscriptions filled in).
    pub hello: pb::Hello,
    /// State directory.
    pub state_dir: Option<PathBuf>,
    /// TLS to meshd (`--ca-file`), plaintext when `None`.
    pub tls: Option<tonic::transport::ClientTlsConfig>,
    /// How long a learned subscription may go unused.
    pub subscription_idle: Duration,
    /// How often the traffic is reported (`ProxyMessage.stats`).
    pub stats_interval: Duration,
}

impl XdsSettings {
    /// From the proxy's configuration.
    pub fn from_config(c: &ProxyConfig) -> Self {
        Self {
            control_plane: c.control_plane.clone(),
            hello: pb::Hello {
                service: c.service.clone(),
                instance: c.instance.clone(),
                namespace: c.namespace.clone(),
                cluster: c.cluster.clone(),
                labels: c.labels.clone(),
                address: c.advertise.clone(),
                port: if c.app_port.is_some() {
                    u32::from(c.inbound.port())
                } else {
                    0
                },
                locality: c.locality.clone(),
                token: c.token.clone().unwrap_or_default(),
                ..Default::default()
            },
            state_dir: c.state_dir.clone(),
            tls: c.ca_pem.as_deref().map(raftmesh_client::client_tls),
            subscription_idle: c.subscription_idle,
            stats_interval: c.stats_interval,
        }
    }
}

/// Applies a delta to what the proxy holds; the error is the NACK reason.
pub fn apply_delta(
    held: &BTreeMap<ResourceKey, Resource>,
    d: &pb::Delta,
    current_revision: u64,
) -> Result<BTreeMap<ResourceKey, Resource>, String> {
    if !d.full && d.revision <= current_revision {
        return Err(format!(
            "delta revision {} is not after the revision held ({current_revision})",
            d.revision
        ));
    }
    let mut next = if d.full {
        BTreeMap::new()
    } else {
        held.clone()
    };
    for (i, u) in d.upserts.iter().enumerate() {
        let r = Resource::try_from(u.clone()).map_err(|e| format!("upsert {i}: {e}"))?;
        next.insert(r.key(), r);
    }
    for (i, k) in d.removals.iter().enumerate() {
        let k = ResourceKey::try_from(k.clone()).map_err(|e| format!("removal {i}: {e}"))?;
        next.remove(&k);
    }
    validate_all(&next)?;
    Ok(next)
}

/// Runs the client until `shutdown` turns true.
pub async fn run(
    settings: XdsSettings,
    config: Arc<Config>,
    workload: Option<Arc<Workload>>,
    mut learn_rx: mpsc::Receiver<crate::state::Interest>,
    mut subscriptions: Subscriptions,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(100);
    let mut next_node = rand::rng().random_range(0..settings.control_plane.len().max(1));
    let mut life = config.life.subscribe();
    // Register only once the app has been probed (a few milliseconds at
    // most, normally): registering first would mark a ready app not ready.
    let _ = tokio::time::timeout(Duration::from_secs(3), life.wait_for(|l| l.probed)).await;
    // Tap records, from every request a tap samples (`tap.rs`).
    let Some(mut tap_rx) = config.taps.take_receiver() else {
        tracing::error!("the discovery client was started twice for one proxy");
        return;
    };
    loop {
        if *shutdown.borrow() {
            return;
        }
        if life.borrow().leaving {
            // No stream to deregister on: the endpoint's lease expires.
            config.life.send_modify(|l| l.left = true);
            return;
        }
        let addr = settings.control_plane[next_node % settings.control_plane.len()].clone();
        next_node += 1;
        let result = session(
            &settings,
            &addr,
            &config,
            workload.as_deref(),
            (&mut learn_rx, &mut tap_rx),
            &mut subscriptions,
            &mut shutdown,
        )
        .await;
        // A tap belongs to the stream that opened it.
        config.taps.stop_all();
        match result {
            Ok(()) => return, // shutdown
            Err(Ended::AfterConfig(e)) => {
                tracing::warn!(control_plane = %addr, error = %e, "discovery stream ended; serving the last good config and reconnecting");
                backoff = Duration::from_millis(100);
            }
            Err(Ended::Early(e)) => {
                tracing::warn!(control_plane = %addr, error = %e, retry_in = ?backoff, "cannot get config from this node; trying the next");
            }
        }
        // Full jitter: a fleet reconnecting after an outage spreads out.
        let wait = backoff.mul_f64(rand::rng().random_range(0.5..1.0));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = crate::stopped(&mut shutdown) => return,
            _ = life.wait_for(|l| l.leaving) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

enum Ended {
    /// Failed before any delta arrived.
    Early(String),
    /// Failed after deltas were applied.
    AfterConfig(String),
}

async fn session(
    settings: &XdsSettings,
    addr: &str,
    config: &Arc<Config>,
    workload: Option<&Workload>,
    (learn_rx, tap_rx): (
        &mut mpsc::Receiver<crate::state::Interest>,
        &mut mpsc::Receiver<pb::TapRecord>,
    ),
    subscriptions: &mut Subscriptions,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), Ended> {
    let channel = raftmesh_client::endpoint(addr, settings.tls.as_ref())
        .map_err(|e| Ended::Early(format!("{e} (TLS to meshd: --ca-file)")))?
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await
        .map_err(|e| Ended::Early(format!("connect: {e}")))?;
    let mut client = DiscoveryClient::new(channel).max_decoding_message_size(64 * 1024 * 1024);
    let current = config.current();
    let mut hello = settings.hello.clone();
    if hello.address.is_empty() {
        // Not known at start (meshd's names did not resolve then): the
        // address this host reaches this node from.
        let a = addr.to_string();
        let ip = tokio::task::spawn_blocking(move || crate::config::advertise_toward(&[a]))
            .await
            .map_err(|e| Ended::Early(e.to_string()))?
            .map_err(Ended::Early)?;
        hello.address = ip.to_string();
    }
    hello.last_revision = match current.source {
        Source::ControlPlane | Source::StateDir => current.revision,
        _ => 0,
    };
    hello.subscriptions = subscriptions.all().iter().cloned().collect();
    // Subscribed before the Hello is built: a change while connecting is
    // seen after (marked changed once the stream is open).
    let mut life = config.life.subscribe();
    hello.ready = current.source != Source::Empty && life.borrow_and_update().reported_ready();
    // Who the proxy is: its certificate and proof of holding the key once
    // it has one, the bootstrap token before that.
    let mut csr_requested = false;
    if let Some(w) = workload {
        if w.needs_renewal() {
            hello.csr_pem = w.csr().map_err(Ended::Early)?;
            csr_requested = true;
        }
        if w.has_usable_certificate() {
            // The proof signs a nonce of this node's, good once.
            let nonce = client
                .challenge(pb::ChallengeRequest {})
                .await
                .map_err(|s| Ended::Early(format!("challenge: {}: {}", s.code(), s.message())))?
                .into_inner()
                .nonce;
            if let Some((cert, proof)) = w.proof(&hello.instance, &nonce, &hello.csr_pem) {
                hello.certificate_pem = cert;
                hello.proof = proof;
                hello.proof_nonce = nonce;
                hello.token.clear();
            }
        }
    }
    let was_ready = hello.ready;
    let (tx, rx) = mpsc::channel(16);
    let send = |m: In| {
        let tx = tx.clone();
        async move { tx.send(pb::ProxyMessage { msg: Some(m) }).await.is_ok() }
    };
    send(In::Hello(hello)).await;
    let mut inbound = client
        .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map_err(|s| Ended::Early(format!("{}: {}", s.code(), s.message())))?
        .into_inner();
    let mut got_config = false;
    let mut reported_ready = was_ready;
    life.mark_changed();
    let mut heartbeat = tokio::time::interval(Duration::from_secs(10));
    let mut sweep = tokio::time::interval(settings.subscription_idle / 2);
    sweep.tick().await;
    let mut report = tokio::time::interval(settings.stats_interval);
    report.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    report.tick().await;
    // What was served before this stream went to no node.
    config.metrics.edges.report();
    let mut full_warned = false;
    loop {
        tokio::select! {
            m = inbound.message() => {
                let m = match m {
                    Ok(Some(m)) => m,
                    Ok(None) => return Err(end(got_config, "the control plane closed the stream".into())),
                    Err(s) => return Err(end(got_config, format!("{}: {}", s.code(), s.message()))),
                };
                if let (Some(Out::Certificate(c)), Some(w)) = (&m.msg, workload) {
                    let fresh = !c.certificate_pem.is_empty();
                    let cert = fresh.then(|| c.certificate_pem.clone());
                    match w.install(cert, c.trust_bundle_pem.clone(), c.expires_at_ms, unix_ms()) {
                        Ok(()) if fresh => {
                            tracing::info!(expires_at_ms = c.expires_at_ms, "installed a workload certificate");
                            csr_requested = false;
                        }
                        Ok(()) => {
                            // A new trust bundle (the CA is rotating): get a
                            // certificate from the new signing root soon.
                            tracing::info!(roots = c.trust_bundle_pem.len(), "installed a new trust bundle");
                            if !csr_requested {
                                if let Ok(csr) = w.csr() {
                                    csr_requested = true;
                                    send(In::CertificateRequest(pb::CertificateRequest { csr_pem: csr })).await;
                                }
                            }
                        }
                        Err(e) => tracing::error!(error = %e, "cannot use the certificate meshd sent"),
                    }
                    continue;
                }
                if let Some(Out::Tap(t)) = &m.msg {
                    config.taps.start(t);
                    continue;
                }
                if let Some(Out::Error(e)) = &m.msg {
                    // About one message; the stream goes on.
                    tracing::warn!(code = %e.code, error = %e.message, "meshd refused a request of this proxy");
                    if let Some(name) = e.message.split('"').nth(1) {
                        subscriptions.refused(name);
                    }
                    continue;
                }
                if let Some(Out::Delta(d)) = m.msg {
                    let current = config.current();
                    match apply_delta(&current.resources, &d, current.revision) {
                        Ok(next) => {
                            let saved = settings.state_dir.as_ref().map(|_| Saved {
                                revision: d.revision,
                                subscriptions: subscriptions.all().clone(),
                                resources: next.values().cloned().collect(),
                            });
                            // Compiling may resolve endpoint host names:
                            // never on the runtime's threads.
                            let (c, rev) = (config.clone(), d.revision);
                            let compiled = tokio::task::spawn_blocking(move || {
                                compile(rev, Source::ControlPlane, next, &c.identity, &c.stats)
                            })
                            .await
                            .map_err(|e| end(got_config, format!("compiling the config failed: {e}")))?;
                            let peers = compiled.peer_trust();
                            config.install(compiled);
                            if let Some(w) = workload {
                                if let Err(e) = w.set_peers(peers) {
                                    tracing::warn!(error = %e, "cannot trust the peers' workload roots");
                                }
                            }
                            if let (Some(dir), Some(s)) = (&settings.state_dir, saved) {
                                if let Err(e) = persist::save(dir, &s) {
                                    tracing::warn!(dir = %dir.display(), error = %e, "cannot save the config to the state directory");
                                }
                            }
                            tracing::debug!(revision = d.revision, full = d.full, "applied a delta");
                            send(In::Ack(pb::Ack { nonce: d.nonce })).await;
                            got_config = true;
                            if !reported_ready && config.life.borrow().reported_ready() {
                                reported_ready = true;
                                send(In::Health(pb::HealthReport { ready: true })).await;
                            }
                        }
                        Err(e) => {
                            tracing::error!(revision = d.revision, error = %e, "refusing a configuration; keeping the last good one");
                            config.metrics.nack();
                            send(In::Nack(pb::Nack { nonce: d.nonce, error: e })).await;
                        }
                    }
                }
            }
            Some(interest) = learn_rx.recv() => {
                match interest {
                    // Not arrived in time: likely no such service. Dropped
                    // unless it has arrived since (or is fixed).
                    Interest::Missed(id) => {
                        let asked = crate::subscriptions::local_id(&id);
                        if config.current().service(&id).is_none() && subscriptions.forget_learned(&asked) {
                            let services = vec![crate::subscriptions::name_of(&asked)];
                            send(In::Unsubscribe(pb::Subscribe { services })).await;
                        }
                    }
                    Interest::Want(id) => match subscriptions.learn(&crate::subscriptions::local_id(&id)) {
                        Learned::New(name) => {
                            tracing::info!(service = %name, "subscribing to a service seen in traffic");
                            send(In::Subscribe(pb::Subscribe { services: vec![name] })).await;
                        }
                        Learned::Full if !full_warned => {
                            full_warned = true;
                            tracing::warn!(max = MAX_SUBSCRIPTIONS, "not subscribing to more services seen in traffic: the set is full until idle ones expire");
                        }
                        Learned::Full | Learned::Known => {}
                    },
                }
            }
            _ = sweep.tick() => {
                let peers: Vec<String> = config.current().peers.keys().cloned().collect();
                let expired = subscriptions.sweep(|id| {
                    let used = |id: &ServiceIdOf| {
                        config.stats.service(id).used.swap(false, std::sync::atomic::Ordering::Relaxed)
                    };
                    // A service is in use when it, or its import from a
                    // peer (`svc.peer`), was called.
                    peers.iter().fold(used(id), |any, p| {
                        used(&(id.0.clone(), format!("{}.{p}", id.1))) | any
                    })
                });
                full_warned = false;
                if !expired.is_empty() {
                    tracing::info!(services = ?expired, "unsubscribing from services no request used for {}", humantime::format_duration(settings.subscription_idle));
                    send(In::Unsubscribe(pb::Subscribe { services: expired })).await;
                }
            }
            Some(r) = tap_rx.recv() => {
                send(In::TapRecord(r)).await;
            }
            _ = report.tick() => {
                // Sent even when empty: the node learns how long the
                // proxy's quiet window was (its rates stay right).
                send(In::Stats(config.metrics.edges.report())).await;
            }
            _ = heartbeat.tick() => {
                send(In::Heartbeat(pb::Heartbeat { unix_ms: 0 })).await;
                // Rotation at half life, over this authenticated stream.
                if let Some(w) = workload {
                    if !csr_requested && w.needs_renewal() {
                        if let Ok(csr) = w.csr() {
                            csr_requested = true;
                            tracing::info!("the workload certificate is past half its life; asking for a new one");
                            send(In::CertificateRequest(pb::CertificateRequest { csr_pem: csr })).await;
                        }
                    }
                }
            }
            Ok(()) = life.changed() => {
                let l = *life.borrow_and_update();
                let ready = l.reported_ready() && config.current().source != Source::Empty;
                if ready != reported_ready {
                    reported_ready = ready;
                    tracing::info!(ready, draining = l.draining, "reporting readiness to meshd");
                    send(In::Health(pb::HealthReport { ready })).await;
                }
                if l.leaving {
                    send(In::Deregister(pb::Deregister {})).await;
                    // meshd ends the stream once the Endpoint is deleted.
                    let done = tokio::time::timeout(Duration::from_secs(3), async {
                        while let Ok(Some(_)) = inbound.message().await {}
                    })
                    .await;
                    if done.is_err() {
                        tracing::warn!("meshd did not confirm the deregistration; the endpoint's lease will expire");
                    } else {
                        tracing::info!("deregistered");
                    }
                    config.life.send_modify(|l| l.left = true);
                    return Ok(());
                }
            }
            _ = crate::stopped(shutdown) => return Ok(()),
        }
    }
}

fn end(got_config: bool, e: String) -> Ended {
    if got_config {
        Ended::AfterConfig(e)
    } else {
        Ended::Early(e)
    }
}
