//! The kinds of resource the mesh state holds, and how users may name them.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The kind of a resource, as written in the `kind:` field of a document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Kind {
    /// A logical service with its ports.
    Service,
    /// One workload instance of a service.
    Endpoint,
    /// Traffic rules for a service.
    Route,
    /// Authorization for a service.
    Policy,
    /// Cluster-wide settings (a singleton named `mesh`).
    MeshConfig,
    /// A bootstrap or admin token (its hash only).
    Token,
    /// Another cluster this one federates with.
    Peer,
    /// A service exported to peers.
    Export,
    /// A service imported from a peer.
    Import,
    /// The cluster's workload CA (written by meshd, never applied by users).
    Authority,
    /// A workload identity or instance denied from now on.
    Revocation,
    /// Hosts outside the mesh its workloads may reach (egress).
    External,
}

impl Kind {
    /// Every kind, in a stable order.
    pub const ALL: [Kind; 12] = [
        Kind::Service,
        Kind::Endpoint,
        Kind::Route,
        Kind::Policy,
        Kind::MeshConfig,
        Kind::Token,
        Kind::Peer,
        Kind::Export,
        Kind::Import,
        Kind::Authority,
        Kind::Revocation,
        Kind::External,
    ];

    /// The canonical name, as in `kind: Service`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Service => "Service",
            Kind::Endpoint => "Endpoint",
            Kind::Route => "Route",
            Kind::Policy => "Policy",
            Kind::MeshConfig => "MeshConfig",
            Kind::Token => "Token",
            Kind::Peer => "Peer",
            Kind::Export => "Export",
            Kind::Import => "Import",
            Kind::Authority => "Authority",
            Kind::Revocation => "Revocation",
            Kind::External => "External",
        }
    }

    /// Lower-case name used in messages (`route "web": ...`).
    pub fn lower(self) -> &'static str {
        match self {
            Kind::Service => "service",
            Kind::Endpoint => "endpoint",
            Kind::Route => "route",
            Kind::Policy => "policy",
            Kind::MeshConfig => "meshconfig",
            Kind::Token => "token",
            Kind::Peer => "peer",
            Kind::Export => "export",
            Kind::Import => "import",
            Kind::Authority => "authority",
            Kind::Revocation => "revocation",
            Kind::External => "external",
        }
    }

    /// Whether resources of this kind live in a namespace (all but the
    /// cluster-wide ones).
    pub fn namespaced(self) -> bool {
        !matches!(
            self,
            Kind::MeshConfig | Kind::Token | Kind::Peer | Kind::Authority
        )
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A kind name that is not one of the known kinds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown kind \"{0}\" (expected one of: service|svc, endpoint|ep, route, policy, meshconfig, token, peer, export, import, revocation, external)")]
pub struct UnknownKind(pub String);

impl FromStr for Kind {
    type Err = UnknownKind;

    /// Case-insensitive; takes the singular, the plural or a short form
    /// (`service|services|svc`, `endpoint|endpoints|ep`, ...).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let k = match s.to_ascii_lowercase().as_str() {
            "service" | "services" | "svc" => Kind::Service,
            "endpoint" | "endpoints" | "ep" => Kind::Endpoint,
            "route" | "routes" | "rt" => Kind::Route,
            "policy" | "policies" | "pol" => Kind::Policy,
            "meshconfig" | "meshconfigs" | "mc" => Kind::MeshConfig,
            "token" | "tokens" | "tok" => Kind::Token,
            "peer" | "peers" => Kind::Peer,
            "export" | "exports" => Kind::Export,
            "import" | "imports" => Kind::Import,
            "authority" | "authorities" | "ca" => Kind::Authority,
            "revocation" | "revocations" | "revoked" => Kind::Revocation,
            "external" | "externals" | "ext" => Kind::External,
            _ => return Err(UnknownKind(s.to_string())),
        };
        Ok(k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_names_are_case_insensitive_with_plurals_and_short_forms() {
        for (s, k) in [
            ("Service", Kind::Service),
            ("SERVICES", Kind::Service),
            ("svc", Kind::Service),
            ("ep", Kind::Endpoint),
            ("endpoints", Kind::Endpoint),
            ("Routes", Kind::Route),
            ("policies", Kind::Policy),
            ("MeshConfig", Kind::MeshConfig),
            ("tokens", Kind::Token),
        ] {
            assert_eq!(s.parse::<Kind>().unwrap(), k, "{s}");
        }
        let err = "gateway".parse::<Kind>().unwrap_err();
        assert!(err.to_string().contains("unknown kind \"gateway\""));
    }

    #[test]
    fn canonical_names_parse_back() {
        for k in Kind::ALL {
            assert_eq!(k.as_str().parse::<Kind>().unwrap(), k);
            assert_eq!(k.lower().parse::<Kind>().unwrap(), k);
        }
    }
}
