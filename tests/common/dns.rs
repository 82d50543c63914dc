//! [`DnsServer`], a real DNS server for the discovery tests: UDP on 127.0.0.1:0, answering
//! real DNS messages built with hickory-proto from a zone the test sets.

use hickory_resolver::proto::op::{Message, OpCode, ResponseCode};
use hickory_resolver::proto::rr::rdata::{A, AAAA, SOA, SRV};
use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// Mode is how the server answers every query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// From the zone (NOERROR; no data when the zone has no such records).
    Answer,
    /// SERVFAIL.
    ServFail,
    /// NXDOMAIN.
    NxDomain,
    /// No answer at all (the client times out).
    Silent,
}

/// Zone is what the server answers: records by (lowercase name, type).
#[derive(Default)]
pub struct Zone {
    records: BTreeMap<(String, RecordType), Vec<Record>>,
    /// SRV answers carry their targets' A records as additionals unless this is set.
    pub no_additionals: bool,
}

pub struct DnsServer {
    pub addr: SocketAddr,
    pub zone: Arc<Mutex<Zone>>,
    mode: Arc<Mutex<Mode>>,
    queries: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

fn dns_name(n: &str) -> Name {
    Name::from_str(n).expect("DNS name")
}

impl DnsServer {
    pub fn start() -> DnsServer {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind DNS server");
        socket
            .set_read_timeout(Some(Duration::from_millis(20)))
            .expect("read timeout");
        let addr = socket.local_addr().expect("addr");
        let zone = Arc::new(Mutex::new(Zone::default()));
        let mode = Arc::new(Mutex::new(Mode::Answer));
        let queries = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (z, m, q, s) = (zone.clone(), mode.clone(), queries.clone(), stop.clone());
        let thread = thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while !s.load(Ordering::SeqCst) {
                let Ok((n, from)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                let Ok(query) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                q.fetch_add(1, Ordering::SeqCst);
                let mode = *m.lock().unwrap();
                if mode == Mode::Silent {
                    continue;
                }
                let reply = answer(&query, mode, &z.lock().unwrap());
                let _ = socket.send_to(&reply.to_vec().expect("encode"), from);
            }
        });
        DnsServer {
            addr,
            zone,
            mode,
            queries,
            stop,
            thread: Some(thread),
        }
    }

    /// Replaces the records of (`n`, `ty`).
    pub fn set(&self, n: &str, ty: RecordType, records: Vec<Record>) {
        self.zone
            .lock()
            .unwrap()
            .records
            .insert((n.to_ascii_lowercase(), ty), records);
    }

    pub fn set_a(&self, n: &str, ttl: u32, ips: &[Ipv4Addr]) {
        let records = ips
            .iter()
            .map(|ip| Record::from_rdata(dns_name(n), ttl, RData::A(A(*ip))))
            .collect();
        self.set(n, RecordType::A, records);
    }

    pub fn set_aaaa(&self, n: &str, ttl: u32, ips: &[Ipv6Addr]) {
        let records = ips
            .iter()
            .map(|ip| Record::from_rdata(dns_name(n), ttl, RData::AAAA(AAAA(*ip))))
            .collect();
        self.set(n, RecordType::AAAA, records);
    }

    /// SRV records of `n`: (priority, weight, port, target).
    pub fn set_srv(&self, n: &str, ttl: u32, records: &[(u16, u16, u16, &str)]) {
        let records = records
            .iter()
            .map(|(p, w, port, target)| {
                Record::from_rdata(
                    dns_name(n),
                    ttl,
                    RData::SRV(SRV::new(*p, *w, *port, dns_name(target))),
                )
            })
            .collect();
        self.set(n, RecordType::SRV, records);
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    pub fn queries(&self) -> usize {
        self.queries.load(Ordering::SeqCst)
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The reply to `query` in `mode` from `zone`.
fn answer(query: &Message, mode: Mode, zone: &Zone) -> Message {
    let code = match mode {
        Mode::ServFail => ResponseCode::ServFail,
        Mode::NxDomain => ResponseCode::NXDomain,
        _ => ResponseCode::NoError,
    };
    let mut reply = Message::error_msg(query.metadata.id, OpCode::Query, code);
    reply.metadata.authoritative = true;
    reply.metadata.recursion_desired = query.metadata.recursion_desired;
    reply.metadata.recursion_available = true;
    for q in &query.queries {
        reply.add_query(q.clone());
    }
    let Some(q) = query.queries.first() else {
        return reply;
    };
    if mode == Mode::Answer {
        let key = (q.name.to_ascii().to_ascii_lowercase(), q.query_type);
        let records = zone.records.get(&key).cloned().unwrap_or_default();
        if q.query_type == RecordType::SRV && !zone.no_additionals {
            for r in &records {
                if let RData::SRV(s) = &r.data {
                    let k = (s.target.to_ascii().to_ascii_lowercase(), RecordType::A);
                    for a in zone.records.get(&k).into_iter().flatten() {
                        reply.add_additional(a.clone());
                    }
                }
            }
        }
        if !records.is_empty() {
            reply.add_answers(records);
            return reply;
        }
    }
    if mode != Mode::ServFail {
        // A negative answer carries the zone's SOA (its minimum is the negative TTL).
        let soa = SOA::new(
            dns_name("test."),
            dns_name("admin.test."),
            1,
            60,
            60,
            600,
            1,
        );
        reply.add_authority(Record::from_rdata(dns_name("test."), 1, RData::SOA(soa)));
    }
    reply
}
