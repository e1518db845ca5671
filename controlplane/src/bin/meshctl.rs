//! meshctl: the Raftmesh admin CLI (see `raftmesh_controlplane::ctl`).

fn main() {
    std::process::exit(raftmesh_controlplane::ctl::main());
}
