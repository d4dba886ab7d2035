//! The raw Linux x86-64 system calls the agent needs and `std` does not offer: mounting,
//! loading kernel modules, vsock sockets, signalling process groups and reaping any child.
//!
//! Every wrapper is safe: it takes only references, borrowed file descriptors and plain integers,
//! and turns a negative kernel return value into [`io::Error::from_raw_os_error`].

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// Address family of virtio-vsock sockets.
pub const AF_VSOCK: i32 = 40;
/// Stream socket type.
pub const SOCK_STREAM: i32 = 1;
/// `socket`/`accept4` flag: close the descriptor on `execve`.
pub const SOCK_CLOEXEC: i32 = 0o2_000_000;
/// The wildcard vsock address: bind on every CID of this machine.
pub const VMADDR_CID_ANY: u32 = u32::MAX;
/// `shutdown`: stop both directions.
pub const SHUT_RDWR: i32 = 2;

/// `mount` flag: read-only.
pub const MS_RDONLY: u64 = 1;
/// `mount` flag: move an existing mount elsewhere.
pub const MS_MOVE: u64 = 8192;
/// `mount` flag: ignore set-user-id and set-group-id bits.
pub const MS_NOSUID: u64 = 2;
/// `mount` flag: no device files.
pub const MS_NODEV: u64 = 4;
/// `mount` flag: no execution.
pub const MS_NOEXEC: u64 = 8;

/// `wait4` option: return at once when no child has changed state.
pub const WNOHANG: i32 = 1;

/// Signal 9: kill, cannot be caught.
pub const SIGKILL: i32 = 9;
/// Signal 15: polite termination request.
pub const SIGTERM: i32 = 15;

/// errno: no such process.
pub const ESRCH: i32 = 3;
/// errno: interrupted system call.
pub const EINTR: i32 = 4;
/// errno: no child processes.
pub const ECHILD: i32 = 10;
/// errno: device or resource busy (e.g. already mounted).
pub const EBUSY: i32 = 16;
/// errno: file exists (e.g. module already loaded).
pub const EEXIST: i32 = 17;

mod nr {
    pub const SOCKET: usize = 41;
    pub const BIND: usize = 49;
    pub const LISTEN: usize = 50;
    pub const SHUTDOWN: usize = 48;
    pub const WAIT4: usize = 61;
    pub const KILL: usize = 62;
    pub const MOUNT: usize = 165;
    pub const ACCEPT4: usize = 288;
    pub const FINIT_MODULE: usize = 313;
    pub const INIT_MODULE: usize = 175;
    pub const POLL: usize = 7;
    pub const IOCTL: usize = 16;
    pub const CLOCK_GETTIME: usize = 228;
    pub const FCNTL: usize = 72;
    pub const IOPERM: usize = 173;
    pub const PIDFD_OPEN: usize = 434;
}

/// Address family of IPv4 sockets.
pub const AF_INET: i32 = 2;
/// Datagram socket type.
pub const SOCK_DGRAM: i32 = 2;

/// Interface ioctls that take a `struct ifreq` ([`IfReq`]).
pub mod siocif {
    /// Get interface flags.
    pub const GET_FLAGS: u64 = 0x8913;
    /// Set interface flags.
    pub const SET_FLAGS: u64 = 0x8914;
    /// Set the IPv4 address.
    pub const SET_ADDR: u64 = 0x8916;
    /// Set the IPv4 netmask.
    pub const SET_NETMASK: u64 = 0x891c;
    /// Set the MTU.
    pub const SET_MTU: u64 = 0x8922;
}
/// Add a route (`struct rtentry`, [`RtEntry`]).
const SIOCADDRT: u64 = 0x890b;

/// Interface flag: up.
pub const IFF_UP: i16 = 0x1;
/// Route flag: usable.
pub const RTF_UP: u16 = 0x1;
/// Route flag: through a gateway.
pub const RTF_GATEWAY: u16 = 0x2;

/// `struct sockaddr_in` from `<netinet/in.h>` (16 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockaddrIn {
    /// Always [`AF_INET`].
    pub family: u16,
    /// Port, network byte order.
    pub port: u16,
    /// Address, network byte order (the octets in order).
    pub addr: [u8; 4],
    /// Zero.
    pub zero: [u8; 8],
}

impl SockaddrIn {
    /// The IPv4 address `addr` (port 0).
    pub fn new(addr: std::net::Ipv4Addr) -> Self {
        Self {
            family: AF_INET as u16,
            port: 0,
            addr: addr.octets(),
            zero: [0; 8],
        }
    }
}

/// `struct ifreq` from `<net/if.h>` (40 bytes): the name, then the request's value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct IfReq {
    /// The interface name, NUL-padded.
    pub name: [u8; 16],
    /// The value: a `sockaddr_in`, or flags (`i16`) or the MTU (`i32`) in its first bytes.
    pub value: [u8; 24],
}

impl IfReq {
    /// A request for interface `name` (at most 15 bytes, else None).
    pub fn new(name: &str) -> Option<Self> {
        let mut req = Self::default();
        req.name
            .get_mut(..name.len())
            .filter(|_| name.len() < 16)?
            .copy_from_slice(name.as_bytes());
        Some(req)
    }

    /// Puts an address in the value.
    pub fn set_addr(&mut self, addr: std::net::Ipv4Addr) {
        let sa = SockaddrIn::new(addr);
        self.value = [0; 24];
        self.value[..2].copy_from_slice(&sa.family.to_ne_bytes());
        self.value[4..8].copy_from_slice(&sa.addr);
    }

    /// Puts a 16-bit value (flags) in the value.
    pub fn set_i16(&mut self, v: i16) {
        self.value[..2].copy_from_slice(&v.to_ne_bytes());
    }

    /// The 16-bit value (flags).
    pub fn i16(&self) -> i16 {
        i16::from_ne_bytes([self.value[0], self.value[1]])
    }

    /// Puts a 32-bit value (the MTU) in the value.
    pub fn set_i32(&mut self, v: i32) {
        self.value[..4].copy_from_slice(&v.to_ne_bytes());
    }
}

/// `struct rtentry` from `<net/route.h>` (x86-64 layout, 120 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct RtEntry {
    /// Unused.
    pub pad1: u64,
    /// Destination.
    pub dst: SockaddrIn,
    /// Gateway.
    pub gateway: SockaddrIn,
    /// Destination netmask.
    pub genmask: SockaddrIn,
    /// `RTF_*` flags.
    pub flags: u16,
    /// Unused.
    pub pad2: i16,
    /// Unused.
    pub pad3: u64,
    /// Unused (a pointer; null).
    pub pad4: usize,
    /// Metric.
    pub metric: i16,
    /// Device name pointer (null: found from the gateway).
    pub dev: usize,
    /// MTU.
    pub mtu: u64,
    /// Window.
    pub window: u64,
    /// Initial round trip time.
    pub irtt: u16,
}

const _: () = assert!(std::mem::size_of::<IfReq>() == 40);
const _: () = assert!(std::mem::size_of::<RtEntry>() == 120);

/// `poll` event: data to read (or end of file).
const POLLIN: i16 = 1;
/// `poll` event: the writing side closed.
const POLLHUP: i16 = 0x10;
/// `poll` event: an error on the descriptor.
const POLLERR: i16 = 8;

/// `struct pollfd` from `<poll.h>`.
#[repr(C)]
struct PollFd {
    fd: i32,
    events: i16,
    revents: i16,
}

/// `struct sockaddr_vm` from `<linux/vm_sockets.h>` (16 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockaddrVm {
    /// Always [`AF_VSOCK`].
    pub svm_family: u16,
    /// Zero.
    pub svm_reserved1: u16,
    /// Port number.
    pub svm_port: u32,
    /// Context id ([`VMADDR_CID_ANY`] to bind on all).
    pub svm_cid: u32,
    /// Zero.
    pub svm_zero: [u8; 4],
}

const _: () = assert!(std::mem::size_of::<SockaddrVm>() == 16);

impl SockaddrVm {
    /// The vsock address `cid:port`.
    pub fn new(cid: u32, port: u32) -> Self {
        Self {
            svm_family: AF_VSOCK as u16,
            svm_reserved1: 0,
            svm_port: port,
            svm_cid: cid,
            svm_zero: [0; 4],
        }
    }
}

/// An interface ioctl (`siocif::*`) on socket `fd` with `req`, which the kernel reads and may
/// fill in.
pub fn ifreq(fd: BorrowedFd<'_>, request: u64, req: &mut IfReq) -> io::Result<()> {
    // SAFETY: every `siocif` request reads and writes exactly one `struct ifreq`, whose layout
    // `IfReq` has (40 bytes, checked above); `req` is a live exclusive reference for the call.
    let ret = unsafe {
        syscall6(
            nr::IOCTL,
            [
                fd.as_raw_fd() as usize,
                request as usize,
                std::ptr::from_mut(req) as usize,
                0,
                0,
                0,
            ],
        )
    };
    check(ret).map(drop)
}

/// Adds the route `rt` (SIOCADDRT) through socket `fd`. `rt.dev` must be 0 (null).
pub fn add_route(fd: BorrowedFd<'_>, rt: &RtEntry) -> io::Result<()> {
    if rt.dev != 0 || rt.pad4 != 0 {
        return Err(io::Error::from_raw_os_error(22));
    }
    // SAFETY: SIOCADDRT reads one `struct rtentry`, whose x86-64 layout `RtEntry` has (120
    // bytes, checked above); its pointer members are null, so the kernel follows no pointer.
    let ret = unsafe {
        syscall6(
            nr::IOCTL,
            [
                fd.as_raw_fd() as usize,
                SIOCADDRT as usize,
                std::ptr::from_ref(rt) as usize,
                0,
                0,
                0,
            ],
        )
    };
    check(ret).map(drop)
}

/// Issues system call `nr` with six arguments and returns the kernel's raw result.
///
/// # Safety
///
/// The arguments must be what the kernel expects for `nr`: every pointer must be valid for the
/// reads and writes that system call performs, for as long as it runs, and the call must not
/// break an invariant Rust relies on (e.g. unmapping memory in use, closing a descriptor owned
/// elsewhere).
unsafe fn syscall6(nr: usize, args: [usize; 6]) -> isize {
    let ret: isize;
    // SAFETY: the x86-64 Linux system call convention: number in rax, arguments in rdi, rsi,
    // rdx, r10, r8, r9, result in rax, rcx and r11 clobbered; the kernel does not touch the user
    // stack (nostack). Memory effects are left to the default (may read and write memory), so
    // the compiler keeps pointed-to data in memory. The caller vouches for the arguments.
    unsafe {
        core::arch::asm!(
            "syscall",
            inlateout("rax") nr as isize => ret,
            in("rdi") args[0],
            in("rsi") args[1],
            in("rdx") args[2],
            in("r10") args[3],
            in("r8") args[4],
            in("r9") args[5],
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret
}

/// Maps the kernel's `-errno` convention to `io::Result`.
fn check(ret: isize) -> io::Result<usize> {
    if ret < 0 {
        Err(io::Error::from_raw_os_error((-ret) as i32))
    } else {
        Ok(ret as usize)
    }
}

/// Whether `e` is the OS error `errno`.
pub fn is_errno(e: &io::Error, errno: i32) -> bool {
    e.raw_os_error() == Some(errno)
}

/// Retries `f` while it fails with `EINTR`.
fn retry<T>(mut f: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    loop {
        match f() {
            Err(e) if is_errno(&e, EINTR) => continue,
            other => return other,
        }
    }
}

/// `mount(2)`: mounts `source` of type `fstype` on `target` with `flags` and optional `data`.
pub fn mount(
    source: &CStr,
    target: &CStr,
    fstype: &CStr,
    flags: u64,
    data: Option<&CStr>,
) -> io::Result<()> {
    let data = data.map_or(std::ptr::null(), CStr::as_ptr);
    // SAFETY: all strings are NUL-terminated and borrowed for the duration of the call; `data`
    // is either null (allowed) or such a string. Mounting does not affect this process's memory.
    let ret = unsafe {
        syscall6(
            nr::MOUNT,
            [
                source.as_ptr() as usize,
                target.as_ptr() as usize,
                fstype.as_ptr() as usize,
                flags as usize,
                data as usize,
                0,
            ],
        )
    };
    check(ret).map(drop)
}

/// `finit_module(2)`: loads the kernel module in the open file `fd` with parameters `params`.
pub fn finit_module(fd: BorrowedFd<'_>, params: &CStr, flags: u32) -> io::Result<()> {
    // SAFETY: `fd` is a descriptor borrowed for the call, `params` a NUL-terminated string
    // borrowed for the call; the kernel only reads them.
    let ret = unsafe {
        syscall6(
            nr::FINIT_MODULE,
            [
                fd.as_raw_fd() as usize,
                params.as_ptr() as usize,
                flags as usize,
                0,
                0,
                0,
            ],
        )
    };
    check(ret).map(drop)
}

/// `init_module(2)`: loads the kernel module `image` (the module's bytes) with parameters
/// `params`.
pub fn init_module(image: &[u8], params: &CStr) -> io::Result<()> {
    // SAFETY: `image` is a slice and `params` a NUL-terminated string, both borrowed for the
    // call; the kernel only reads them (`image.len()` bytes of the first).
    let ret = unsafe {
        syscall6(
            nr::INIT_MODULE,
            [
                image.as_ptr() as usize,
                image.len(),
                params.as_ptr() as usize,
                0,
                0,
                0,
            ],
        )
    };
    check(ret).map(drop)
}

/// `socket(2)`: a new socket, owned by the caller.
pub fn socket(domain: i32, ty: i32, protocol: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain integer arguments; no memory is passed.
    let ret = unsafe {
        syscall6(
            nr::SOCKET,
            [domain as usize, ty as usize, protocol as usize, 0, 0, 0],
        )
    };
    let fd = check(ret)? as i32;
    // SAFETY: the kernel just returned this new descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `bind(2)` of a vsock socket to `addr`.
pub fn bind(fd: BorrowedFd<'_>, addr: &SockaddrVm) -> io::Result<()> {
    // SAFETY: `addr` points to a live 16-byte `sockaddr_vm` and its exact size is passed; the
    // kernel only reads it. `fd` is borrowed for the call.
    let ret = unsafe {
        syscall6(
            nr::BIND,
            [
                fd.as_raw_fd() as usize,
                std::ptr::from_ref(addr) as usize,
                std::mem::size_of::<SockaddrVm>(),
                0,
                0,
                0,
            ],
        )
    };
    check(ret).map(drop)
}

/// A system call that takes a descriptor and one integer and passes no memory.
fn fd_and_int(nr: usize, fd: BorrowedFd<'_>, arg: i32) -> io::Result<()> {
    // SAFETY: `nr` is one of `listen` and `shutdown` (the callers below), whose arguments are a
    // borrowed descriptor and an integer: no memory is passed, nothing is closed or mapped.
    let ret = unsafe { syscall6(nr, [fd.as_raw_fd() as usize, arg as usize, 0, 0, 0, 0]) };
    check(ret).map(drop)
}

/// `listen(2)`.
pub fn listen(fd: BorrowedFd<'_>, backlog: i32) -> io::Result<()> {
    fd_and_int(nr::LISTEN, fd, backlog)
}

/// `accept4(2)` without the peer address; retried on `EINTR`. The new connection is owned by
/// the caller.
pub fn accept4(fd: BorrowedFd<'_>, flags: i32) -> io::Result<OwnedFd> {
    let ret = retry(|| {
        // SAFETY: null address and address-length pointers are allowed (peer address not
        // wanted); `fd` is borrowed for the call.
        check(unsafe {
            syscall6(
                nr::ACCEPT4,
                [fd.as_raw_fd() as usize, 0, 0, flags as usize, 0, 0],
            )
        })
    })?;
    // SAFETY: the kernel just returned this new descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(ret as i32) })
}

/// Sets or clears `FD_CLOEXEC` on `fd` (`fcntl(F_SETFD)`): whether the descriptor is closed
/// when this process executes a program.
pub fn set_cloexec(fd: BorrowedFd<'_>, on: bool) -> io::Result<()> {
    const F_SETFD: usize = 2;
    const FD_CLOEXEC: usize = 1;
    // SAFETY: fcntl(F_SETFD) on a borrowed descriptor changes only its close-on-exec flag: no
    // memory is passed, nothing is closed.
    let ret = unsafe {
        syscall6(
            nr::FCNTL,
            [
                fd.as_raw_fd() as usize,
                F_SETFD,
                if on { FD_CLOEXEC } else { 0 },
                0,
                0,
                0,
            ],
        )
    };
    check(ret).map(drop)
}

/// `shutdown(2)`: ends one or both directions of a connected socket.
pub fn shutdown(fd: BorrowedFd<'_>, how: i32) -> io::Result<()> {
    fd_and_int(nr::SHUTDOWN, fd, how)
}

/// `poll(2)` for reading on every descriptor of `fds`, waiting at most `timeout` (`None`: until
/// one is ready; a partial millisecond counts as a whole one, so that a short wait does not
/// spin). Returns, per descriptor, whether a read would not block now (data, end of file or an
/// error). An interrupted call returns all `false`.
pub fn wait_readable(
    fds: &[BorrowedFd<'_>],
    timeout: Option<std::time::Duration>,
) -> io::Result<Vec<bool>> {
    let mut pfds: Vec<PollFd> = fds
        .iter()
        .map(|fd| PollFd {
            fd: fd.as_raw_fd(),
            events: POLLIN,
            revents: 0,
        })
        .collect();
    let millis = timeout.map_or(-1, |t| {
        t.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32
    });
    // SAFETY: `pfds` is a live, writable array of `pfds.len()` pollfds for the whole call.
    let ret = unsafe {
        syscall6(
            nr::POLL,
            [
                pfds.as_mut_ptr() as usize,
                pfds.len(),
                millis as usize,
                0,
                0,
                0,
            ],
        )
    };
    match check(ret) {
        Ok(_) => Ok(pfds
            .iter()
            .map(|p| p.revents & (POLLIN | POLLHUP | POLLERR) != 0)
            .collect()),
        Err(e) if is_errno(&e, EINTR) => Ok(vec![false; fds.len()]),
        Err(e) => Err(e),
    }
}

/// `pidfd_open(2)`: a descriptor that becomes readable when process `pid` ends (Linux 5.3 and
/// later; older kernels answer `ENOSYS`).
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain integer arguments; no memory is passed.
    let ret = unsafe { syscall6(nr::PIDFD_OPEN, [pid as usize, 0, 0, 0, 0, 0]) };
    let fd = check(ret)? as i32;
    // SAFETY: the kernel just returned this new descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Writes boot mark `mark`'s value to the host's boot-mark port
/// ([`crate::proto::boot::MARK_PORT`]): the host stamps the moment on its own clock. A mark not
/// in [`crate::proto::boot::PORT_MARKS`] writes nothing. Best effort: a kernel without `ioperm`
/// (no `CONFIG_X86_IOPL_IOPERM`) gets no host stamp. The access is dropped again at once, so
/// nothing this process starts inherits it.
pub fn port_mark(mark: &str) {
    let Some(value) = crate::proto::boot::port_value(mark) else {
        return;
    };
    let port = usize::from(crate::proto::boot::MARK_PORT);
    // SAFETY: ioperm(2) only changes this process's I/O permission bitmap.
    if check(unsafe { syscall6(nr::IOPERM, [port, 1, 1, 0, 0, 0]) }).is_err() {
        return;
    }
    // SAFETY: the port was just granted to this process; `out` writes one byte to it and
    // touches no memory. The host's handler only records the time.
    unsafe {
        std::arch::asm!(
            "out dx, al",
            in("dx") crate::proto::boot::MARK_PORT,
            in("al") value,
            options(nomem, nostack, preserves_flags)
        );
    }
    // SAFETY: as above; this drops the permission.
    let _ = unsafe { syscall6(nr::IOPERM, [port, 1, 0, 0, 0, 0]) };
}

/// Time since the guest kernel booted (`CLOCK_BOOTTIME`); zero if the clock cannot be read.
pub fn boottime() -> std::time::Duration {
    const CLOCK_BOOTTIME: usize = 7;
    let mut ts = [0i64; 2];
    // SAFETY: `ts` is a live, writable `struct timespec` (two i64 on x86-64) for the whole call.
    let ret = unsafe {
        syscall6(
            nr::CLOCK_GETTIME,
            [CLOCK_BOOTTIME, ts.as_mut_ptr() as usize, 0, 0, 0, 0],
        )
    };
    match check(ret) {
        Ok(_) => std::time::Duration::new(ts[0].max(0) as u64, ts[1].clamp(0, 999_999_999) as u32),
        Err(_) => std::time::Duration::ZERO,
    }
}

/// `kill(2)`: sends `sig` to process `pid`; a negative `pid` means the process group `-pid`
/// (and `sig` 0 only checks that the target exists).
///
/// `pid` 0 and -1 (the caller's own group, every process) are refused with `EINVAL`: the agent
/// never means them, and a bug that produced them must not take down the whole guest.
pub fn kill(pid: i32, sig: i32) -> io::Result<()> {
    if pid == 0 || pid == -1 || pid == i32::MIN {
        return Err(io::Error::from_raw_os_error(22));
    }
    // SAFETY: plain integer arguments; no memory is passed.
    let ret = unsafe { syscall6(nr::KILL, [pid as usize, sig as usize, 0, 0, 0, 0]) };
    check(ret).map(drop)
}

/// Which side of a [`fork_single_threaded`] this is.
#[derive(Debug, PartialEq, Eq)]
pub enum Forked {
    /// The new process.
    Child,
    /// The caller, with the child's pid.
    Parent(i32),
}

unsafe extern "C" {
    /// The C library's `fork(3)`: unlike the raw system call, it also brings the library's own
    /// per-thread state (the cached thread id, its locks) right in the child.
    #[link_name = "fork"]
    fn libc_fork() -> i32;
}

/// `fork(3)`: a copy of this process with only the calling thread.
///
/// # Safety
///
/// The process must have no other thread: the child has only the caller's, so a lock another
/// thread held (the allocator's, the environment's) would stay held in the child forever.
pub unsafe fn fork_single_threaded() -> io::Result<Forked> {
    // SAFETY: the caller guarantees a single-threaded process; fork takes no arguments.
    match unsafe { libc_fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(Forked::Child),
        pid => Ok(Forked::Parent(pid)),
    }
}

/// `wait4(2)` without resource usage, retried on `EINTR`: waits for child `pid` (-1: any child)
/// and returns `(pid, raw wait status)`. With [`WNOHANG`] the pid is 0 when no child changed
/// state. Decode the status with `std::os::unix::process::ExitStatusExt::from_raw`.
pub fn wait4(pid: i32, options: i32) -> io::Result<(i32, i32)> {
    let mut status: i32 = 0;
    let ret = retry(|| {
        // SAFETY: `status` is a live, writable i32 for the whole call; a null rusage pointer is
        // allowed.
        check(unsafe {
            syscall6(
                nr::WAIT4,
                [
                    pid as usize,
                    std::ptr::from_mut(&mut status) as usize,
                    options as usize,
                    0,
                    0,
                    0,
                ],
            )
        })
    })?;
    Ok((ret as i32, status))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn errors_carry_errno() {
        let e = kill(i32::MAX, 0).unwrap_err();
        assert!(is_errno(&e, ESRCH), "{e}");
        assert!(kill(-1, SIGKILL).is_err(), "kill(-1) must be refused");
        assert!(kill(0, SIGKILL).is_err(), "kill(0) must be refused");
    }

    #[test]
    fn close_on_exec_is_set_and_cleared() {
        let file = std::fs::File::open("/dev/null").unwrap();
        let flags = || {
            let info = std::fs::read_to_string(format!(
                "/proc/self/fdinfo/{}",
                std::os::fd::AsRawFd::as_raw_fd(&file)
            ))
            .unwrap();
            let line = info.lines().find(|l| l.starts_with("flags:")).unwrap();
            u32::from_str_radix(line["flags:".len()..].trim(), 8).unwrap()
        };
        const O_CLOEXEC: u32 = 0o2_000_000;
        assert_ne!(flags() & O_CLOEXEC, 0, "std opens close-on-exec");
        set_cloexec(file.as_fd(), false).unwrap();
        assert_eq!(flags() & O_CLOEXEC, 0);
        set_cloexec(file.as_fd(), true).unwrap();
        assert_ne!(flags() & O_CLOEXEC, 0);
    }

    #[test]
    fn signal_zero_finds_ourselves() {
        kill(std::process::id() as i32, 0).unwrap();
    }

    #[test]
    #[allow(
        clippy::zombie_processes,
        reason = "reaped by wait4, the function under test"
    )]
    fn wait4_reaps_a_child() {
        let child = std::process::Command::new("sh")
            .args(["-c", "exit 7"])
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let (got, status) = wait4(pid, 0).unwrap();
        assert_eq!(got, pid);
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(std::process::ExitStatus::from_raw(status).code(), Some(7));
        assert!(is_errno(&wait4(pid, WNOHANG).unwrap_err(), ECHILD));
    }

    #[test]
    fn vsock_socket_binds_and_listens_where_available() {
        let sock = match socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0) {
            Ok(s) => s,
            // No vsock on this machine: nothing more to check.
            Err(_) => return,
        };
        // An arbitrary high port; another user of it makes the bind fail, which is fine too.
        if bind(sock.as_fd(), &SockaddrVm::new(VMADDR_CID_ANY, 61_234)).is_ok() {
            listen(sock.as_fd(), 4).unwrap();
        }
    }
}
