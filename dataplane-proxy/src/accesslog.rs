//! Access logs (`MeshConfig.access_log`): one flat JSON object per line
//! for each request a proxy serves, outbound and inbound, written when
//! its answer has been sent (so durations and byte counts are whole), and
//! for each opaque TCP connection it relays, written when it closes. A
//! record holds the method, the path without its query, identities, the
//! route, the endpoint, the status and error code, durations and bytes,
//! and the trace id: never a header value or a body.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Instant, SystemTime};

use http::HeaderMap;
use raftmesh_api::v1 as pb;
use raftmesh_api::AccessLog;
use rand::Rng;
use serde::Serialize;

/// One record.
#[derive(Debug, Serialize)]
pub struct Entry {
    /// When the request arrived (RFC 3339, UTC, milliseconds).
    pub time: String,
    /// `outbound` or `inbound`.
    pub direction: &'static str,
    /// `http` (a request) or `tcp` (an opaque connection).
    pub protocol: &'static str,
    /// The W3C trace id (`traceparent`), or B3's (`x-b3-traceid`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// The caller's SPIFFE ID (inbound: from its certificate).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The callee's SPIFFE ID (inbound: this workload's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
    /// The service the request went to.
    pub service: String,
    /// The subset (`k=v,...`), when a rule chose one.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub subset: String,
    /// The endpoint of the last attempt (outbound).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// The method (HTTP).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub method: String,
    /// The path, without its query (HTTP).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub path: String,
    /// The HTTP status answered (HTTP).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// The `x-raftmesh-error` code, when the mesh answered an error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// From the request's arrival to the answer's head (HTTP).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub head_ms: Option<f64>,
    /// From the request's arrival (the connection's opening) to the
    /// answer's end (its closing).
    pub duration_ms: f64,
    /// Bytes of the request's body received (TCP: from the side that
    /// opened the connection).
    pub request_bytes: u64,
    /// Bytes of the answer's body sent (TCP: to the side that opened it).
    pub response_bytes: u64,
}

/// A record waiting for its answer's body to end.
#[derive(Debug)]
pub struct Pending {
    entry: Entry,
    started: Instant,
    bytes: u64,
    /// The request body's bytes, counted as it is read.
    request_bytes: Arc<std::sync::atomic::AtomicU64>,
    sink: Arc<Sink>,
    /// Written to the access log (else only to taps).
    logged: bool,
    file: Option<String>,
    tapped: Option<Tapped>,
}

/// A request some taps record (`tap.rs`).
#[derive(Debug)]
struct Tapped {
    taps: Arc<crate::tap::Taps>,
    ids: Vec<String>,
    unix_ms: u64,
    authority: String,
    header_names: Vec<String>,
}

impl Pending {
    /// Counts bytes of the answer's body.
    pub fn sent(&mut self, n: usize) {
        self.bytes += n as u64;
    }

    /// Writes the record (the answer has ended, or was dropped).
    pub fn finish(mut self) {
        self.entry.duration_ms = ms(self.started);
        self.entry.response_bytes = self.bytes;
        self.entry.request_bytes = self
            .request_bytes
            .load(std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.tapped.take() {
            let e = &self.entry;
            let record = pb::TapRecord {
                tap_id: String::new(),
                unix_ms: t.unix_ms,
                direction: e.direction.into(),
                source: e.source.clone().unwrap_or_default(),
                destination: e.destination.clone().unwrap_or_default(),
                service: e.service.clone(),
                subset: e.subset.clone(),
                endpoint: e.endpoint.clone().unwrap_or_default(),
                method: e.method.clone(),
                authority: t.authority,
                path: e.path.clone(),
                status: e.status.map(u32::from).unwrap_or(0),
                error: e.error.clone().unwrap_or_default(),
                duration_ms: e.duration_ms,
                request_bytes: e.request_bytes,
                response_bytes: e.response_bytes,
                trace_id: e.trace_id.clone().unwrap_or_default(),
                header_names: t.header_names,
                instance: String::new(),
            };
            for id in t.ids {
                t.taps.send(pb::TapRecord {
                    tap_id: id,
                    ..record.clone()
                });
            }
        }
        if !self.logged {
            return;
        }
        match serde_json::to_string(&self.entry) {
            Ok(line) => self.sink.write(self.file.as_deref(), &line),
            Err(e) => tracing::debug!(error = %e, "an access log record did not serialise"),
        }
    }
}

fn ms(since: Instant) -> f64 {
    (since.elapsed().as_secs_f64() * 1e6).round() / 1e3
}

/// Where records go: stdout, or the file `MeshConfig` names (opened on
/// first use, and again when the name changes).
#[derive(Default)]
pub struct Sink {
    /// The file name open (`None`: stdout) and its writer.
    out: Mutex<Option<Out>>,
}

type Out = (Option<String>, Box<dyn Write + Send>);

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sink")
    }
}

impl Sink {
    fn write(&self, file: Option<&str>, line: &str) {
        let mut out = self.out.lock().unwrap_or_else(PoisonError::into_inner);
        if out.as_ref().map(|(f, _)| f.as_deref()) != Some(file) {
            let w: Box<dyn Write + Send> = match file {
                None => Box::new(std::io::stdout()),
                Some(path) => match open_log(path) {
                    Ok(f) => Box::new(f),
                    Err(e) => {
                        tracing::warn!(%path, error = %e, "cannot open the access log file; writing to stdout");
                        Box::new(std::io::stdout())
                    }
                },
            };
            *out = Some((file.map(str::to_string), w));
        }
        if let Some((_, w)) = out.as_mut() {
            let mut buf = Vec::with_capacity(line.len() + 1);
            buf.extend_from_slice(line.as_bytes());
            buf.push(b'\n');
            if let Err(e) = w.write_all(&buf) {
                tracing::debug!(error = %e, "an access log record was not written");
            }
        }
    }
}

/// Opens `path` to append records: a regular file, never through a
/// symbolic link (a proxy may run as root), created owner and group
/// readable.
fn open_log(path: &str) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(path)?;
    if !f.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    Ok(f)
}

/// What starts a record: the settings in force (when this request is
/// sampled) and its fixed parts.
pub struct Start {
    /// The access log's settings, when it logs this request.
    settings: Option<AccessLog>,
    tapped: Option<Tapped>,
    started: Instant,
    time: SystemTime,
    trace_id: Option<String>,
    method: String,
    path: String,
    request_bytes: Arc<std::sync::atomic::AtomicU64>,
}

/// The host and port a request names (its URI's, else its `Host`
/// header's), never the user information an authority may carry.
fn authority(uri: &http::Uri, headers: &HeaderMap) -> String {
    let from_host = headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.parse::<http::uri::Authority>().ok());
    let Some(a) = uri.authority().cloned().or(from_host) else {
        return String::new();
    };
    let host: String = a.host().chars().take(253).collect();
    match a.port_u16() {
        Some(p) => format!("{host}:{p}"),
        None => host,
    }
}

/// Whether `settings` log this request or connection (sampled).
fn sampled(settings: &AccessLog) -> bool {
    let p = settings.sample_percent.unwrap_or(100);
    p >= 100 || (p > 0 && rand::rng().random_range(0..100) < p)
}

impl Start {
    /// A record for this request, if `settings` log it (sampled) or a tap
    /// records it.
    pub fn new(
        settings: Option<&AccessLog>,
        taps: &Arc<crate::tap::Taps>,
        method: &http::Method,
        uri: &http::Uri,
        headers: &HeaderMap,
        started: Instant,
    ) -> Option<Self> {
        let settings = settings.filter(|s| sampled(s)).cloned();
        let ids = taps.sample();
        let tapped = (!ids.is_empty()).then(|| Tapped {
            taps: taps.clone(),
            ids,
            unix_ms: crate::unix_ms(),
            authority: authority(uri, headers),
            // Names only: a value may be a credential.
            header_names: headers
                .keys()
                .take(64)
                .map(|k| k.as_str().to_string())
                .collect(),
        });
        if settings.is_none() && tapped.is_none() {
            return None;
        }
        Some(Start {
            settings,
            tapped,
            started,
            time: SystemTime::now(),
            trace_id: trace_id(headers),
            method: method.to_string(),
            path: uri.path().to_string(),
            request_bytes: Arc::default(),
        })
    }

    /// Counts the bytes of the request's body as it is read.
    pub fn counting(&self, body: crate::Body) -> crate::Body {
        use http_body_util::BodyExt;
        let n = self.request_bytes.clone();
        body.map_frame(move |f| {
            if let Some(d) = f.data_ref() {
                n.fetch_add(d.len() as u64, std::sync::atomic::Ordering::Relaxed);
            }
            f
        })
        .boxed()
    }

    /// The record, waiting for the answer's body to end.
    #[allow(clippy::too_many_arguments)]
    pub fn pending<B>(
        self,
        sink: &Arc<Sink>,
        direction: &'static str,
        source: Option<String>,
        destination: Option<String>,
        service: String,
        subset: String,
        endpoint: Option<SocketAddr>,
        resp: &http::Response<B>,
    ) -> Box<Pending> {
        Box::new(Pending {
            entry: Entry {
                time: humantime::format_rfc3339_millis(self.time).to_string(),
                direction,
                protocol: "http",
                trace_id: self.trace_id,
                source,
                destination,
                service,
                subset,
                endpoint: endpoint.map(|a| a.to_string()),
                method: self.method,
                path: self.path,
                status: Some(resp.status().as_u16()),
                error: resp
                    .headers()
                    .get(crate::error::ERROR_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string),
                head_ms: Some(ms(self.started)),
                duration_ms: 0.0,
                request_bytes: 0,
                response_bytes: 0,
            },
            started: self.started,
            bytes: 0,
            request_bytes: self.request_bytes,
            sink: sink.clone(),
            logged: self.settings.is_some(),
            file: self.settings.and_then(|s| s.file),
            tapped: self.tapped,
        })
    }
}

/// The record of an opaque TCP connection, begun when it opens (if the
/// settings in force sample it).
pub struct TcpStart {
    file: Option<String>,
    started: Instant,
    time: SystemTime,
}

/// Who an opaque TCP connection joined.
pub struct TcpEnds {
    /// `outbound` or `inbound`.
    pub direction: &'static str,
    /// The opener's SPIFFE ID, when known.
    pub source: Option<String>,
    /// The other side's SPIFFE ID, when known.
    pub destination: Option<String>,
    /// The service reached (empty: outside the mesh).
    pub service: String,
    /// The address relayed to.
    pub endpoint: Option<SocketAddr>,
}

impl TcpStart {
    /// A record for a connection opening now, if `settings` log it.
    pub fn new(settings: Option<&AccessLog>) -> Option<Self> {
        let settings = settings.filter(|s| sampled(s))?;
        Some(Self {
            file: settings.file.clone(),
            started: Instant::now(),
            time: SystemTime::now(),
        })
    }

    /// Writes the record of the closed connection: its ends, the bytes
    /// each way (from the opener, to the opener), and why the proxy ended
    /// it, if it did.
    pub fn finish(self, sink: &Sink, ends: TcpEnds, (up, down): (u64, u64), error: Option<&str>) {
        let entry = Entry {
            time: humantime::format_rfc3339_millis(self.time).to_string(),
            direction: ends.direction,
            protocol: "tcp",
            trace_id: None,
            source: ends.source,
            destination: ends.destination,
            service: ends.service,
            subset: String::new(),
            endpoint: ends.endpoint.map(|a| a.to_string()),
            method: String::new(),
            path: String::new(),
            status: None,
            error: error.map(str::to_string),
            head_ms: None,
            duration_ms: ms(self.started),
            request_bytes: up,
            response_bytes: down,
        };
        match serde_json::to_string(&entry) {
            Ok(line) => sink.write(self.file.as_deref(), &line),
            Err(e) => tracing::debug!(error = %e, "an access log record did not serialise"),
        }
    }
}

/// The trace id a request carries: W3C `traceparent`
/// (`00-<32 hex>-<16 hex>-<2 hex>`), else B3 `x-b3-traceid` (16 or 32 hex);
/// anything else is ignored.
pub fn trace_id(h: &HeaderMap) -> Option<String> {
    let hex = |s: &str, n: usize| {
        s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit()) && s.bytes().any(|b| b != b'0')
    };
    if let Some(tp) = h.get("traceparent").and_then(|v| v.to_str().ok()) {
        let parts: Vec<&str> = tp.trim().split('-').collect();
        if parts.len() >= 4 && hex(parts[1], 32) && hex(parts[2], 16) {
            return Some(parts[1].to_ascii_lowercase());
        }
    }
    let b3 = h.get("x-b3-traceid").and_then(|v| v.to_str().ok())?.trim();
    (hex(b3, 16) || hex(b3, 32)).then(|| b3.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tapped_authority_never_holds_user_information() {
        let h = HeaderMap::new();
        let uri: http::Uri = "http://svc:s3cret@web:8080/x".parse().unwrap();
        assert_eq!(authority(&uri, &h), "web:8080");
        let mut h = HeaderMap::new();
        h.insert(http::header::HOST, "user:pw@api".parse().unwrap());
        assert_eq!(authority(&"/x".parse().unwrap(), &h), "api");
        h.insert(http::header::HOST, "not a host".parse().unwrap());
        assert_eq!(authority(&"/x".parse().unwrap(), &h), "");
    }

    #[test]
    fn trace_ids_come_from_traceparent_or_b3_and_nothing_else() {
        let mut h = HeaderMap::new();
        assert_eq!(trace_id(&h), None);
        h.insert(
            "x-b3-traceid",
            "80f198ee56343ba864fe8b2a57d3eff7".parse().unwrap(),
        );
        assert_eq!(
            trace_id(&h).as_deref(),
            Some("80f198ee56343ba864fe8b2a57d3eff7")
        );
        h.insert(
            "traceparent",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"
                .parse()
                .unwrap(),
        );
        assert_eq!(
            trace_id(&h).as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        // Not a trace id: not logged (never a header value as such).
        for bad in [
            "00-secret-token-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        ] {
            let mut h = HeaderMap::new();
            h.insert("traceparent", bad.parse().unwrap());
            assert_eq!(trace_id(&h), None, "{bad}");
        }
    }
}
