//! Compiles the protobuf schemas of every Kafka message. Needs `protoc` on the PATH
//! (Debian's `protobuf-compiler`, installed by `scripts/up` and `scripts/test`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    // sqlx's `migrate!` embeds the migrations but does not track the directory: a new
    // migration alone would otherwise not rebuild the binaries that apply it.
    println!("cargo:rerun-if-changed=migrations");
    // Maps as `BTreeMap`: sorted keys, so a snapshot's JSON is the same every time.
    prost_build::Config::new()
        .btree_map(["."])
        .compile_protos(&["proto/paygate/v1/events.proto"], &["proto"])?;
    Ok(())
}
