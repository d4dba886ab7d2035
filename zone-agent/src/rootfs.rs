//! The root filesystem the host attached (zone-core's `Rootfs`): PID 1 mounts the read-only
//! image, puts an overlay with the zone's writable layer over it, moves `/dev`, `/proc`, `/sys`,
//! `/tmp` and `/run` there and switches root (as `switch_root` does: the new root is moved onto
//! `/` and chrooted into). The agent keeps running from its initramfs inode and serves exec in
//! the new root.
//!
//! The host describes it in [`CONFIG`], one `key value` a line: `fstype ext4|erofs|squashfs`,
//! `writable tmpfs <bytes>` or `writable disk`, then the image's `env KEY=VALUE` lines,
//! `workdir <dir>` and `user <user>[:<group>]`. Disks are found by their virtio-blk serial.

use crate::sys;
use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use crate::proto::rootfs::{CONFIG, ROOTFS_SERIAL, SCRATCH_SERIAL};
/// How long PID 1 waits for a disk to appear.
const DISK_WAIT: Duration = Duration::from_secs(10);

/// Where the zone's writes go.
#[derive(Debug, PartialEq, Eq)]
pub enum Writable {
    /// A tmpfs of at most this many bytes.
    Tmpfs(u64),
    /// The scratch disk (ext4).
    Disk,
}

/// The root filesystem as the host described it.
#[derive(Debug, PartialEq, Eq)]
pub struct Config {
    /// ext4, erofs or squashfs.
    pub fstype: String,
    /// The writable layer.
    pub writable: Writable,
    /// The image's environment, `(key, value)`.
    pub env: Vec<(String, String)>,
    /// The image's working directory.
    pub workdir: Option<String>,
    /// The image's user.
    pub user: Option<String>,
}

/// Parses [`CONFIG`]'s text.
pub fn parse(text: &str) -> Result<Config, String> {
    let mut fstype = None;
    let mut writable = None;
    let mut cfg = Config {
        fstype: String::new(),
        writable: Writable::Disk,
        env: Vec::new(),
        workdir: None,
        user: None,
    };
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let (key, value) = line.split_once(' ').unwrap_or((line, ""));
        match key {
            "fstype" if matches!(value, "ext4" | "erofs" | "squashfs") => {
                fstype = Some(value.to_owned());
            }
            "writable" if value == "disk" => writable = Some(Writable::Disk),
            "writable" => {
                let bytes = value
                    .strip_prefix("tmpfs ")
                    .and_then(|b| b.parse().ok())
                    .ok_or_else(|| format!("bad line {line:?}"))?;
                writable = Some(Writable::Tmpfs(bytes));
            }
            "env" => {
                let (k, v) = value.split_once('=').unwrap_or((value, ""));
                if !k.is_empty() {
                    cfg.env.push((k.to_owned(), v.to_owned()));
                }
            }
            "workdir" => cfg.workdir = Some(value.to_owned()),
            "user" => cfg.user = Some(value.to_owned()),
            _ => return Err(format!("bad line {line:?}")),
        }
    }
    cfg.fstype = fstype.ok_or("no fstype line")?;
    cfg.writable = writable.ok_or("no writable line")?;
    Ok(cfg)
}

/// The block device whose virtio serial is `serial`, looked up in `sys_block` (`/sys/block`).
pub fn disk_with_serial(sys_block: &Path, serial: &str) -> Option<PathBuf> {
    std::fs::read_dir(sys_block)
        .ok()?
        .filter_map(Result::ok)
        .find(|e| {
            std::fs::read_to_string(e.path().join("serial"))
                .is_ok_and(|s| s.trim_end_matches(['\n', '\0']) == serial)
        })
        .map(|e| Path::new("/dev").join(e.file_name()))
}

/// Waits (bounded) for the disk with `serial`.
fn wait_for_disk(serial: &str) -> Result<PathBuf, String> {
    let started = std::time::Instant::now();
    loop {
        if let Some(dev) = disk_with_serial(Path::new("/sys/block"), serial) {
            return Ok(dev);
        }
        if started.elapsed() > DISK_WAIT {
            return Err(format!(
                "no disk with serial {serial} after {DISK_WAIT:?}; is virtio_blk in the guest kernel?"
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn c(path: &str) -> Result<CString, String> {
    CString::new(path).map_err(|_| format!("{path:?} holds a NUL byte"))
}

fn mount(source: &str, target: &str, fstype: &str, flags: u64, data: &str) -> Result<(), String> {
    let data_c = c(data)?;
    sys::mount(
        &c(source)?,
        &c(target)?,
        &c(fstype)?,
        flags,
        (!data.is_empty()).then_some(data_c.as_c_str()),
    )
    .map_err(|e| format!("mount {fstype} {source} on {target}: {e}"))
}

fn mkdir(path: &str) -> Result<(), String> {
    std::fs::create_dir_all(path).map_err(|e| format!("mkdir {path}: {e}"))
}

/// Mounts the root filesystem of `cfg` and switches root to it.
pub fn switch(cfg: &Config) -> Result<(), String> {
    let dev = wait_for_disk(ROOTFS_SERIAL)?;
    let dev = dev.to_string_lossy().into_owned();
    for dir in ["/zones/base", "/zones/rw", "/zones/root"] {
        mkdir(dir)?;
    }
    // `noload`: never replay a journal on the read-only device.
    let data = if cfg.fstype == "ext4" { "noload" } else { "" };
    mount(&dev, "/zones/base", &cfg.fstype, sys::MS_RDONLY, data).map_err(|e| {
        format!(
            "{e}; is the image really {}, and its module in the kernel?",
            cfg.fstype
        )
    })?;
    match cfg.writable {
        Writable::Tmpfs(bytes) => mount(
            "tmpfs",
            "/zones/rw",
            "tmpfs",
            sys::MS_NOSUID | sys::MS_NODEV,
            &format!("size={bytes},mode=0755"),
        )?,
        Writable::Disk => {
            let scratch = wait_for_disk(SCRATCH_SERIAL)?;
            mount(&scratch.to_string_lossy(), "/zones/rw", "ext4", 0, "")?;
        }
    }
    mkdir("/zones/rw/upper")?;
    mkdir("/zones/rw/work")?;
    mount(
        "overlay",
        "/zones/root",
        "overlay",
        0,
        "lowerdir=/zones/base,upperdir=/zones/rw/upper,workdir=/zones/rw/work",
    )
    .map_err(|e| format!("{e}; is overlayfs in the guest kernel?"))?;
    for dir in ["/dev", "/proc", "/sys", "/tmp", "/run"] {
        let target = format!("/zones/root{dir}");
        mkdir(&target)?;
        mount(dir, &target, "", sys::MS_MOVE, "")?;
    }
    std::env::set_current_dir("/zones/root").map_err(|e| format!("chdir: {e}"))?;
    mount(".", "/", "", sys::MS_MOVE, "")?;
    std::os::unix::fs::chroot(".").map_err(|e| format!("chroot: {e}"))?;
    std::env::set_current_dir("/").map_err(|e| format!("chdir /: {e}"))?;
    Ok(())
}

/// `user[:group]` (names or numbers) resolved against the image's `/etc/passwd` and
/// `/etc/group`: `(uid, gid, home)`.
pub fn resolve_user(spec: &str, passwd: &str, group: &str) -> Result<(u32, u32, String), String> {
    let (user, grp) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let entry = passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() >= 7 && (f[0] == user || f[2] == user));
    let (uid, mut gid, home) = match (&entry, user.parse::<u32>()) {
        (Some(f), _) => (
            f[2].parse()
                .map_err(|_| format!("bad /etc/passwd line for {user}"))?,
            f[3].parse()
                .map_err(|_| format!("bad /etc/passwd line for {user}"))?,
            f[5].to_owned(),
        ),
        (None, Ok(uid)) => (uid, uid, "/".to_owned()),
        (None, Err(_)) => return Err(format!("user {user:?} is not in the image's /etc/passwd")),
    };
    if let Some(g) = grp {
        gid = match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => group
                .lines()
                .map(|l| l.split(':').collect::<Vec<_>>())
                .find(|f| f.len() >= 3 && f[0] == g)
                .and_then(|f| f[2].parse().ok())
                .ok_or_else(|| format!("group {g:?} is not in the image's /etc/group"))?,
        };
    }
    Ok((uid, gid, home))
}

/// What the server needs to know after the switch: set in its environment by PID 1 and taken
/// out of it by the server at start (commands do not see these variables).
pub mod server_env {
    /// Default working directory of commands.
    pub const CWD: &str = "ZONE_AGENT_CWD";
    /// `uid:gid` commands run as.
    pub const USER: &str = "ZONE_AGENT_USER";
    /// Why the root filesystem could not be set up: every exec is refused with it.
    pub const ROOTFS_ERROR: &str = "ZONE_AGENT_ROOTFS_ERROR";
    /// PID 1's boot marks ([`crate::proto::boot`]).
    pub const BOOT: &str = "ZONE_AGENT_BOOT";
    /// The descriptor of the agent port's listening socket, which PID 1 opened.
    pub const LISTEN_FD: &str = "ZONE_AGENT_LISTEN_FD";
}

/// PID 1's part: when the host described a root filesystem, switch to it and return the
/// variables for the server (or the error that every exec will report). Without [`CONFIG`]:
/// nothing.
pub fn setup() -> Vec<(&'static str, String)> {
    let text = match std::fs::read_to_string(CONFIG) {
        Ok(t) => t,
        Err(_) => return Vec::new(),
    };
    match setup_from(&text) {
        Ok(vars) => vars,
        Err(e) => {
            let msg = format!("the zone's root filesystem could not be set up: {e}");
            eprintln!("zone-agent: {msg}");
            vec![(server_env::ROOTFS_ERROR, msg)]
        }
    }
}

fn setup_from(text: &str) -> Result<Vec<(&'static str, String)>, String> {
    let cfg = parse(text)?;
    switch(&cfg)?;
    let mut vars = Vec::new();
    for (k, v) in &cfg.env {
        // SAFETY: PID 1 is single-threaded here (no thread has been started yet).
        unsafe { std::env::set_var(k, v) };
    }
    if let Some(dir) = cfg.workdir.filter(|d| !d.is_empty()) {
        vars.push((server_env::CWD, dir));
    }
    if let Some(spec) = cfg.user.filter(|u| !u.is_empty()) {
        let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
        let group = std::fs::read_to_string("/etc/group").unwrap_or_default();
        let (uid, gid, home) = resolve_user(&spec, &passwd, &group)?;
        // SAFETY: as above, single-threaded.
        unsafe { std::env::set_var("HOME", &home) };
        vars.push((server_env::USER, format!("{uid}:{gid}")));
    }
    Ok(vars)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configurations_parse() {
        let cfg = parse(
            "fstype ext4\nwritable tmpfs 1048576\nenv PATH=/usr/bin:/bin\nenv X=a=b\nworkdir /app\nuser 1000:1000\n",
        )
        .unwrap();
        assert_eq!(cfg.fstype, "ext4");
        assert_eq!(cfg.writable, Writable::Tmpfs(1 << 20));
        assert_eq!(
            cfg.env,
            [
                ("PATH".into(), "/usr/bin:/bin".into()),
                ("X".into(), "a=b".into())
            ]
        );
        assert_eq!(cfg.workdir.as_deref(), Some("/app"));
        assert_eq!(cfg.user.as_deref(), Some("1000:1000"));
        assert_eq!(
            parse("fstype erofs\nwritable disk\n").unwrap().writable,
            Writable::Disk
        );
        for bad in [
            "",
            "fstype ext4\n",
            "fstype ntfs\nwritable disk\n",
            "fstype ext4\nwritable tmpfs x\n",
            "fstype ext4\nwritable disk\nbogus 1\n",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn users_resolve_against_the_image() {
        let passwd = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n";
        let group = "root:x:0:\nstaff:x:50:\n";
        assert_eq!(
            resolve_user("app", passwd, group).unwrap(),
            (1000, 1001, "/home/app".into())
        );
        assert_eq!(
            resolve_user("1000", passwd, group).unwrap(),
            (1000, 1001, "/home/app".into())
        );
        assert_eq!(
            resolve_user("app:staff", passwd, group).unwrap(),
            (1000, 50, "/home/app".into())
        );
        assert_eq!(
            resolve_user("4242:7", passwd, group).unwrap(),
            (4242, 7, "/".into())
        );
        assert!(resolve_user("ghost", passwd, group).is_err());
        assert!(resolve_user("app:ghosts", passwd, group).is_err());
    }

    #[test]
    fn disks_are_found_by_serial() {
        let dir = std::env::temp_dir().join(format!("zone-agent-block-{}", std::process::id()));
        for (dev, serial) in [("vda", "data\n"), ("vdb", "zones-rootfs\0\0")] {
            std::fs::create_dir_all(dir.join(dev)).unwrap();
            std::fs::write(dir.join(dev).join("serial"), serial).unwrap();
        }
        std::fs::create_dir_all(dir.join("loop0")).unwrap();
        assert_eq!(
            disk_with_serial(&dir, "zones-rootfs"),
            Some(PathBuf::from("/dev/vdb"))
        );
        assert_eq!(disk_with_serial(&dir, "zones-scratch"), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
