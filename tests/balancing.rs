//! Load balancing end to end: round robin, smooth weighted round robin and backups in exact
//! order, refused peers, 502/504 from the upstream side and routing; load-aware algorithms
//! against a slow peer, hash affinity by header, cookie and client IP (on one and two shards),
//! the round-robin fallback for requests without a key, the consistent-hash walk on a refusing
//! peer, shard-local least-connections counts on two shards, weights, and
//! `ringlb demo --algorithm maglev`.
//!
//! Where a placement is deterministic, the test predicts it with the library's own selectors
//! (`ConsistentHash`, `Maglev` over the peers' addresses as written in the config, keyed with
//! `stable_hash`) and asserts the proxy agrees request by request.

mod common;

use common::*;
use ringlb::balance::{
    select_eligible, stable_hash, Candidate, ConsistentHash, Maglev, PeerLoad, PickRequest,
    Selector,
};
use ringlb::config::GroupId;
use ringlb::failover::FailureHooks;
use ringlb::proxy::{Pick, Picker, RequestInfo, Upstreams};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// How many responses each backend (named by the response body) gave.
type Split = BTreeMap<String, usize>;

/// `clients` threads, each with one keep-alive connection sending `per_client` GETs, all at
/// once; returns the split by response body (every backend answers with its name).
fn drive(addr: SocketAddr, clients: usize, per_client: usize) -> Split {
    let split = Mutex::new(Split::new());
    thread::scope(|s| {
        for t in 0..clients {
            let split = &split;
            s.spawn(move || {
                let mut c = Client::connect(addr);
                let mut mine = Split::new();
                for i in 0..per_client {
                    let r = c.roundtrip(&get(&format!("/load/{t}/{i}")));
                    assert_eq!(r.status, 200, "client {t} request {i}: {}", show(&r.head));
                    *mine.entry(r.body_str()).or_default() += 1;
                }
                let mut all = split.lock().unwrap();
                for (k, v) in mine {
                    *all.entry(k).or_default() += v;
                }
            });
        }
    });
    split.into_inner().unwrap()
}

/// `n` backends named `{prefix}0`, `{prefix}1`, … answering with their names.
fn backends(prefix: &str, n: usize) -> Vec<Backend> {
    (0..n)
        .map(|i| Backend::start(&format!("{prefix}{i}")))
        .collect()
}

/// Weight-1 peer entries for these backends.
fn peers_of(backends: &[Backend]) -> Vec<Peer> {
    backends.iter().map(|b| peer(b.addr())).collect()
}

/// The peers' addresses as the config writes them (what the hashing selectors hash).
fn addresses(addrs: &[SocketAddr]) -> Vec<String> {
    addrs.iter().map(|a| a.to_string()).collect()
}

/// Which hashing selector to predict placements with.
#[derive(Clone, Copy, Debug)]
enum Hashing {
    ConsistentHash,
    Maglev,
}

/// Predicts where a key goes: the index of the `nth` distinct choice of `hashing` (default
/// tuning: 160 points, table 65537, no bound) built over `addresses` (all weight 1).
struct Predictor {
    selector: Box<dyn Selector>,
}

impl Predictor {
    fn new(hashing: Hashing, addresses: &[String]) -> Predictor {
        Predictor::tuned(hashing, addresses, 160, 65_537, None)
    }

    /// With `points` (consistent_hash), `table_size` (maglev) and `balance_factor`.
    fn tuned(
        hashing: Hashing,
        addresses: &[String],
        points: u32,
        table_size: u64,
        balance_factor: Option<f64>,
    ) -> Predictor {
        let candidates: Vec<Candidate<'_>> = addresses
            .iter()
            .map(|a| Candidate {
                address: a,
                weight: 1,
            })
            .collect();
        let selector: Box<dyn Selector> = match hashing {
            Hashing::ConsistentHash => {
                Box::new(ConsistentHash::new(&candidates, points, balance_factor))
            }
            Hashing::Maglev => Box::new(Maglev::new(&candidates, table_size, balance_factor)),
        };
        Predictor { selector }
    }

    /// The candidate index the key `value` (hashed as on the wire) goes to, as `nth` choice.
    fn place(&mut self, value: &[u8], nth: u32) -> usize {
        self.selector
            .pick(&PickRequest {
                hash: Some(stable_hash(value)),
                nth,
                loads: &[],
            })
            .expect("a candidate")
    }

    /// Where the key `value` goes when the candidates carry `loads` (bounded load).
    fn place_loaded(&mut self, value: &[u8], loads: &[PeerLoad]) -> usize {
        select_eligible(
            self.selector.as_mut(),
            Some(stable_hash(value)),
            loads,
            |_| true,
        )
        .expect("a candidate")
    }
}

/// The index of the shard whose thread runs the caller (`ringlb-shard-N`).
fn current_shard() -> usize {
    thread::current()
        .name()
        .and_then(|n| n.strip_prefix("ringlb-shard-"))
        .and_then(|n| n.parse().ok())
        .expect("the picker runs on a shard thread")
}

/// ShardSpy is a picker that sends everything to group 0 with the group's own hash key (as the
/// config router does for a single group) and records which shard served which client
/// connection (by the client's port) and how many picks each shard made.
#[derive(Default)]
struct ShardSpy {
    /// Client port → shard.
    conns: Mutex<HashMap<u16, usize>>,
    /// Picks per shard.
    picks: Mutex<BTreeMap<usize, usize>>,
}

impl FailureHooks for ShardSpy {}

impl Picker for ShardSpy {
    fn pick(&self, req: &RequestInfo<'_>, _: &Upstreams<'_>) -> Pick {
        let shard = current_shard();
        self.conns
            .lock()
            .unwrap()
            .insert(req.client().port(), shard);
        *self.picks.lock().unwrap().entry(shard).or_default() += 1;
        Pick {
            upstream: Some(GroupId::new(0)),
            hash: None,
        }
    }
}

impl ShardSpy {
    /// The shard that served the connection with this client port.
    fn shard_of(&self, port: u16) -> usize {
        *self
            .conns
            .lock()
            .unwrap()
            .get(&port)
            .unwrap_or_else(|| panic!("no request seen from client port {port}"))
    }

    /// Picks made by `shard` so far.
    fn picks(&self, shard: usize) -> usize {
        self.picks.lock().unwrap().get(&shard).copied().unwrap_or(0)
    }
}

/// A client connection and the shard serving it.
struct ShardConn {
    client: Client,
    shard: usize,
}

/// Opens connections (each sends one `GET {warmup}`) until every one of `shards` shards serves
/// at least `per_shard` of them; returns them all. Panics after 200 connections.
fn conns_on_every_shard(
    proxy: &Proxy,
    spy: &ShardSpy,
    shards: usize,
    per_shard: usize,
    warmup: &str,
) -> Vec<ShardConn> {
    let mut conns: Vec<ShardConn> = Vec::new();
    let enough = |conns: &[ShardConn]| {
        (0..shards).all(|s| conns.iter().filter(|c| c.shard == s).count() >= per_shard)
    };
    while !enough(&conns) {
        assert!(
            conns.len() < 200,
            "200 connections did not reach all {shards} shards {per_shard} times each"
        );
        let mut client = proxy.client();
        let r = client.roundtrip(&get(warmup));
        assert_eq!(r.status, 200, "{}", show(&r.head));
        let port = client.stream().local_addr().unwrap().port();
        let shard = spy.shard_of(port);
        conns.push(ShardConn { client, shard });
    }
    conns
}

// ---------------------------------------------------------------------------------------------
// Rotation, backups, refused peers, upstream errors, routing (one shard: exact orders).

/// Sends `n` GETs on one connection and returns the response bodies (each backend answers
/// with its name).
fn names(proxy: &Proxy, n: usize) -> Vec<String> {
    let mut c = proxy.client();
    (0..n)
        .map(|i| {
            let r = c.roundtrip(&get(&format!("/{i}")));
            assert_eq!(r.status, 200, "request {i}: {}", show(&r.head));
            r.body_str()
        })
        .collect()
}

#[test]
fn round_robin_exact_order_over_three_peers() {
    let (a, b, c) = (
        Backend::start("a"),
        Backend::start("b"),
        Backend::start("c"),
    );
    let proxy = ProxyConfig::new()
        .upstream(
            "app",
            "round_robin",
            &[peer(a.addr()), peer(b.addr()), peer(c.addr())],
        )
        .start();
    assert_eq!(names(&proxy, 9).concat(), "abcabcabc");
    assert_eq!(
        (a.request_count(), b.request_count(), c.request_count()),
        (3, 3, 3)
    );
}

#[test]
fn round_robin_ignores_weights_and_new_connections_continue_rotation() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let proxy = ProxyConfig::new()
        .upstream(
            "app",
            "round_robin",
            &[peer(a.addr()).weight(5), peer(b.addr())],
        )
        .start();
    // One shard: the rotation is per shard, not per client connection.
    let mut seq = String::new();
    for _ in 0..3 {
        seq.push_str(&names(&proxy, 2).concat());
    }
    assert_eq!(seq, "ababab");
}

#[test]
fn smooth_weighted_exact_order_5_1_1() {
    let (a, b, c) = (
        Backend::start("a"),
        Backend::start("b"),
        Backend::start("c"),
    );
    let proxy = ProxyConfig::new()
        .upstream(
            "app",
            "smooth_weighted",
            &[
                peer(a.addr()).weight(5),
                peer(b.addr()).weight(1),
                peer(c.addr()).weight(1),
            ],
        )
        .start();
    assert_eq!(names(&proxy, 14).concat(), "aabacaaaabacaa");
    assert_eq!(
        (a.request_count(), b.request_count(), c.request_count()),
        (10, 2, 2)
    );
}

#[test]
fn backup_peer_gets_no_traffic_while_primaries_are_up() {
    let (a, b, spare) = (
        Backend::start("a"),
        Backend::start("b"),
        Backend::start("spare"),
    );
    let proxy = ProxyConfig::new()
        .upstream(
            "app",
            "round_robin",
            &[peer(a.addr()), peer(spare.addr()).backup(), peer(b.addr())],
        )
        .start();
    // The rotation skips the backup: a and b alternate exactly.
    let got = names(&proxy, 6);
    assert_eq!(got.concat(), "ababab");
    assert_eq!(spare.accepts(), 0);
    assert_eq!((a.request_count(), b.request_count()), (3, 3), "{got:?}");
}

#[test]
fn refusing_peer_is_skipped() {
    let (a, c) = (Backend::start("a"), Backend::start("c"));
    let dead = refusing_addr();
    let proxy = ProxyConfig::new()
        .upstream(
            "app",
            "round_robin",
            &[peer(a.addr()), peer(dead), peer(c.addr())],
        )
        .start();
    let got = names(&proxy, 12);
    assert!(
        got.iter().all(|n| n == "a" || n == "c"),
        "responses came from {got:?}"
    );
    assert_eq!((a.request_count(), c.request_count()), (6, 6), "{got:?}");
}

#[test]
fn all_peers_down_gives_502() {
    let proxy = ProxyConfig::new()
        .upstream(
            "app",
            "round_robin",
            &[peer(refusing_addr()), peer(refusing_addr())],
        )
        .start();
    let mut c = proxy.client();
    let r = c.roundtrip(&get("/"));
    r.assert_proxy_error(502);
    // A second request gets the same answer (the proxy did not crash or hang).
    let mut c = proxy.client();
    c.roundtrip(&get("/again")).assert_proxy_error(502);
}

#[test]
fn slow_peer_beyond_upstream_read_timeout_gives_504() {
    let b = Backend::with_handler("slow", |_| Reply::ok("late").delay(Duration::from_secs(10)));
    // No retries: a timed-out GET is retried by default (`retry.on` lists `timeout`), which
    // would add tries and backoffs to the time measured here.
    let proxy = ProxyConfig::with_backends(&[&b])
        .upstream_line("retry = { max_retries = 0 }")
        .timeout("upstream_read_ms", 300)
        .start();
    let mut c = proxy.client();
    let t = Instant::now();
    let r = c.roundtrip(&get("/"));
    let took = t.elapsed();
    r.assert_proxy_error(504);
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_millis(1500),
        "504 after {took:?} (upstream_read_ms = 300, peer answers after 10 s)"
    );
    assert_eq!(b.heads_seen(), 1);
}

#[test]
fn garbage_status_line_gives_502() {
    let b = Backend::with_handler("bad", |_| Reply::raw(&b"NONSENSE 42\r\n\r\n"[..]));
    let proxy = ProxyConfig::with_backends(&[&b]).start();
    let mut c = proxy.client();
    c.roundtrip(&get("/")).assert_proxy_error(502);
    let mut c = proxy.client();
    c.roundtrip(&post("/p", b"data")).assert_proxy_error(502);
}

#[test]
fn routing_by_host_path_prefix_and_header() {
    let api = Backend::start("api");
    let stat = Backend::start("static");
    let canary = Backend::start("canary");
    let dflt = Backend::start("default");
    let proxy = ProxyConfig::new()
        .upstream("api", "round_robin", &[peer(api.addr())])
        .upstream("static", "round_robin", &[peer(stat.addr())])
        .upstream("canary", "round_robin", &[peer(canary.addr())])
        .upstream("default", "round_robin", &[peer(dflt.addr())])
        .route(&["host = \"api.example.com\""], "api")
        .route(&["path_prefix = \"/static/\""], "static")
        .route(&["header = \"X-Canary: true\""], "canary")
        .route(&[], "default")
        .start();
    let cases: &[(&str, &str)] = &[
        (
            "GET /v1/users HTTP/1.1\r\nHost: api.example.com\r\n\r\n",
            "api",
        ),
        (
            "GET /v1/users HTTP/1.1\r\nHost: API.Example.COM:8080\r\n\r\n",
            "api",
        ),
        // First match wins: the host route comes before the path route.
        (
            "GET /static/app.js HTTP/1.1\r\nHost: api.example.com\r\n\r\n",
            "api",
        ),
        (
            "GET /static/app.js HTTP/1.1\r\nHost: www.example.com\r\n\r\n",
            "static",
        ),
        (
            "GET /staticky HTTP/1.1\r\nHost: www.example.com\r\n\r\n",
            "default",
        ),
        (
            "GET / HTTP/1.1\r\nHost: www.example.com\r\nX-Canary: true\r\n\r\n",
            "canary",
        ),
        (
            "GET / HTTP/1.1\r\nHost: www.example.com\r\nx-canary: true\r\n\r\n",
            "canary",
        ),
        (
            "GET / HTTP/1.1\r\nHost: www.example.com\r\nX-Canary: false\r\n\r\n",
            "default",
        ),
        ("GET / HTTP/1.1\r\nHost: www.example.com\r\n\r\n", "default"),
    ];
    let mut c = proxy.client();
    for (req, want) in cases {
        let r = c.roundtrip(req.as_bytes());
        assert_eq!(r.status, 200, "{req:?}");
        assert_eq!(r.body_str(), *want, "routed {req:?}");
    }
    assert_eq!(api.request_count(), 3);
    assert_eq!(stat.request_count(), 1);
    assert_eq!(canary.request_count(), 2);
    assert_eq!(dflt.request_count(), 3);
}

#[test]
fn backup_peer_serves_when_the_only_primary_refuses() {
    let spare = Backend::start("spare");
    let proxy = ProxyConfig::new()
        .upstream(
            "app",
            "round_robin",
            &[peer(refusing_addr()), peer(spare.addr()).backup()],
        )
        .start();
    assert_eq!(names(&proxy, 3).concat(), "sparesparespare");
}

// ---------------------------------------------------------------------------------------------
// 1, 2: load-aware algorithms against a slow peer.

#[test]
fn least_connections_and_power_of_two_send_less_to_a_slow_peer_than_round_robin() {
    const CLIENTS: usize = 16;
    const PER_CLIENT: usize = 24;
    const TOTAL: usize = CLIENTS * PER_CLIENT;
    for algorithm in ["round_robin", "least_connections", "power_of_two"] {
        let fast0 = Backend::start("fast0");
        let slow = Backend::with_handler("slow", |_| {
            Reply::ok("slow").delay(Duration::from_millis(200))
        });
        let fast1 = Backend::start("fast1");
        let proxy = ProxyConfig::new()
            .upstream(
                "app",
                algorithm,
                &[peer(fast0.addr()), peer(slow.addr()), peer(fast1.addr())],
            )
            .start();
        let t = Instant::now();
        let split = drive(proxy.addr, CLIENTS, PER_CLIENT);
        let took = t.elapsed();
        let n = |name: &str| split.get(name).copied().unwrap_or(0);
        let (f0, s, f1) = (n("fast0"), n("slow"), n("fast1"));
        println!(
            "{algorithm:>17}: fast0 {f0:>3}, slow {s:>3}, fast1 {f1:>3} \
             ({CLIENTS} clients x {PER_CLIENT}, slow answers after 200 ms; {took:?})"
        );
        assert_eq!(f0 + s + f1, TOTAL, "{split:?}");
        assert_eq!(
            (
                fast0.request_count(),
                slow.request_count(),
                fast1.request_count()
            ),
            (f0, s, f1),
            "each request reached exactly one backend"
        );
        if algorithm == "round_robin" {
            // The control: strict rotation on one shard ignores load.
            assert_eq!((f0, s, f1), (TOTAL / 3, TOTAL / 3, TOTAL / 3));
        } else {
            // Fewer than half the average of a fast peer (round robin gives it exactly as
            // many): a slow peer holds its requests, so its in-flight count is the highest.
            let fast_avg = (f0 + f1) as f64 / 2.0;
            assert!(
                (s as f64) < fast_avg / 2.0,
                "{algorithm}: slow peer got {s}, fast peers {f0} and {f1}"
            );
        }
    }
}

#[test]
fn peak_ewma_sends_under_a_fifth_to_a_ten_times_slower_peer() {
    const CLIENTS: usize = 16;
    const PER_CLIENT: usize = 25;
    const TOTAL: usize = CLIENTS * PER_CLIENT;
    let fast = |name: &'static str| {
        Backend::with_handler(name, move |_| {
            Reply::ok(name).delay(Duration::from_millis(10))
        })
    };
    let (fast0, fast1) = (fast("fast0"), fast("fast1"));
    let slow = Backend::with_handler("slow", |_| {
        Reply::ok("slow").delay(Duration::from_millis(100))
    });
    let proxy = ProxyConfig::new()
        .upstream(
            "app",
            "peak_ewma",
            &[peer(fast0.addr()), peer(slow.addr()), peer(fast1.addr())],
        )
        .start();
    let t = Instant::now();
    let split = drive(proxy.addr, CLIENTS, PER_CLIENT);
    let n = |name: &str| split.get(name).copied().unwrap_or(0);
    let (f0, s, f1) = (n("fast0"), n("slow"), n("fast1"));
    println!(
        "peak_ewma: fast0 {f0}, slow {s}, fast1 {f1} ({:.1} % to the slow peer; 10 ms vs \
         100 ms; {CLIENTS} clients x {PER_CLIENT}; {:?})",
        100.0 * s as f64 / TOTAL as f64,
        t.elapsed()
    );
    assert_eq!(f0 + s + f1, TOTAL, "{split:?}");
    assert!(s * 5 < TOTAL, "slow peer got {s} of {TOTAL}: {split:?}");
    assert!(f0 > 0 && f1 > 0, "{split:?}");
}

// ---------------------------------------------------------------------------------------------
// 3, 4, 5, 6: hash affinity, ip_hash, requests without a key, walking on from a dead peer.

/// Affinity of `hashing` with `hash_key` on `workers` shards: 1000 requests from 20 users
/// (`request(user, i)` builds request `i` of `user`), spread over several connections. Each
/// user lands on one backend, the one the library predicts; users spread over several
/// backends; with 2 shards, every user is served by both shards.
fn check_affinity(
    hashing: Hashing,
    hash_key: &str,
    workers: usize,
    request: impl Fn(&str, usize) -> Vec<u8>,
) {
    const USERS: usize = 20;
    const REQUESTS: usize = 1000;
    let algorithm = match hashing {
        Hashing::ConsistentHash => "consistent_hash",
        Hashing::Maglev => "maglev",
    };
    let bs = backends("b", 4);
    let addrs: Vec<SocketAddr> = bs.iter().map(|b| b.addr()).collect();
    let toml = ProxyConfig::new()
        .workers(workers)
        .upstream_with(
            "app",
            algorithm,
            &[&format!("hash_key = \"{hash_key}\"")],
            &peers_of(&bs),
        )
        .toml();
    let spy = Arc::new(ShardSpy::default());
    let (proxy, mut conns) = if workers == 1 {
        // The config router, as deployed.
        let proxy = Proxy::start(&toml);
        let conns: Vec<ShardConn> = (0..4)
            .map(|_| ShardConn {
                client: proxy.client(),
                shard: 0,
            })
            .collect();
        (proxy, conns)
    } else {
        let proxy = Proxy::start_with_picker(&toml, spy.clone());
        let conns = conns_on_every_shard(&proxy, &spy, workers, 2, "/warmup");
        (proxy, conns)
    };
    let warmup_requests: usize = bs.iter().map(|b| b.request_count()).sum();
    let mut predict = Predictor::new(hashing, &addresses(&addrs));
    let mut landed: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut shards_of: BTreeMap<String, BTreeSet<usize>> = BTreeMap::new();
    let nconns = conns.len();
    for i in 0..REQUESTS {
        let user = format!("user-{}", i % USERS);
        // Each user's requests go round the connections (so over every shard).
        let conn = &mut conns[(i / USERS + i % USERS) % nconns];
        let r = conn.client.roundtrip(&request(&user, i));
        assert_eq!(r.status, 200, "request {i}: {}", show(&r.head));
        let want = format!("b{}", predict.place(user.as_bytes(), 0));
        assert_eq!(
            r.body_str(),
            want,
            "{algorithm} ({hash_key}, {workers} shard(s)): request {i} of {user}"
        );
        landed.entry(user.clone()).or_default().insert(r.body_str());
        shards_of.entry(user).or_default().insert(conn.shard);
    }
    let mut per_backend = Split::new();
    for (user, set) in &landed {
        assert_eq!(set.len(), 1, "{user} landed on {set:?}");
        *per_backend.entry(set.first().unwrap().clone()).or_default() += 1;
    }
    println!(
        "{algorithm} {hash_key}, {workers} shard(s), {nconns} connections: users per backend \
         {per_backend:?}"
    );
    assert!(
        per_backend.len() > 1,
        "{USERS} users all on one backend: {per_backend:?}"
    );
    let served: usize = bs.iter().map(|b| b.request_count()).sum();
    assert_eq!(served - warmup_requests, REQUESTS);
    if workers > 1 {
        for (user, shards) in &shards_of {
            assert_eq!(
                shards.len(),
                workers,
                "{user} was served by shards {shards:?}"
            );
        }
    }
    drop(proxy);
}

/// Request `i` of `user` with an `X-User-Id` header.
fn with_user_header(user: &str, i: usize) -> Vec<u8> {
    format!("GET /items/{i} HTTP/1.1\r\nHost: test\r\nX-User-Id: {user}\r\n\r\n").into_bytes()
}

/// Request `i` of `user` with a `session` cookie among others.
fn with_session_cookie(user: &str, i: usize) -> Vec<u8> {
    format!(
        "GET /cart?i={i} HTTP/1.1\r\nHost: test\r\nCookie: theme=dark; session={user}; lang=en\r\n\r\n"
    )
    .into_bytes()
}

#[test]
fn header_affinity_with_consistent_hash_holds_over_1000_requests() {
    check_affinity(
        Hashing::ConsistentHash,
        "header:X-User-Id",
        1,
        with_user_header,
    );
}

#[test]
fn cookie_affinity_with_maglev_holds_over_1000_requests() {
    check_affinity(Hashing::Maglev, "cookie:session", 1, with_session_cookie);
}

#[test]
fn affinity_is_the_same_on_both_shards() {
    check_affinity(
        Hashing::ConsistentHash,
        "header:X-User-Id",
        2,
        with_user_header,
    );
    check_affinity(Hashing::Maglev, "cookie:session", 2, with_session_cookie);
}

/// A client connection from source address `ip` (a loopback address).
fn client_from(ip: [u8; 4], proxy: SocketAddr) -> Client {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let from = SocketAddr::from((ip, 0));
    s.bind(&from.into())
        .unwrap_or_else(|e| panic!("bind {from}: {e}"));
    s.connect_timeout(&proxy.into(), IO_TIMEOUT)
        .unwrap_or_else(|e| panic!("connect from {from}: {e}"));
    let s: std::net::TcpStream = s.into();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_nodelay(true).unwrap();
    Client::from_stream(s)
}

#[test]
fn ip_hash_sends_every_request_of_a_client_ip_to_one_peer() {
    let bs = backends("b", 3);
    let addrs: Vec<SocketAddr> = bs.iter().map(|b| b.addr()).collect();
    let proxy = ProxyConfig::new()
        .upstream("app", "ip_hash", &peers_of(&bs))
        .start();
    let mut predict = Predictor::new(Hashing::ConsistentHash, &addresses(&addrs));
    // 127.0.0.1: 60 requests over 6 connections, all on one backend.
    let want = format!("b{}", predict.place(&[127, 0, 0, 1], 0));
    let mut got = BTreeSet::new();
    for _ in 0..6 {
        let mut c = proxy.client();
        for i in 0..10 {
            let r = c.roundtrip(&get(&format!("/p/{i}")));
            assert_eq!(r.status, 200);
            got.insert(r.body_str());
        }
    }
    assert_eq!(
        got,
        BTreeSet::from([want.clone()]),
        "127.0.0.1 landed on {got:?}"
    );
    let owner = bs.iter().find(|b| b.name() == want).unwrap();
    assert_eq!(owner.request_count(), 60);
    // Other loopback sources: each sticks to its predicted peer, and they spread.
    let mut per_backend = Split::new();
    for x in 2..=21u8 {
        let ip = [127, 0, 0, x];
        let want = format!("b{}", predict.place(&ip, 0));
        for _ in 0..2 {
            let mut c = client_from(ip, proxy.addr);
            for _ in 0..3 {
                let r = c.roundtrip(&get("/ip"));
                assert_eq!(r.status, 200);
                assert_eq!(r.body_str(), want, "client 127.0.0.{x}");
            }
        }
        *per_backend.entry(want).or_default() += 1;
    }
    println!(
        "ip_hash: 127.0.0.1 -> {owner}; 127.0.0.2-21 per backend {per_backend:?}",
        owner = owner.name()
    );
    assert!(per_backend.len() > 1, "{per_backend:?}");
    // The backends saw the source addresses (the key really was the client IP).
    let xff: BTreeSet<String> = bs
        .iter()
        .flat_map(|b| b.requests())
        .filter(|r| r.path() == "/ip")
        .filter_map(|r| r.header("x-forwarded-for").map(str::to_string))
        .collect();
    assert_eq!(xff.len(), 20, "{xff:?}");
}

#[test]
fn requests_without_the_key_rotate_over_all_peers() {
    for (algorithm, key, keyed) in [
        (
            "consistent_hash",
            "header:X-User-Id",
            "GET /k HTTP/1.1\r\nHost: test\r\nX-User-Id: alice\r\n\r\n",
        ),
        (
            "maglev",
            "cookie:session",
            "GET /k HTTP/1.1\r\nHost: test\r\nCookie: session=alice\r\n\r\n",
        ),
    ] {
        let bs = backends("b", 3);
        let proxy = ProxyConfig::new()
            .upstream_with(
                "app",
                algorithm,
                &[&format!("hash_key = \"{key}\"")],
                &peers_of(&bs),
            )
            .start();
        let mut c = proxy.client();
        let keyless: [&[u8]; 3] = [
            b"GET /a HTTP/1.1\r\nHost: test\r\n\r\n",
            // Present but empty counts as absent.
            b"GET /b HTTP/1.1\r\nHost: test\r\nX-User-Id:\r\nCookie: session=\r\n\r\n",
            // Another cookie, another header: still no key.
            b"GET /c HTTP/1.1\r\nHost: test\r\nX-User: alice\r\nCookie: sessions=alice\r\n\r\n",
        ];
        let mut rotated = String::new();
        let mut sticky = BTreeSet::new();
        for i in 0..12 {
            let r = c.roundtrip(keyless[i % 3]);
            assert_eq!(r.status, 200);
            rotated.push_str(&r.body_str());
            rotated.push(' ');
            // Keyed requests in between do not move the rotation.
            let r = c.roundtrip(keyed.as_bytes());
            sticky.insert(r.body_str());
        }
        println!("{algorithm} without {key}: {rotated}; with it: {sticky:?}");
        assert_eq!(rotated.trim_end(), "b0 b1 b2 b0 b1 b2 b0 b1 b2 b0 b1 b2");
        assert_eq!(sticky.len(), 1, "{sticky:?}");
    }
}

#[test]
fn consistent_hash_walks_on_from_a_refusing_peer_to_the_same_next_peer() {
    let a = Backend::start("b0");
    let dead = refusing_addr();
    let c = Backend::start("b2");
    let addrs = [a.addr(), dead, c.addr()];
    let toml = ProxyConfig::new()
        .upstream_with(
            "app",
            "consistent_hash",
            &["hash_key = \"header:X-User-Id\""],
            &[peer(a.addr()), peer(dead), peer(c.addr())],
        )
        .toml();
    let proxy = Proxy::start(&toml);
    let mut predict = Predictor::new(Hashing::ConsistentHash, &addresses(&addrs));
    let mut conns: Vec<Client> = (0..3).map(|_| proxy.client()).collect();
    let mut walked = Split::new();
    let mut orphans = 0;
    for u in 0..60 {
        let user = format!("user-{u}");
        let first = predict.place(user.as_bytes(), 0);
        let want = if first == 1 {
            orphans += 1;
            // The key's second choice: the next distinct peer clockwise on the ring.
            let next = predict.place(user.as_bytes(), 1);
            assert_ne!(next, 1);
            *walked.entry(format!("b{next}")).or_default() += 1;
            next
        } else {
            first
        };
        for (i, conn) in conns.iter_mut().enumerate() {
            for j in 0..2 {
                let r = conn.roundtrip(&with_user_header(&user, i * 2 + j));
                assert_eq!(r.status, 200, "{user}: {}", show(&r.head));
                assert_eq!(
                    r.body_str(),
                    format!("b{want}"),
                    "{user} (its peer {first} refuses: {})",
                    first == 1
                );
            }
        }
    }
    println!(
        "consistent_hash: {orphans} of 60 keys belong to the refusing peer; they walked on to \
         {walked:?}; the others stayed put"
    );
    assert!(orphans >= 5, "only {orphans} keys on the refusing peer");
    assert_eq!(a.request_count() + c.request_count(), 60 * 6);
    assert!(a.errors().is_empty() && c.errors().is_empty());
}

/// One way of keying requests: the `hash_key`, the selector and its tuning line, how request
/// `i` carrying key `k` is written, and the bytes the key hashes.
struct KeyCase {
    hash_key: &'static str,
    hashing: Hashing,
    tuning: &'static str,
    request: fn(&str, usize) -> String,
    hashed: fn(&str) -> String,
}

#[test]
fn every_hash_key_kind_keys_on_its_part_of_the_request() {
    let cases = [
        KeyCase {
            hash_key: "path",
            hashing: Hashing::ConsistentHash,
            tuning: "points = 40",
            // The query and the target's form do not matter.
            request: |k, i| {
                let target = if i % 2 == 0 {
                    format!("/users/{k}?i={i}")
                } else {
                    format!("http://test/users/{k}?i={i}")
                };
                format!("GET {target} HTTP/1.1\r\nHost: test\r\n\r\n")
            },
            hashed: |k| format!("/users/{k}"),
        },
        KeyCase {
            hash_key: "query",
            hashing: Hashing::Maglev,
            tuning: "table_size = 251",
            request: |k, i| format!("GET /q/{i}?user={k} HTTP/1.1\r\nHost: test\r\n\r\n"),
            hashed: |k| format!("user={k}"),
        },
        KeyCase {
            hash_key: "uri",
            hashing: Hashing::ConsistentHash,
            tuning: "points = 40",
            request: |k, i| {
                let method = ["GET", "HEAD", "DELETE"][i % 3];
                format!("{method} /u/{k}?a=1 HTTP/1.1\r\nHost: test\r\n\r\n")
            },
            hashed: |k| format!("/u/{k}?a=1"),
        },
        KeyCase {
            hash_key: "query_param:user",
            hashing: Hashing::Maglev,
            tuning: "table_size = 251",
            // The first `user=` counts.
            request: |k, i| {
                format!("GET /p/{i}?x={i}&user={k}&y=2&user=other HTTP/1.1\r\nHost: test\r\n\r\n")
            },
            hashed: |k| k.to_string(),
        },
        KeyCase {
            hash_key: "header:X-User-Id",
            hashing: Hashing::ConsistentHash,
            tuning: "points = 40",
            // Any case of the name, surrounding blanks dropped, the first such header counts.
            request: |k, i| {
                let line = [
                    format!("X-User-Id: {k}"),
                    format!("x-user-id:{k}"),
                    format!("X-USER-ID: \t{k} \t"),
                ][i % 3]
                    .clone();
                format!("GET /h/{i} HTTP/1.1\r\nHost: test\r\n{line}\r\nX-User-Id: other\r\n\r\n")
            },
            hashed: |k| k.to_string(),
        },
        KeyCase {
            hash_key: "cookie:session",
            hashing: Hashing::Maglev,
            tuning: "table_size = 251",
            // Any Cookie header, quoted or not; `sessionx` and `Session` are other cookies.
            request: |k, i| {
                let cookies = [
                    format!("Cookie: session={k}"),
                    format!("Cookie: a=1; sessionx=no\r\nCookie: Session=no; session=\"{k}\"; b=2"),
                    format!("Cookie: x=y;session={k} ;z=1"),
                ][i % 3]
                    .clone();
                format!("GET /c/{i} HTTP/1.1\r\nHost: test\r\n{cookies}\r\n\r\n")
            },
            hashed: |k| k.to_string(),
        },
    ];
    for case in &cases {
        let (algorithm, points, table_size) = match case.hashing {
            Hashing::ConsistentHash => ("consistent_hash", 40, 65_537),
            Hashing::Maglev => ("maglev", 160, 251),
        };
        let bs: Vec<Backend> = (0..4)
            .map(|i| {
                let name = format!("b{i}");
                Backend::with_handler(&name.clone(), move |_| {
                    Reply::ok(name.clone()).header("X-Backend", &name)
                })
            })
            .collect();
        let addrs: Vec<SocketAddr> = bs.iter().map(|b| b.addr()).collect();
        let proxy = ProxyConfig::new()
            .upstream_with(
                "app",
                algorithm,
                &[&format!("hash_key = \"{}\"", case.hash_key), case.tuning],
                &peers_of(&bs),
            )
            .start();
        let mut predict =
            Predictor::tuned(case.hashing, &addresses(&addrs), points, table_size, None);
        let mut c = proxy.client();
        let mut per_backend = Split::new();
        for k in 0..12 {
            let key = format!("k{k}");
            let want = format!("b{}", predict.place((case.hashed)(&key).as_bytes(), 0));
            for i in 0..6 {
                let req = (case.request)(&key, i);
                let r = c.roundtrip(req.as_bytes());
                assert_eq!(r.status, 200, "{req:?}: {}", show(&r.head));
                // (HEAD responses have no body: the backend names itself in a header too.)
                let got = r.header("x-backend").map(str::to_string);
                assert_eq!(
                    got.as_deref(),
                    Some(want.as_str()),
                    "hash_key {}: {req:?}",
                    case.hash_key
                );
            }
            *per_backend.entry(want).or_default() += 1;
        }
        println!(
            "{algorithm} ({}) hash_key {}: keys per backend {per_backend:?}",
            case.tuning, case.hash_key
        );
        assert!(per_backend.len() > 1, "{per_backend:?}");
    }
}

#[test]
fn bounded_load_spills_a_hot_key_over_to_the_next_peers() {
    const HELD: usize = 9;
    for (hashing, algorithm) in [
        (Hashing::ConsistentHash, "consistent_hash"),
        (Hashing::Maglev, "maglev"),
    ] {
        let holds = Arc::new(Holds::default());
        const NAMES: [&str; 3] = ["b0", "b1", "b2"];
        let bs: Vec<HoldingBackend> = NAMES
            .iter()
            .map(|n| HoldingBackend::start(n, holds.clone()))
            .collect();
        let addrs: Vec<SocketAddr> = bs.iter().map(|b| b.backend.addr()).collect();
        let peers: Vec<Peer> = addrs.iter().map(|&a| peer(a)).collect();
        let proxy = ProxyConfig::new()
            .upstream_with(
                "app",
                algorithm,
                &["hash_key = \"header:X-User-Id\"", "balance_factor = 1.25"],
                &peers,
            )
            .start();
        let mut predict = Predictor::tuned(hashing, &addresses(&addrs), 160, 65_537, Some(1.25));
        let loads: Vec<PeerLoad> = vec![PeerLoad::default(); 3];
        let mut want = Vec::new();
        let mut clients = Vec::new();
        for i in 0..HELD {
            // Where the library puts the hot key with the loads so far.
            let c = predict.place_loaded(b"hot", &loads);
            loads[c].active.set(loads[c].active.get() + 1);
            want.push(NAMES[c].to_string());
            let mut client = proxy.client();
            client.send(
                format!(
                    "GET /hold HTTP/1.1\r\nHost: test\r\nX-User-Id: hot\r\nX-Conn: {i}\r\n\r\n"
                )
                .as_bytes(),
            );
            let deadline = Instant::now() + Duration::from_secs(10);
            while holds.held.lock().unwrap().len() < i + 1 {
                assert!(Instant::now() < deadline, "held request {i} never arrived");
                thread::sleep(Duration::from_millis(1));
            }
            clients.push(client);
        }
        let held: Vec<String> = holds
            .held
            .lock()
            .unwrap()
            .iter()
            .map(|(name, _)| name.clone())
            .collect();
        let mut per_peer = Split::new();
        for name in &held {
            *per_peer.entry(name.clone()).or_default() += 1;
        }
        println!("{algorithm} balance_factor 1.25, {HELD} requests of one key in flight: {held:?} -> {per_peer:?}");
        assert_eq!(held, want, "{algorithm}");
        // Without the bound all nine would sit on one peer; with it none holds more than
        // ceil(1.25 × 9 / 3) = 4.
        assert!(per_peer.len() > 1, "{per_peer:?}");
        assert!(per_peer.values().all(|&n| n <= 4), "{per_peer:?}");
        holds.release.store(true, Ordering::SeqCst);
        for (i, c) in clients.iter_mut().enumerate() {
            let r = c.response();
            assert_eq!(r.status, 200);
            assert_eq!(r.body_str(), held[i]);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 7: least_connections on two shards.

/// Holds `/hold` requests until released; answers everything else at once. Records which
/// `X-Conn` each held request came with.
struct HoldingBackend {
    backend: Backend,
}

/// What the holding backends share: the release flag and the held requests (backend, X-Conn).
#[derive(Default)]
struct Holds {
    release: AtomicBool,
    held: Mutex<Vec<(String, usize)>>,
}

impl HoldingBackend {
    fn start(name: &'static str, holds: Arc<Holds>) -> HoldingBackend {
        let backend = Backend::with_handler(name, move |req| {
            if req.path() == "/hold" {
                let conn: usize = req
                    .header("x-conn")
                    .and_then(|v| v.parse().ok())
                    .expect("X-Conn");
                holds.held.lock().unwrap().push((name.to_string(), conn));
                let deadline = Instant::now() + Duration::from_secs(20);
                while !holds.release.load(Ordering::SeqCst) && Instant::now() < deadline {
                    thread::sleep(Duration::from_millis(2));
                }
            }
            Reply::ok(name)
        });
        HoldingBackend { backend }
    }
}

#[test]
fn least_connections_balances_shard_local_in_flight_counts_on_two_shards() {
    // k requests held in flight per shard over 3 peers.
    const K: usize = 4;
    const NAMES: [&str; 3] = ["b0", "b1", "b2"];
    let holds = Arc::new(Holds::default());
    let bs: Vec<HoldingBackend> = NAMES
        .iter()
        .map(|n| HoldingBackend::start(n, holds.clone()))
        .collect();
    let peers: Vec<Peer> = bs.iter().map(|b| peer(b.backend.addr())).collect();
    let toml = ProxyConfig::new()
        .workers(2)
        .upstream("app", "least_connections", &peers)
        .toml();
    let spy = Arc::new(ShardSpy::default());
    let proxy = Proxy::start_with_picker(&toml, spy.clone());
    assert_eq!(proxy.server().shard_count(), 2);
    let mut conns = conns_on_every_shard(&proxy, &spy, 2, K, "/probe");
    // With every peer idle, ties rotate: each pick takes the peer after the previous pick.
    // Line both shards' rotations up on peer 0 with a few more idle requests, so that both
    // make the same choices below.
    for shard in 0..2 {
        let c = conns.iter_mut().find(|c| c.shard == shard).unwrap();
        while spy.picks(shard) % 3 != 0 {
            let r = c.client.roundtrip(&get("/probe"));
            assert_eq!(r.status, 200);
        }
    }
    // Hold K requests per shard, one at a time: each is in flight (counted as active by its
    // shard) before the next is picked.
    let mut held_conns: Vec<usize> = Vec::new();
    for shard in 0..2 {
        let mine: Vec<usize> = (0..conns.len())
            .filter(|&i| conns[i].shard == shard)
            .take(K)
            .collect();
        for i in mine {
            let req = format!("GET /hold HTTP/1.1\r\nHost: test\r\nX-Conn: {i}\r\n\r\n");
            conns[i].client.send(req.as_bytes());
            let want = held_conns.len() + 1;
            let deadline = Instant::now() + Duration::from_secs(10);
            while holds.held.lock().unwrap().len() < want {
                assert!(
                    Instant::now() < deadline,
                    "held request {want} never arrived"
                );
                thread::sleep(Duration::from_millis(1));
            }
            held_conns.push(i);
        }
    }
    // Where they are: per shard and per peer.
    let held = holds.held.lock().unwrap().clone();
    let mut table = [[0usize; 3]; 2];
    for (name, conn) in &held {
        let peer = NAMES.iter().position(|n| n == name).unwrap();
        table[conns[*conn].shard][peer] += 1;
    }
    let global: Vec<usize> = (0..3).map(|p| table[0][p] + table[1][p]).collect();
    println!(
        "least_connections, 2 shards x {K} in flight over 3 peers: shard 0 {:?}, shard 1 {:?}, \
         global {global:?} (a global least-connections choice would hold at most {})",
        table[0],
        table[1],
        (2 * K).div_ceil(3)
    );
    for (shard, row) in table.iter().enumerate() {
        // Each shard balances its own in-flight requests: every peer within one of K/3.
        assert_eq!(row.iter().sum::<usize>(), K);
        for &n in row {
            assert!(
                n == K / 3 || n == K.div_ceil(3),
                "shard {shard} holds {row:?} (K = {K})"
            );
        }
        // Rotations lined up on peer 0: the tie after a full round goes to peer 0 again.
        assert_eq!(row, &[2, 1, 1], "shard {shard}");
    }
    // Each peer serves both shards; the shards cannot see each other's counts, so their "+1"s
    // land on the same peer: the global count is off the mean by up to the shard count
    // (least_connections.rs: "±N in the worst case, when a peer happens to be the +1 on every
    // shard at once").
    assert_eq!(global, vec![4, 2, 2]);
    let mean = (2 * K) as f64 / 3.0;
    for &g in &global {
        assert!((g as f64 - mean).abs() <= 2.0, "{global:?}");
    }
    assert!(global[0] > (2 * K).div_ceil(3));
    // Release everything; every held request completes with its peer's answer.
    holds.release.store(true, Ordering::SeqCst);
    for (name, conn) in &held {
        let r = conns[*conn].client.response();
        assert_eq!(r.status, 200);
        assert_eq!(&r.body_str(), name);
    }
    drop(proxy);
}

// ---------------------------------------------------------------------------------------------
// 8: weights.

#[test]
fn weighted_random_follows_the_weights_and_never_picks_weight_zero() {
    const REQUESTS: usize = 2000;
    let bs = backends("w", 4);
    let weights = [5u32, 3, 2, 0];
    let peers: Vec<Peer> = bs
        .iter()
        .zip(weights)
        .map(|(b, w)| peer(b.addr()).weight(w))
        .collect();
    let proxy = ProxyConfig::new()
        .upstream("app", "weighted_random", &peers)
        .start();
    let split = drive(proxy.addr, 4, REQUESTS / 4);
    let total_weight: u32 = weights.iter().sum();
    let mut shares = Vec::new();
    for (b, w) in bs.iter().zip(weights) {
        let got = split.get(b.name()).copied().unwrap_or(0);
        let share = got as f64 / REQUESTS as f64;
        let want = f64::from(w) / f64::from(total_weight);
        shares.push(format!(
            "{} (weight {w}): {got} = {:.1} %",
            b.name(),
            share * 100.0
        ));
        assert!(
            (share - want).abs() <= 0.05,
            "{} weight {w}: {got} of {REQUESTS}, want {:.0} % ± 5",
            b.name(),
            want * 100.0
        );
    }
    println!(
        "weighted_random 5:3:2:0 over {REQUESTS}: {}",
        shares.join(", ")
    );
    assert_eq!(bs[3].accepts(), 0, "the weight-0 peer was connected to");
    assert_eq!(split.values().sum::<usize>(), REQUESTS);
}

// ---------------------------------------------------------------------------------------------
// 9: the demo.

/// A child process killed when dropped.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn demo_with_maglev_keeps_each_user_on_one_demo_backend() {
    let mut child = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_ringlb"))
            .args([
                "demo",
                "--listen",
                "127.0.0.1:0",
                "--admin",
                "off",
                "--algorithm",
                "maglev",
                "--log-level",
                "warn",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn ringlb demo"),
    );
    let stdout = child.0.stdout.take().expect("stdout");
    // Read the address and the backends' addresses on another thread, so a silent child
    // fails the test instead of hanging it.
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        let mut addr = None;
        let mut demo = Vec::new();
        while let Some(Ok(line)) = lines.next() {
            if let Some(rest) = line.split("listening on http://").nth(1) {
                addr = Some(rest.trim_end_matches('/').parse::<SocketAddr>().unwrap());
            } else if let Some(rest) = line.trim().strip_prefix("demo backend ") {
                // "demo backend N on ADDR"
                let a = rest.split(" on ").nth(1).unwrap();
                demo.push(a.parse::<SocketAddr>().unwrap());
                if demo.len() == 3 {
                    break;
                }
            }
        }
        let _ = tx.send((addr, demo));
    });
    let (addr, demo) = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("ringlb demo printed no address within 20 s");
    let addr = addr.expect("no `listening on http://` line");
    assert_eq!(demo.len(), 3, "demo backends: {demo:?}");
    let mut predict = Predictor::new(Hashing::Maglev, &addresses(&demo));
    let mut per_backend = Split::new();
    let mut clients: Vec<Client> = (0..3).map(|_| Client::connect(addr)).collect();
    for u in 0..20 {
        let user = format!("user-{u}");
        let want = predict.place(user.as_bytes(), 0) + 1;
        for (i, c) in clients.iter_mut().enumerate() {
            let r = c.roundtrip(&with_user_header(&user, i));
            assert_eq!(r.status, 200, "{}", show(&r.head));
            assert_eq!(
                r.body_str(),
                format!("hello from demo backend {want}: GET /items/{i}\n"),
                "{user}"
            );
        }
        *per_backend.entry(format!("demo-{want}")).or_default() += 1;
    }
    println!("ringlb demo --algorithm maglev: users per demo backend {per_backend:?}");
    assert!(per_backend.len() > 1, "{per_backend:?}");
    drop(child);
}

// ---------------------------------------------------------------------------------------------
// A request waiting for its connect is in flight to its peer.

/// Sockets of this network namespace in SYN_SENT towards `addr` (IPv4): connects in progress.
fn connects_pending_to(addr: SocketAddr) -> usize {
    let text = std::fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
    let want = format!(":{:04X}", addr.port());
    text.lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[3] == "02" && f[2].ends_with(&want)
        })
        .count()
}

#[test]
fn least_connections_counts_requests_whose_connect_is_pending() {
    // Peer 0 never completes a connect (its accept queue is full, so its SYNs are dropped);
    // peer 1 holds requests. Six requests, each sent once the one before is in flight (held
    // by peer 1, or a connect to peer 0 pending in the kernel): least_connections must see the
    // ones stuck connecting to peer 0 as in flight there and alternate (0, 1, 0, 1, 0, 1), not
    // pile every request after the second onto the peer that merely looks idle because its
    // connects never finish. connect_ms is long enough that no connect times out meanwhile.
    let (hole_socket, fill, hole) = blackhole_peer();
    let holds = Arc::new(Holds::default());
    let a = HoldingBackend::start("a", holds.clone());
    let connect_ms = 20_000;
    let proxy = ProxyConfig::new()
        .timeout("connect_ms", connect_ms)
        .upstream(
            "app",
            "least_connections",
            &[peer(hole), peer(a.backend.addr())],
        )
        .start();
    let start = Instant::now();
    let mut clients = Vec::new();
    let in_flight = || holds.held.lock().unwrap().len() + connects_pending_to(hole);
    for i in 0..6 {
        let mut c = proxy.client();
        c.send(format!("GET /hold HTTP/1.1\r\nHost: test\r\nX-Conn: {i}\r\n\r\n").as_bytes());
        clients.push(c);
        let deadline = Instant::now() + Duration::from_secs(10);
        while in_flight() < i + 1 {
            assert!(
                Instant::now() < deadline,
                "request {i} neither reached peer 1 nor started a connect to peer 0 within 10 s"
            );
            thread::sleep(Duration::from_millis(2));
        }
    }
    let at_a = holds.held.lock().unwrap().len();
    let pending = connects_pending_to(hole);
    let elapsed = start.elapsed();
    println!(
        "least_connections with a peer stuck connecting: {at_a} of 6 requests went to the \
         answering peer, {pending} wait for a connect to the other ({elapsed:?})"
    );
    assert!(
        elapsed < Duration::from_millis(connect_ms),
        "a connect may have timed out meanwhile: {elapsed:?}"
    );
    assert_eq!(
        (at_a, pending),
        (3, 3),
        "requests waiting for a connect to peer 0 were not counted as in flight to it"
    );
    // Closing peer 0's listener answers the retransmitted SYNs with a reset: the stuck
    // requests fail over to peer 1, and everything completes.
    drop(fill);
    drop(hole_socket);
    holds.release.store(true, Ordering::SeqCst);
    for c in &mut clients {
        let r = c.response();
        assert_eq!(r.status, 200, "{}", show(&r.head));
    }
}
