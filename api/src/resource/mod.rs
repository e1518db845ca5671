//! Domain types of the mesh state, in the YAML form of DESIGN.md ("Resources").
//!
//! A document is `{kind, metadata: {name, namespace}, spec}`. Unknown fields
//! are refused, so a typo (`wieght`) is an error rather than a silent default.

use std::fmt;

use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{Kind, DEFAULT_NAMESPACE};

mod specs;

pub use specs::*;

fn default_namespace() -> String {
    DEFAULT_NAMESPACE.to_string()
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// Name, namespace and (when read back) revision of a resource.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    /// A DNS-1123 label.
    pub name: String,
    /// A DNS-1123 label; `default` when not given.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// The revision of the resource's last write. On apply, a given revision
    /// is a compare-and-set: the write happens only if it still matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u64>,
}

impl Metadata {
    /// Metadata in the default namespace.
    pub fn named(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            namespace: default_namespace(),
            revision: None,
        }
    }
}

/// The identity of a resource in the mesh state.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ResourceKey {
    /// Its kind.
    pub kind: Kind,
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
}

impl ResourceKey {
    /// A key from its parts.
    pub fn new(kind: Kind, namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            kind,
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ResourceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// The spec of a resource, by kind.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(clippy::large_enum_variant)]
pub enum Spec {
    /// `kind: Service`.
    Service(ServiceSpec),
    /// `kind: Endpoint`.
    Endpoint(EndpointSpec),
    /// `kind: Route`.
    Route(RouteSpec),
    /// `kind: Policy`.
    Policy(PolicySpec),
    /// `kind: MeshConfig`.
    MeshConfig(MeshConfigSpec),
    /// `kind: Token`.
    Token(TokenSpec),
    /// `kind: Peer`.
    Peer(PeerSpec),
    /// `kind: Export`.
    Export(ExportSpec),
    /// `kind: Import`.
    Import(ImportSpec),
    /// `kind: Authority`.
    Authority(AuthoritySpec),
    /// `kind: Revocation`.
    Revocation(RevocationSpec),
    /// `kind: External`.
    External(ExternalSpec),
}

impl Spec {
    /// The kind of this spec.
    pub fn kind(&self) -> Kind {
        match self {
            Spec::Service(_) => Kind::Service,
            Spec::Endpoint(_) => Kind::Endpoint,
            Spec::Route(_) => Kind::Route,
            Spec::Policy(_) => Kind::Policy,
            Spec::MeshConfig(_) => Kind::MeshConfig,
            Spec::Token(_) => Kind::Token,
            Spec::Peer(_) => Kind::Peer,
            Spec::Export(_) => Kind::Export,
            Spec::Import(_) => Kind::Import,
            Spec::Authority(_) => Kind::Authority,
            Spec::Revocation(_) => Kind::Revocation,
            Spec::External(_) => Kind::External,
        }
    }

    /// The service this resource is about, for kinds that name one.
    pub fn service(&self) -> Option<&str> {
        match self {
            Spec::Endpoint(s) => Some(&s.service),
            Spec::Route(s) => Some(&s.service),
            Spec::Policy(s) => Some(&s.service),
            Spec::Export(s) => Some(&s.service),
            Spec::Import(s) => Some(&s.service),
            _ => None,
        }
    }
}

/// One resource: `{kind, metadata, spec}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    /// Name, namespace, revision.
    pub metadata: Metadata,
    /// The kind-specific part.
    pub spec: Spec,
}

impl Resource {
    /// A resource in the default namespace.
    pub fn new(name: impl Into<String>, spec: Spec) -> Self {
        Self {
            metadata: Metadata::named(name),
            spec,
        }
    }

    /// Its kind.
    pub fn kind(&self) -> Kind {
        self.spec.kind()
    }

    /// Its key in the mesh state.
    pub fn key(&self) -> ResourceKey {
        ResourceKey::new(
            self.kind(),
            self.metadata.namespace.clone(),
            self.metadata.name.clone(),
        )
    }

    /// The same resource with `metadata.revision` set.
    pub fn with_revision(mut self, revision: u64) -> Self {
        self.metadata.revision = Some(revision);
        self
    }

    /// Whether two resources say the same thing, revisions aside, and a
    /// service's virtual address aside when one of them has none (meshd
    /// assigns it: a document without it says the same as the stored
    /// service with it).
    pub fn same_content(&self, other: &Resource) -> bool {
        let specs = match (&self.spec, &other.spec) {
            (Spec::Service(a), Spec::Service(b)) => {
                a.ports == b.ports && (a.vip == b.vip || a.vip.is_none() || b.vip.is_none())
            }
            (a, b) => a == b,
        };
        self.metadata.name == other.metadata.name
            && self.metadata.namespace == other.metadata.namespace
            && specs
    }

    /// Reads a resource from a generic document value (the parsed form of a
    /// YAML or JSON document). Errors name the field path.
    pub fn from_value(value: serde_json::Value) -> Result<Self, DocumentError> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Raw {
            kind: String,
            metadata: Metadata,
            #[serde(default)]
            spec: serde_json::Value,
        }
        let raw: Raw = serde_path_to_error::deserialize(value).map_err(|e| DocumentError {
            path: e.path().to_string(),
            message: e.inner().to_string(),
            key: None,
        })?;
        let kind: Kind = raw
            .kind
            .parse()
            .map_err(|e: crate::kind::UnknownKind| DocumentError {
                path: "kind".into(),
                message: e.to_string(),
                key: None,
            })?;
        let key = ResourceKey::new(
            kind,
            raw.metadata.namespace.clone(),
            raw.metadata.name.clone(),
        );
        let spec_value = match raw.spec {
            serde_json::Value::Null => serde_json::Value::Object(Default::default()),
            v => v,
        };
        fn spec_of<T: serde::de::DeserializeOwned>(
            v: serde_json::Value,
            key: &ResourceKey,
        ) -> Result<T, DocumentError> {
            serde_path_to_error::deserialize(v).map_err(|e| {
                let p = e.path().to_string();
                DocumentError {
                    path: if p == "." {
                        "spec".into()
                    } else {
                        format!("spec.{p}")
                    },
                    message: e.inner().to_string(),
                    key: Some(key.clone()),
                }
            })
        }
        let spec = match kind {
            Kind::Service => Spec::Service(spec_of(spec_value, &key)?),
            Kind::Endpoint => Spec::Endpoint(spec_of(spec_value, &key)?),
            Kind::Route => Spec::Route(spec_of(spec_value, &key)?),
            Kind::Policy => Spec::Policy(spec_of(spec_value, &key)?),
            Kind::MeshConfig => Spec::MeshConfig(spec_of(spec_value, &key)?),
            Kind::Token => Spec::Token(spec_of(spec_value, &key)?),
            Kind::Peer => Spec::Peer(spec_of(spec_value, &key)?),
            Kind::Export => Spec::Export(spec_of(spec_value, &key)?),
            Kind::Import => Spec::Import(spec_of(spec_value, &key)?),
            Kind::Authority => Spec::Authority(spec_of(spec_value, &key)?),
            Kind::Revocation => Spec::Revocation(spec_of(spec_value, &key)?),
            Kind::External => Spec::External(spec_of(spec_value, &key)?),
        };
        Ok(Resource {
            metadata: raw.metadata,
            spec,
        })
    }
}

/// A document that is not a well-formed resource.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{path}: {message}", key.as_ref().map(|k| format!("{} \"{}\": ", k.kind.lower(), k.name)).unwrap_or_default())]
pub struct DocumentError {
    /// Dotted path of the offending field (`spec.rules[0].backends[1]`).
    pub path: String,
    /// What is wrong.
    pub message: String,
    /// The resource, when kind and name could be read.
    pub key: Option<ResourceKey>,
}

impl Serialize for Resource {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(3))?;
        m.serialize_entry("kind", self.kind().as_str())?;
        m.serialize_entry("metadata", &self.metadata)?;
        match &self.spec {
            Spec::Service(x) => m.serialize_entry("spec", x)?,
            Spec::Endpoint(x) => m.serialize_entry("spec", x)?,
            Spec::Route(x) => m.serialize_entry("spec", x)?,
            Spec::Policy(x) => m.serialize_entry("spec", x)?,
            Spec::MeshConfig(x) => m.serialize_entry("spec", x)?,
            Spec::Token(x) => m.serialize_entry("spec", x)?,
            Spec::Peer(x) => m.serialize_entry("spec", x)?,
            Spec::Export(x) => m.serialize_entry("spec", x)?,
            Spec::Import(x) => m.serialize_entry("spec", x)?,
            Spec::Authority(x) => m.serialize_entry("spec", x)?,
            Spec::Revocation(x) => m.serialize_entry("spec", x)?,
            Spec::External(x) => m.serialize_entry("spec", x)?,
        }
        m.end()
    }
}

impl<'de> Deserialize<'de> for Resource {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = serde_json::Value::deserialize(d)?;
        Resource::from_value(v).map_err(serde::de::Error::custom)
    }
}
