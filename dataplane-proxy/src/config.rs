//! mesh-proxy's configuration: the only module that reads flags,
//! environment and files.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

/// mesh-proxy's commands besides running the proxy.
#[derive(Debug, clap::Subcommand)]
pub enum Cmd {
    /// Transparent capture: the iptables rules that send this host's (or
    /// network namespace's) TCP to the proxy. Run as root, before the proxy
    /// starts; both are idempotent.
    #[command(subcommand)]
    Capture(CaptureCmd),
    /// Run the proxy and the app as its child (`mesh-proxy run --service web
    /// --app-port 8080 ... -- APP ARGS`): the app starts once the proxy has
    /// its configuration and certificate; SIGTERM drains the proxy first,
    /// then reaches the app; the proxy exits with the app's status. The
    /// entry point of a container or a systemd unit.
    Run(Box<RunArgs>),
}

/// `mesh-proxy run [FLAGS] -- APP [ARGS...]`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The proxy's flags, as without `run`.
    #[command(flatten)]
    pub proxy: ProxyArgs,
    /// The app and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "APP")]
    pub app: Vec<String>,
}

/// `mesh-proxy capture ...`
#[derive(Debug, clap::Subcommand)]
pub enum CaptureCmd {
    /// Install the rules (replacing earlier ones of ours).
    Install(crate::capture::CaptureSpec),
    /// Remove them, leaving the tables as they were before.
    Remove,
}

/// Sidecar or east-west gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Next to one workload.
    Sidecar,
    /// Between clusters: peers reach exported services through it, routed
    /// by TLS SNI (no --app-port; see docs/federation.md).
    Gateway,
}

/// mesh-proxy's command line.
#[derive(Debug, Parser)]
#[command(
    name = "mesh-proxy",
    version,
    args_conflicts_with_subcommands = true,
    about = "The Raftmesh sidecar proxy",
    max_term_width = 100
)]
pub struct Args {
    /// A command instead of running the proxy.
    #[command(subcommand)]
    pub command: Option<Cmd>,
    /// The proxy's flags.
    #[command(flatten)]
    pub proxy: ProxyArgs,
}

impl Args {
    /// Checks the flags and reads the token file.
    pub fn into_config(self) -> Result<ProxyConfig, String> {
        self.proxy.into_config()
    }
}

/// The flags of the proxy itself.
#[derive(Debug, clap::Args)]
pub struct ProxyArgs {
    /// meshd addresses (tried in turn, with backoff).
    #[arg(long, value_delimiter = ',', env = "RAFTMESH_CONTROL_PLANE")]
    pub control_plane: Vec<String>,
    /// This workload's service.
    #[arg(long)]
    pub service: Option<String>,
    /// This instance's id (its Endpoint's name).
    #[arg(long)]
    pub instance: Option<String>,
    /// Namespace.
    #[arg(long, default_value = "default")]
    pub namespace: String,
    /// Labels of this instance: k=v,k=v.
    #[arg(long, value_delimiter = ',')]
    pub labels: Vec<String>,
    /// The local application's port; without it the proxy only serves outbound traffic.
    #[arg(long)]
    pub app_port: Option<u16>,
    /// Address other proxies reach this one at [default: the --inbound
    /// address when it names one, else the local address this host uses to
    /// reach the control plane (127.0.0.1 only when meshd is on this host)]
    #[arg(long)]
    pub advertise: Option<String>,
    /// Inbound listener (from other proxies to the app).
    #[arg(long, default_value = "0.0.0.0:15006")]
    pub inbound: SocketAddr,
    /// Listener for connections `mesh-proxy capture install` redirects here
    /// (e.g. 127.0.0.1:15002): HTTP for a mesh service is routed, anything
    /// else relayed to its original destination. Off when not given.
    #[arg(long)]
    pub capture: Option<SocketAddr>,
    /// Mesh DNS (UDP; e.g. 127.0.0.1:15053, the port `capture install
    /// --dns-port` sends the workload's DNS to): mesh names answered with
    /// their virtual address, other names forwarded. Off when not given.
    #[arg(long)]
    pub dns: Option<SocketAddr>,
    /// The resolver mesh DNS forwards other names to [default: the first
    /// nameserver of /etc/resolv.conf].
    #[arg(long)]
    pub dns_upstream: Option<SocketAddr>,
    /// Outbound HTTP listener (from the app to services).
    #[arg(long, default_value = "127.0.0.1:15001")]
    pub outbound: SocketAddr,
    /// Admin listener (/ready, /live, /metrics, /config_dump).
    #[arg(long, default_value = "127.0.0.1:15000")]
    pub admin: SocketAddr,
    /// A local TCP port per upstream service: NAME=HOST:PORT.
    #[arg(long = "upstream")]
    pub upstreams: Vec<String>,
    /// File holding the bootstrap token.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// The bootstrap token itself (prefer --token-file). RAFTMESH_TOKEN, the
    /// old name (meshctl's admin token too), is read only when it holds a
    /// bootstrap token (`rmb_...`), with a warning.
    #[arg(long, env = "RAFTMESH_BOOTSTRAP_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// CA certificate to verify meshd with.
    #[arg(long, env = "RAFTMESH_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// Where the proxy keeps what a restart needs (last good config).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Sidecar or gateway.
    #[arg(long, value_enum, default_value = "sidecar")]
    pub mode: Mode,
    /// Run with no control plane, from this resource YAML.
    #[arg(long)]
    pub config_file: Option<PathBuf>,
    /// Cluster of this instance (for locality preference).
    #[arg(long, default_value = "")]
    pub cluster: String,
    /// Locality (zone) of this instance.
    #[arg(long, default_value = "")]
    pub locality: String,
    /// Services this proxy calls, known up front (more are learned as requests come).
    #[arg(long, value_delimiter = ',')]
    pub subscribe: Vec<String>,
    /// A service learned from traffic is unsubscribed after this long with no request.
    #[arg(long, default_value = "10m")]
    pub subscription_idle: humantime::Duration,
    /// How often the proxy reports its traffic to meshd (for `meshctl stat` and the dashboard; at least 1s).
    #[arg(long, default_value = "5s", value_parser = parse_stats_interval)]
    pub stats_interval: humantime::Duration,
    /// A client connection with no request in flight and no bytes for this long is closed (HTTP/1 keep-alive and HTTP/2).
    #[arg(long, default_value = "60s")]
    pub idle_timeout: humantime::Duration,
    /// A request head still incomplete this long after its first byte is cut (slowloris; checked every half of it).
    #[arg(long, default_value = "10s")]
    pub header_timeout: humantime::Duration,
    /// Serve plain inbound HTTP/1.1 on the fast path: heads relayed as bytes, parsed in place; hyper serves what it does not cover (upgrades, HTTP/2, HTTP/1.0, ...). `false` has hyper serve every request.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub http1_fast_path: bool,
    /// Worker threads (default: the number of cores).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Readiness probe of the app: an HTTP GET of this path (2xx/3xx is ready); without it, a TCP connect to --app-port [default: MeshConfig app_probe, else TCP].
    #[arg(long, value_name = "PATH")]
    pub probe_http: Option<String>,
    /// Time between probes of the app [default: MeshConfig app_probe, else 1s].
    #[arg(long)]
    pub probe_interval: Option<humantime::Duration>,
    /// Time limit of one probe [default: MeshConfig app_probe, else 1s].
    #[arg(long)]
    pub probe_timeout: Option<humantime::Duration>,
    /// Failed probes in a row that take the endpoint out [default: MeshConfig app_probe, else 2].
    #[arg(long)]
    pub probe_failure_threshold: Option<u32>,
    /// Passed probes in a row that put it back [default: MeshConfig app_probe, else 1].
    #[arg(long)]
    pub probe_success_threshold: Option<u32>,
    /// Take the listening sockets of the proxy running with the same --state-dir (zero-downtime upgrade: start the new binary with the same flags and --takeover; the old one drains its connections and exits).
    #[arg(long)]
    pub takeover: bool,
    /// On SIGTERM, how long in-flight requests may take to finish (the endpoint is taken out first; then connections close gracefully and the proxy deregisters).
    #[arg(long, default_value = "5s")]
    pub drain_timeout: humantime::Duration,
    /// Exit when this process is gone (used by `meshd demo` for its proxies).
    #[arg(long, hide = true)]
    pub parent_pid: Option<u32>,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// meshd addresses.
    pub control_plane: Vec<String>,
    /// Own service (required with a control plane).
    pub service: String,
    /// Own instance id.
    pub instance: String,
    /// Namespace.
    pub namespace: String,
    /// Own labels.
    pub labels: BTreeMap<String, String>,
    /// Local app port.
    pub app_port: Option<u16>,
    /// An east-west gateway (`--mode gateway`): no app; peers on `inbound`.
    pub gateway: bool,
    /// Advertised address ("" = worked out at each connection to meshd).
    pub advertise: String,
    /// Inbound listener.
    pub inbound: SocketAddr,
    /// Outbound listener.
    pub outbound: SocketAddr,
    /// Captured-connection listener.
    pub capture: Option<SocketAddr>,
    /// Mesh DNS listener.
    pub dns: Option<SocketAddr>,
    /// Where mesh DNS forwards other names.
    pub dns_upstream: Option<SocketAddr>,
    /// Admin listener.
    pub admin: SocketAddr,
    /// TCP upstreams: service → local listen address.
    pub upstreams: Vec<(String, SocketAddr)>,
    /// Bootstrap token.
    pub token: Option<String>,
    /// The server CA meshd is verified with (`--ca-file`); plaintext to meshd when `None`.
    pub ca_pem: Option<String>,
    /// State directory.
    pub state_dir: Option<PathBuf>,
    /// Static config file.
    pub config_file: Option<PathBuf>,
    /// Own cluster.
    pub cluster: String,
    /// Own locality.
    pub locality: String,
    /// Services known up front.
    pub subscribe: Vec<String>,
    /// How long a learned subscription may go unused.
    pub subscription_idle: std::time::Duration,
    /// How often traffic is reported to meshd.
    pub stats_interval: std::time::Duration,
    /// How long an idle client connection is kept.
    pub idle_timeout: std::time::Duration,
    /// How long a request head may take.
    pub header_timeout: std::time::Duration,
    /// Inbound HTTP/1.1 on the fast path.
    pub http1_fast_path: bool,
    /// Worker threads.
    pub workers: Option<usize>,
    /// The app readiness probe's flags (unset: MeshConfig's, else the
    /// defaults; `health.rs`).
    pub probe: raftmesh_api::AppProbe,
    /// How long a drain may take.
    pub drain_timeout: std::time::Duration,
    /// Take the running proxy's listening sockets (`takeover.rs`).
    pub takeover: bool,
}

fn label(s: &str) -> Result<(), String> {
    raftmesh_api::validate::dns_label(s)
}

/// What the proxy takes from the old `RAFTMESH_TOKEN`: a bootstrap token,
/// with a warning to use `RAFTMESH_BOOTSTRAP_TOKEN`, and never anything
/// else — a shell that exported meshctl's admin token must not send it to
/// the discovery endpoint.
pub fn legacy_token(value: Option<String>) -> Option<String> {
    let v = value?.trim().to_string();
    if v.is_empty() {
        return None;
    }
    if v.starts_with(raftmesh_api::identity::BOOTSTRAP_TOKEN_PREFIX) {
        tracing::warn!(
            "RAFTMESH_TOKEN is deprecated for mesh-proxy: set RAFTMESH_BOOTSTRAP_TOKEN instead"
        );
        Some(v)
    } else {
        tracing::warn!(
            "ignoring RAFTMESH_TOKEN: it is not a bootstrap token (rmb_...) and may be meshctl's admin token, \
             which mesh-proxy never sends; pass --token-file or RAFTMESH_BOOTSTRAP_TOKEN"
        );
        None
    }
}

impl ProxyArgs {
    /// Checks the flags and reads the token file.
    pub fn into_config(self) -> Result<ProxyConfig, String> {
        let ca_pem = match &self.ca_file {
            Some(f) => Some(
                raftmesh_client::read_ca_file(f, "--ca-file")
                    .map_err(|e| format!("{e} (expected the ca.pem of `meshd tls init`)"))?,
            ),
            None => None,
        };
        let static_mode = self.config_file.is_some();
        if self.mode == Mode::Gateway {
            if static_mode || self.control_plane.is_empty() {
                return Err("--mode gateway needs --control-plane (a gateway learns what is exported from meshd)".into());
            }
            if self.app_port.is_some() {
                return Err("--mode gateway takes no --app-port: a gateway has no app; peers reach it on --inbound".into());
            }
        }
        if !static_mode && self.control_plane.is_empty() {
            return Err("give --control-plane ADDR[,ADDR...] (or --config-file for a proxy with no control plane)".into());
        }
        let service = match (&self.service, static_mode) {
            (Some(s), _) => s.clone(),
            (None, true) => "static".into(),
            (None, false) => return Err("--service is required".into()),
        };
        label(&service).map_err(|e| format!("--service: {e}"))?;
        label(&self.namespace).map_err(|e| format!("--namespace: {e}"))?;
        let instance = self
            .instance
            .clone()
            .unwrap_or_else(|| format!("{service}-{}", std::process::id()));
        label(&instance).map_err(|e| format!("--instance: {e}"))?;
        let mut labels = BTreeMap::new();
        for l in &self.labels {
            let (k, v) = l
                .split_once('=')
                .ok_or_else(|| format!("--labels: \"{l}\" is not KEY=VALUE"))?;
            labels.insert(k.trim().to_string(), v.trim().to_string());
        }
        let mut upstreams = Vec::new();
        for u in &self.upstreams {
            let (name, addr) = u
                .split_once('=')
                .ok_or_else(|| format!("--upstream: \"{u}\" is not NAME=HOST:PORT"))?;
            let addr: SocketAddr = addr.parse().map_err(|_| {
                format!("--upstream: \"{addr}\" is not HOST:PORT (an IP address and port)")
            })?;
            let (svc, ns) = name.split_once('.').unwrap_or((name, &self.namespace));
            label(svc).map_err(|e| format!("--upstream {name}: {e}"))?;
            label(ns).map_err(|e| format!("--upstream {name}: {e}"))?;
            upstreams.push((name.to_string(), addr));
        }
        for s in &self.subscribe {
            let (svc, ns) = s.split_once('.').unwrap_or((s, &self.namespace));
            label(svc).map_err(|e| format!("--subscribe {s}: {e}"))?;
            label(ns).map_err(|e| format!("--subscribe {s}: {e}"))?;
        }
        let token = match (&self.token_file, &self.token) {
            (Some(f), _) => {
                let t = std::fs::read_to_string(f)
                    .map_err(|e| format!("cannot read --token-file {}: {e}", f.display()))?;
                Some(t.trim().to_string())
            }
            (None, Some(t)) => Some(t.trim().to_string()),
            (None, None) => legacy_token(std::env::var("RAFTMESH_TOKEN").ok()),
        };
        let ms = |d: Option<humantime::Duration>| {
            d.map(|d| raftmesh_api::HumanDuration::from(std::time::Duration::from(d)))
        };
        let probe = raftmesh_api::AppProbe {
            http_path: self.probe_http.clone(),
            interval: ms(self.probe_interval),
            timeout: ms(self.probe_timeout),
            failure_threshold: self.probe_failure_threshold,
            success_threshold: self.probe_success_threshold,
        };
        if let Some((f, rule)) = raftmesh_api::validate::probe_rules(&probe)
            .into_iter()
            .next()
        {
            return Err(format!(
                "--probe-{}: {rule}",
                f.replace('_', "-").replace("http-path", "http")
            ));
        }
        if self.takeover && self.state_dir.is_none() {
            return Err("--takeover needs --state-dir: the running proxy offers its sockets there (give the same --state-dir as it)".into());
        }
        if self.workers == Some(0) {
            return Err("--workers must be at least 1".into());
        }
        let advertise = match self.advertise {
            Some(a) => checked_advertise(&a)?,
            None if static_mode => "127.0.0.1".to_string(),
            // Bound to one address: that is the one others can reach.
            None if !self.inbound.ip().is_unspecified() => self.inbound.ip().to_string(),
            // Worked out now if it can be; else at each connection to meshd
            // (a proxy must start, and serve its saved config, while
            // meshd's names do not resolve).
            None => match advertise_toward(&self.control_plane) {
                Ok(ip) => ip.to_string(),
                Err(e) => {
                    tracing::warn!(error = %e, "--advertise will be worked out when meshd is reached");
                    String::new()
                }
            },
        };
        if self.dns.is_some_and(|d| !d.ip().is_loopback()) {
            tracing::warn!(
                "--dns listens off loopback: anyone who reaches it can use this proxy to resolve any name (capture sends the workload's DNS to 127.0.0.1)"
            );
        }
        let dns_upstream = match (self.dns, self.dns_upstream) {
            (None, _) => None,
            (Some(_), Some(up)) => Some(up),
            (Some(_), None) => {
                let conf = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
                let up = crate::dns::host_resolver(&conf);
                if up.is_none() {
                    tracing::warn!("--dns: /etc/resolv.conf names no resolver; names outside the mesh will fail (give --dns-upstream)");
                }
                up
            }
        };
        if let (Some(d), Some(up)) = (self.dns, dns_upstream) {
            if d == up {
                return Err(format!("--dns-upstream {up} is the proxy's own --dns address: give the host's resolver"));
            }
        }
        Ok(ProxyConfig {
            control_plane: self.control_plane,
            service,
            instance,
            namespace: self.namespace,
            labels,
            app_port: self.app_port,
            gateway: self.mode == Mode::Gateway,
            advertise,
            inbound: self.inbound,
            outbound: self.outbound,
            capture: self.capture,
            dns: self.dns,
            dns_upstream,
            admin: self.admin,
            upstreams,
            token,
            ca_pem,
            state_dir: self.state_dir,
            config_file: self.config_file,
            cluster: self.cluster,
            locality: self.locality,
            subscribe: self.subscribe,
            subscription_idle: self.subscription_idle.into(),
            stats_interval: self.stats_interval.into(),
            idle_timeout: self.idle_timeout.into(),
            header_timeout: self.header_timeout.into(),
            http1_fast_path: self.http1_fast_path,
            workers: self.workers,
            probe,
            drain_timeout: self.drain_timeout.into(),
            takeover: self.takeover,
        })
    }
}

/// `--advertise` as given: an address or a host name other proxies can
/// reach, never a wildcard.
fn checked_advertise(a: &str) -> Result<String, String> {
    let a = a.trim();
    match a.parse::<std::net::IpAddr>() {
        Ok(ip) if ip.is_unspecified() => Err(format!(
            "--advertise {a}: other proxies cannot reach a wildcard address; give this host's address"
        )),
        Ok(ip) => Ok(ip.to_string()),
        Err(_) => {
            raftmesh_api::validate::dns_subdomain(a).map_err(|e| {
                format!("--advertise {a}: not an IP address or a host name ({e})")
            })?;
            Ok(a.to_string())
        }
    }
}

/// The local address this host sends from to reach the first of the
/// control-plane addresses that resolves: the address other hosts reach
/// it at (127.0.0.1 only when meshd is on this host). No packet is sent:
/// connecting a UDP socket only picks the route.
pub fn advertise_toward(control_plane: &[String]) -> Result<std::net::IpAddr, String> {
    use std::net::{ToSocketAddrs, UdpSocket};
    let mut why = Vec::new();
    for addr in control_plane {
        let target = match addr.to_socket_addrs().map(|mut a| a.next()) {
            Ok(Some(t)) => t,
            Ok(None) => {
                why.push(format!("{addr}: resolves to no address"));
                continue;
            }
            Err(e) => {
                why.push(format!("{addr}: {e}"));
                continue;
            }
        };
        let local = if target.is_ipv4() {
            "0.0.0.0:0"
        } else {
            "[::]:0"
        };
        let found = UdpSocket::bind(local)
            .and_then(|s| s.connect(target).map(|_| s))
            .and_then(|s| s.local_addr());
        match found {
            Ok(a) if !a.ip().is_unspecified() => return Ok(a.ip()),
            Ok(_) => why.push(format!("{addr}: no local address routes there")),
            Err(e) => why.push(format!("{addr}: {e}")),
        }
    }
    Err(format!(
        "cannot work out the address other proxies reach this one at ({}); pass --advertise",
        why.join("; ")
    ))
}

/// `--stats-interval`: a duration of at least a second (meshd keeps a
/// minute of reports per proxy, at most 60).
fn parse_stats_interval(s: &str) -> Result<humantime::Duration, String> {
    let d: humantime::Duration = s.parse().map_err(|e| format!("{e}"))?;
    if *d < std::time::Duration::from_secs(1) || *d > std::time::Duration::from_secs(60) {
        return Err(format!("{s} is not between 1s and 60s"));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advertise_defaults_to_the_address_that_reaches_the_control_plane() {
        // meshd on this host: loopback is right.
        assert_eq!(
            advertise_toward(&["127.0.0.1:7100".into()]).unwrap(),
            std::net::IpAddr::from([127, 0, 0, 1])
        );
        // meshd on another host (a documentation address, routed by the
        // default route; no packet is sent): never loopback.
        match advertise_toward(&["192.0.2.10:7100".into()]) {
            Ok(ip) => assert!(!ip.is_loopback() && !ip.is_unspecified(), "{ip}"),
            Err(e) => {
                assert!(e.contains("pass --advertise"), "{e}");
                eprintln!("skipped the remote case: this machine has no route off the host ({e})");
            }
        }
        // The first address that resolves wins; unresolvable ones are named.
        let e = advertise_toward(&["no-such-host.invalid:7100".into()]).unwrap_err();
        assert!(
            e.contains("no-such-host.invalid:7100") && e.contains("pass --advertise"),
            "{e}"
        );
        assert_eq!(
            advertise_toward(&["no-such-host.invalid:7100".into(), "127.0.0.1:7100".into()])
                .unwrap(),
            std::net::IpAddr::from([127, 0, 0, 1])
        );
    }

    #[test]
    fn the_default_advertise_follows_the_inbound_address_then_the_route() {
        let advertised = |inbound: &str| {
            Args::try_parse_from([
                "mesh-proxy",
                "--control-plane",
                "192.0.2.10:7100",
                "--service",
                "web",
                "--inbound",
                inbound,
            ])
            .unwrap()
            .into_config()
            .map(|c| c.advertise)
        };
        assert_eq!(advertised("127.0.0.1:15006").unwrap(), "127.0.0.1");
        assert_eq!(advertised("10.1.2.3:15006").unwrap(), "10.1.2.3");
        // meshd's name does not resolve yet: the proxy still starts, and
        // works the address out when it reaches meshd.
        let c = Args::try_parse_from([
            "mesh-proxy",
            "--control-plane",
            "meshd.invalid:7100",
            "--service",
            "web",
        ])
        .unwrap()
        .into_config()
        .unwrap();
        assert_eq!(c.advertise, "");
        match advertised("0.0.0.0:15006") {
            Ok(a) => assert!(!a.starts_with("127."), "meshd is on another host: {a}"),
            Err(e) => eprintln!("skipped: no route off this machine ({e})"),
        }
    }

    #[test]
    fn the_systemd_unit_s_command_line_advertises_a_reachable_address() {
        let unit = include_str!("../../docs/deploy/mesh-proxy@.service");
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("web.token");
        std::fs::write(&token, "rmb_0123").unwrap();
        let exec = unit
            .split("ExecStart=")
            .nth(1)
            .unwrap()
            .lines()
            .take_while(|l| !l.starts_with("Restart"))
            .collect::<Vec<_>>()
            .join(" ")
            .replace('\\', " ")
            .replace("/etc/raftmesh/%i.token", token.to_str().unwrap())
            .replace("/var/lib/raftmesh/proxy-%i", dir.path().to_str().unwrap())
            .replace("%i", "web")
            .replace("%H", "vm7")
            .replace("${PROXY_APP_PORT}", "8080")
            .replace("${PROXY_LABELS}", "version=v1");
        let mut argv: Vec<&str> = exec.split_whitespace().collect();
        argv[0] = "mesh-proxy";
        // RAFTMESH_CONTROL_PLANE as the unit's environment file gives it.
        argv.extend([
            "--control-plane",
            "10.0.0.1:7100,10.0.0.2:7100,10.0.0.3:7100",
        ]);
        let c = Args::try_parse_from(argv)
            .unwrap()
            .into_config()
            .unwrap_or_else(|e| panic!("the unit's command line is refused: {e}"));
        assert_eq!(c.instance, "web-vm7");
        assert_eq!(c.capture, Some("127.0.0.1:15002".parse().unwrap()));
        assert_eq!(c.dns, Some("127.0.0.1:15053".parse().unwrap()));
        // Capture is installed before the proxy starts and removed after.
        let pre = unit
            .lines()
            .find(|l| l.starts_with("ExecStartPre=+"))
            .unwrap();
        assert!(
            pre.contains("mesh-proxy capture install --proxy-uid")
                && pre.contains("--dns-port 15053"),
            "{pre}"
        );
        assert!(unit.contains("ExecStopPost=+/usr/local/bin/mesh-proxy capture remove"));
        match advertise_toward(&["10.0.0.1:7100".into()]) {
            Ok(_) => assert!(
                !c.advertise.starts_with("127."),
                "the unit registers every VM's endpoint at {}",
                c.advertise
            ),
            Err(e) => eprintln!("skipped the address check: no route off this machine ({e})"),
        }
    }

    #[test]
    fn a_wildcard_or_malformed_advertise_is_refused() {
        assert!(checked_advertise("0.0.0.0")
            .unwrap_err()
            .contains("wildcard"));
        assert!(checked_advertise("::").unwrap_err().contains("wildcard"));
        assert!(checked_advertise("bad host!").is_err());
        assert_eq!(checked_advertise("10.0.0.7").unwrap(), "10.0.0.7");
        assert_eq!(checked_advertise("vm-7.example").unwrap(), "vm-7.example");
    }

    #[test]
    fn the_old_token_variable_never_hands_over_an_admin_secret() {
        assert_eq!(
            legacy_token(Some("rmb_0123abcd".into())).as_deref(),
            Some("rmb_0123abcd"),
            "a bootstrap token is still read from RAFTMESH_TOKEN, for one release"
        );
        assert_eq!(legacy_token(Some("rmt_admin-secret".into())), None);
        assert_eq!(legacy_token(Some("any-admin-secret-at-all".into())), None);
        assert_eq!(legacy_token(Some("  ".into())), None);
        assert_eq!(legacy_token(None), None);
    }
}
