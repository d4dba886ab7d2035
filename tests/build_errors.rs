//! `build()` validates before touching KVM and names the zone and the fix in its errors.

mod common;

use std::os::unix::fs::PermissionsExt;
use zones::prelude::*;
use zones::{HostFnNameError, KvmError};

fn hello() -> GuestProgram {
    guest!("COMPUTE")
}

#[test]
fn zero_and_too_many_vcpus_are_refused() {
    for n in [0, 65] {
        let err = Zone::builder()
            .name("v")
            .vcpus(n)
            .micro(hello())
            .build()
            .unwrap_err();
        assert!(
            matches!(err, BuildError::Vcpus { vcpus, .. } if vcpus == n),
            "{err}"
        );
        assert!(err.to_string().starts_with("zone v:"), "{err}");
    }
}

#[test]
fn memory_too_small_for_the_program_says_how_much_is_needed() {
    let err = Zone::builder()
        .name("tiny")
        .memory_mib(4)
        .vcpus(16)
        .micro(hello())
        .build()
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, BuildError::Layout { .. }), "{msg}");
    assert!(
        msg.contains("zone tiny") && msg.contains("MiB") && msg.contains("memory_mib"),
        "{msg}"
    );
}

#[test]
fn missing_payload_and_bad_host_functions() {
    assert!(matches!(
        Zone::builder().build(),
        Err(BuildError::NoPayload { .. })
    ));
    let dup = Zone::builder()
        .micro(hello())
        .host_fn_u64("f", |_| 0)
        .host_fn_u64("f", |_| 1)
        .build();
    assert!(matches!(
        dup,
        Err(BuildError::HostFunction {
            source: HostFnNameError::Duplicate(_),
            ..
        })
    ));
    let bad = Zone::builder()
        .micro(hello())
        .host_fn_u64("two words", |_| 0)
        .build();
    assert!(matches!(
        bad,
        Err(BuildError::HostFunction {
            source: HostFnNameError::Invalid(_),
            ..
        })
    ));
    let nul = Zone::builder().micro(hello().arg("a\0b")).build();
    assert!(matches!(nul, Err(BuildError::Load { .. })));
}

/// The error of building zone `nokvm` with `device` as its KVM device.
fn build_with_kvm_device(device: impl Into<std::path::PathBuf>) -> BuildError {
    Zone::builder()
        .name("nokvm")
        .micro(hello())
        .kvm_device(device)
        .build()
        .unwrap_err()
}

/// The KVM error inside `err`; any other error fails the test.
fn kvm_error(err: &BuildError) -> &KvmError {
    match err {
        BuildError::Kvm { source, .. } => source,
        other => panic!("expected a KVM error, got: {other}"),
    }
}

#[test]
fn missing_kvm_device_is_explained() {
    let err = build_with_kvm_device("/nonexistent/kvm");
    assert!(matches!(kvm_error(&err), KvmError::Missing { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("zone nokvm") && msg.contains("/nonexistent/kvm") && msg.contains("kvm_amd"),
        "{msg}"
    );
}

#[test]
fn a_device_that_is_not_kvm_is_explained() {
    let err = build_with_kvm_device("/dev/null");
    assert!(matches!(kvm_error(&err), KvmError::NotKvm { .. }), "{err}");
}

/// The user the permission test drops to when it runs as root (`nobody` on Debian).
const UNPRIVILEGED: u32 = 65534;

#[test]
fn unreadable_kvm_device_is_explained() {
    // Root can open anything: as root, run this test again in a child as an unprivileged user.
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        use std::os::unix::process::CommandExt;
        // A copy the unprivileged user can reach: the build directory may be private.
        let dir = std::env::temp_dir().join(format!("zones-perm-exe-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, PermissionsExt::from_mode(0o755)).unwrap();
        let exe = dir.join("build_errors");
        std::fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
        std::fs::set_permissions(&exe, PermissionsExt::from_mode(0o755)).unwrap();
        let child = std::process::Command::new(&exe)
            .args([
                "--exact",
                "unreadable_kvm_device_is_explained",
                "--nocapture",
            ])
            .args(["--test-threads", "1"])
            .uid(UNPRIVILEGED)
            .gid(UNPRIVILEGED)
            .output();
        std::fs::remove_dir_all(&dir).unwrap();
        match child {
            Ok(out) => {
                let stdout = String::from_utf8_lossy(&out.stdout);
                assert!(
                    out.status.success() && stdout.contains("1 passed"),
                    "as uid {UNPRIVILEGED}: {}\n{stdout}\n{}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            Err(e) => common::skipped(format_args!(
                "unreadable_kvm_device_is_explained: cannot run {} as uid {UNPRIVILEGED} ({e})",
                exe.display()
            )),
        }
        return;
    }
    let dir = std::env::temp_dir().join(format!("zones-perm-{}", std::process::id()));
    std::fs::write(&dir, b"").unwrap();
    std::fs::set_permissions(&dir, PermissionsExt::from_mode(0o000)).unwrap();
    let err = build_with_kvm_device(&dir);
    std::fs::remove_file(&dir).unwrap();
    assert!(
        matches!(kvm_error(&err), KvmError::Permission { .. }),
        "{err}"
    );
    println!("{err}");
}

#[test]
fn invalid_elf_is_rejected_before_any_zone_exists() {
    assert!(GuestProgram::from_elf(b"not an elf").is_err());
    assert!(GuestProgram::from_elf(&[]).is_err());
}

/// A root filesystem on a kernel without overlayfs, or in a format zones does not mount, is
/// refused before any zone exists, naming the zone, the module or image, and the fix.
#[test]
fn root_filesystem_errors_name_the_fix() {
    let dir = std::env::temp_dir().join(format!("zones-rootfs-errors-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("modules/kernel")).unwrap();
    // A modular kernel that has the agent's modules and ext4, but no overlay.
    let mut dep = String::new();
    for m in [
        "virtio_mmio",
        "vmw_vsock_virtio_transport",
        "virtio_blk",
        "ext4",
    ] {
        std::fs::write(dir.join(format!("modules/kernel/{m}.ko")), b"\x7fELF").unwrap();
        dep.push_str(&format!("kernel/{m}.ko:\n"));
    }
    std::fs::write(dir.join("modules/modules.dep"), dep).unwrap();
    let mut ext4 = vec![0u8; 8192];
    ext4[1080..1082].copy_from_slice(&[0x53, 0xef]);
    std::fs::write(dir.join("fs.ext4"), &ext4).unwrap();
    std::fs::write(dir.join("notes.txt"), vec![b'x'; 8192]).unwrap();
    let build = |rootfs: zones::Rootfs| {
        Zone::builder()
            .name("imagezone")
            .memory_mib(128)
            .linux(
                zones::LinuxBoot::from_image(vec![0u8; 4096])
                    .modules_dir(dir.join("modules"))
                    .rootfs(rootfs),
            )
            .build()
            .unwrap_err()
            .to_string()
    };
    let err = build(zones::Rootfs::image(dir.join("fs.ext4")));
    assert!(
        err.contains("imagezone") && err.contains("`overlay`"),
        "{err}"
    );
    let err = build(zones::Rootfs::image(dir.join("notes.txt")));
    assert!(
        err.contains("notes.txt") && err.contains("not an ext4, erofs or squashfs image"),
        "{err}"
    );
    let err = build(zones::Rootfs::oci(dir.join("notes.txt")).cache_dir(dir.join("cache")));
    assert!(
        err.contains("OCI image") && err.contains("notes.txt"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
