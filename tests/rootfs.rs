//! Linux zones with a real userland: Debian bookworm with Python (made by `lab/images` with
//! mmdebstrap) as a directory, as an ext4 image and as an OCI archive; a writable layer per
//! zone over one shared, read-only image. These need a KVM that runs a guest kernel: they run
//! in the lab (`lab/test rootfs`); elsewhere they print SKIPPED and return.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use zones::prelude::*;
use zones::{Command, LinuxBoot, Rootfs};

/// The lab's images (see `lab/images`).
fn images() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/lab-images")
}

fn python_dir() -> PathBuf {
    let dir = images().join("debian-python");
    assert!(
        dir.join("usr/bin/python3").exists(),
        "no {}: lab/setup builds it (lab/images)",
        dir.display()
    );
    dir
}

/// A cache directory of this test run (the lab's root is read-only; /tmp is not).
fn cache() -> PathBuf {
    std::env::temp_dir().join(format!("zones-rootfs-cache-{}", std::process::id()))
}

fn boot(rootfs: Rootfs) -> LinuxBoot {
    LinuxBoot::host_kernel()
        .expect("a kernel in /boot")
        .hide_xsave(std::env::var("ZONES_LAB").is_ok())
        .rootfs(rootfs.cache_dir(cache()))
}

fn zone(rootfs: Rootfs) -> Zone {
    Zone::builder()
        .memory_mib(256)
        .linux(boot(rootfs))
        .deadline(common::scaled(Duration::from_secs(120)))
        .build()
        .expect("Linux zone with a root filesystem")
}

fn run(zone: &Zone, cmd: &Command) -> zones::Output {
    common::run_when_ready(zone, cmd)
}

fn sh(script: &str) -> Command {
    Command::new("sh").arg("-c").arg(script)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).trim().to_string()
}

fn sha256(path: &Path) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// The newest ext4 image in the cache (the one the last directory build made).
fn cached_image() -> PathBuf {
    std::fs::read_dir(cache())
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "ext4"))
        .max_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .expect("an image in the cache")
}

#[test]
fn python_runs_from_a_directory_an_image_and_an_oci_archive() {
    require_linux!();
    let started = Instant::now();
    let from_dir = zone(Rootfs::dir(python_dir()));
    let out = run(
        &from_dir,
        &Command::new("python3").arg("-c").arg("print(6*7)"),
    );
    eprintln!(
        "directory: first python3 answer after {:?}",
        started.elapsed()
    );
    assert_eq!(text(&out.stdout), "42", "stderr {:?}", text(&out.stderr));
    let os = run(
        &from_dir,
        &sh("grep ^VERSION_CODENAME= /etc/os-release; cat /etc/motd | wc -c"),
    );
    let os = text(&os.stdout);
    assert!(os.starts_with("VERSION_CODENAME=bookworm"), "{os}");
    drop(from_dir);

    // The image the directory became, attached as an image.
    let image = cached_image();
    let from_image = zone(Rootfs::image(&image));
    let out = run(
        &from_image,
        &Command::new("python3")
            .arg("-c")
            .arg("import sys; print(sys.version_info[0])"),
    );
    assert_eq!(text(&out.stdout), "3");
    drop(from_image);

    // The OCI archive: its second layer added /srv/app/hello.py and deleted /etc/motd; its
    // configuration sets Env, WorkingDir and User (nobody).
    let started = Instant::now();
    let from_oci = zone(Rootfs::oci(images().join("debian-python.tar")));
    let out = run(&from_oci, &Command::new("python3").arg("hello.py"));
    eprintln!(
        "OCI archive (first use unpacks it): first answer after {:?}",
        started.elapsed()
    );
    assert_eq!(
        text(&out.stdout),
        "hello from the image",
        "stderr {:?}",
        text(&out.stderr)
    );
    let out = run(
        &from_oci,
        &sh(
            "pwd; echo $ZONES_IMAGE; test -e /etc/motd && echo motd || echo no-motd; id -un; \
             touch /etc/x 2>&1 | grep -c denied",
        ),
    );
    assert_eq!(text(&out.stdout), "/srv/app\noci\nno-motd\nnobody\n1");
}

#[test]
fn writes_stay_in_the_zone_and_the_image_is_unchanged() {
    require_linux!();
    let a = zone(Rootfs::dir(python_dir()).writable_mib(64));
    run(&a, &sh("true"));
    let image = cached_image();
    let before = sha256(&image);
    let b = zone(Rootfs::dir(python_dir()));
    // Zone a writes everywhere it can, including the disk device itself.
    let script = "echo a > /etc/zone-a; for d in / /usr /usr/bin /etc /var /root; do echo x > $d/zones-write-test; done; \
                  rm -rf /usr/lib/python3*; \
                  for dev in /dev/vd*; do dd if=/dev/zero of=$dev bs=4096 count=16 conv=notrunc 2>&1; done; \
                  mount -o remount,rw / 2>&1; sync; echo done";
    let out = run(&a, &sh(script));
    assert!(text(&out.stdout).ends_with("done"), "{out:?}");
    let seen = run(
        &a,
        &sh("cat /etc/zone-a; python3 -c pass 2>/dev/null && echo python || echo no-python"),
    );
    assert_eq!(
        text(&seen.stdout),
        "a\nno-python",
        "zone a sees its own writes"
    );
    let other = run(
        &b,
        &sh("cat /etc/zone-a 2>&1; ls /zones-write-test 2>&1; python3 -c 'print(1)'"),
    );
    let other = text(&other.stdout);
    assert!(
        other.contains("No such file"),
        "zone b sees none of them: {other}"
    );
    assert!(other.ends_with('1'), "zone b still has python: {other}");
    drop(a);
    drop(b);
    assert_eq!(sha256(&image), before, "the base image is unchanged");
    assert!(!python_dir().join("etc/zone-a").exists());
    // A new zone on the same image starts clean.
    let c = zone(Rootfs::dir(python_dir()));
    let out = run(&c, &sh("test -e /etc/zone-a && echo dirty || echo clean"));
    assert_eq!(text(&out.stdout), "clean");
}

#[test]
fn a_scratch_disk_takes_the_writes_and_its_bound_holds() {
    require_linux!();
    let dir = std::env::temp_dir().join(format!("zones-scratch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let scratch = dir.join("scratch.raw");
    let z = zone(Rootfs::dir(python_dir()).scratch_disk(&scratch, 64));
    let out = run(
        &z,
        &sh("head -c 33554432 /dev/urandom > /big && echo wrote; sync"),
    );
    assert_eq!(text(&out.stdout), "wrote", "{out:?}");
    drop(z);
    // The bytes went to the (sparse) scratch disk on the host.
    let allocated =
        std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(&scratch).unwrap()) * 512;
    assert!(
        allocated >= 32 << 20,
        "{allocated} bytes allocated on the scratch disk"
    );
    // A tmpfs layer refuses writes past its bound (ENOSPC), without harm to the zone.
    let z = zone(Rootfs::dir(python_dir()).writable_mib(8));
    let out = run(
        &z,
        &sh("dd if=/dev/zero of=/big bs=1M count=32 2>&1; echo still-here"),
    );
    let stdout = text(&out.stdout);
    assert!(stdout.contains("No space left"), "{stdout}");
    assert!(stdout.ends_with("still-here"), "{stdout}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn eight_zones_share_one_image() {
    require_linux!();
    let rootfs = Rootfs::dir(python_dir());
    // Made once before the zones start, so that they race on nothing but the boot.
    drop(zone(rootfs.clone()));
    let started = Instant::now();
    let zones: Vec<Zone> = (0..8)
        .map(|_| {
            Zone::builder()
                .memory_mib(192)
                .linux(boot(rootfs.clone()))
                .deadline(common::scaled(Duration::from_secs(180)))
                .build()
                .expect("zone")
        })
        .collect();
    let answers: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = zones
            .iter()
            .enumerate()
            .map(|(i, z)| {
                s.spawn(move || {
                    let cmd = Command::new("python3").arg("-c").arg(format!(
                        "open('/tmp/me','w').write('{i}'); print(open('/tmp/me').read())"
                    ));
                    text(&run(z, &cmd).stdout)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    eprintln!(
        "8 zones on one image answered after {:?}",
        started.elapsed()
    );
    for (i, answer) in answers.iter().enumerate() {
        assert_eq!(answer, &i.to_string());
    }
}
