//! The demo's traffic: callers sending requests through their proxy, and
//! what they saw.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::task::JoinHandle;

/// One outcome.
#[derive(Debug, Clone)]
struct Sample {
    at: Instant,
    latency: Duration,
    ok: bool,
    denied: bool,
    version: String,
}

/// What one caller saw calling one service.
#[derive(Debug, Default)]
pub struct Flow {
    samples: Vec<Sample>,
    /// Every request since the start.
    pub total: u64,
    /// Every failed request (not 2xx, denials excluded).
    pub failed: u64,
    /// Every 403 (denied by policy).
    pub denied: u64,
    /// Failures by `x-raftmesh-error` code (or the client's error).
    pub causes: BTreeMap<String, u64>,
}

/// A summary of the last few seconds of a flow.
#[derive(Debug, Clone, Default)]
pub struct Window {
    /// Requests per second.
    pub rps: f64,
    /// Share of 2xx (denials count as failures here).
    pub success: f64,
    /// Median latency.
    pub p50: Duration,
    /// 99th percentile latency.
    pub p99: Duration,
    /// Share per app version.
    pub split: BTreeMap<String, f64>,
    /// Denied share.
    pub denied: f64,
}

/// Flows by (caller, service).
pub type Flows = Arc<Mutex<BTreeMap<(String, String), Flow>>>;

fn lock(f: &Flows) -> std::sync::MutexGuard<'_, BTreeMap<(String, String), Flow>> {
    f.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The last `secs` seconds of every flow.
pub fn windows(flows: &Flows, secs: u64) -> Vec<((String, String), Window)> {
    let now = Instant::now();
    let span = Duration::from_secs(secs);
    let mut out = Vec::new();
    let mut f = lock(flows);
    for (k, flow) in f.iter_mut() {
        flow.samples
            .retain(|s| now.duration_since(s.at) <= Duration::from_secs(30));
        let recent: Vec<&Sample> = flow
            .samples
            .iter()
            .filter(|s| now.duration_since(s.at) <= span)
            .collect();
        let n = recent.len().max(1) as f64;
        let mut lat: Vec<Duration> = recent.iter().map(|s| s.latency).collect();
        lat.sort();
        let pct = |p: f64| {
            lat.get(((lat.len().saturating_sub(1)) as f64 * p).round() as usize)
                .copied()
                .unwrap_or_default()
        };
        let mut split = BTreeMap::new();
        for s in recent.iter().filter(|s| s.ok) {
            *split.entry(s.version.clone()).or_insert(0.0) += 1.0;
        }
        let oks = recent.iter().filter(|s| s.ok).count().max(1) as f64;
        split.values_mut().for_each(|v| *v /= oks);
        out.push((
            k.clone(),
            Window {
                rps: recent.len() as f64 / secs as f64,
                success: recent.iter().filter(|s| s.ok).count() as f64 / n,
                p50: pct(0.5),
                p99: pct(0.99),
                split,
                denied: recent.iter().filter(|s| s.denied).count() as f64 / n,
            },
        ));
    }
    out
}

/// Totals over every flow: (requests, failed, denied).
pub fn totals(flows: &Flows) -> (u64, u64, u64) {
    lock(flows).values().fold((0, 0, 0), |a, f| {
        (a.0 + f.total, a.1 + f.failed, a.2 + f.denied)
    })
}

/// Failure causes over every flow.
pub fn causes(flows: &Flows) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for f in lock(flows).values() {
        for (k, v) in &f.causes {
            *out.entry(k.clone()).or_default() += v;
        }
    }
    out
}

/// Failed requests since `since` (for the story's "no failed request").
pub fn failed_since(flows: &Flows, since: Instant) -> u64 {
    lock(flows)
        .values()
        .flat_map(|f| f.samples.iter())
        .filter(|s| s.at >= since && !s.ok && !s.denied)
        .count() as u64
}

/// What `caller` saw calling `service` since `since`: (requests, denied,
/// other failures).
pub fn outcomes_since(
    flows: &Flows,
    caller: &str,
    service: &str,
    since: Instant,
) -> (u64, u64, u64) {
    let flows = lock(flows);
    let Some(f) = flows.get(&(caller.to_string(), service.to_string())) else {
        return (0, 0, 0);
    };
    f.samples
        .iter()
        .filter(|s| s.at >= since)
        .fold((0, 0, 0), |(n, d, x), s| {
            (
                n + 1,
                d + u64::from(s.denied),
                x + u64::from(!s.ok && !s.denied),
            )
        })
}

/// Starts a caller sending `rps` requests per second for `service`
/// through the proxy at `outbound`.
pub fn start(
    flows: Flows,
    caller: &str,
    service: &str,
    outbound: SocketAddr,
    rps: u32,
) -> JoinHandle<()> {
    let key = (caller.to_string(), service.to_string());
    lock(&flows).entry(key.clone()).or_default();
    let service = service.to_string();
    tokio::spawn(async move {
        let client: Client<HttpConnector, Empty<Bytes>> =
            Client::builder(TokioExecutor::new()).build_http();
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rps.max(1))));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let (client, flows, key, service) =
                (client.clone(), flows.clone(), key.clone(), service.clone());
            tokio::spawn(async move {
                let started = Instant::now();
                let req = hyper::Request::get(format!("http://{outbound}/"))
                    .header("host", service.as_str())
                    .body(Empty::new());
                let Ok(req) = req else { return };
                let res = tokio::time::timeout(Duration::from_secs(5), client.request(req)).await;
                let cause;
                let (ok, denied, version) = match res {
                    Ok(Ok(r)) => {
                        let status = r.status();
                        cause = r
                            .headers()
                            .get("x-raftmesh-error")
                            .and_then(|v| v.to_str().ok())
                            .map(String::from)
                            .unwrap_or_else(|| format!("status {}", status.as_u16()));
                        let body = r
                            .into_body()
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        let text = String::from_utf8_lossy(&body).to_string();
                        let version = text.split_whitespace().nth(1).unwrap_or("").to_string();
                        (status.is_success(), status.as_u16() == 403, version)
                    }
                    Ok(Err(e)) => {
                        cause = format!("client: {e}");
                        (false, false, String::new())
                    }
                    Err(_) => {
                        cause = "client timeout".into();
                        (false, false, String::new())
                    }
                };
                record(
                    &flows,
                    key,
                    Sample {
                        at: started,
                        latency: started.elapsed(),
                        ok,
                        denied,
                        version,
                    },
                    cause,
                );
            });
        }
    })
}

/// Adds one outcome to a flow.
fn record(flows: &Flows, key: (String, String), sample: Sample, cause: String) {
    let mut f = lock(flows);
    let flow = f.entry(key).or_default();
    flow.total += 1;
    if sample.denied {
        flow.denied += 1;
    } else if !sample.ok {
        flow.failed += 1;
        *flow.causes.entry(cause).or_default() += 1;
    }
    flow.samples.push(sample);
}

/// A caller that is a plain `curl` loop in network namespace `netns`
/// (`meshd demo --transparent`): `curl http://SERVICE/`, no proxy address
/// anywhere, run as `nobody` (capture sends it to the host's proxy). Each
/// answer is read back from curl's output; the loop ends with the demo.
pub struct CurlLoop {
    child: tokio::process::Child,
}

impl CurlLoop {
    /// Starts the loop for `caller` → `service`, about `rps` per second.
    pub fn start(
        flows: Flows,
        netns: &str,
        caller: &str,
        service: &str,
        rps: u32,
    ) -> anyhow::Result<Self> {
        let key = (caller.to_string(), service.to_string());
        lock(&flows).entry(key.clone()).or_default();
        let script = format!(
            "while [ -d /proc/{pid} ]; do curl -s --max-time 5 -w ' %{{http_code}} %{{time_total}}\\n' \"http://$1/\"; sleep {pause:.3}; done",
            pid = std::process::id(),
            pause = 1.0 / f64::from(rps.max(1)),
        );
        let mut child = tokio::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                netns,
                "setpriv",
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "sh",
                "-c",
                &script,
                "sh",
                service,
            ])
            .process_group(0)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start curl in {netns}: {e}"))?;
        let out = child
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("no curl output"))?;
        tokio::spawn(async move {
            use tokio::io::AsyncBufReadExt;
            let mut lines = tokio::io::BufReader::new(out).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let Some((sample, cause)) = parse_curl_line(&line) else {
                    continue;
                };
                record(&flows, key.clone(), sample, cause);
            }
        });
        Ok(Self { child })
    }
}

impl Drop for CurlLoop {
    fn drop(&mut self) {
        // The whole group: the shell and a curl in flight. (By system call:
        // procps' `kill -9 -PGID` misreads the group, once as `kill(-1)`,
        // which is every process.)
        if let Some(pid) = self.child.id().and_then(|p| i32::try_from(p).ok()) {
            if pid > 1 {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

/// One `BODY CODE SECONDS` line of a curl loop.
fn parse_curl_line(line: &str) -> Option<(Sample, String)> {
    let mut words: Vec<&str> = line.split_whitespace().collect();
    let secs: f64 = words.pop()?.parse().ok()?;
    let code: u16 = words.pop()?.parse().ok()?;
    let latency = Duration::from_secs_f64(secs.clamp(0.0, 60.0));
    let ok = (200..300).contains(&code);
    let cause = if code == 0 {
        "curl: no answer".to_string()
    } else {
        format!("status {code}")
    };
    Some((
        Sample {
            at: Instant::now()
                .checked_sub(latency)
                .unwrap_or_else(Instant::now),
            latency,
            ok,
            denied: code == 403,
            version: if ok {
                words.get(1).copied().unwrap_or("").to_string()
            } else {
                String::new()
            },
        },
        cause,
    ))
}

#[cfg(test)]
mod tests {
    use super::parse_curl_line;

    #[test]
    fn curl_lines_are_read_back_as_outcomes() {
        let (s, _) = parse_curl_line("web v2 200 0.004512").unwrap();
        assert!(s.ok && !s.denied);
        assert_eq!(s.version, "v2");
        let (s, cause) = parse_curl_line("denied 403 0.002").unwrap();
        assert!(!s.ok && s.denied);
        assert_eq!(cause, "status 403");
        let (s, cause) = parse_curl_line(" 000 5.001").unwrap();
        assert!(!s.ok && !s.denied);
        assert_eq!(cause, "curl: no answer");
        assert!(parse_curl_line("garbage").is_none());
    }
}
