//! Builds the zones agent (a static x86-64 Linux executable) with the stock toolchain and leaves it
//! in `$OUT_DIR/zone-agent`, where `src/linux/agent.rs` embeds it, with the SHA-256 (hex) of the
//! agent and the initramfs writer's sources (archive, cpio and module-signature code) in
//! `$OUT_DIR/initramfs-generator.sha256` (part of the initramfs cache's key: a new agent or a new
//! archive layout never meets an old archive).

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
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    hasher.update(std::fs::read(out.join("zone-agent")).expect("reading the agent binary"));
    for source in [
        "src/linux/initramfs.rs",
        "src/linux/cpio.rs",
        "src/linux/module_sig.rs",
    ] {
        println!("cargo:rerun-if-changed={source}");
        hasher.update(std::fs::read(source).expect("reading the initramfs writer's source"));
    }
    let digest: [u8; 32] = hasher.finalize().into();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::write(out.join("initramfs-generator.sha256"), hex).expect("writing the digest");
}
