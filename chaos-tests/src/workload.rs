//! Workloads against a real cluster, recorded as histories: a
//! compare-and-set register per key, and a set of unique adds.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::BufWriter;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use raftmesh_api::v1 as pb;
use raftmesh_api::{Resource, Spec};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tonic::Code;

use crate::client::{admin, Admin};
use crate::history::{EventType, Function, HistoryWriter};

/// Per-call time limit: past it the outcome is unknown (`info`).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// The history being recorded, shared by the workers.
pub type Recorder = Arc<Mutex<HistoryWriter<BufWriter<File>>>>;

fn log_event(r: &Recorder, process: u64, kind: EventType, f: Function, key: &str, value: Value) {
    let mut w = r.lock().unwrap_or_else(PoisonError::into_inner);
    let res = if kind == EventType::Invoke {
        w.invoke(process, f, key, value)
    } else {
        w.complete(process, kind, f, key, value)
    };
    if let Err(e) = res {
        eprintln!("chaos: cannot record the history: {e}");
    }
}

/// The resource holding register `key` with `value` (a Service whose port is the value).
fn register(key: &str, value: u64) -> Resource {
    let y =
        format!("kind: Service\nmetadata: {{name: {key}}}\nspec: {{ports: [{{port: {value}}}]}}");
    // The document is valid for any value 1-65535.
    #[allow(clippy::expect_used)]
    serde_yaml_ng::from_str(&y).expect("register document")
}

fn value_of(r: &pb::Resource) -> Option<(u64, u64)> {
    let r = Resource::try_from(r.clone()).ok()?;
    let rev = r.metadata.revision.unwrap_or(0);
    match r.spec {
        Spec::Service(s) => s.ports.first().map(|p| (u64::from(p.port), rev)),
        _ => None,
    }
}

/// How a failed call is recorded.
fn classify(status: &tonic::Status) -> EventType {
    match status.code() {
        // Refused before anything was proposed.
        Code::InvalidArgument | Code::Unauthenticated | Code::PermissionDenied | Code::NotFound => {
            EventType::Fail
        }
        Code::Unavailable if status.message().starts_with("no leader is available") => {
            EventType::Fail
        }
        Code::Unavailable if status.message().contains("tcp connect error") => EventType::Fail,
        // Anything else may or may not have taken effect.
        _ => EventType::Info,
    }
}

async fn timed<T>(
    f: impl std::future::Future<Output = Result<T, tonic::Status>>,
) -> Result<T, tonic::Status> {
    tokio::time::timeout(CALL_TIMEOUT, f)
        .await
        .unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded("call timed out")))
}

/// Reads register `key`: `Ok(Some((value, revision)))`, `Ok(None)` when unset.
async fn read(c: &mut Admin, key: &str) -> Result<Option<(u64, u64)>, tonic::Status> {
    let r = timed(c.get(pb::GetRequest {
        kind: "Service".into(),
        namespace: String::new(),
        name: key.into(),
        stale: false,
    }))
    .await;
    match r {
        Ok(r) => Ok(r.into_inner().resource.as_ref().and_then(value_of)),
        Err(s) if s.code() == Code::NotFound => Ok(None),
        Err(s) => Err(s),
    }
}

async fn put(
    c: &mut Admin,
    r: Resource,
    expected: Option<u64>,
) -> Result<pb::WriteOutcome, tonic::Status> {
    let resp = timed(c.apply(pb::ApplyRequest {
        items: vec![pb::ApplyItem {
            resource: Some(r.into()),
            expected_revision: expected,
        }],
    }))
    .await?
    .into_inner();
    Ok(resp
        .results
        .first()
        .and_then(|w| pb::WriteOutcome::try_from(w.outcome).ok())
        .unwrap_or(pb::WriteOutcome::Unspecified))
}

/// Settings of the register workload.
#[derive(Debug, Clone)]
pub struct RegisterLoad {
    /// Concurrent clients.
    pub workers: usize,
    /// Registers.
    pub keys: usize,
    /// Values written are 1..=values.
    pub values: u64,
}

/// One client: picks a node, a key and an operation, records it. A client
/// whose call ended `info` takes a new process id (Jepsen's rule).
pub async fn register_worker(
    worker: usize,
    addrs: Vec<String>,
    token: String,
    load: RegisterLoad,
    rec: Recorder,
    seed: u64,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut rng = StdRng::seed_from_u64(seed ^ (worker as u64 * 0x9E37_79B9));
    let mut clients: Vec<Admin> = addrs.iter().filter_map(|a| admin(a, &token).ok()).collect();
    let mut process = worker as u64;
    while !*stop.borrow() {
        let node = rng.random_range(0..clients.len());
        let c = &mut clients[node];
        let key = format!("reg-{}", rng.random_range(0..load.keys));
        match rng.random_range(0..3) {
            0 => {
                log_event(
                    &rec,
                    process,
                    EventType::Invoke,
                    Function::Read,
                    &key,
                    Value::Null,
                );
                match read(c, &key).await {
                    Ok(v) => log_event(
                        &rec,
                        process,
                        EventType::Ok,
                        Function::Read,
                        &key,
                        v.map(|x| json!(x.0)).unwrap_or(Value::Null),
                    ),
                    Err(_) => log_event(
                        &rec,
                        process,
                        EventType::Fail,
                        Function::Read,
                        &key,
                        Value::Null,
                    ),
                }
            }
            1 => {
                let v = rng.random_range(1..=load.values);
                log_event(
                    &rec,
                    process,
                    EventType::Invoke,
                    Function::Write,
                    &key,
                    json!(v),
                );
                match put(c, register(&key, v), None).await {
                    Ok(pb::WriteOutcome::Ok) => log_event(
                        &rec,
                        process,
                        EventType::Ok,
                        Function::Write,
                        &key,
                        json!(v),
                    ),
                    Ok(_) => log_event(
                        &rec,
                        process,
                        EventType::Fail,
                        Function::Write,
                        &key,
                        json!(v),
                    ),
                    Err(s) => {
                        let k = classify(&s);
                        log_event(
                            &rec,
                            process,
                            k,
                            Function::Write,
                            &key,
                            if k == EventType::Info {
                                Value::Null
                            } else {
                                json!(v)
                            },
                        );
                        if k == EventType::Info {
                            process += 1000; // workers < 1000
                        }
                    }
                }
            }
            _ => {
                let (e, n) = (
                    rng.random_range(1..=load.values),
                    rng.random_range(1..=load.values),
                );
                let arg = json!([e, n]);
                log_event(
                    &rec,
                    process,
                    EventType::Invoke,
                    Function::Cas,
                    &key,
                    arg.clone(),
                );
                // A failed cas is an observation ("the register did not hold
                // `e` at some moment of the call"), so `fail` only when that
                // was seen: the read showed another value, or the write lost
                // its compare-and-set (the value changed after the read). An
                // error that observed nothing is recorded as `info`, which
                // claims nothing.
                let k = match read(c, &key).await {
                    Err(_) => EventType::Info,
                    Ok(cur) if cur.map(|x| x.0) != Some(e) => EventType::Fail,
                    Ok(cur) => {
                        let rev = cur.map(|x| x.1).unwrap_or(0);
                        match put(c, register(&key, n), Some(rev)).await {
                            Ok(pb::WriteOutcome::Ok) => EventType::Ok,
                            Ok(pb::WriteOutcome::Conflict) => EventType::Fail,
                            Ok(_) | Err(_) => EventType::Info,
                        }
                    }
                };
                log_event(
                    &rec,
                    process,
                    k,
                    Function::Cas,
                    &key,
                    if k == EventType::Info {
                        Value::Null
                    } else {
                        arg
                    },
                );
                if k == EventType::Info {
                    process += 1000; // workers < 1000
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..20))).await;
    }
}

/// What a set workload saw.
#[derive(Debug, Default, Clone)]
pub struct SetOutcome {
    /// Adds acknowledged.
    pub acked: BTreeSet<u64>,
    /// Adds with unknown outcome.
    pub unknown: BTreeSet<u64>,
    /// Adds attempted.
    pub attempted: BTreeSet<u64>,
}

/// Adds unique elements (`set-<n>` Services, create-only) until stopped.
pub async fn set_worker(
    worker: usize,
    addrs: Vec<String>,
    token: String,
    out: Arc<Mutex<SetOutcome>>,
    seed: u64,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5e7 ^ worker as u64);
    let mut clients: Vec<Admin> = addrs.iter().filter_map(|a| admin(a, &token).ok()).collect();
    let mut n = worker as u64 * 1_000_000;
    while !*stop.borrow() {
        n += 1;
        let node = rng.random_range(0..clients.len());
        {
            out.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .attempted
                .insert(n);
        }
        let r = put(
            &mut clients[node],
            register(&format!("set-{n}"), 1),
            Some(0),
        )
        .await;
        {
            let mut o = out.lock().unwrap_or_else(PoisonError::into_inner);
            match r {
                Ok(pb::WriteOutcome::Ok) => {
                    o.acked.insert(n);
                }
                Ok(_) => {}
                Err(s) if classify(&s) == EventType::Fail => {}
                Err(_) => {
                    o.unknown.insert(n);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(5..40))).await;
    }
}

/// The elements present, from a linearizable read of every `set-*`.
pub async fn read_set(addrs: &[String], token: &str) -> Result<BTreeSet<u64>, String> {
    let mut last = String::new();
    for _ in 0..50 {
        for a in addrs {
            let mut c = admin(a, token).map_err(|e| e.to_string())?;
            match timed(c.list(pb::ListRequest {
                kind: "Service".into(),
                namespace: String::new(),
                stale: false,
            }))
            .await
            {
                Ok(r) => {
                    return Ok(r
                        .into_inner()
                        .resources
                        .iter()
                        .filter_map(|r| r.metadata.as_ref())
                        .filter_map(|m| m.name.strip_prefix("set-").and_then(|n| n.parse().ok()))
                        .collect())
                }
                Err(e) => last = e.message().to_string(),
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(format!("cannot read the set after healing: {last}"))
}
