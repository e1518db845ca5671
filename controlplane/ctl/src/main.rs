//! meshctl: the Raftmesh admin CLI (see the `raftmesh_ctl` library).

fn main() {
    std::process::exit(raftmesh_ctl::main());
}
