use super::*;
use std::os::unix::fs::symlink;

/// A fake sysfs: devices with IDs, drivers and IOMMU groups.
struct FakeSys(PathBuf);

impl FakeSys {
    fn new(name: &str) -> Self {
        let root =
            std::env::temp_dir().join(format!("zone-gpu-sysfs-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("bus/pci/drivers/vfio-pci")).unwrap();
        std::fs::create_dir_all(root.join("bus/pci/drivers/nvme")).unwrap();
        Self(root)
    }

    fn device(&self, address: &str, id: (u16, u16), driver: Option<&str>, group: Option<u32>) {
        let dev = self.0.join("devices/pci0000:00").join(address);
        std::fs::create_dir_all(&dev).unwrap();
        std::fs::write(dev.join("vendor"), format!("0x{:04x}\n", id.0)).unwrap();
        std::fs::write(dev.join("device"), format!("0x{:04x}\n", id.1)).unwrap();
        std::fs::create_dir_all(self.0.join("bus/pci/devices")).unwrap();
        symlink(&dev, self.0.join("bus/pci/devices").join(address)).unwrap();
        if let Some(d) = driver {
            symlink(self.0.join("bus/pci/drivers").join(d), dev.join("driver")).unwrap();
        }
        if let Some(g) = group {
            let group = self.0.join(format!("kernel/iommu_groups/{g}"));
            std::fs::create_dir_all(group.join("devices")).unwrap();
            symlink(&group, dev.join("iommu_group")).unwrap();
            symlink(&dev, group.join("devices").join(address)).unwrap();
        }
    }

    fn gpu(&self, address: &str) -> Gpu {
        Gpu::vfio(address).sysfs_root(&self.0)
    }
}

impl Drop for FakeSys {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn addresses_are_checked_before_sysfs() {
    for bad in [
        "",
        "41:00.0",
        "0000:41:00.8",
        "0000:41:20.0",
        "0000:4g:00.0",
        "0000:41:00.0.1",
    ] {
        assert!(!valid_address(bad), "{bad}");
    }
    assert!(valid_address("0000:41:1f.7"));
    let sys = FakeSys::new("addr");
    let e = check(&sys.gpu("41:00.0"), "z").unwrap_err();
    assert!(matches!(e, GpuError::BadAddress { .. }), "{e}");
}

#[test]
fn a_device_bound_to_vfio_alone_in_its_group_passes_and_is_claimed_once() {
    let sys = FakeSys::new("ok");
    sys.device("0000:00:02.0", (0x1b36, 0x0010), Some("vfio-pci"), Some(2));
    let checked = check(&sys.gpu("0000:00:02.0").expect_id(0x1b36, 0x0010), "zone-a").unwrap();
    assert_eq!(checked.group, 2);
    let e = check(&sys.gpu("0000:00:02.0"), "zone-b").unwrap_err();
    assert!(
        matches!(&e, GpuError::InUse { zone, .. } if zone == "zone-a"),
        "{e}"
    );
    drop(checked);
    assert!(
        check(&sys.gpu("0000:00:02.0"), "zone-b").is_ok(),
        "released with the claim"
    );
}

#[test]
fn every_refusal_names_its_fix() {
    let sys = FakeSys::new("refusals");
    sys.device("0000:00:02.0", (0x1b36, 0x0010), Some("nvme"), Some(2));
    sys.device("0000:00:03.0", (0x1234, 0x11e8), None, Some(3));
    sys.device("0000:00:04.0", (0x1234, 0x11e8), Some("vfio-pci"), None);
    sys.device("0000:00:05.0", (0x10de, 0x2330), Some("vfio-pci"), Some(5));
    sys.device("0000:00:06.0", (0x10de, 0x22a3), None, Some(5));

    let e = check(&sys.gpu("0000:00:09.0"), "z")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("no PCI device 0000:00:09.0") && e.contains("lspci"),
        "{e}"
    );

    let e = check(&sys.gpu("0000:00:02.0").expect_id(0x10de, 0x2330), "z").unwrap_err();
    assert!(
        e.to_string().contains("is 1b36:0010, not the 10de:2330"),
        "{e}"
    );

    let e = check(&sys.gpu("0000:00:02.0"), "z")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("bound to nvme")
            && e.contains("echo vfio-pci > /sys/bus/pci/devices/0000:00:02.0/driver_override")
            && e.contains("echo 0000:00:02.0 > /sys/bus/pci/devices/0000:00:02.0/driver/unbind")
            && e.contains("bind_vfio(true)"),
        "{e}"
    );
    let e = check(&sys.gpu("0000:00:03.0"), "z")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("bound to no driver") && !e.contains("unbind"),
        "{e}"
    );

    let e = check(&sys.gpu("0000:00:04.0"), "z")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("no IOMMU group") && e.contains("intel_iommu=on"),
        "{e}"
    );

    let e = check(&sys.gpu("0000:00:05.0"), "z").unwrap_err();
    assert!(
        matches!(&e, GpuError::SharedGroup { group: 5, others, .. } if others == &["0000:00:06.0"]),
        "{e}"
    );
}

#[test]
fn memlock_is_checked_against_the_limit_unless_the_process_may_lock() {
    assert!(check_memlock(0).is_ok());
    let capable = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("CapEff:"))
        .and_then(|l| u64::from_str_radix(l[7..].trim(), 16).ok())
        .is_some_and(|c| c & (1 << 14) != 0);
    let e = check_memlock(u64::MAX - 1);
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills the struct.
    unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) };
    if capable || limit.rlim_cur == libc::RLIM_INFINITY {
        assert!(e.is_ok());
    } else {
        let e = e.unwrap_err().to_string();
        assert!(
            e.contains("RLIMIT_MEMLOCK") && e.contains("CAP_IPC_LOCK"),
            "{e}"
        );
    }
}
