//! Compiles micro-zone guest programs from a cargo build script with the stock
//! `x86_64-unknown-linux-gnu` toolchain: `no_std`, `panic=abort`, static, non-PIE, linked at
//! [`IMAGE_BASE`](crate::abi::layout::IMAGE_BASE) with [`LINKER_SCRIPT`] so that code, read-only
//! data and writable data sit in separate, page-aligned segments (the host maps them W^X).
//!
//! ```no_run
//! // build.rs
//! let mut guests = zone_guest::build::GuestBuilder::from_env().unwrap();
//! let elf = guests.build("hello", std::path::Path::new("guests/hello.rs")).unwrap();
//! println!("cargo:rustc-env=HELLO_GUEST={}", elf.display());
//! ```

use std::ffi::OsString;
use std::format;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::string::{String, ToString};
use std::vec::Vec;

/// The target guest programs are compiled for.
pub const TARGET: &str = "x86_64-unknown-linux-gnu";

/// Linker script for guest programs: text, rodata and data/bss in separate page-aligned `PT_LOAD`
/// segments at `IMAGE_BASE` (0x400000), entry `_start`, nothing dynamic.
pub const LINKER_SCRIPT: &str = r#"ENTRY(_start)
PHDRS {
    text PT_LOAD FLAGS(5);
    rodata PT_LOAD FLAGS(4);
    data PT_LOAD FLAGS(6);
}
SECTIONS {
    . = 0x400000;
    .text : ALIGN(4096) { *(.text._start) *(.text .text.*) } :text
    . = ALIGN(4096);
    .rodata : ALIGN(4096) { *(.rodata .rodata.*) *(.eh_frame_hdr) *(.eh_frame) *(.gcc_except_table*) } :rodata
    . = ALIGN(4096);
    .data : ALIGN(4096) { *(.data .data.*) *(.got .got.*) } :data
    .bss : { *(.bss .bss.*) *(COMMON) } :data
    /DISCARD/ : { *(.interp) *(.dynamic) *(.dynsym) *(.dynstr) *(.note*) *(.comment) *(.hash) *(.gnu.hash) }
}
"#;

/// Why a guest program could not be built.
#[derive(Debug, thiserror::Error)]
pub enum GuestBuildError {
    /// A variable cargo sets for build scripts is missing.
    #[error(
        "environment variable {0} is not set: call GuestBuilder::from_env from a cargo build script, or use GuestBuilder::new"
    )]
    MissingEnv(&'static str),
    /// Writing into the output directory failed.
    #[error("cannot write {path}: {source}")]
    Io {
        /// The file being written.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// rustc could not be started.
    #[error("cannot run {rustc}: {source}")]
    Spawn {
        /// The compiler that was run.
        rustc: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// rustc rejected the program or the runtime.
    #[error(
        "rustc failed to build guest {what} ({status}); is the {TARGET} standard library installed?\n{stderr}"
    )]
    Rustc {
        /// Which guest program (or `zone-guest runtime`).
        what: String,
        /// rustc's exit status.
        status: String,
        /// rustc's diagnostics.
        stderr: String,
    },
}

/// Builds guest programs into an output directory. The runtime library is compiled once per
/// builder.
#[derive(Debug)]
pub struct GuestBuilder {
    rustc: PathBuf,
    out_dir: PathBuf,
    opt_level: String,
    runtime: Option<PathBuf>,
}

impl GuestBuilder {
    /// A builder using cargo's `RUSTC` and `OUT_DIR` (guests land in `$OUT_DIR/guests`).
    pub fn from_env() -> Result<Self, GuestBuildError> {
        let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| OsString::from("rustc"));
        let out = std::env::var_os("OUT_DIR").ok_or(GuestBuildError::MissingEnv("OUT_DIR"))?;
        Ok(Self::new(rustc, PathBuf::from(out).join("guests")))
    }

    /// A builder with an explicit compiler and output directory.
    pub fn new(rustc: impl Into<PathBuf>, out_dir: impl Into<PathBuf>) -> Self {
        Self {
            rustc: rustc.into(),
            out_dir: out_dir.into(),
            opt_level: "2".into(),
            runtime: None,
        }
    }

    /// Sets rustc's `opt-level` for guest code (default `2`).
    pub fn opt_level(mut self, level: &str) -> Self {
        self.opt_level = level.to_string();
        self
    }

    /// Source directory of this crate's runtime (for `cargo:rerun-if-changed`).
    pub fn runtime_source_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
    }

    /// Compiles the single-file guest program `source` and returns the path of its ELF.
    pub fn build(&mut self, name: &str, source: &Path) -> Result<PathBuf, GuestBuildError> {
        let runtime = self.runtime()?;
        let script = self.out_dir.join("zone-guest.ld");
        let elf = self.out_dir.join(format!("{name}.elf"));
        let mut cmd = self.rustc_command();
        cmd.args([
            "--crate-type",
            "bin",
            "--crate-name",
            &name.replace('-', "_"),
        ])
        .args(["-C", "link-arg=-nostartfiles", "-C", "link-arg=-nostdlib"])
        .args([
            "-C",
            "link-arg=-Wl,--build-id=none",
            "-C",
            "link-arg=-Wl,-z,noexecstack",
        ])
        .arg("-C")
        .arg(format!("link-arg=-Wl,-T,{}", script.display()))
        .arg("-L")
        .arg(runtime.parent().unwrap_or(&self.out_dir))
        .arg("--extern")
        .arg(format!("zone_guest={}", runtime.display()))
        .arg("-o")
        .arg(&elf)
        .arg(source);
        self.run(cmd, name)?;
        Ok(elf)
    }

    fn runtime(&mut self) -> Result<PathBuf, GuestBuildError> {
        if let Some(lib) = &self.runtime {
            return Ok(lib.clone());
        }
        let lib_dir = self.out_dir.join("runtime");
        std::fs::create_dir_all(&lib_dir).map_err(|source| GuestBuildError::Io {
            path: lib_dir.clone(),
            source,
        })?;
        let script = self.out_dir.join("zone-guest.ld");
        std::fs::write(&script, LINKER_SCRIPT).map_err(|source| GuestBuildError::Io {
            path: script.clone(),
            source,
        })?;
        let lib = lib_dir.join("libzone_guest.rlib");
        let mut cmd = self.rustc_command();
        cmd.args(["--crate-type", "rlib", "--crate-name", "zone_guest"])
            .args(["--cfg", "feature=\"runtime\""])
            .arg("-o")
            .arg(&lib)
            .arg(Self::runtime_source_dir().join("lib.rs"));
        self.run(cmd, "zone-guest runtime")?;
        self.runtime = Some(lib.clone());
        Ok(lib)
    }

    fn rustc_command(&self) -> Command {
        let mut cmd = Command::new(&self.rustc);
        // Flags meant for host code (coverage, sanitizers, target-cpu) must not leak into guests.
        cmd.env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS");
        cmd.args(["--edition", "2024", "--target", TARGET])
            .args(["-C", "panic=abort", "-C", "relocation-model=static"])
            .args([
                "-C",
                "target-feature=+crt-static",
                "-C",
                "debuginfo=0",
                "-C",
                "strip=debuginfo",
            ])
            .arg("-C")
            .arg(format!("opt-level={}", self.opt_level));
        cmd
    }

    fn run(&self, mut cmd: Command, what: &str) -> Result<(), GuestBuildError> {
        let out = cmd.output().map_err(|source| GuestBuildError::Spawn {
            rustc: self.rustc.clone(),
            source,
        })?;
        if out.status.success() {
            return Ok(());
        }
        let stderr: Vec<u8> = out.stderr;
        Err(GuestBuildError::Rustc {
            what: what.to_string(),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
        })
    }
}
