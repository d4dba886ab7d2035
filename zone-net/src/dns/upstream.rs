//! The upstream resolver: the host's (`/etc/resolv.conf`) unless the builder names one.

use std::net::{IpAddr, SocketAddr};

/// The first `nameserver` in resolv.conf text, on port 53.
pub(crate) fn from_resolv_conf(text: &str) -> Option<SocketAddr> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter_map(|l| l.strip_prefix("nameserver"))
        .filter_map(|rest| {
            // A scoped IPv6 address (fe80::1%eth0) cannot be used from another namespace.
            let addr = rest.trim().split('%').next()?;
            addr.parse::<IpAddr>().ok()
        })
        .map(|ip| SocketAddr::new(ip, 53))
        .next()
}

/// The host's resolver, if it has one.
pub(crate) fn host_resolver() -> Option<SocketAddr> {
    from_resolv_conf(&std::fs::read_to_string("/etc/resolv.conf").ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_first_nameserver() {
        let conf =
            "# generated\nsearch example\nnameserver 127.0.0.53 # local\nnameserver 8.8.8.8\n";
        assert_eq!(
            from_resolv_conf(conf),
            Some("127.0.0.53:53".parse().unwrap())
        );
        assert_eq!(
            from_resolv_conf("nameserver fe80::1%eth0"),
            Some("[fe80::1]:53".parse().unwrap())
        );
        assert_eq!(from_resolv_conf("search x\nnameserver bogus\n"), None);
        assert_eq!(from_resolv_conf(""), None);
    }
}
