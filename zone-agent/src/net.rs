//! The guest's network, as the host described it on the kernel command line:
//! `zones.net=<mac>,<address>/<prefix>,<gateway>,<mtu>,<dns>`, one per network device. PID 1
//! brings the loopback up, and for each described device finds the interface with that MAC,
//! sets its MTU, address and netmask, brings it up, adds the default route (first device only)
//! and writes `/etc/resolv.conf`. A zone without a network gets only the loopback.

use crate::sys::{self, IfReq, RtEntry, SockaddrIn};
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

/// One network device, as described by the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetConfig {
    /// The device's MAC address.
    pub mac: [u8; 6],
    /// The guest's address.
    pub addr: Ipv4Addr,
    /// Its prefix length.
    pub prefix: u8,
    /// The gateway.
    pub gateway: Ipv4Addr,
    /// The link MTU.
    pub mtu: u16,
    /// The DNS server.
    pub dns: Ipv4Addr,
}

/// Reads one `zones.net=` value.
pub fn parse(value: &str) -> Result<NetConfig, String> {
    let bad = |what: &str| format!("zone-agent: zones.net={value}: bad {what}");
    let fields: Vec<&str> = value.split(',').collect();
    let [mac, cidr, gateway, mtu, dns] = fields.as_slice() else {
        return Err(bad("format (mac,address/prefix,gateway,mtu,dns)"));
    };
    let octets: Vec<u8> = mac
        .split(':')
        .map(|b| u8::from_str_radix(b, 16))
        .collect::<Result<_, _>>()
        .map_err(|_| bad("MAC"))?;
    let mac: [u8; 6] = octets.try_into().map_err(|_| bad("MAC"))?;
    let (addr, prefix) = cidr.split_once('/').ok_or_else(|| bad("address"))?;
    let prefix: u8 = prefix
        .parse()
        .ok()
        .filter(|p| *p <= 32)
        .ok_or_else(|| bad("prefix"))?;
    Ok(NetConfig {
        mac,
        addr: addr.parse().map_err(|_| bad("address"))?,
        prefix,
        gateway: gateway.parse().map_err(|_| bad("gateway"))?,
        mtu: mtu.parse().map_err(|_| bad("MTU"))?,
        dns: dns.parse().map_err(|_| bad("DNS server"))?,
    })
}

/// Every `zones.net=` of a kernel command line.
pub fn from_cmdline(cmdline: &str) -> Vec<Result<NetConfig, String>> {
    cmdline
        .split_whitespace()
        .filter_map(|arg| arg.strip_prefix("zones.net="))
        .map(parse)
        .collect()
}

/// The netmask of a prefix length.
pub fn netmask(prefix: u8) -> Ipv4Addr {
    let bits = u32::MAX
        .checked_shl(32 - u32::from(prefix.min(32)))
        .unwrap_or(0);
    Ipv4Addr::from(bits)
}

/// The interface in `sys_class_net` whose address is `mac`.
pub fn interface_with_mac(sys_class_net: &Path, mac: &[u8; 6]) -> Option<String> {
    let want = mac.map(|b| format!("{b:02x}")).join(":");
    std::fs::read_dir(sys_class_net)
        .ok()?
        .filter_map(Result::ok)
        .find(|e| {
            std::fs::read_to_string(e.path().join("address"))
                .is_ok_and(|a| a.trim().eq_ignore_ascii_case(&want))
        })
        .and_then(|e| e.file_name().into_string().ok())
}

fn request(name: &str) -> Result<IfReq, String> {
    IfReq::new(name).ok_or_else(|| format!("zone-agent: interface name {name:?} too long"))
}

/// Sets `flags` on interface `name`.
fn up(fd: BorrowedFd<'_>, name: &str) -> Result<(), String> {
    let mut req = request(name)?;
    sys::ifreq(fd, sys::siocif::GET_FLAGS, &mut req)
        .map_err(|e| format!("zone-agent: {name}: flags: {e}"))?;
    let flags = req.i16() | sys::IFF_UP;
    req.set_i16(flags);
    sys::ifreq(fd, sys::siocif::SET_FLAGS, &mut req)
        .map_err(|e| format!("zone-agent: {name}: up: {e}"))
}

/// Configures the interface of `cfg` (and the default route when `route`).
pub fn configure(cfg: &NetConfig, route: bool) -> Result<String, String> {
    let name = interface_with_mac(Path::new("/sys/class/net"), &cfg.mac).ok_or_else(|| {
        format!(
            "zone-agent: no network interface has MAC {}; is virtio_net loaded?",
            cfg.mac.map(|b| format!("{b:02x}")).join(":")
        )
    })?;
    let socket = sys::socket(sys::AF_INET, sys::SOCK_DGRAM | sys::SOCK_CLOEXEC, 0)
        .map_err(|e| format!("zone-agent: socket: {e}"))?;
    let fd = socket.as_fd();
    let set = |request, value: &dyn Fn(&mut IfReq), what: &str| -> Result<(), String> {
        let mut req = self::request(&name)?;
        value(&mut req);
        sys::ifreq(fd, request, &mut req).map_err(|e| format!("zone-agent: {name}: {what}: {e}"))
    };
    set(
        sys::siocif::SET_MTU,
        &|r| r.set_i32(i32::from(cfg.mtu)),
        "MTU",
    )?;
    set(sys::siocif::SET_ADDR, &|r| r.set_addr(cfg.addr), "address")?;
    set(
        sys::siocif::SET_NETMASK,
        &|r| r.set_addr(netmask(cfg.prefix)),
        "netmask",
    )?;
    up(fd, &name)?;
    if route {
        let rt = RtEntry {
            dst: SockaddrIn::new(Ipv4Addr::UNSPECIFIED),
            gateway: SockaddrIn::new(cfg.gateway),
            genmask: SockaddrIn::new(Ipv4Addr::UNSPECIFIED),
            flags: sys::RTF_UP | sys::RTF_GATEWAY,
            ..RtEntry::default()
        };
        sys::add_route(fd, &rt).map_err(|e| format!("zone-agent: default route: {e}"))?;
        let _ = std::fs::create_dir_all("/etc");
        std::fs::write("/etc/resolv.conf", format!("nameserver {}\n", cfg.dns))
            .map_err(|e| format!("zone-agent: /etc/resolv.conf: {e}"))?;
    }
    Ok(name)
}

/// Brings the loopback up and configures every device the kernel command line describes.
/// Returns one message per problem.
pub fn setup() -> Vec<String> {
    let mut problems = Vec::new();
    match sys::socket(sys::AF_INET, sys::SOCK_DGRAM | sys::SOCK_CLOEXEC, 0) {
        Ok(s) => {
            if let Err(e) = up(s.as_fd(), "lo") {
                problems.push(e);
            }
        }
        Err(e) => problems.push(format!("zone-agent: socket: {e}")),
    }
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    for (i, cfg) in from_cmdline(&cmdline).into_iter().enumerate() {
        if let Err(e) = cfg.and_then(|c| configure(&c, i == 0)) {
            problems.push(e);
        }
    }
    if !Path::new("/etc/hosts").exists() {
        let _ = std::fs::create_dir_all("/etc");
        let _ = std::fs::write("/etc/hosts", "127.0.0.1 localhost\n::1 localhost\n");
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_host_description() {
        let line = "console=ttyS0 quiet zones.net=52:54:0a:0b:0c:0d,10.0.2.15/24,10.0.2.2,65520,10.0.2.2 rdinit=/init";
        let configs = from_cmdline(line);
        assert_eq!(
            configs,
            vec![Ok(NetConfig {
                mac: [0x52, 0x54, 0x0a, 0x0b, 0x0c, 0x0d],
                addr: Ipv4Addr::new(10, 0, 2, 15),
                prefix: 24,
                gateway: Ipv4Addr::new(10, 0, 2, 2),
                mtu: 65520,
                dns: Ipv4Addr::new(10, 0, 2, 2),
            })]
        );
        assert!(from_cmdline("quiet").is_empty());
        for bad in [
            "x",
            "52:54:0a:0b:0c,10.0.2.15/24,10.0.2.2,1500,10.0.2.2",
            "52:54:0a:0b:0c:0d,10.0.2.15/33,10.0.2.2,1500,10.0.2.2",
            "52:54:0a:0b:0c:0d,10.0.2.15,10.0.2.2,1500,10.0.2.2",
            "52:54:0a:0b:0c:0d,10.0.2.15/24,10.0.2.2,big,10.0.2.2",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn netmasks() {
        assert_eq!(netmask(24), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(netmask(0), Ipv4Addr::UNSPECIFIED);
        assert_eq!(netmask(32), Ipv4Addr::BROADCAST);
        assert_eq!(netmask(20), Ipv4Addr::new(255, 255, 240, 0));
    }

    #[test]
    fn finds_interfaces_by_mac() {
        let dir = std::env::temp_dir().join(format!("zone-agent-net-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("eth0")).unwrap();
        std::fs::create_dir_all(dir.join("lo")).unwrap();
        std::fs::write(dir.join("eth0/address"), "52:54:0a:0b:0c:0d\n").unwrap();
        std::fs::write(dir.join("lo/address"), "00:00:00:00:00:00\n").unwrap();
        let mac = [0x52, 0x54, 0x0a, 0x0b, 0x0c, 0x0d];
        assert_eq!(interface_with_mac(&dir, &mac).as_deref(), Some("eth0"));
        assert_eq!(interface_with_mac(&dir, &[1; 6]), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
