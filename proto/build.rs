//! Compiles the protobuf contracts with protox (a pure-Rust protobuf compiler), so a
//! build needs neither `protoc` nor any download.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=weir/v1/weir.proto");
    let descriptors = protox::compile(["weir/v1/weir.proto"], ["."])?;
    prost_build::Config::new()
        .bytes(["."])
        .btree_map(["."])
        .compile_fds(descriptors)?;
    Ok(())
}
