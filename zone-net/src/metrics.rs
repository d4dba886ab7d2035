//! The network counters of a zone: updated by the device thread with relaxed atomics, read as a
//! [`NetMetrics`] snapshot from any thread (and shown in the zone's
//! [`ZoneMetrics`](zone_core::ZoneMetrics) under the device's name).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Why a frame was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum DropReason {
    /// The policy denied the flow or packet.
    Policy,
    /// The network was cut.
    Cut,
    /// The frame did not parse (or broke the virtio-net rules).
    Malformed,
    /// A protocol the backend does not carry (IPv6, fragments, other IP protocols).
    Unsupported,
    /// The flow table was full.
    FlowLimit,
    /// No buffer: the guest did not take frames fast enough, or the host side refused one.
    Backlog,
    /// A packet of no known flow (TAP: unsolicited traffic toward the guest).
    NoFlow,
}

const REASONS: usize = 7;

/// Live counters.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) rx_bytes: AtomicU64,
    pub(crate) rx_packets: AtomicU64,
    pub(crate) tx_bytes: AtomicU64,
    pub(crate) tx_packets: AtomicU64,
    drops: [AtomicU64; REASONS],
    pub(crate) flows_open: AtomicU64,
    pub(crate) flows_opened: AtomicU64,
    pub(crate) flows_refused: AtomicU64,
    pub(crate) flows_failed: AtomicU64,
    pub(crate) dns_queries: AtomicU64,
    pub(crate) dns_answered: AtomicU64,
    pub(crate) dns_denied: AtomicU64,
    pub(crate) dns_rebinding: AtomicU64,
    pub(crate) dns_failed: AtomicU64,
    pub(crate) denials_emitted: AtomicU64,
}

impl Counters {
    pub(crate) fn dropped(&self, reason: DropReason) {
        self.drops[reason as usize].fetch_add(1, Relaxed);
    }

    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    pub(crate) fn snapshot(&self) -> NetMetrics {
        let d = |r: DropReason| self.drops[r as usize].load(Relaxed);
        NetMetrics {
            rx_bytes: self.rx_bytes.load(Relaxed),
            rx_packets: self.rx_packets.load(Relaxed),
            tx_bytes: self.tx_bytes.load(Relaxed),
            tx_packets: self.tx_packets.load(Relaxed),
            dropped_policy: d(DropReason::Policy),
            dropped_cut: d(DropReason::Cut),
            dropped_malformed: d(DropReason::Malformed),
            dropped_unsupported: d(DropReason::Unsupported),
            dropped_flow_limit: d(DropReason::FlowLimit),
            dropped_backlog: d(DropReason::Backlog),
            dropped_no_flow: d(DropReason::NoFlow),
            flows_open: self.flows_open.load(Relaxed),
            flows_opened: self.flows_opened.load(Relaxed),
            flows_refused: self.flows_refused.load(Relaxed),
            flows_failed: self.flows_failed.load(Relaxed),
            dns_queries: self.dns_queries.load(Relaxed),
            dns_answered: self.dns_answered.load(Relaxed),
            dns_denied: self.dns_denied.load(Relaxed),
            dns_rebinding_blocked: self.dns_rebinding.load(Relaxed),
            dns_failed: self.dns_failed.load(Relaxed),
            denial_events: self.denials_emitted.load(Relaxed),
        }
    }
}

/// A snapshot of a zone's network counters. `rx` is toward the guest, `tx` from it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct NetMetrics {
    /// Bytes delivered to the guest (frames).
    pub rx_bytes: u64,
    /// Frames delivered to the guest.
    pub rx_packets: u64,
    /// Bytes the guest sent (frames).
    pub tx_bytes: u64,
    /// Frames the guest sent.
    pub tx_packets: u64,
    /// Frames dropped because the policy denied them.
    pub dropped_policy: u64,
    /// Frames dropped while the network was cut.
    pub dropped_cut: u64,
    /// Frames that did not parse.
    pub dropped_malformed: u64,
    /// Frames of protocols not carried (IPv6, fragments, other IP protocols).
    pub dropped_unsupported: u64,
    /// Flows refused because the flow table was full.
    pub dropped_flow_limit: u64,
    /// Frames dropped for lack of room (guest not taking them, host refusing them).
    pub dropped_backlog: u64,
    /// Frames of no known flow (TAP).
    pub dropped_no_flow: u64,
    /// Flows open now.
    pub flows_open: u64,
    /// Flows opened since the zone started.
    pub flows_opened: u64,
    /// Flows the policy refused.
    pub flows_refused: u64,
    /// Flows the policy allowed that the host could not open (refused, unreachable).
    pub flows_failed: u64,
    /// DNS queries from the guest.
    pub dns_queries: u64,
    /// Queries answered from upstream.
    pub dns_answered: u64,
    /// Queries the policy denied (answered NXDOMAIN).
    pub dns_denied: u64,
    /// Addresses removed from answers because they pointed into a protected range.
    pub dns_rebinding_blocked: u64,
    /// Queries that got no answer from upstream (SERVFAIL).
    pub dns_failed: u64,
    /// Denial events emitted (each may stand for several denials; the counters above are exact).
    pub denial_events: u64,
}

impl NetMetrics {
    /// Every counter by name, in a fixed order (what the zone's metrics show).
    pub fn counters(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("rx_bytes", self.rx_bytes),
            ("rx_packets", self.rx_packets),
            ("tx_bytes", self.tx_bytes),
            ("tx_packets", self.tx_packets),
            ("dropped_policy", self.dropped_policy),
            ("dropped_cut", self.dropped_cut),
            ("dropped_malformed", self.dropped_malformed),
            ("dropped_unsupported", self.dropped_unsupported),
            ("dropped_flow_limit", self.dropped_flow_limit),
            ("dropped_backlog", self.dropped_backlog),
            ("dropped_no_flow", self.dropped_no_flow),
            ("flows_open", self.flows_open),
            ("flows_opened", self.flows_opened),
            ("flows_refused", self.flows_refused),
            ("flows_failed", self.flows_failed),
            ("dns_queries", self.dns_queries),
            ("dns_answered", self.dns_answered),
            ("dns_denied", self.dns_denied),
            ("dns_rebinding_blocked", self.dns_rebinding_blocked),
            ("dns_failed", self.dns_failed),
            ("denial_events", self.denial_events),
        ]
    }
}
