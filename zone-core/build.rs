//! Builds the zones agent (a static x86-64 Linux executable) with the stock toolchain and leaves it
//! in `$OUT_DIR/zone-agent`, where `src/linux/agent.rs` embeds it.

fn main() {
    let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let rustc =
        std::path::PathBuf::from(std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into()));
    println!(
        "cargo:rerun-if-changed={}",
        zone_agent::build::source_dir().display()
    );
    match zone_agent::build::compile(&rustc, &out) {
        Ok(agent) => assert_eq!(agent, out.join("zone-agent"), "agent binary location"),
        Err(e) => panic!("building the zones agent: {e}"),
    }
}
