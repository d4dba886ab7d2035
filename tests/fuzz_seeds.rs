//! The fuzz targets' seed corpora (`fuzz/seeds/<target>/`): every seed runs through its target
//! here, and `cargo test --test fuzz_seeds -- --ignored` writes them anew (the ELF loader's
//! seeds are guest programs this build produces, whole and cut short).

use std::path::Path;

/// Guest programs used as ELF seeds.
const ELFS: [(&str, &str); 4] = [
    ("hello", env!("ZONES_GUEST_HELLO")),
    ("bench", env!("ZONES_GUEST_BENCH")),
    ("faults", env!("ZONES_GUEST_FAULTS")),
    ("stray_ports", env!("ZONES_GUEST_STRAY_PORTS")),
];

fn all() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut seeds = zones::fuzzing::seeds::seeds();
    seeds.extend(zones::net::fuzzing::seeds());
    for (name, path) in ELFS {
        let elf = std::fs::read(path).expect("guest ELF");
        seeds.push((
            "elf_loader",
            format!("{name}-head"),
            elf[..elf.len().min(512)].to_vec(),
        ));
        seeds.push(("elf_loader", name.to_string(), elf));
    }
    seeds
}

#[test]
fn every_seed_runs_through_its_target() {
    for (target, name, bytes) in all() {
        match target {
            "elf_loader" => zones::fuzzing::elf(&bytes),
            "hypercall_args" => zones::fuzzing::hypercall(&bytes),
            "blk_request" => zones::fuzzing::blk_request(&bytes),
            "vsock_packets" => zones::fuzzing::vsock(&bytes),
            "net_frames" => zones::net::fuzzing::frames(&bytes),
            "net_queues" => zones::net::fuzzing::queues(&bytes),
            "dns_answer" => zones::net::fuzzing::dns_answer(&bytes),
            "oci_layer" => zones::fuzzing::oci_layer(&bytes),
            "pci_config" => zones::fuzzing::pci_config(&bytes),
            other => panic!("no fuzz target {other} (seed {name})"),
        }
    }
}

#[test]
fn the_checked_in_seeds_are_current() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
    for (target, name, bytes) in all().into_iter().filter(|(t, ..)| *t != "elf_loader") {
        let path = root.join(target).join(&name);
        let on_disk = std::fs::read(&path).unwrap_or_default();
        assert!(
            on_disk == bytes,
            "{} is out of date: cargo test --test fuzz_seeds -- --ignored",
            path.display()
        );
    }
}

#[test]
#[ignore = "writes fuzz/seeds/; run when a seed or a target's format changes"]
fn write_seeds() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
    for (target, name, bytes) in all() {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}
