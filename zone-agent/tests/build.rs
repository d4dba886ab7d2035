//! Builds the agent executable the way zone-core's build script does and checks that it is
//! static and behaves when started outside a guest.
#![cfg(feature = "build")]

use std::path::Path;
use zone_agent::build;

const PT_INTERP: u32 = 3;
const PT_LOAD: u32 = 1;

/// The `p_type` of every program header of a 64-bit little-endian ELF file.
fn program_header_types(elf: &[u8]) -> Vec<u32> {
    assert_eq!(&elf[..4], b"\x7fELF", "not an ELF file");
    assert_eq!(elf[4], 2, "not a 64-bit ELF");
    assert_eq!(elf[5], 1, "not little-endian");
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let u64_at = |o: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&elf[o..o + 8]);
        u64::from_le_bytes(b) as usize
    };
    let (phoff, phentsize, phnum) = (u64_at(0x20), u16_at(0x36), u16_at(0x38));
    assert!(phentsize >= 56 && phoff + phnum * phentsize <= elf.len());
    (0..phnum)
        .map(|i| {
            let o = phoff + i * phentsize;
            u32::from_le_bytes([elf[o], elf[o + 1], elf[o + 2], elf[o + 3]])
        })
        .collect()
}

#[test]
fn the_agent_is_static_and_refuses_to_run_outside_pid_1() {
    let out = std::env::temp_dir().join(format!("zone-agent-build-test-{}", std::process::id()));
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let exe = build::compile(Path::new(&rustc), &out).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(exe, out.join("zone-agent"));

    let elf = std::fs::read(&exe).unwrap();
    let types = program_header_types(&elf);
    assert!(types.contains(&PT_LOAD), "no PT_LOAD: {types:?}");
    assert!(
        !types.contains(&PT_INTERP),
        "the agent has a program interpreter (it is dynamically linked): {types:?}"
    );

    for args in [&[][..], &["--bogus"][..], &["--serve", "extra"][..]] {
        let run = std::process::Command::new(&exe)
            .args(args)
            .output()
            .unwrap();
        assert_eq!(run.status.code(), Some(2), "{args:?}: {run:?}");
        assert!(
            String::from_utf8_lossy(&run.stderr).contains("usage"),
            "{run:?}"
        );
    }
    std::fs::remove_dir_all(&out).unwrap();
}
