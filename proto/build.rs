//! Compiles the `.proto` files under `proto/` with a protoc that ships inside
//! a crates.io package, so a fresh machine needs nothing installed by hand.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", protoc);
    let files = [
        "proto/metapb.proto",
        "proto/errorpb.proto",
        "proto/kvrpcpb.proto",
        "proto/tikvpb.proto",
        "proto/eraftpb.proto",
        "proto/pdpb.proto",
        "proto/raft_serverpb.proto",
        "proto/pd_raftpb.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    tonic_build::configure().build_server(true).build_client(true).compile_protos(&files, &["proto"])?;
    Ok(())
}
