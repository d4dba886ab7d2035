//! `build()` validates before touching KVM and names the zone and the fix in its errors.

mod common;

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

#[test]
fn missing_kvm_device_is_explained() {
    let err = Zone::builder()
        .name("nokvm")
        .micro(hello())
        .kvm_device("/nonexistent/kvm")
        .build()
        .unwrap_err();
    assert!(
        matches!(
            err,
            BuildError::Kvm {
                source: KvmError::Missing { .. },
                ..
            }
        ),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("zone nokvm") && msg.contains("/nonexistent/kvm") && msg.contains("kvm_amd"),
        "{msg}"
    );
}

#[test]
fn a_device_that_is_not_kvm_is_explained() {
    let err = Zone::builder()
        .micro(hello())
        .kvm_device("/dev/null")
        .build()
        .unwrap_err();
    assert!(
        matches!(
            err,
            BuildError::Kvm {
                source: KvmError::NotKvm { .. },
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn unreadable_kvm_device_is_explained() {
    // Root can open anything, so the permission case is checked only as another user.
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        eprintln!(
            "SKIPPED unreadable_kvm_device_is_explained: running as root, permissions do not apply"
        );
        return;
    }
    let dir = std::env::temp_dir().join(format!("zones-perm-{}", std::process::id()));
    std::fs::write(&dir, b"").unwrap();
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o000)).unwrap();
    let err = Zone::builder()
        .micro(hello())
        .kvm_device(&dir)
        .build()
        .unwrap_err();
    std::fs::remove_file(&dir).unwrap();
    assert!(
        matches!(
            err,
            BuildError::Kvm {
                source: KvmError::Permission { .. },
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn invalid_elf_is_rejected_before_any_zone_exists() {
    assert!(GuestProgram::from_elf(b"not an elf").is_err());
    assert!(GuestProgram::from_elf(&[]).is_err());
}
