//! The control plane's library hooks, end to end: a custom `HealthCheck` (`kind = "custom"`)
//! driving real peers in and out of rotation with rise/fall, a panicking check, and a
//! `HealthObserver` seeing every status change and a reload's added and removed peers.

mod common;

use common::*;
use ringlb::health::{CheckFuture, CheckTarget, HealthCheck, HealthEvent, HealthObserver, Status};
use ringlb::server::StartOptions;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// How long any wait for the control thread may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(15);

/// One observed event, with how many checks of the peer had run when it was reported.
#[derive(Debug, Clone)]
struct Seen {
    upstream: String,
    peer: String,
    event: HealthEvent,
    why: String,
    /// The check results of this peer so far (true = healthy), at the time of the event.
    results: Vec<bool>,
}

/// World is both the custom check (healthy unless the test says otherwise; panicking for the
/// peers it is told to) and the observer (records every event).
#[derive(Default)]
struct World {
    /// Peers (address as written) the check reports unhealthy.
    unhealthy: Mutex<HashSet<String>>,
    /// Peers whose check panics.
    panics: Mutex<HashSet<String>>,
    /// Every check result per peer, in order.
    results: Mutex<HashMap<String, Vec<bool>>>,
    /// Every event, in order.
    events: Mutex<Vec<Seen>>,
}

impl HealthCheck for World {
    fn check<'a>(&'a self, target: &'a CheckTarget, _deadline: Instant) -> CheckFuture<'a> {
        Box::pin(async move {
            assert_eq!(target.upstream, "app");
            if self.panics.lock().unwrap().contains(&target.address) {
                panic!("injected panic in a custom health check");
            }
            let ok = !self.unhealthy.lock().unwrap().contains(&target.address);
            let mut results = self.results.lock().unwrap();
            results.entry(target.address.clone()).or_default().push(ok);
            if ok {
                Ok("flag says healthy".to_string())
            } else {
                Err("flag says unhealthy".to_string())
            }
        })
    }
}

impl HealthObserver for World {
    fn on_event(&self, upstream: &str, peer: &str, event: HealthEvent, why: &str) {
        let results = self
            .results
            .lock()
            .unwrap()
            .get(peer)
            .cloned()
            .unwrap_or_default();
        self.events.lock().unwrap().push(Seen {
            upstream: upstream.to_string(),
            peer: peer.to_string(),
            event,
            why: why.to_string(),
            results,
        });
    }
}

impl World {
    fn set_healthy(&self, peer: &Backend, healthy: bool) {
        let mut set = self.unhealthy.lock().unwrap();
        if healthy {
            set.remove(&peer.addr().to_string());
        } else {
            set.insert(peer.addr().to_string());
        }
    }

    /// The events of `peer` so far.
    fn events_of(&self, peer: &Backend) -> Vec<Seen> {
        let addr = peer.addr().to_string();
        let events = self.events.lock().unwrap();
        events.iter().filter(|e| e.peer == addr).cloned().collect()
    }

    /// Waits until `peer` has had `n` events, and returns them.
    fn wait_events(&self, peer: &Backend, n: usize) -> Vec<Seen> {
        wait_for(&format!("{n} events of {}", peer.name()), || {
            self.events_of(peer).len() >= n
        });
        self.events_of(peer)
    }
}

fn changed(old: Status, new: Status) -> HealthEvent {
    HealthEvent::Changed { old, new }
}

/// Polls `cond` every 10 ms until it holds; fails after [`DEADLINE`].
fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + DEADLINE;
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(10));
    }
}

/// A one-shard config with an admin endpoint and upstream `app` over `peers`, checked by the
/// registered custom check every 20 ms.
fn config(peers: &[&Backend], rise: u32, fall: u32) -> String {
    let list: Vec<String> = peers
        .iter()
        .map(|b| format!("{{ address = \"{}\" }}", b.addr()))
        .collect();
    format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = 1\nadmin = \"127.0.0.1:0\"\n\n\
         [[upstream]]\nname = \"app\"\nalgorithm = \"round_robin\"\npeers = [{}]\n\
         health = {{ kind = \"custom\", interval_ms = 20, timeout_ms = 1000, rise = {rise}, fall = {fall} }}\n",
        list.join(", ")
    )
}

fn options(world: &Arc<World>) -> StartOptions {
    StartOptions::default()
        .health_check("app", world.clone())
        .health_observer(world.clone())
}

/// Who answered each of `n` GETs, one connection each.
fn answers(proxy: &Proxy, n: usize) -> Vec<String> {
    (0..n)
        .map(|_| {
            let r = proxy.client().roundtrip(&get("/"));
            assert_eq!(r.status, 200, "{}", show(&r.head));
            r.body_str()
        })
        .collect()
}

/// GET `path` on the admin endpoint: (status, body).
fn admin_get(proxy: &Proxy, path: &str) -> (u16, String) {
    let addr = proxy.server().admin_addr().expect("admin is on");
    let r = Client::connect(addr)
        .roundtrip(format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes());
    (r.status, r.body_str())
}

/// Waits until `n` answers in a row all come from `name`, then checks 10 more do.
fn only(proxy: &Proxy, name: &str) {
    wait_for(&format!("only {name} to answer"), || {
        answers(proxy, 4).iter().all(|a| a == name)
    });
    assert!(answers(proxy, 10).iter().all(|a| a == name));
}

#[test]
fn a_custom_check_takes_a_peer_out_of_rotation_and_back_in() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let world = Arc::new(World::default());
    let proxy = Proxy::start_with(&config(&[&a, &b], 1, 1), options(&world));

    // The first success is reported for every peer.
    for peer in [&a, &b] {
        let first = &world.wait_events(peer, 1)[0];
        assert_eq!(
            first.event,
            changed(Status::Unknown, Status::Up),
            "{first:?}"
        );
        assert_eq!(first.upstream, "app");
    }
    let mut seen: Vec<String> = answers(&proxy, 4);
    seen.sort();
    assert_eq!(seen, ["a", "a", "b", "b"]);

    world.set_healthy(&b, false);
    let events = world.wait_events(&b, 2);
    assert_eq!(events[1].event, changed(Status::Up, Status::Down));
    assert!(
        events[1].why.contains("flag says unhealthy"),
        "{:?}",
        events[1]
    );
    only(&proxy, "a");

    world.set_healthy(&b, true);
    let events = world.wait_events(&b, 3);
    assert_eq!(events[2].event, changed(Status::Down, Status::Up));
    wait_for("b back in rotation", || {
        answers(&proxy, 4).iter().any(|n| n == "b")
    });
    // In order per peer, and nothing for the peer that stayed up.
    let order: Vec<HealthEvent> = world.events_of(&b).iter().map(|e| e.event).collect();
    assert_eq!(
        order,
        [
            changed(Status::Unknown, Status::Up),
            changed(Status::Up, Status::Down),
            changed(Status::Down, Status::Up)
        ]
    );
    assert_eq!(world.events_of(&a).len(), 1);
}

#[test]
fn rise_and_fall_count_consecutive_custom_check_results() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let world = Arc::new(World::default());
    let (rise, fall) = (3, 2);
    let _proxy = Proxy::start_with(&config(&[&a, &b], rise, fall), options(&world));

    // Up after exactly `rise` successes.
    let up = &world.wait_events(&b, 1)[0];
    assert_eq!(up.event, changed(Status::Unknown, Status::Up));
    assert_eq!(up.results, vec![true; rise as usize], "{up:?}");

    // Down after exactly `fall` consecutive failures (the result before them a success).
    world.set_healthy(&b, false);
    let down = world.wait_events(&b, 2)[1].clone();
    assert_eq!(down.event, changed(Status::Up, Status::Down));
    let r = &down.results;
    assert!(r.len() > fall as usize, "{down:?}");
    assert!(
        r[r.len() - fall as usize..].iter().all(|ok| !ok),
        "{down:?}"
    );
    assert!(r[r.len() - fall as usize - 1], "{down:?}");
    assert!(
        down.why.starts_with("2 consecutive probe failures"),
        "{down:?}"
    );

    // Up again after exactly `rise` consecutive successes.
    world.set_healthy(&b, true);
    let back = world.wait_events(&b, 3)[2].clone();
    assert_eq!(back.event, changed(Status::Down, Status::Up));
    let r = &back.results;
    assert!(
        r[r.len() - rise as usize..].iter().all(|ok| *ok),
        "{back:?}"
    );
    assert!(!r[r.len() - rise as usize - 1], "{back:?}");
}

#[test]
fn a_panicking_check_counts_as_unhealthy_and_the_control_thread_survives() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let world = Arc::new(World::default());
    let proxy = Proxy::start_with(&config(&[&a, &b], 1, 1), options(&world));
    world.wait_events(&b, 1);

    world.panics.lock().unwrap().insert(b.addr().to_string());
    let down = world.wait_events(&b, 2)[1].clone();
    assert_eq!(down.event, changed(Status::Up, Status::Down));
    assert!(down.why.contains("health check panicked"), "{down:?}");
    only(&proxy, "a");
    assert_eq!(admin_get(&proxy, "/health"), (200, "ok\n".to_string()));
    let (code, status) = admin_get(&proxy, "/status");
    assert_eq!(code, 200);
    assert!(status.contains("health check panicked"), "{status}");

    // It keeps probing: a check that stops panicking brings the peer back.
    world.panics.lock().unwrap().clear();
    assert_eq!(
        world.wait_events(&b, 3)[2].event,
        changed(Status::Down, Status::Up)
    );
}

#[test]
fn the_observer_sees_a_reloads_added_and_removed_peers() {
    let (a, b, c) = (
        Backend::start("a"),
        Backend::start("b"),
        Backend::start("c"),
    );
    let world = Arc::new(World::default());
    let path = write_config(&config(&[&a, &b], 1, 1));
    let proxy = Proxy::start_file_with(&path, options(&world));
    world.wait_events(&a, 1);
    world.wait_events(&b, 1);

    std::fs::write(&path, config(&[&a, &c], 1, 1)).unwrap();
    let report = proxy.server().reload().expect("reload applies");
    assert_eq!(report.generation, 1);

    let removed = world.wait_events(&b, 2)[1].clone();
    assert_eq!(removed.event, HealthEvent::Removed { last: Status::Up });
    assert_eq!(removed.why, "removed by reload (generation 1)");
    // The new peer enters in its start state, then the same registered check brings it up.
    let added = world.wait_events(&c, 2);
    assert_eq!(
        added[0].event,
        HealthEvent::Added {
            state: Status::Unknown
        }
    );
    assert_eq!(added[1].event, changed(Status::Unknown, Status::Up));
    assert_eq!(world.events_of(&a).len(), 1, "a survives unchanged");
    let mut seen = answers(&proxy, 4);
    seen.sort();
    assert_eq!(seen, ["a", "a", "c", "c"]);

    // A generation with a `kind = "custom"` upstream nothing is registered for is refused.
    let renamed = config(&[&a], 1, 1).replace("name = \"app\"", "name = \"web\"");
    std::fs::write(&path, renamed).unwrap();
    let err = proxy.server().reload().expect_err("no check for `web`");
    assert!(err.contains("no health check is registered"), "{err}");
    let mut seen = answers(&proxy, 4);
    seen.sort();
    assert_eq!(seen, ["a", "a", "c", "c"], "the running generation stays");
}

#[test]
fn kind_custom_needs_a_registered_check() {
    let a = Backend::start("a");
    let text = config(&[&a], 1, 1);
    let err = match ringlb::Server::start(config_from(&text)) {
        Ok(_) => panic!("started without a registered check"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("upstream[0].health.kind"), "{err}");
    assert!(err.contains("no health check is registered"), "{err}");

    // A check registered for an upstream without `kind = "custom"`: a typo, refused too.
    let world = Arc::new(World::default());
    let options = StartOptions::default()
        .health_check("app", world.clone())
        .health_check("ap", world);
    let err = match ringlb::Server::start_with(config_from(&text), options) {
        Ok(_) => panic!("started with a check for a missing upstream"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("upstream `ap`"), "{err}");
}
