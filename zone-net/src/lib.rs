//! zone-net: networking for zones, deny by default.
//!
//! A zone has no network unless its builder grants one with `.net(..)`: then it gets a
//! virtio-net device (the guest's own `virtio_net` driver is the client; the zones agent
//! configures its address, route and resolver) and a host side:
//!
//! - [`Net::user()`]: the **user-space network**, no privileges, no TAP: frames end in the VMM
//!   (a smoltcp interface at the gateway, 10.0.2.2), every allowed TCP/UDP flow leaves through a
//!   socket of the host process, ICMP echo through an unprivileged ping socket, DNS is answered
//!   at the gateway and forwarded to the host's resolver;
//! - [`Net::tap()`]: a host **TAP** device, the same policy enforced frame by frame in the VMM.
//!
//! Every flow's first packet and every DNS query is judged by the zone's [`NetPolicy`]:
//! ordered rules, first match wins, default deny; private, host, link-local and metadata
//! addresses stay closed unless a rule names them; a name rule opens only the addresses DNS
//! answered to this zone for that name, for the answer's TTL; answers pointing into closed
//! ranges are removed (DNS rebinding). Every denial is counted and reported as a
//! [`Denial`](zone_core::Denial) event (floods aggregated, counts exact).
//!
//! From any thread ([`NetControl`]): [`net_cut`](NetControl::net_cut) (every flow reset, link
//! down, within one frame), [`net_restore`](NetControl::net_restore),
//! [`set_net_policy`](NetControl::set_net_policy) (atomic; open flows judged again at once),
//! [`set_net_rate_limit`](NetControl::set_net_rate_limit), [`net_metrics`](NetControl::net_metrics)
//! and [`net_flows`](NetControl::net_flows). A zone's `quarantine()` cuts its network too and
//! reports the flows open at the cut; `pause()` stops its flows.
//!
//! ```no_run
//! use zone_core::{Command, LinuxBoot, Zone};
//! use zone_net::{Net, NetBuilderExt, NetControl, NetPolicy};
//!
//! let zone = Zone::builder()
//!     .memory_mib(256)
//!     .linux(LinuxBoot::host_kernel()?.busybox())
//!     .net(Net::user().policy(
//!         NetPolicy::new()
//!             .allow("tcp api.example.com:443")
//!             .allow("*.pypi.org:443")
//!             .deny("private"),
//!     ))
//!     .build()?;
//! let out = zone.exec(&Command::new("wget").arg("https://api.example.com/"))?;
//! zone.net_cut()?;
//! println!("{:?}", zone.net_metrics()?);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Layers: [`device`](crate) (virtio-net queues, separate from the event loop), backends (user,
//! tap), [`policy`] (rules, address classes, DNS pins), DNS, [`ratelimit`], [`metrics`].

mod attach;
mod backend;
mod config;
mod control;
mod denials;
mod device;
mod dns;
pub mod metrics;
mod packet;
pub mod policy;
pub mod ratelimit;

#[doc(hidden)]
pub mod fuzzing;

pub use config::{DEFAULT_FLOW_BUFFER, DEFAULT_MAX_FLOWS, DEFAULT_MTU, MAX_FLOWS, Net};
pub use control::{FlowInfo, NetControl, NetError, NetHandle};
pub use metrics::NetMetrics;
pub use policy::{NetPolicy, Protocol, RuleError};
pub use ratelimit::{Direction, RateLimit};

/// `.net(..)` on a zone builder (`use zone_net::NetBuilderExt;`, or `zones::prelude::*` with the
/// `zones` facade).
pub trait NetBuilderExt {
    /// Grants the zone a network (one more virtio-net device per call: `net0`, `net1`, ...).
    fn net(self, net: Net) -> Self;
}

impl NetBuilderExt for zone_core::ZoneBuilder {
    fn net(self, net: Net) -> Self {
        self.attach(net)
    }
}
