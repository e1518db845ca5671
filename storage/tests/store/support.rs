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
    reopen(dir, &StoreConfig::default())
}

pub fn open_with_window(dir: &TempDir, window: usize) -> (LogStore, StateMachine) {
    reopen(
        dir,
        &StoreConfig {
            event_window: window,
            ..StoreConfig::default()
        },
    )
}

/// Opens the store in `dir`. A store just dropped in the same process may
/// still hold sled's file lock for a moment (its flusher thread lets go
/// of the database when it next wakes): that one error is waited out, for
/// at most 5 s, as a restarted node would wait for the old process.
fn reopen(dir: &TempDir, config: &StoreConfig) -> (LogStore, StateMachine) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match open(dir.path(), config) {
            Ok(s) => return s,
            Err(e)
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => panic!("opening the store in {}: {e}", dir.path().display()),
        }
    }
}
