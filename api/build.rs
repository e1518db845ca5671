//! Compiles the protobuf schema with protox (no system `protoc`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/raftmesh/v1/resources.proto",
        "proto/raftmesh/v1/admin.proto",
        "proto/raftmesh/v1/discovery.proto",
        "proto/raftmesh/v1/raft.proto",
        "proto/raftmesh/v1/federation.proto",
    ];
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    // No transport: `api` holds message types and service traits only; the
    // crates that connect or serve bring tonic's transport themselves.
    tonic_prost_build::configure()
        .build_transport(false)
        .btree_map(".")
        .compile_fds(fds)?;
    Ok(())
}
