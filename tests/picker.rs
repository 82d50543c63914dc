//! Programmable pickers end to end: the `custom_router` example (canary header, `/api` with
//! user affinity, web round robin) against five test backends, a picker that routes nowhere
//! (404), and pickers whose failure hooks answer for ringlb (503 on a refused connect, 429 on a
//! reset).

mod common;

#[path = "../examples/custom_router.rs"]
#[allow(dead_code)]
mod custom_router;

use common::*;
use ringlb::balance::{stable_hash, Candidate, ConsistentHash, PickRequest, Selector};
use ringlb::config::GroupId;
use ringlb::failover::{Failure, FailureAction, FailureHooks, PeerInfo, TryContext};
use ringlb::proxy::{Pick, Picker, RequestInfo, Upstreams};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

/// A GET of `path` with extra header lines.
fn get_with(path: &str, headers: &[&str]) -> Vec<u8> {
    let mut s = format!("GET {path} HTTP/1.1\r\nHost: test\r\n");
    for h in headers {
        s.push_str(h);
        s.push_str("\r\n");
    }
    s.push_str("\r\n");
    s.into_bytes()
}

#[test]
fn custom_router_example_routes_canary_api_affinity_and_web_rotation() {
    const NAMES: [&str; 5] = ["api0", "api1", "canary", "web0", "web1"];
    let bs: Vec<Backend> = NAMES.iter().map(|n| Backend::start(n)).collect();
    let addrs: Vec<SocketAddr> = bs.iter().map(|b| b.addr()).collect();
    let text = custom_router::example_config("127.0.0.1:0", &addrs);
    let proxy = Proxy::start_with_picker(&text, Arc::new(custom_router::CustomRouter));
    // What the example's `api` group does with the picker's hash: a consistent_hash ring over
    // the two api peers (addresses as written), keyed with stable_hash(X-User-Id).
    let api_addrs: Vec<String> = addrs[0..2].iter().map(|a| a.to_string()).collect();
    let candidates: Vec<Candidate<'_>> = api_addrs
        .iter()
        .map(|a| Candidate {
            address: a,
            weight: 1,
        })
        .collect();
    let mut ring = ConsistentHash::new(&candidates, 160, None);
    let mut api_of = |user: &str| -> String {
        let c = ring
            .pick(&PickRequest {
                hash: Some(stable_hash(user.as_bytes())),
                nth: 0,
                loads: &[],
            })
            .unwrap();
        NAMES[c].to_string()
    };

    let mut c = proxy.client();
    let mut ask = |req: Vec<u8>| -> String {
        let r = c.roundtrip(&req);
        assert_eq!(r.status, 200, "{}: {}", show(&req), show(&r.head));
        r.body_str()
    };
    let mut web = Vec::new();
    let mut users: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut canary = 0;
    for i in 0..200 {
        // /api with a user: affinity.
        let user = format!("user-{}", i % 20);
        let got = ask(get_with(
            &format!("/api/profile/{i}"),
            &[&format!("X-User-Id: {user}")],
        ));
        assert_eq!(got, api_of(&user), "request {i} of {user}");
        users.entry(user).or_default().insert(got);
        // Everything else: the web peers in strict rotation, whatever happens in between.
        if i % 2 == 0 {
            let path = ["/", "/index.html", "/ap", "/static/app.js"][i / 2 % 4];
            web.push(ask(get_with(path, &[&format!("X-User-Id: user-{i}")])));
        }
        // The canary header wins over the path, in any case of the value.
        if i % 10 == 0 {
            let value = ["true", "TRUE", "True"][i / 10 % 3];
            let path = ["/", "/api/profile"][i / 10 % 2];
            let got = ask(get_with(
                path,
                &[&format!("X-Canary: {value}"), "X-User-Id: user-1"],
            ));
            assert_eq!(got, "canary", "X-Canary: {value} on {path}");
            canary += 1;
        }
    }
    // Not canaries: another value, or the header named differently.
    assert_eq!(ask(get_with("/", &["X-Canary: false"])), "web0");
    assert_eq!(
        ask(get_with(
            "/api/x",
            &["X-Canary-Not: true", "X-User-Id: user-3"]
        )),
        api_of("user-3")
    );
    web.push("web0".to_string());
    // /api without a user: the api group has no key for it and rotates.
    let keyless: Vec<String> = (0..4).map(|_| ask(get_with("/api/anon", &[]))).collect();

    let per_api: BTreeMap<String, usize> = users.values().fold(BTreeMap::new(), |mut m, s| {
        *m.entry(s.first().unwrap().clone()).or_default() += 1;
        m
    });
    println!(
        "custom_router: 20 users over api peers {per_api:?}; {} web requests alternated; \
         {canary} canaries; /api without a user: {keyless:?}",
        web.len()
    );
    for (user, set) in &users {
        assert_eq!(set.len(), 1, "{user} landed on {set:?}");
    }
    assert_eq!(
        per_api.len(),
        2,
        "20 users all on one api peer: {per_api:?}"
    );
    let want: Vec<&str> = (0..web.len())
        .map(|i| if i % 2 == 0 { "web0" } else { "web1" })
        .collect();
    assert_eq!(web, want, "web peers must alternate exactly");
    assert_eq!(keyless, ["api0", "api1", "api0", "api1"]);

    // No request reached a group it should not have.
    let is_canary = |r: &Request| {
        r.header("x-canary")
            .is_some_and(|v| v.eq_ignore_ascii_case("true"))
    };
    for b in &bs[0..2] {
        for r in b.requests() {
            assert!(
                r.path().starts_with("/api") && !is_canary(&r),
                "{} got {}",
                b.name(),
                show(&r.head)
            );
        }
    }
    for r in bs[2].requests() {
        assert!(is_canary(&r), "canary got {}", show(&r.head));
    }
    for b in &bs[3..5] {
        for r in b.requests() {
            assert!(
                !r.path().starts_with("/api") && !is_canary(&r),
                "{} got {}",
                b.name(),
                show(&r.head)
            );
        }
    }
    let counts: Vec<usize> = bs.iter().map(|b| b.request_count()).collect();
    assert_eq!(counts[0] + counts[1], 200 + 1 + 4);
    assert_eq!(counts[2], canary);
    assert_eq!((counts[3], counts[4]), (51, 50));
}

/// Routes every request to the group named `target` (which may not exist) or to index
/// `index`.
struct Fixed {
    target: Option<&'static str>,
    index: Option<GroupId>,
}

impl FailureHooks for Fixed {}

impl Picker for Fixed {
    fn pick(&self, _: &RequestInfo<'_>, upstreams: &Upstreams<'_>) -> Pick {
        Pick {
            upstream: self.target.and_then(|t| upstreams.index(t)).or(self.index),
            hash: None,
        }
    }
}

#[test]
fn picker_choosing_no_upstream_gets_404_and_the_connection_stays() {
    let b = Backend::start("app");
    let toml = ProxyConfig::with_backends(&[&b]).toml();
    for (what, picker) in [
        (
            "upstream: None",
            Fixed {
                target: None,
                index: None,
            },
        ),
        (
            "a group name that does not exist",
            Fixed {
                target: Some("nope"),
                index: None,
            },
        ),
        (
            "an index beyond the groups",
            Fixed {
                target: None,
                index: Some(GroupId::new(7)),
            },
        ),
    ] {
        let proxy = Proxy::start_with_picker(&toml, Arc::new(picker));
        let mut c = proxy.client();
        for i in 0..3 {
            let r = c.roundtrip(&get(&format!("/{i}")));
            r.assert_proxy_error(404);
            assert!(
                r.header("connection").is_none_or(|v| v != "close"),
                "{what}"
            );
        }
    }
    assert_eq!(b.accepts(), 0);
    // The same group by name is served.
    let proxy = Proxy::start_with_picker(
        &toml,
        Arc::new(Fixed {
            target: Some("app"),
            index: None,
        }),
    );
    assert_eq!(proxy.client().roundtrip(&get("/")).body_str(), "app");
}

/// Routes everything to group 0 and answers failed tries itself: `connect` for connect
/// failures, `proxying` for the others; records every call.
struct Hooks {
    connect: FailureAction,
    proxying: FailureAction,
    calls: Mutex<Vec<(&'static str, Failure, String, u32)>>,
}

impl Hooks {
    fn new(connect: FailureAction, proxying: FailureAction) -> Hooks {
        Hooks {
            connect,
            proxying,
            calls: Mutex::new(Vec::new()),
        }
    }
}

impl Picker for Hooks {
    fn pick(&self, _: &RequestInfo<'_>, _: &Upstreams<'_>) -> Pick {
        Pick {
            upstream: Some(GroupId::new(0)),
            hash: None,
        }
    }
}

impl FailureHooks for Hooks {
    fn fail_to_connect(&self, err: &Failure, peer: &PeerInfo<'_>, tries: u32) -> FailureAction {
        let call = ("fail_to_connect", *err, peer.address.to_string(), tries);
        self.calls.lock().unwrap().push(call);
        self.connect
    }

    fn error_while_proxying(
        &self,
        err: &Failure,
        peer: &PeerInfo<'_>,
        tries: u32,
        _ctx: &TryContext,
    ) -> FailureAction {
        let call = (
            "error_while_proxying",
            *err,
            peer.address.to_string(),
            tries,
        );
        self.calls.lock().unwrap().push(call);
        self.proxying
    }
}

#[test]
fn failure_hooks_answer_503_for_a_refused_connect_and_429_for_a_reset() {
    // The only peer refuses: ringlb alone answers 502; the hook turns it into 503.
    let dead = refusing_addr();
    let toml = ProxyConfig::new()
        .upstream("app", "round_robin", &[peer(dead)])
        .toml();
    let plain = Proxy::start(&toml);
    plain.client().roundtrip(&get("/")).assert_proxy_error(502);
    drop(plain);
    let hooks = Arc::new(Hooks::new(
        FailureAction::Respond(503),
        FailureAction::Default,
    ));
    let proxy = Proxy::start_with_picker(&toml, hooks.clone());
    let mut c = proxy.client();
    for i in 0..3 {
        let r = c.roundtrip(&get(&format!("/{i}")));
        r.assert_proxy_error(503);
    }
    let calls = hooks.calls.lock().unwrap().clone();
    let want = (
        "fail_to_connect",
        Failure::ConnectFailure,
        dead.to_string(),
        1,
    );
    assert_eq!(calls, vec![want.clone(), want.clone(), want]);
    drop(proxy);

    // The only peer resets every connection: error_while_proxying answers 429.
    let reset = ResetBackend::start();
    let toml = ProxyConfig::new()
        .upstream("app", "round_robin", &[peer(reset.addr())])
        .toml();
    let hooks = Arc::new(Hooks::new(
        FailureAction::Default,
        FailureAction::Respond(429),
    ));
    let proxy = Proxy::start_with_picker(&toml, hooks.clone());
    let r = proxy.client().roundtrip(&get("/reset"));
    r.assert_proxy_error(429);
    let calls = hooks.calls.lock().unwrap().clone();
    assert_eq!(
        calls,
        vec![(
            "error_while_proxying",
            Failure::Reset,
            reset.addr().to_string(),
            1
        )]
    );
    assert_eq!(
        reset.accepts(),
        1,
        "the hook's answer ends the request: no retry"
    );
}
