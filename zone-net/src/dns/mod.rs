//! DNS as part of the policy. Every query from the guest is an egress decision:
//! - a denied name is answered NXDOMAIN at once (not REFUSED: glibc's resolver keeps retrying
//!   other servers on REFUSED and the caller hangs);
//! - an allowed query is forwarded to the upstream resolver (the host's, or the one configured);
//! - in the answer, every address that points into a protected range (private, host,
//!   link-local, metadata) that no rule names is removed: DNS rebinding gets nothing;
//! - when a name rule allowed the query, each address answered is pinned to that name for its
//!   TTL ([`Pins`]): that, and only that, opens the address to the name's rules.
//!
//! The guest's query id is replaced by one of ours on the way up and restored on the way back,
//! and only answers from the upstream address to a query we sent are taken.

pub(crate) mod upstream;

use crate::denials::{DenialSink, Denials, Denied};
use crate::metrics::Counters;
use crate::policy::pins::Pins;
use crate::policy::{NameVerdict, NetPolicy};
use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::{RData, Record};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

/// Queries waiting for upstream at once; more get SERVFAIL.
pub(crate) const MAX_PENDING: usize = 256;
/// How long a forwarded query waits for upstream before the guest gets SERVFAIL.
pub(crate) const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest DNS message taken from the guest or from upstream.
pub(crate) const MAX_MESSAGE: usize = 4096;

/// A query forwarded upstream.
#[derive(Debug)]
struct Pending {
    /// Who asked: the guest's address and port.
    guest: SocketAddrV4,
    /// Whom it asked (the answer comes from there).
    server: SocketAddrV4,
    /// The guest's query id.
    id: u16,
    /// The name asked for.
    name: String,
    /// Pin the answered addresses to `name`.
    pin: bool,
    /// When the guest gets SERVFAIL instead.
    deadline: Instant,
}

/// An answer for the guest: from `server` to `guest`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Reply {
    pub(crate) server: SocketAddrV4,
    pub(crate) guest: SocketAddrV4,
    pub(crate) message: Vec<u8>,
}

/// What [`Dns::query`] did with a query.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Asked {
    /// Answered at once (NXDOMAIN, FORMERR, SERVFAIL).
    Answer(Vec<u8>),
    /// Sent upstream: this message, to the upstream resolver.
    Forward(Vec<u8>),
    /// Not DNS: dropped.
    Drop,
}

/// What DNS handling needs from the rest of the device.
pub(crate) struct DnsCx<'a, S> {
    pub(crate) policy: &'a NetPolicy,
    pub(crate) gateway: Option<IpAddr>,
    pub(crate) pins: &'a mut Pins,
    pub(crate) counters: &'a Counters,
    pub(crate) denials: &'a mut Denials<S>,
    pub(crate) now: Instant,
}

/// The DNS state of one zone.
#[derive(Debug)]
pub(crate) struct Dns {
    pending: HashMap<u16, Pending>,
    next_id: u16,
}

impl Dns {
    pub(crate) fn new(seed: u16) -> Self {
        Self {
            pending: HashMap::new(),
            next_id: seed,
        }
    }

    /// A query `payload` from `guest` to `server`.
    pub(crate) fn query<S: DenialSink>(
        &mut self,
        payload: &[u8],
        guest: SocketAddrV4,
        server: SocketAddrV4,
        cx: &mut DnsCx<'_, S>,
    ) -> Asked {
        Counters::add(&cx.counters.dns_queries, 1);
        if payload.len() > MAX_MESSAGE {
            return Asked::Drop;
        }
        let Ok(msg) = Message::from_vec(payload) else {
            return Asked::Drop;
        };
        let id = msg.metadata.id;
        if msg.metadata.message_type != MessageType::Query {
            return Asked::Drop;
        }
        let [query] = msg.queries.as_slice() else {
            return Asked::Answer(error(&msg, ResponseCode::FormErr));
        };
        if msg.metadata.op_code != OpCode::Query {
            return Asked::Answer(error(&msg, ResponseCode::NotImp));
        }
        let name = normalized(&query.name.to_ascii());
        let pin = match cx.policy.judge_name(&name) {
            NameVerdict::Deny { rule } => {
                Counters::add(&cx.counters.dns_denied, 1);
                let denied = Denied {
                    rule: cx.policy.describe(rule),
                    protocol: "dns",
                    destination: &name,
                    port: None,
                };
                cx.denials.deny(denied, cx.now);
                return Asked::Answer(error(&msg, ResponseCode::NXDomain));
            }
            NameVerdict::Allow { pin, .. } => pin,
        };
        if self.pending.len() >= MAX_PENDING {
            Counters::add(&cx.counters.dns_failed, 1);
            return Asked::Answer(error(&msg, ResponseCode::ServFail));
        }
        let ours = self.fresh_id();
        self.pending.insert(
            ours,
            Pending {
                guest,
                server,
                id,
                name,
                pin,
                deadline: cx.now + UPSTREAM_TIMEOUT,
            },
        );
        let mut up = payload.to_vec();
        up[..2].copy_from_slice(&ours.to_be_bytes());
        Asked::Forward(up)
    }

    fn fresh_id(&mut self) -> u16 {
        loop {
            // An odd increment walks every id; skipping ids in use keeps them unique.
            self.next_id = self.next_id.wrapping_add(0x9e37);
            if !self.pending.contains_key(&self.next_id) {
                return self.next_id;
            }
        }
    }

    /// An answer `payload` from the upstream resolver (already checked to come from it).
    pub(crate) fn answer<S: DenialSink>(
        &mut self,
        payload: &[u8],
        cx: &mut DnsCx<'_, S>,
    ) -> Option<Reply> {
        let Ok(mut msg) = Message::from_vec(payload) else {
            return None;
        };
        if msg.metadata.message_type != MessageType::Response {
            return None;
        }
        let p = self.pending.remove(&msg.metadata.id)?;
        let mut removed = 0;
        for section in [&mut msg.answers, &mut msg.additionals] {
            section.retain(|record| {
                let Some(addr) = address(record) else {
                    return true;
                };
                if !cx.policy.answer_allowed(addr, cx.gateway) {
                    removed += 1;
                    Counters::add(&cx.counters.dns_rebinding, 1);
                    let class = crate::policy::classify(addr, cx.gateway).name();
                    let destination = format!("{} -> {addr}", p.name);
                    cx.denials.deny(
                        Denied {
                            rule: format!("rebinding: {class} address in an answer"),
                            protocol: "dns",
                            destination: &destination,
                            port: None,
                        },
                        cx.now,
                    );
                    return false;
                }
                if p.pin {
                    let ttl = Duration::from_secs(u64::from(record.ttl));
                    cx.pins.pin(addr, &p.name, ttl, cx.now);
                }
                true
            });
        }
        Counters::add(&cx.counters.dns_answered, 1);
        let message = if removed == 0 {
            let mut raw = payload.to_vec();
            raw[..2].copy_from_slice(&p.id.to_be_bytes());
            raw
        } else {
            msg.metadata.id = p.id;
            msg.to_vec().ok()?
        };
        Some(Reply {
            server: p.server,
            guest: p.guest,
            message,
        })
    }

    /// SERVFAIL for every query whose upstream answer is overdue at `now`.
    pub(crate) fn expire(&mut self, now: Instant, counters: &Counters) -> Vec<Reply> {
        let overdue: Vec<u16> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        overdue
            .into_iter()
            .filter_map(|id| self.pending.remove(&id))
            .map(|p| {
                Counters::add(&counters.dns_failed, 1);
                Reply {
                    server: p.server,
                    guest: p.guest,
                    message: servfail(p.id),
                }
            })
            .collect()
    }

    /// When the next pending query times out.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.pending.values().map(|p| p.deadline).min()
    }

    /// Fails every pending query (no upstream, or the network was cut): SERVFAIL to each.
    pub(crate) fn fail_all(&mut self, counters: &Counters) -> Vec<Reply> {
        let far = Instant::now() + Duration::from_secs(1 << 20);
        self.expire(far, counters)
    }
}

/// `name` in lower case without its trailing dot.
fn normalized(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// The address an A or AAAA record holds.
fn address(record: &Record) -> Option<IpAddr> {
    match &record.data {
        RData::A(a) => Some(IpAddr::V4(a.0)),
        RData::AAAA(a) => Some(IpAddr::V6(a.0)),
        _ => None,
    }
}

/// An error answer to `query` with its question.
fn error(query: &Message, code: ResponseCode) -> Vec<u8> {
    let mut answer = Message::error_msg(query.metadata.id, query.metadata.op_code, code);
    answer.metadata.recursion_desired = query.metadata.recursion_desired;
    answer.metadata.recursion_available = true;
    answer.add_queries(query.queries.iter().cloned());
    answer
        .to_vec()
        .unwrap_or_else(|_| servfail(query.metadata.id))
}

/// A bare SERVFAIL with id `id` (12 bytes: header only).
fn servfail(id: u16) -> Vec<u8> {
    let mut m = [0u8; 12];
    m[..2].copy_from_slice(&id.to_be_bytes());
    m[2] = 0x81; // QR, RD
    m[3] = 0x82; // RA, SERVFAIL
    m.to_vec()
}

/// The address the upstream's answers must come from.
pub(crate) fn from_upstream(from: SocketAddr, upstream: SocketAddr) -> bool {
    from == upstream
}

#[cfg(test)]
mod tests;
