//! Builds the guest programs that the examples, tests and benchmarks run (from a checkout only:
//! the published package excludes them) and exposes their paths as `ZONES_GUEST_<NAME>`.

use std::path::Path;
use zone_guest::build::GuestBuilder;

fn main() {
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
