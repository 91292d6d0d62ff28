//! The only place protobuf code is generated. protoc comes from the vendored crate so a fresh
//! machine builds with cargo alone.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var_os("PROTOC").is_none() {
        std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?);
    }
    println!("cargo:rerun-if-changed=proto/sdfarm/v1/sdfarm.proto");
    tonic_prost_build::configure()
        .type_attribute(
            "sdfarm.v1.RenderParams",
            "#[derive(serde::Serialize, serde::Deserialize)] #[serde(default)]",
        )
        .compile_protos(&["proto/sdfarm/v1/sdfarm.proto"], &["proto"])?;
    Ok(())
}
