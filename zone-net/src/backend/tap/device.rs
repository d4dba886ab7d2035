//! Opening a host TAP device.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};

/// `TUNSETIFF` = `_IOW('T', 202, int)`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
/// `IFF_TAP | IFF_NO_PI`: Ethernet frames without the packet-information prefix.
const FLAGS: libc::c_short = 0x0002 | 0x1000;

/// `struct ifreq` with the `ifr_flags` member (40 bytes on x86-64).
#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Why a TAP could not be opened, and what to do about it.
pub(crate) fn fix_for(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::ENOENT) | Some(libc::ENODEV) => {
            "the host has no /dev/net/tun: load the tun module (modprobe tun)"
        }
        Some(libc::EPERM) | Some(libc::EACCES) => {
            "creating a TAP needs CAP_NET_ADMIN; or create it once as root for this user \
             (ip tuntap add NAME mode tap user USER) and open it without privileges"
        }
        Some(libc::EBUSY) => "another process has it open",
        Some(libc::EINVAL) => "the name is not a valid interface name (1-15 characters)",
        _ => "see the error above",
    }
}

/// Opens (creating if it may) the TAP device `name`, non-blocking.
pub(crate) fn open(name: &str) -> io::Result<File> {
    if name.is_empty() || name.len() > 15 || name.contains(['/', '\0', ' ']) {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: open(2) of a constant NUL-terminated path; it returns a new descriptor or -1.
    let fd = unsafe {
        libc::open(
            c"/dev/net/tun".as_ptr(),
            libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by open(2) and is owned by nobody else.
    let file = unsafe { File::from_raw_fd(fd) };
    let mut req = IfReq {
        name: [0; 16],
        flags: FLAGS,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads and writes one `struct ifreq`, which `req` is (layout above); the
    // descriptor is the open tun control device.
    let r = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &raw mut req) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_names_are_refused_before_the_kernel_sees_them() {
        for bad in ["", "a-name-that-is-too-long", "a/b"] {
            let e = open(bad).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::EINVAL), "{bad:?}");
            assert!(fix_for(&e).contains("valid interface name"));
        }
        assert_eq!(std::mem::size_of::<IfReq>(), 40);
    }
}
