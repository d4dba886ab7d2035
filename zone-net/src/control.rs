//! Live control of a zone's network from any thread: cut and restore, policy swaps, rate limits,
//! flow listings, and the zone's quarantine hook. Requests are applied by the device thread
//! (the only one that touches flows); the caller waits, boundedly, until they are.

use crate::metrics::{Counters, NetMetrics};
use crate::policy::{NetPolicy, Protocol, RuleError};
use crate::ratelimit::{Direction, RateLimit};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use vmm_sys_util::eventfd::EventFd;
use zone_core::device::{DeviceControl, DeviceEvidence};
use zone_core::{ZoneExit, ZoneHandle};

/// How long a control call waits for the device thread to apply it.
const APPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a network control failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    /// The zone was built without `.net(..)`.
    #[error("zone {zone} has no network: build it with .net(Net::user()...) to grant one")]
    NoNetwork {
        /// The zone.
        zone: String,
    },
    /// A policy rule could not be read.
    #[error(transparent)]
    Policy(#[from] RuleError),
    /// The network description is not usable.
    #[error("{0}")]
    Config(String),
    /// The TAP device could not be opened.
    #[error("TAP device {name}: {source}; {fix}")]
    Tap {
        /// The TAP's name.
        name: String,
        /// Why.
        #[source]
        source: std::io::Error,
        /// What to do.
        fix: &'static str,
    },
    /// The zone is quarantined: its network stays cut until `release()`.
    #[error("zone {zone} is quarantined; its network stays cut until release()")]
    Quarantined {
        /// The zone.
        zone: String,
    },
    /// The zone has stopped.
    #[error("zone {zone} has stopped; its network is gone")]
    Stopped {
        /// The zone.
        zone: String,
    },
}

/// One open flow, as listed by [`NetControl::net_flows`] and in quarantine evidence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowInfo {
    /// TCP, UDP or ICMP.
    pub protocol: Protocol,
    /// The guest's port (ICMP: the echo id).
    pub guest_port: u16,
    /// Where to, as the guest addressed it.
    pub destination: SocketAddr,
    /// The name it was opened for, when a name rule opened it.
    pub name: Option<String>,
    /// The rule that allowed it.
    pub rule: String,
    /// How long it has been open.
    pub age: Duration,
    /// Bytes from the guest to the destination.
    pub bytes_out: u64,
    /// Bytes from the destination to the guest.
    pub bytes_in: u64,
}

impl std::fmt::Display for FlowInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} :{} -> {}",
            self.protocol.name(),
            self.guest_port,
            self.destination
        )?;
        if let Some(name) = &self.name {
            write!(f, " ({name})")?;
        }
        write!(
            f,
            " by {:?}, {:.1} s, {} B out, {} B in",
            self.rule,
            self.age.as_secs_f64(),
            self.bytes_out,
            self.bytes_in
        )
    }
}

/// What the device thread should be doing; written by controllers, applied by the thread.
#[derive(Clone, Debug)]
pub(crate) struct Wanted {
    pub(crate) policy: Arc<NetPolicy>,
    pub(crate) generation: u64,
    pub(crate) user_cut: bool,
    pub(crate) quarantined: bool,
    pub(crate) egress: Option<RateLimit>,
    pub(crate) ingress: Option<RateLimit>,
    /// Bumped by every request; the thread reports the last one it applied.
    pub(crate) seq: u64,
}

impl Wanted {
    /// Whether the link is cut (by the caller or by a quarantine).
    pub(crate) fn cut(&self) -> bool {
        self.user_cut || self.quarantined
    }
}

#[derive(Debug, Default)]
struct Applied {
    seq: u64,
    flows: Vec<FlowInfo>,
    cut_flows: Vec<FlowInfo>,
}

/// The control of one zone's network device (found with `zone.device::<NetHandle>()`; use the
/// [`NetControl`] methods on the zone instead).
#[derive(Debug)]
pub struct NetHandle {
    pub(crate) zone: String,
    pub(crate) device: String,
    host: zone_core::device::DeviceHost,
    pub(crate) counters: Arc<Counters>,
    wanted: Mutex<Wanted>,
    applied: Mutex<Applied>,
    cv: Condvar,
    /// Checked for every frame: a cut takes effect within one frame.
    pub(crate) cut: AtomicBool,
    /// The device thread runs (it applies requests); when it does not, nothing is open.
    pub(crate) running: AtomicBool,
    pub(crate) wake: EventFd,
}

impl NetHandle {
    pub(crate) fn new(
        host: zone_core::device::DeviceHost,
        policy: NetPolicy,
        egress: Option<RateLimit>,
        ingress: Option<RateLimit>,
    ) -> std::io::Result<Self> {
        Ok(Self {
            zone: host.zone().to_string(),
            device: host.device().to_string(),
            host,
            counters: Arc::default(),
            wanted: Mutex::new(Wanted {
                policy: Arc::new(policy),
                generation: 1,
                user_cut: false,
                quarantined: false,
                egress,
                ingress,
                seq: 0,
            }),
            applied: Mutex::new(Applied::default()),
            cv: Condvar::new(),
            cut: AtomicBool::new(false),
            running: AtomicBool::new(false),
            wake: EventFd::new(libc::EFD_NONBLOCK)?,
        })
    }

    fn lock_wanted(&self) -> MutexGuard<'_, Wanted> {
        self.wanted.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_applied(&self) -> MutexGuard<'_, Applied> {
        self.applied.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The device's link to its zone.
    pub(crate) fn host(&self) -> &zone_core::device::DeviceHost {
        &self.host
    }

    /// What the device thread should apply now.
    pub(crate) fn wanted(&self) -> Wanted {
        self.lock_wanted().clone()
    }

    /// The device thread applied everything up to `seq`; `flows` is what is open now, and
    /// `cut_flows` (if the link was cut by this step) what was open at the cut.
    pub(crate) fn applied(&self, seq: u64, flows: Vec<FlowInfo>, cut_flows: Option<Vec<FlowInfo>>) {
        let mut a = self.lock_applied();
        a.seq = a.seq.max(seq);
        a.flows = flows;
        if let Some(cut) = cut_flows {
            a.cut_flows = cut;
        }
        self.cv.notify_all();
    }

    /// Changes what is wanted and waits until the device thread applied it.
    fn request(&self, change: impl FnOnce(&mut Wanted)) -> u64 {
        let seq = {
            let mut w = self.lock_wanted();
            change(&mut w);
            w.seq += 1;
            self.cut.store(w.cut(), Ordering::SeqCst);
            w.seq
        };
        let _ = self.wake.write(1);
        if self.running.load(Ordering::SeqCst) {
            let until = Instant::now() + APPLY_TIMEOUT;
            let mut a = self.lock_applied();
            while a.seq < seq && self.running.load(Ordering::SeqCst) {
                let Some(left) = until.checked_duration_since(Instant::now()) else {
                    break;
                };
                a = self
                    .cv
                    .wait_timeout(a, left.min(Duration::from_millis(50)))
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
        }
        seq
    }

    /// Whether the link is up (not cut), for the device's config space.
    pub(crate) fn link_up(&self) -> bool {
        !self.cut.load(Ordering::SeqCst)
    }

    /// The device could not build its host side (`e`): it stays silent; the zone hears why.
    pub(crate) fn failed(&self, e: &std::io::Error) {
        self.stopped_running();
        self.host.violation(
            "net",
            format!("{}: cannot start the network's host side: {e}", self.device),
        );
    }

    /// Wakes anyone waiting on the device thread (it stopped).
    pub(crate) fn stopped_running(&self) {
        self.running.store(false, Ordering::SeqCst);
        self.lock_applied().flows.clear();
        self.cv.notify_all();
    }

    fn cut_now(&self, user: bool) -> Result<(), NetError> {
        self.request(|w| {
            if user {
                w.user_cut = true;
            } else {
                w.quarantined = true;
            }
        });
        Ok(())
    }

    fn restore_now(&self) -> Result<(), NetError> {
        if self.lock_wanted().quarantined {
            return Err(NetError::Quarantined {
                zone: self.zone.clone(),
            });
        }
        self.request(|w| w.user_cut = false);
        Ok(())
    }

    fn swap_policy(&self, policy: NetPolicy) -> Result<u64, NetError> {
        if let Some(e) = policy.error() {
            return Err(NetError::Policy(e.clone()));
        }
        let mut generation = 0;
        self.request(|w| {
            w.policy = Arc::new(policy);
            w.generation += 1;
            generation = w.generation;
        });
        Ok(generation)
    }

    fn flows_now(&self) -> Vec<FlowInfo> {
        self.request(|_| {});
        self.lock_applied().flows.clone()
    }
}

impl DeviceControl for NetHandle {
    fn counters(&self) -> Vec<(&'static str, u64)> {
        self.counters.snapshot().counters()
    }

    fn quarantine(&self) -> Option<DeviceEvidence> {
        let _ = self.cut_now(false);
        let flows = self.lock_applied().cut_flows.clone();
        Some(DeviceEvidence {
            device: self.device.clone(),
            lines: flows.iter().map(ToString::to_string).collect(),
            detail: Some(Arc::new(flows)),
        })
    }

    fn release(&self) {
        self.request(|w| w.quarantined = false);
    }

    fn stopped(&self, _exit: &ZoneExit) {
        self.stopped_running();
    }
}

/// Network controls on a zone (`use zone_net::NetControl;`), from any thread; a `Zone` has them
/// through its `ZoneHandle`.
pub trait NetControl {
    /// Cuts the network now: every open flow dies (TCP reset to the guest, host sockets closed),
    /// pending DNS queries fail, the link goes down, and every frame is dropped until
    /// [`net_restore`](Self::net_restore). Returns once the device thread has done it.
    fn net_cut(&self) -> Result<(), NetError>;
    /// Brings the link back up after [`net_cut`](Self::net_cut) (flows start afresh).
    fn net_restore(&self) -> Result<(), NetError>;
    /// Replaces the policy atomically and returns its generation. Every open flow is judged again
    /// at once under the new policy; those it denies are reset.
    fn set_net_policy(&self, policy: NetPolicy) -> Result<u64, NetError>;
    /// Changes the rate limit of one direction (None: unlimited).
    fn set_net_rate_limit(
        &self,
        direction: Direction,
        limit: Option<RateLimit>,
    ) -> Result<(), NetError>;
    /// The network counters.
    fn net_metrics(&self) -> Result<NetMetrics, NetError>;
    /// The flows open now.
    fn net_flows(&self) -> Result<Vec<FlowInfo>, NetError>;
}

fn handle(zone: &ZoneHandle) -> Result<Arc<NetHandle>, NetError> {
    zone.device::<NetHandle>()
        .ok_or_else(|| NetError::NoNetwork {
            zone: zone.name().to_string(),
        })
}

fn running(zone: &ZoneHandle, net: &NetHandle) -> Result<(), NetError> {
    match zone.state() {
        zone_core::ZoneState::Stopping(_) | zone_core::ZoneState::Ended(_) => {
            Err(NetError::Stopped {
                zone: net.zone.clone(),
            })
        }
        _ => Ok(()),
    }
}

impl NetControl for ZoneHandle {
    fn net_cut(&self) -> Result<(), NetError> {
        let net = handle(self)?;
        running(self, &net)?;
        net.cut_now(true)
    }

    fn net_restore(&self) -> Result<(), NetError> {
        let net = handle(self)?;
        running(self, &net)?;
        net.restore_now()
    }

    fn set_net_policy(&self, policy: NetPolicy) -> Result<u64, NetError> {
        let net = handle(self)?;
        running(self, &net)?;
        net.swap_policy(policy)
    }

    fn set_net_rate_limit(
        &self,
        direction: Direction,
        limit: Option<RateLimit>,
    ) -> Result<(), NetError> {
        let net = handle(self)?;
        running(self, &net)?;
        net.request(|w| match direction {
            Direction::Egress => w.egress = limit,
            Direction::Ingress => w.ingress = limit,
        });
        Ok(())
    }

    fn net_metrics(&self) -> Result<NetMetrics, NetError> {
        Ok(handle(self)?.counters.snapshot())
    }

    fn net_flows(&self) -> Result<Vec<FlowInfo>, NetError> {
        let net = handle(self)?;
        Ok(net.flows_now())
    }
}
