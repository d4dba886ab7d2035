//! Compiles the agent executable from a cargo build script with the stock
//! `x86_64-unknown-linux-gnu` toolchain: static (`+crt-static`, no program interpreter),
//! `panic=abort`, optimized for size, symbols stripped. It runs on a bare Linux kernel with
//! nothing but the initramfs.
//!
//! ```no_run
//! // build.rs
//! let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR").unwrap());
//! let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
//! println!("cargo:rerun-if-changed={}", zone_agent::build::source_dir().display());
//! let agent = zone_agent::build::compile(std::path::Path::new(&rustc), &out).unwrap();
//! assert_eq!(agent, out.join("zone-agent"));
//! ```

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The target the agent is compiled for.
pub const TARGET: &str = "x86_64-unknown-linux-gnu";

/// Why the agent could not be built.
#[derive(Debug)]
pub enum AgentBuildError {
    /// The output directory could not be created.
    Io {
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// rustc could not be started.
    Spawn {
        /// The compiler that was run.
        rustc: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// rustc rejected the agent's library or executable.
    Rustc {
        /// `library` or `executable`.
        what: &'static str,
        /// rustc's exit status.
        status: String,
        /// rustc's diagnostics.
        stderr: String,
    },
}

impl fmt::Display for AgentBuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io { path, source } => write!(f, "cannot create {}: {source}", path.display()),
            Self::Spawn { rustc, source } => write!(
                f,
                "cannot run {}: {source}; set RUSTC to a working rustc",
                rustc.display()
            ),
            Self::Rustc {
                what,
                status,
                stderr,
            } => write!(
                f,
                "rustc failed to build the zone-agent {what} ({status}); is the {TARGET} standard \
                 library installed, and static glibc (libc.a, e.g. the libc6-dev package)?\n{stderr}"
            ),
        }
    }
}

impl std::error::Error for AgentBuildError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io { source, .. } | Self::Spawn { source, .. } => Some(source),
            Self::Rustc { .. } => None,
        }
    }
}

/// Source directory of the agent (for `cargo:rerun-if-changed`).
pub fn source_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Compiles the agent with `rustc` into `out_dir` and returns the executable's path,
/// `<out_dir>/zone-agent` (the library lands next to it as `libzone_agent.rlib`).
pub fn compile(rustc: &Path, out_dir: &Path) -> Result<PathBuf, AgentBuildError> {
    std::fs::create_dir_all(out_dir).map_err(|source| AgentBuildError::Io {
        path: out_dir.to_path_buf(),
        source,
    })?;
    let src = source_dir();
    let rlib = out_dir.join("libzone_agent.rlib");
    let mut lib = rustc_command(rustc);
    lib.args(["--crate-type", "rlib", "--crate-name", "zone_agent"])
        .arg(src.join("lib.rs"))
        .arg("-o")
        .arg(&rlib);
    run(rustc, lib, "library")?;

    let exe = out_dir.join("zone-agent");
    let mut bin = rustc_command(rustc);
    bin.args(["--crate-type", "bin", "--crate-name", "zone_agent"])
        .args(["-C", "strip=symbols"])
        .arg("--extern")
        .arg(format!("zone_agent={}", rlib.display()))
        .arg("-L")
        .arg(out_dir)
        .arg(src.join("main.rs"))
        .arg("-o")
        .arg(&exe);
    run(rustc, bin, "executable")?;
    Ok(exe)
}

/// Compiles the single-file program `source` (std only) the same way, static, into
/// `<out_dir>/<name>`: helper programs for a zone's guest (the tests' network probe, say).
pub fn compile_program(
    rustc: &Path,
    source: &Path,
    name: &str,
    out_dir: &Path,
) -> Result<PathBuf, AgentBuildError> {
    std::fs::create_dir_all(out_dir).map_err(|source| AgentBuildError::Io {
        path: out_dir.to_path_buf(),
        source,
    })?;
    let exe = out_dir.join(name);
    let mut bin = rustc_command(rustc);
    bin.args([
        "--crate-type",
        "bin",
        "--crate-name",
        &name.replace('-', "_"),
    ])
    .args(["-C", "strip=symbols"])
    .arg(source)
    .arg("-o")
    .arg(&exe);
    run(rustc, bin, "executable")?;
    Ok(exe)
}

fn rustc_command(rustc: &Path) -> Command {
    let mut cmd = Command::new(rustc);
    // Flags meant for host code (coverage, sanitizers, target-cpu) must not leak into the guest.
    cmd.env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .args(["--edition", "2024", "--target", TARGET])
        .args([
            "-C",
            "opt-level=s",
            "-C",
            "panic=abort",
            "-C",
            "debuginfo=0",
        ])
        .args(["-C", "target-feature=+crt-static"]);
    cmd
}

fn run(rustc: &Path, mut cmd: Command, what: &'static str) -> Result<(), AgentBuildError> {
    let out = cmd.output().map_err(|source| AgentBuildError::Spawn {
        rustc: rustc.to_path_buf(),
        source,
    })?;
    if out.status.success() {
        return Ok(());
    }
    Err(AgentBuildError::Rustc {
        what,
        status: out.status.to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_say_what_failed() {
        let out = std::env::temp_dir().join(format!(
            "zone-agent-build-error-test-{}",
            std::process::id()
        ));
        let e = compile(Path::new("/nonexistent/rustc"), &out).unwrap_err();
        let _ = std::fs::remove_dir_all(&out);
        assert!(matches!(e, AgentBuildError::Spawn { .. }), "{e:?}");
        assert!(e.to_string().contains("/nonexistent/rustc"), "{e}");
        assert!(std::error::Error::source(&e).is_some());
    }

    #[test]
    fn sources_are_this_crate() {
        assert!(source_dir().join("main.rs").is_file());
        assert!(source_dir().join("lib.rs").is_file());
    }
}
