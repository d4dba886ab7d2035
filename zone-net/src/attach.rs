//! [`Net`] as a zone attachment: checked and described to the guest before it boots, its device
//! and control created with the zone.

use crate::config::{BackendKind, MAX_FLOWS, Net, derived_mac, gateway_mac};
use crate::control::{NetError, NetHandle};
use crate::device::{BackendPlan, NetDevice};
use crate::dns::upstream;
use std::sync::Arc;
use zone_core::device::{AttachContext, AttachError, Attached, Attachment, GuestSetup};

impl Net {
    /// Checks the description; names what is wrong and how to fix it.
    fn check(&self) -> Result<(), NetError> {
        if let Some(e) = self.policy.error() {
            return Err(NetError::Policy(e.clone()));
        }
        if !(1..=MAX_FLOWS).contains(&self.max_flows) {
            return Err(NetError::Config(format!(
                "max_flows {} is out of range; use 1 to {MAX_FLOWS}",
                self.max_flows
            )));
        }
        if !(576..=crate::config::DEFAULT_MTU).contains(&self.mtu) {
            return Err(NetError::Config(format!(
                "MTU {} is out of range; use 576 to {}",
                self.mtu,
                crate::config::DEFAULT_MTU
            )));
        }
        if !(4 << 10..=16 << 20).contains(&self.flow_buffer) {
            return Err(NetError::Config(format!(
                "flow_buffer {} is out of range; use 4 KiB to 16 MiB",
                self.flow_buffer
            )));
        }
        let net = ipnet::Ipv4Net::new(self.guest, self.prefix)
            .ok()
            .filter(|_| (8..=30).contains(&self.prefix));
        match net {
            Some(net) if net.contains(&self.gateway) && self.guest != self.gateway => Ok(()),
            _ => Err(NetError::Config(format!(
                "guest address {}/{} and gateway {} do not make a link: the gateway must be \
                 another address in the guest's subnet (prefix 8 to 30)",
                self.guest, self.prefix, self.gateway
            ))),
        }
    }
}

impl Attachment for Net {
    fn kind(&self) -> &'static str {
        "net"
    }

    fn prepare(&mut self, guest: &mut GuestSetup<'_>) -> Result<(), AttachError> {
        self.check().map_err(AttachError::new)?;
        let mac = *self
            .mac
            .get_or_insert_with(|| derived_mac(&format!("{}/{}", guest.zone(), guest.device())));
        guest.module("virtio_net");
        let mac = mac.map(|b| format!("{b:02x}")).join(":");
        // Read by the zones agent: MAC, address/prefix, gateway, MTU, DNS server.
        guest.cmdline(format!(
            "zones.net={mac},{}/{},{},{},{}",
            self.guest, self.prefix, self.gateway, self.mtu, self.gateway
        ));
        Ok(())
    }

    fn attach(self: Box<Self>, cx: &AttachContext) -> Result<Attached, AttachError> {
        let net = *self;
        net.check().map_err(AttachError::new)?;
        let plan = match &net.backend {
            BackendKind::User => BackendPlan::User,
            BackendKind::Tap { name } => {
                let file = crate::backend::tap::open(name).map_err(|source| {
                    let fix = crate::backend::tap::fix_for(&source);
                    AttachError::new(NetError::Tap {
                        name: name.clone(),
                        source,
                        fix,
                    })
                })?;
                BackendPlan::Tap(Arc::new(file))
            }
        };
        let guest_mac = net
            .mac
            .unwrap_or_else(|| derived_mac(&format!("{}/{}", cx.zone(), cx.device())));
        let control = NetHandle::new(cx.host(), net.policy, net.egress, net.ingress)
            .map_err(AttachError::new)?;
        let device = NetDevice {
            control: Arc::new(control),
            addr: crate::config::Addressing {
                guest: net.guest,
                prefix: net.prefix,
                gateway: net.gateway,
                guest_mac,
                gateway_mac: gateway_mac(guest_mac),
                mtu: net.mtu,
            },
            plan,
            upstream: net.dns_upstream.or_else(upstream::host_resolver),
            max_flows: net.max_flows,
            flow_buffer: net.flow_buffer,
        };
        let control = device.control.clone();
        Ok(Attached::new(Box::new(device)).with_control(control))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn bad_descriptions_say_what_to_fix() {
        let bad = |n: Net| n.check().unwrap_err().to_string();
        assert!(bad(Net::user().allow("sctp x")).contains("unknown protocol"));
        assert!(bad(Net::user().max_flows(0)).contains("max_flows 0"));
        assert!(bad(Net::user().mtu(100)).contains("MTU 100"));
        let e =
            bad(Net::user().address(Ipv4Addr::new(10, 0, 2, 15), 24, Ipv4Addr::new(10, 9, 9, 9)));
        assert!(e.contains("gateway must be"), "{e}");
        assert!(Net::user().check().is_ok());
        assert!(Net::tap("zt0").check().is_ok());
    }
}
