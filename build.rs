//! Builds the guest programs that the examples, tests and benchmarks run (from a checkout only:
//! the published package excludes them) and exposes their paths as `ZONES_GUEST_<NAME>`; and the
//! static helper programs the Linux-zone tests put into their guests (`tests/tools/*.rs`) as
//! `ZONES_TOOL_<NAME>`.

use std::path::Path;
use zone_guest::build::GuestBuilder;

fn main() {
    build_tools();
    let dirs = ["examples/guests", "tests/guests", "benches/guests"];
    println!(
        "cargo:rerun-if-changed={}",
        GuestBuilder::runtime_source_dir().display()
    );
    let mut builder = None;
    for dir in dirs {
        let dir = Path::new(dir);
        println!("cargo:rerun-if-changed={}", dir.display());
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        let mut sources: Vec<_> = entries.filter_map(Result::ok).map(|e| e.path()).collect();
        sources.sort();
        for source in sources
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        {
            let name = source
                .file_stem()
                .and_then(|s| s.to_str())
                .expect("utf-8 guest file name")
                .to_string();
            let builder = builder.get_or_insert_with(|| {
                GuestBuilder::from_env().expect("cargo build-script environment")
            });
            match builder.build(&name, &source) {
                Ok(elf) => println!(
                    "cargo:rustc-env=ZONES_GUEST_{}={}",
                    name.to_uppercase(),
                    elf.display()
                ),
                Err(e) => panic!("building guest program {}: {e}", source.display()),
            }
        }
    }
}

/// Compiles every `tests/tools/<name>.rs` into a static Linux program.
fn build_tools() {
    let dir = Path::new("tests/tools");
    println!("cargo:rerun-if-changed={}", dir.display());
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let rustc =
        std::path::PathBuf::from(std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into()));
    for source in entries.filter_map(Result::ok).map(|e| e.path()) {
        let Some(name) = source.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        if source.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        match zone_agent::build::compile_program(&rustc, &source, name, &out.join("tools")) {
            Ok(exe) => println!(
                "cargo:rustc-env=ZONES_TOOL_{}={}",
                name.to_uppercase(),
                exe.display()
            ),
            Err(e) => panic!("building the test tool {}: {e}", source.display()),
        }
    }
}
