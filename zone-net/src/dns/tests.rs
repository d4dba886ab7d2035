use super::*;
use crate::denials::Denials;
use hickory_proto::op::Query;
use hickory_proto::rr::rdata::{A, AAAA, CNAME};
use hickory_proto::rr::{Name, RecordType};
use std::net::{Ipv4Addr, Ipv6Addr};
use zone_core::Denial;

#[derive(Default)]
struct Seen(Vec<Denial>);

impl DenialSink for &mut Seen {
    fn emit(&mut self, d: Denial) {
        self.0.push(d);
    }
}

fn guest() -> SocketAddrV4 {
    "10.0.2.15:33000".parse().unwrap()
}

fn server() -> SocketAddrV4 {
    "10.0.2.2:53".parse().unwrap()
}

fn query(id: u16, name: &str, qtype: RecordType) -> Vec<u8> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    m.to_vec().unwrap()
}

fn answer(id: u16, name: &str, records: Vec<RData>) -> Vec<u8> {
    let mut m = Message::new(id, MessageType::Response, OpCode::Query);
    let n = Name::from_ascii(name).unwrap();
    m.add_query(Query::query(n.clone(), RecordType::A));
    for r in records {
        m.add_answer(Record::from_rdata(n.clone(), 300, r));
    }
    m.to_vec().unwrap()
}

struct Rig {
    policy: NetPolicy,
    pins: Pins,
    counters: Counters,
    seen: Seen,
    dns: Dns,
}

impl Rig {
    fn new(policy: NetPolicy) -> Self {
        Self {
            policy,
            pins: Pins::default(),
            counters: Counters::default(),
            seen: Seen::default(),
            dns: Dns::new(1),
        }
    }

    fn ask(&mut self, payload: &[u8]) -> Asked {
        let now = Instant::now();
        let mut denials = Denials::new(&mut self.seen, "z", "net0", now);
        let mut cx = DnsCx {
            policy: &self.policy,
            gateway: Some("10.0.2.2".parse().unwrap()),
            pins: &mut self.pins,
            counters: &self.counters,
            denials: &mut denials,
            now,
        };
        self.dns.query(payload, guest(), server(), &mut cx)
    }

    fn answer(&mut self, payload: &[u8]) -> Option<Reply> {
        let now = Instant::now();
        let mut denials = Denials::new(&mut self.seen, "z", "net0", now);
        let mut cx = DnsCx {
            policy: &self.policy,
            gateway: Some("10.0.2.2".parse().unwrap()),
            pins: &mut self.pins,
            counters: &self.counters,
            denials: &mut denials,
            now,
        };
        self.dns.answer(payload, &mut cx)
    }
}

fn code(message: &[u8]) -> (u16, ResponseCode, usize) {
    let m = Message::from_vec(message).unwrap();
    (m.metadata.id, m.metadata.response_code, m.queries.len())
}

#[test]
fn a_denied_name_is_nxdomain_with_its_question_and_an_event() {
    let mut rig = Rig::new(NetPolicy::new().allow("api.example.com"));
    let Asked::Answer(reply) = rig.ask(&query(77, "evil.example.", RecordType::A)) else {
        panic!("answered at once")
    };
    assert_eq!(code(&reply), (77, ResponseCode::NXDomain, 1));
    assert_eq!(rig.counters.snapshot().dns_denied, 1);
    let d = &rig.seen.0[0];
    assert_eq!(
        (d.protocol, d.destination.as_str(), d.rule.as_str()),
        ("dns", "evil.example", "default deny")
    );
}

#[test]
fn an_allowed_answer_is_pinned_and_rebinding_is_removed() {
    let mut rig = Rig::new(NetPolicy::new().allow("tcp API.example.com:443"));
    let Asked::Forward(up) = rig.ask(&query(5, "api.example.com", RecordType::A)) else {
        panic!("forwarded")
    };
    let ours = u16::from_be_bytes([up[0], up[1]]);
    assert_ne!(ours, 5, "our own id upstream");
    assert_eq!(&up[2..], &query(5, "api.example.com", RecordType::A)[2..]);
    let records = vec![
        RData::CNAME(CNAME(Name::from_ascii("edge.example.net.").unwrap())),
        RData::A(A(Ipv4Addr::new(93, 184, 216, 34))),
        RData::A(A(Ipv4Addr::new(192, 168, 1, 10))),
        RData::A(A(Ipv4Addr::new(169, 254, 169, 254))),
        RData::AAAA(AAAA(Ipv6Addr::LOCALHOST)),
    ];
    assert!(
        rig.answer(&answer(ours ^ 1, "api.example.com", records.clone()))
            .is_none(),
        "unknown id"
    );
    let reply = rig
        .answer(&answer(ours, "api.example.com", records))
        .unwrap();
    assert_eq!((reply.guest, reply.server), (guest(), server()));
    let m = Message::from_vec(&reply.message).unwrap();
    assert_eq!(m.metadata.id, 5, "the guest's id back");
    let kept: Vec<_> = m.answers.iter().filter_map(address).collect();
    assert_eq!(kept, [IpAddr::from([93, 184, 216, 34])]);
    assert_eq!(m.answers.len(), 2, "the CNAME stays");
    assert_eq!(rig.counters.snapshot().dns_rebinding_blocked, 3);
    assert_eq!(rig.seen.0.len(), 3);
    assert!(
        rig.seen.0[0].rule.starts_with("rebinding: private"),
        "{:?}",
        rig.seen.0
    );
    let now = Instant::now();
    assert_eq!(
        rig.pins
            .names(IpAddr::from([93, 184, 216, 34]), now)
            .collect::<Vec<_>>(),
        ["api.example.com"]
    );
    assert!(
        rig.answer(&answer(ours, "api.example.com", vec![]))
            .is_none(),
        "answered once"
    );
}

#[test]
fn names_allowed_by_address_rules_are_not_pinned() {
    let mut rig = Rig::new(NetPolicy::new().allow("public:443"));
    let Asked::Forward(up) = rig.ask(&query(9, "anything.test", RecordType::A)) else {
        panic!()
    };
    let ours = u16::from_be_bytes([up[0], up[1]]);
    let ip = Ipv4Addr::new(203, 0, 113, 7);
    let reply = rig
        .answer(&answer(ours, "anything.test", vec![RData::A(A(ip))]))
        .unwrap();
    assert_eq!(code(&reply.message).0, 9);
    assert!(rig.pins.is_empty());
}

#[test]
fn overdue_queries_get_servfail_and_the_pending_table_is_bounded() {
    let mut rig = Rig::new(NetPolicy::new().allow("*.example.com"));
    for i in 0..MAX_PENDING {
        let name = format!("h{i}.example.com");
        assert!(matches!(
            rig.ask(&query(i as u16, &name, RecordType::A)),
            Asked::Forward(_)
        ));
    }
    let Asked::Answer(full) = rig.ask(&query(999, "x.example.com", RecordType::A)) else {
        panic!()
    };
    assert_eq!(code(&full).1, ResponseCode::ServFail);
    let expired = rig
        .dns
        .expire(Instant::now() + UPSTREAM_TIMEOUT, &rig.counters);
    assert_eq!(expired.len(), MAX_PENDING);
    assert_eq!(code(&expired[0].message).1, ResponseCode::ServFail);
    assert_eq!(rig.counters.snapshot().dns_failed, MAX_PENDING as u64 + 1);
    assert!(rig.dns.next_deadline().is_none());
}

#[test]
fn junk_and_odd_queries() {
    let mut rig = Rig::new(NetPolicy::new().allow("*.example.com"));
    assert_eq!(rig.ask(b"\x00\x01garbage"), Asked::Drop);
    assert_eq!(rig.ask(&[0u8; MAX_MESSAGE + 1]), Asked::Drop);
    let mut two = Message::new(3, MessageType::Query, OpCode::Query);
    two.add_query(Query::query(
        Name::from_ascii("a.example.com").unwrap(),
        RecordType::A,
    ));
    two.add_query(Query::query(
        Name::from_ascii("b.example.com").unwrap(),
        RecordType::A,
    ));
    let Asked::Answer(formerr) = rig.ask(&two.to_vec().unwrap()) else {
        panic!()
    };
    assert_eq!(code(&formerr).1, ResponseCode::FormErr);
    let response = answer(4, "a.example.com", vec![]);
    assert_eq!(rig.ask(&response), Asked::Drop, "a response is no query");
}
