//! Helpers shared by the store tests.

use std::collections::BTreeMap;

use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};
use raftmesh_api::{EndpointSpec, Kind, Resource, ResourceKey, ServicePort, ServiceSpec, Spec};
use raftmesh_storage::{open, Command, LogStore, StateMachine, StoreConfig, TypeConfig};
use tempfile::TempDir;

pub fn log_id(term: u64, index: u64) -> LogId<u64> {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

pub fn entry(index: u64, cmd: Command) -> Entry<TypeConfig> {
    Entry {
        log_id: log_id(1, index),
        payload: EntryPayload::Normal(cmd),
    }
}

pub fn blank(index: u64) -> Entry<TypeConfig> {
    Entry {
        log_id: log_id(1, index),
        payload: EntryPayload::Blank,
    }
}

pub fn service(name: &str, port: u32) -> Resource {
    Resource::new(
        name,
        Spec::Service(ServiceSpec {
            vip: None,
            ports: vec![ServicePort {
                port,
                protocol: Default::default(),
            }],
        }),
    )
}

pub fn endpoint(name: &str, service: &str) -> Resource {
    Resource::new(
        name,
        Spec::Endpoint(EndpointSpec {
            service: service.into(),
            address: "127.0.0.1".into(),
            port: 15006,
            labels: BTreeMap::from([("version".into(), "v1".into())]),
            cluster: String::new(),
            locality: String::new(),
            health: Default::default(),
            identity: String::new(),
            lease_node: None,
            gateway: false,
        }),
    )
}

pub fn put(r: Resource) -> Command {
    Command::Put {
        resource: r,
        expected_revision: None,
    }
}

pub fn put_cas(r: Resource, expected: u64) -> Command {
    Command::Put {
        resource: r,
        expected_revision: Some(expected),
    }
}

pub fn delete(kind: Kind, name: &str) -> Command {
    Command::Delete {
        key: ResourceKey::new(kind, "default", name),
        expected_revision: None,
    }
}

pub fn svc_key(name: &str) -> ResourceKey {
    ResourceKey::new(Kind::Service, "default", name)
}

pub fn open_in(dir: &TempDir) -> (LogStore, StateMachine) {
    open(dir.path(), &StoreConfig::default()).unwrap()
}

pub fn open_with_window(dir: &TempDir, window: usize) -> (LogStore, StateMachine) {
    open(
        dir.path(),
        &StoreConfig {
            event_window: window,
            ..StoreConfig::default()
        },
    )
    .unwrap()
}
