//! Hot reload and the admin API, end to end: a real proxy, real backends, real HTTP to the
//! admin endpoint; configurations written to real files and read again.

mod common;

use common::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::thread;
use std::time::Duration;

/// A one-shard config with an admin endpoint (and `token`, if given) and one upstream `app`
/// over `peers` (round robin).
fn config(peers: &[&Backend], token: Option<&str>, extra: &str) -> String {
    let list: Vec<String> = peers
        .iter()
        .map(|b| format!("{{ address = \"{}\" }}", b.addr()))
        .collect();
    let token = token.map_or(String::new(), |t| format!("admin_token = \"{t}\"\n"));
    format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = 1\nadmin = \"127.0.0.1:0\"\n{token}\n\
         [[upstream]]\nname = \"app\"\nalgorithm = \"round_robin\"\npeers = [{}]\n{extra}\n",
        list.join(", ")
    )
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

/// How often each name occurs.
fn counts(names: &[String]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for n in names {
        *m.entry(n.clone()).or_insert(0) += 1;
    }
    m
}

/// One admin request: (status, body).
fn admin(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, String) {
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: admin\r\n{auth}Content-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let r = Client::connect(addr).roundtrip(req.as_bytes());
    (r.status, r.body_str())
}

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write config");
}

#[test]
fn reload_from_file_swaps_peers_and_a_broken_file_changes_nothing() {
    let (a, b, c) = (
        Backend::start("a"),
        Backend::start("b"),
        Backend::start("c"),
    );
    let path = write_config(&config(&[&a, &b], None, ""));
    let proxy = Proxy::start_file(&path);
    assert_eq!(
        counts(&answers(&proxy, 4)),
        counts(&["a", "b", "a", "b"].map(String::from))
    );

    write(&path, &config(&[&b, &c], None, ""));
    let report = proxy.server().reload().expect("reload applies");
    assert_eq!(report.generation, 1);
    assert!(report.needs_restart.is_empty(), "{report:?}");
    let after = answers(&proxy, 6);
    assert_eq!(
        counts(&after),
        counts(&["b", "c", "b", "c", "b", "c"].map(String::from))
    );

    // A broken file: refused with the file and the key; the running config stays.
    write(
        &path,
        &config(&[&a], None, "retry = { max_retries = \"three\" }"),
    );
    let err = proxy
        .server()
        .reload()
        .expect_err("a broken file is refused");
    assert!(err.contains(&path.display().to_string()), "{err}");
    assert!(err.contains("max_retries"), "{err}");
    assert_eq!(
        counts(&answers(&proxy, 4)),
        counts(&["b", "c", "b", "c"].map(String::from))
    );
    let admin_addr = proxy.server().admin_addr().unwrap();
    let status = json(&admin(admin_addr, "GET", "/status", None, "").1);
    assert_eq!(status["generation"], 1);
    assert_eq!(status["reloads"]["ok"], 1);
    assert_eq!(status["reloads"]["error"], 1);
    assert!(status["reloads"]["last_error"]
        .as_str()
        .unwrap()
        .contains("max_retries"));
    proxy.shutdown();
}

#[test]
fn post_reload_answers_json_and_400_with_the_reason() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let path = write_config(&config(&[&a], None, ""));
    let proxy = Proxy::start_file(&path);
    let admin_addr = proxy.server().admin_addr().unwrap();

    write(
        &path,
        &config(&[&b], None, "").replace("workers = 1", "workers = 2"),
    );
    let (code, body) = admin(admin_addr, "POST", "/reload", None, "");
    assert_eq!(code, 200, "{body}");
    let v = json(&body);
    assert_eq!(v["ok"], true);
    assert_eq!(v["generation"], 1);
    let notes = v["needs_restart"].as_array().unwrap();
    assert_eq!(notes.len(), 1, "{body}");
    assert!(
        notes[0].as_str().unwrap().contains("server.workers"),
        "{body}"
    );
    assert_eq!(proxy.server().shard_count(), 1, "workers needs a restart");
    assert_eq!(answers(&proxy, 3), ["b", "b", "b"]);

    write(&path, "[server\nbroken");
    let (code, body) = admin(admin_addr, "POST", "/reload", None, "");
    assert_eq!(code, 400, "{body}");
    assert!(json(&body)["error"]
        .as_str()
        .unwrap()
        .contains(&path.display().to_string()));
    assert_eq!(answers(&proxy, 2), ["b", "b"]);
    // GET on a writing path is 405.
    assert_eq!(admin(admin_addr, "GET", "/reload", None, "").0, 405);
    proxy.shutdown();
}

#[test]
fn request_in_flight_finishes_on_the_configuration_it_started_with() {
    let slow = Backend::with_handler("slow", |_| {
        Reply::ok("slow").delay(Duration::from_millis(600))
    });
    let fresh = Backend::start("fresh");
    let path = write_config(&config(&[&slow], None, ""));
    let proxy = Proxy::start_file(&path);
    let addr = proxy.addr;
    let in_flight = thread::spawn(move || Client::connect(addr).roundtrip(&get("/")));
    slow.wait_heads(1, Duration::from_secs(10));

    write(&path, &config(&[&fresh], None, ""));
    proxy.server().reload().expect("reload applies");
    // New requests go to the new peer at once, while the old one is still answering.
    assert_eq!(answers(&proxy, 2), ["fresh", "fresh"]);
    let r = in_flight.join().unwrap();
    assert_eq!((r.status, r.body_str().as_str()), (200, "slow"));
    assert_eq!(slow.request_count(), 1);
    proxy.shutdown();
}

#[test]
fn keep_alive_client_moves_to_the_new_configuration_at_its_next_request() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let path = write_config(&config(&[&a], None, ""));
    let proxy = Proxy::start_file(&path);
    let mut client = proxy.client();
    assert_eq!(client.roundtrip(&get("/")).body_str(), "a");
    write(&path, &config(&[&b], None, ""));
    proxy.server().reload().expect("reload applies");
    // Same client connection: the next request runs on the new generation.
    assert_eq!(client.roundtrip(&get("/")).body_str(), "b");
    proxy.shutdown();
}

#[test]
fn health_state_survives_a_reload() {
    let up = Backend::start("up");
    let dead = refusing_addr();
    let check =
        "health = { kind = \"tcp\", interval_ms = 100, timeout_ms = 200, rise = 1, fall = 1 }";
    let text = |extra_peer: Option<&Backend>| {
        let mut peers = format!(
            "{{ address = \"{}\" }}, {{ address = \"{dead}\" }}",
            up.addr()
        );
        if let Some(p) = extra_peer {
            peers.push_str(&format!(", {{ address = \"{}\" }}", p.addr()));
        }
        format!(
            "[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = 1\nadmin = \"127.0.0.1:0\"\n\n\
             [[upstream]]\nname = \"app\"\npeers = [{peers}]\n{check}\n"
        )
    };
    let path = write_config(&text(None));
    let proxy = Proxy::start_file(&path);
    let admin_addr = proxy.server().admin_addr().unwrap();
    let state = |i: usize| -> String {
        let s = json(&admin(admin_addr, "GET", "/status", None, "").1);
        s["groups"][0]["peers"][i]["state"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while state(1) != "down" {
        assert!(
            std::time::Instant::now() < deadline,
            "the dead peer never went down"
        );
        thread::sleep(Duration::from_millis(20));
    }
    let extra = Backend::start("extra");
    write(&path, &text(Some(&extra)));
    proxy.server().reload().expect("reload applies");
    // Right after the reload, before any new probe could decide: the dead peer is still
    // down (not "unknown"), the live one still up.
    assert_eq!(state(1), "down");
    assert_eq!(state(0), "up");
    let got = counts(&answers(&proxy, 20));
    assert!(!got.contains_key(""), "{got:?}");
    assert_eq!(got.values().sum::<usize>(), 20);
    assert!(got.keys().all(|k| k == "up" || k == "extra"), "{got:?}");
    proxy.shutdown();
}

#[test]
fn admin_api_adds_drains_and_removes_peers() {
    let (a, b, c) = (
        Backend::start("a"),
        Backend::start("b"),
        Backend::start("c"),
    );
    let token = "t0ken";
    let path = write_config(&config(&[&a, &b], Some(token), ""));
    let proxy = Proxy::start_file(&path);
    let admin_addr = proxy.server().admin_addr().unwrap();
    let api =
        |method: &str, path: &str, body: &str| admin(admin_addr, method, path, Some(token), body);

    // Reading needs no token; writing does.
    let (code, body) = admin(admin_addr, "GET", "/upstreams", None, "");
    assert_eq!(code, 200, "{body}");
    let v = json(&body);
    assert_eq!(v["upstreams"][0]["name"], "app");
    assert_eq!(v["upstreams"][0]["peers"].as_array().unwrap().len(), 2);
    let add = format!("{{\"address\": \"{}\", \"weight\": 1}}", c.addr());
    assert_eq!(
        admin(admin_addr, "POST", "/upstreams/app/peers", None, &add).0,
        401
    );
    assert_eq!(
        admin(
            admin_addr,
            "POST",
            "/upstreams/app/peers",
            Some("wrong"),
            &add
        )
        .0,
        401
    );
    assert_eq!(counts(&answers(&proxy, 4)).len(), 2, "nothing changed");

    // Add c.
    let (code, body) = api("POST", "/upstreams/app/peers", &add);
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        json(&body)["upstream"]["peers"].as_array().unwrap().len(),
        3
    );
    assert_eq!(
        counts(&answers(&proxy, 6)),
        counts(&["a", "b", "c", "a", "b", "c"].map(String::from))
    );

    // Drain a: no new requests.
    let a_path = format!("/upstreams/app/peers/{}", a.addr());
    let (code, body) = api("PATCH", &a_path, "{\"drain\": true}");
    assert_eq!(code, 200, "{body}");
    let before = a.request_count();
    let got = answers(&proxy, 6);
    assert_eq!(
        a.request_count(),
        before,
        "a drained peer gets no new requests"
    );
    assert_eq!(
        counts(&got),
        counts(&["b", "c", "b", "c", "b", "c"].map(String::from))
    );
    let (_, body) = admin(admin_addr, "GET", "/upstreams", None, "");
    let peers = json(&body)["upstreams"][0]["peers"].clone();
    assert_eq!(peers[0]["drain"], true);
    assert_eq!(peers[0]["eligible"], false);

    // Remove b (percent-encoded address works too).
    let b_path = format!(
        "/upstreams/app/peers/{}",
        b.addr().to_string().replace(':', "%3A")
    );
    let (code, body) = api("DELETE", &b_path, "");
    assert_eq!(code, 200, "{body}");
    assert_eq!(answers(&proxy, 3), ["c", "c", "c"]);

    // The running config shows the changes, as TOML.
    let (code, toml_text) = admin(admin_addr, "GET", "/config", None, "");
    assert_eq!(code, 200);
    let parsed: toml::Value = toml::from_str(&toml_text).expect("GET /config is TOML");
    let peers = parsed["upstream"][0]["peers"].as_array().unwrap();
    let addrs: Vec<&str> = peers
        .iter()
        .map(|p| p["address"].as_str().unwrap())
        .collect();
    assert_eq!(addrs, [a.addr().to_string(), c.addr().to_string()]);
    assert_eq!(peers[0]["drain"].as_bool(), Some(true));
    // …and is a config ringlb accepts.
    ringlb::Config::from_toml_str(&toml_text, "config.toml").expect("GET /config validates");

    // Bad input: 4xx naming the field; nothing changes.
    let cases: &[(&str, &str, &str, u16, &str)] = &[
        ("POST", "/upstreams/nope/peers", &add, 404, "upstream"),
        (
            "POST",
            "/upstreams/app/peers",
            &format!("{{\"address\": \"{}\"}}", c.addr()),
            409,
            "address",
        ),
        (
            "POST",
            "/upstreams/app/peers",
            "{\"address\": \"127.0.0.1:1\", \"weight\": 70000}",
            400,
            "weight",
        ),
        (
            "POST",
            "/upstreams/app/peers",
            "{\"adress\": \"127.0.0.1:1\"}",
            400,
            "adress",
        ),
        ("POST", "/upstreams/app/peers", "not json", 400, "body"),
        (
            "POST",
            "/upstreams/app/peers",
            "{\"address\": \"no-port\"}",
            400,
            "upstream[0].peers[2].address",
        ),
        (
            "PATCH",
            "/upstreams/app/peers/127.0.0.1:9",
            "{\"weight\": 2}",
            404,
            "address",
        ),
        ("PATCH", &a_path, "{\"wieght\": 2}", 400, "wieght"),
    ];
    for (method, path, body, want, field) in cases {
        let (code, got) = api(method, path, body);
        assert_eq!(code, *want, "{method} {path} {body}: {got}");
        assert_eq!(json(&got)["field"], *field, "{method} {path} {body}: {got}");
    }
    assert_eq!(answers(&proxy, 2), ["c", "c"]);

    // A reload from the file ends the runtime changes.
    proxy.server().reload().expect("reload");
    assert_eq!(
        counts(&answers(&proxy, 4)),
        counts(&["a", "b", "a", "b"].map(String::from))
    );
    proxy.shutdown();
}

/// A loopback address nothing listens on right now.
fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
}

/// A one-shard config listening on `listen`, admin on `admin`, one upstream over `backend`.
fn listen_config(
    listen: &[SocketAddr],
    admin: SocketAddr,
    backend: &Backend,
    extra: &str,
) -> String {
    let list: Vec<String> = listen.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        "[server]\nlisten = [{}]\nworkers = 1\nadmin = \"{admin}\"\n{extra}\n\n\
         [[upstream]]\nname = \"app\"\npeers = [{{ address = \"{}\" }}]\n",
        list.join(", "),
        backend.addr()
    )
}

/// Waits (10 s at most) until nothing accepts connections on `addr` any more. Connects with a
/// short timeout: a listener that stopped accepting but is still open would hold a connect
/// for minutes once its queue is full.
fn wait_closed(addr: SocketAddr) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
        assert!(std::time::Instant::now() < deadline, "{addr} still accepts");
        thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn reload_opens_new_listen_addresses_and_closes_removed_ones_without_dropping_queued_connections() {
    let a = Backend::start("a");
    let (l1, l2, admin) = (free_addr(), free_addr(), free_addr());
    // One connection at a time: a second one waits in the listen queue.
    let limit = "max_connections = 1";
    let path = write_config(&listen_config(&[l1], admin, &a, limit));
    let proxy = Proxy::start_file(&path);
    let mut first = Client::connect(l1);
    assert_eq!(first.roundtrip(&get("/")).status, 200);
    let mut queued = Client::connect(l1); // accepted by the kernel, not by ringlb yet
    queued.send(&get("/queued"));

    std::fs::write(&path, listen_config(&[l2], admin, &a, limit)).unwrap();
    let report = proxy.server().reload().expect("reload applies");
    assert!(report.needs_restart.is_empty(), "{report:?}");
    // The queued connection is served, not reset.
    let r = queued.response();
    assert_eq!((r.status, r.body_str().as_str()), (200, "a"));
    drop(queued);
    drop(first);
    // l1 is closed; l2 serves.
    wait_closed(l1);
    assert_eq!(Client::connect(l2).roundtrip(&get("/")).body_str(), "a");

    // An address another process holds refuses the reload, naming the key.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let held = taken.local_addr().unwrap();
    std::fs::write(&path, listen_config(&[l2, held], admin, &a, limit)).unwrap();
    let err = proxy
        .server()
        .reload()
        .expect_err("a taken address refuses the reload");
    assert!(err.contains("server.listen[1]"), "{err}");
    assert_eq!(Client::connect(l2).roundtrip(&get("/")).body_str(), "a");
    proxy.shutdown();
}

#[test]
fn reload_moves_the_admin_endpoint() {
    let a = Backend::start("a");
    let (listen, admin1, admin2) = (free_addr(), free_addr(), free_addr());
    let path = write_config(&listen_config(&[listen], admin1, &a, ""));
    let proxy = Proxy::start_file(&path);
    assert_eq!(admin(admin1, "GET", "/health", None, "").0, 200);
    std::fs::write(&path, listen_config(&[listen], admin2, &a, "")).unwrap();
    proxy.server().reload().expect("reload applies");
    assert_eq!(admin(admin2, "GET", "/health", None, "").0, 200);
    wait_closed(admin1);
    assert_eq!(Client::connect(listen).roundtrip(&get("/")).body_str(), "a");
    proxy.shutdown();
}

/// A one-shard `smooth_weighted` config (no admin endpoint) over `set`: (index into
/// `backends`, weight).
fn weighted_config(backends: &[Backend], set: &[(usize, u32)]) -> String {
    let list: Vec<String> = set
        .iter()
        .map(|&(i, w)| format!("{{ address = \"{}\", weight = {w} }}", backends[i].addr()))
        .collect();
    format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = 1\nadmin = \"\"\n\n\
         [[upstream]]\nname = \"app\"\nalgorithm = \"smooth_weighted\"\npeers = [{}]\n",
        list.join(", ")
    )
}

/// Sets the flag when dropped, so that client threads stop even if the main thread panics.
struct SetOnDrop<'a>(&'a std::sync::atomic::AtomicBool);

impl Drop for SetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

#[test]
fn reload_under_load_loses_no_request_and_routes_only_to_running_peers() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
    type Set = &'static [(usize, u32)];
    const CLIENTS: usize = 4;
    const RELOADS: usize = 30;
    const INTERVAL: Duration = Duration::from_millis(100);
    const INITIAL: Set = &[(0, 1), (1, 1)];
    // Reload k writes CYCLE[k % 5]: add, remove + reweight, remove + add, replace all, and a
    // broken file (`None`) every fifth time.
    const CYCLE: [Option<Set>; 5] = [
        Some(&[(0, 1), (1, 1), (2, 1)]),
        Some(&[(1, 1), (2, 3)]),
        Some(&[(2, 1), (3, 1)]),
        Some(&[(0, 1), (1, 1)]),
        None,
    ];
    const LAST: Set = &[(0, 1), (3, 1)];
    let names = ["b0", "b1", "b2", "b3"];
    let backends: Vec<Backend> = names.iter().map(|n| Backend::start(n)).collect();
    // generations[g]: the peer set of configuration generation g (broken files make none).
    let generations: Vec<Set> = std::iter::once(INITIAL)
        .chain((0..RELOADS).filter_map(|k| CYCLE[k % CYCLE.len()]))
        .collect();
    let path = write_config(&weighted_config(&backends, INITIAL));
    let proxy = Proxy::start_file(&path);
    let addr = proxy.addr;

    // `begun`: good reloads asked for; `applied`: good reloads that returned Ok. A request
    // sent after reading `applied` = lo runs on generation >= lo (the shard takes pending
    // reloads after reading a head); a response received before reading `begun` = hi came
    // from generation <= hi. So its backend must be in one of generations[lo..=hi].
    let (begun, applied, answered) = (
        AtomicUsize::new(0),
        AtomicUsize::new(0),
        AtomicUsize::new(0),
    );
    let stop = AtomicBool::new(false);
    let (outcomes, results) = thread::scope(|s| {
        let clients: Vec<_> = (0..CLIENTS)
            .map(|_| {
                s.spawn(|| {
                    let mut seen: Vec<(usize, usize, u16, String)> = Vec::new();
                    let mut client = match Client::try_connect(addr) {
                        Ok(c) => c,
                        Err(e) => return (seen, Some(format!("connect: {e}"))),
                    };
                    while !stop.load(SeqCst) {
                        let lo = applied.load(SeqCst);
                        match client.try_roundtrip(&get("/")) {
                            Ok(r) => {
                                let hi = begun.load(SeqCst);
                                seen.push((lo, hi, r.status, r.body_str()));
                                answered.fetch_add(1, SeqCst);
                            }
                            Err(e) => {
                                let why = format!("after {} responses: {e}", seen.len());
                                return (seen, Some(why));
                            }
                        }
                    }
                    (seen, None)
                })
            })
            .collect();
        let _stop_clients = SetOnDrop(&stop);
        let mut outcomes: Vec<(usize, bool, Result<u64, String>)> = Vec::new();
        for k in 0..RELOADS {
            // Every reload comes after at least one more response per client (on average),
            // so reloads and requests interleave whatever the machine's speed.
            let mark = answered.load(SeqCst) + CLIENTS;
            thread::sleep(INTERVAL);
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while answered.load(SeqCst) < mark && std::time::Instant::now() < deadline {
                thread::sleep(Duration::from_millis(5));
            }
            let good = CYCLE[k % CYCLE.len()];
            let text = match good {
                Some(set) => weighted_config(&backends, set),
                // A TOML syntax error and an out-of-range weight, in turn.
                None if (k / CYCLE.len()).is_multiple_of(2) => "[server\nbroken".to_string(),
                None => {
                    weighted_config(&backends, INITIAL).replace("weight = 1 }", "weight = 70000 }")
                }
            };
            write(&path, &text);
            if good.is_some() {
                begun.fetch_add(1, SeqCst);
            }
            let r = proxy.server().reload();
            if good.is_some() && r.is_ok() {
                applied.fetch_add(1, SeqCst);
            }
            outcomes.push((k, good.is_some(), r.map(|rep| rep.generation)));
        }
        stop.store(true, SeqCst);
        let results: Vec<_> = clients.into_iter().map(|c| c.join().unwrap()).collect();
        (outcomes, results)
    });

    // Every good file applied (as the next generation), every broken one refused.
    let mut generation = 0;
    for (k, good, r) in &outcomes {
        match (good, r) {
            (true, Ok(g)) => {
                generation += 1;
                assert_eq!(*g, generation, "reload {k}");
            }
            (false, Err(e)) => assert!(e.contains(&path.display().to_string()), "{e}"),
            _ => panic!("reload {k} (good file: {good}) gave {r:?}"),
        }
    }
    // No connection error, every answer 200 from a peer of a generation it could have run on.
    let mut total = 0;
    for (i, (seen, error)) in results.iter().enumerate() {
        assert_eq!(error, &None, "client {i}");
        for (lo, hi, status, body) in seen {
            assert_eq!(*status, 200, "client {i}: {body}");
            let allowed: Vec<&str> = generations[*lo..=*hi]
                .iter()
                .flat_map(|set| set.iter().map(|&(b, _)| names[b]))
                .collect();
            assert!(
                allowed.contains(&body.as_str()),
                "client {i}: {body:?} answered between generations {lo} and {hi} (peers {allowed:?})"
            );
        }
        total += seen.len();
    }
    assert!(total >= RELOADS * CLIENTS, "{total} responses");

    // A last good reload: only its peers answer, in turn.
    write(&path, &weighted_config(&backends, LAST));
    let report = proxy.server().reload().expect("the last reload applies");
    assert_eq!(report.generation, generations.len() as u64);
    let (b1, b2) = (backends[1].request_count(), backends[2].request_count());
    let mut client = proxy.client();
    let got: Vec<String> = (0..8)
        .map(|_| {
            let r = client.roundtrip(&get("/"));
            assert_eq!(r.status, 200, "{}", show(&r.head));
            r.body_str()
        })
        .collect();
    assert_eq!(
        counts(&got),
        counts(&["b0", "b3", "b0", "b3", "b0", "b3", "b0", "b3"].map(String::from))
    );
    assert_eq!(
        (backends[1].request_count(), backends[2].request_count()),
        (b1, b2),
        "peers of no running generation got requests"
    );
    proxy.shutdown();
}

#[test]
fn a_configuration_that_came_from_no_file_refuses_a_reload_from_file() {
    let a = Backend::start("a");
    let proxy = Proxy::start(&config(&[&a], None, ""));
    let err = proxy.server().reload().expect_err("nothing to re-read");
    assert!(err.contains("did not come from a file"), "{err}");
    assert_eq!(answers(&proxy, 1), ["a"]);
    proxy.shutdown();
}
