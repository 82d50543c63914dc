//! Docker discovery end to end: a real proxy whose upstream's peers come from an in-test
//! Docker Engine API server on a Unix socket (the endpoints ringlb calls, API v1.43, bodies in
//! the shape of the Engine API reference), real backends and requests on real sockets.

mod common;

use common::*;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Engine is the in-test Docker Engine API.
struct Engine {
    socket: PathBuf,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
}

#[derive(Default)]
struct State {
    /// What `GET /containers/json` lists (running containers, all labels).
    containers: Vec<Value>,
    /// Request targets received, in order.
    requests: Vec<String>,
    /// Open `GET /events` streams.
    streams: Vec<UnixStream>,
    /// Answer `/events` with 404 (an engine, or a proxy in front of it, without the stream).
    no_events: bool,
}

/// A container as `GET /v1.43/containers/json` lists it (ContainerSummary).
fn container(id: &str, name: &str, labels: Value, network: &str, ip: &str) -> Value {
    json!({
        "Id": format!("{id:0<64}"),
        "Names": [format!("/{name}")],
        "Image": "example/api:1.4",
        "ImageID": "sha256:4f1fa5b2c7e0d8e5b3f6a9a1c6d2e7f8a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5",
        "Command": "/usr/local/bin/api --listen 0.0.0.0",
        "Created": 1_700_000_000,
        "Ports": [{ "PrivatePort": 8080, "Type": "tcp" }],
        "Labels": labels,
        "State": "running",
        "Status": "Up 5 minutes",
        "HostConfig": { "NetworkMode": network },
        "NetworkSettings": {
            "Networks": {
                network: {
                    "IPAMConfig": null,
                    "Links": null,
                    "Aliases": null,
                    "NetworkID": "7ea29fc1412292a2d7bba362f9253545fecdfa8ce9a6e37dd10ba8bee7129812",
                    "EndpointID": "2cdc4edb1ded3631c81f57966563e5c8525b81121bb3706a9a9a3ae102711f3f",
                    "Gateway": "172.17.0.1",
                    "IPAddress": ip,
                    "IPPrefixLen": 16,
                    "IPv6Gateway": "",
                    "GlobalIPv6Address": "",
                    "GlobalIPv6PrefixLen": 0,
                    "MacAddress": "02:42:ac:11:00:02",
                    "DriverOpts": null
                }
            }
        },
        "Mounts": []
    })
}

/// An event as `GET /v1.43/events` streams it (EventMessage).
fn event(action: &str, id: &str, name: &str) -> Value {
    json!({
        "status": action,
        "id": format!("{id:0<64}"),
        "from": "example/api:1.4",
        "Type": "container",
        "Action": action,
        "Actor": {
            "ID": format!("{id:0<64}"),
            "Attributes": { "image": "example/api:1.4", "name": name, "ringlb.upstream": "api" }
        },
        "scope": "local",
        "time": 1_700_000_100,
        "timeNano": 1_700_000_100_000_000_000u64
    })
}

/// Percent-decodes a query value.
fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8(out).expect("utf-8")
}

impl Engine {
    fn start() -> Engine {
        let socket = temp_path("docker", "sock");
        let listener = UnixListener::bind(&socket).expect("bind the engine socket");
        listener.set_nonblocking(true).expect("nonblocking");
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (state.clone(), stop.clone());
        thread::spawn(move || {
            while !sp.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let st = st.clone();
                        thread::spawn(move || serve(conn, &st));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Engine {
            socket,
            state,
            stop,
        }
    }

    fn set_containers(&self, containers: Vec<Value>) {
        self.state.lock().unwrap().containers = containers;
    }

    /// Sends `ev` on every open events stream (one chunk each).
    fn push_event(&self, ev: &Value) {
        let line = format!("{ev}\n");
        let chunk = format!("{:x}\r\n{line}\r\n", line.len());
        let mut st = self.state.lock().unwrap();
        st.streams
            .retain_mut(|s| s.write_all(chunk.as_bytes()).is_ok());
    }

    fn streams(&self) -> usize {
        self.state.lock().unwrap().streams.len()
    }

    fn requests(&self) -> Vec<String> {
        self.state.lock().unwrap().requests.clone()
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// Serves one connection: one request (ringlb sends `Connection: close`).
fn serve(mut conn: UnixStream, state: &Mutex<State>) {
    conn.set_read_timeout(Some(IO_TIMEOUT)).ok();
    let mut buf = Vec::new();
    let mut byte = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut byte) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&byte[..n]),
        }
    }
    let head = String::from_utf8_lossy(&buf).to_string();
    let target = head.split(' ').nth(1).unwrap_or_default().to_string();
    let mut st = state.lock().unwrap();
    st.requests.push(target.clone());
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let filters: Value = query
        .strip_prefix("filters=")
        .map(|f| serde_json::from_str(&decode(f)).expect("filters are JSON"))
        .unwrap_or(Value::Null);
    match path {
        "/v1.43/containers/json" => {
            assert_eq!(filters["label"], json!(["ringlb.upstream=api"]), "{target}");
            assert_eq!(filters["status"], json!(["running"]), "{target}");
            let body = Value::Array(st.containers.clone()).to_string();
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\nApi-Version: 1.43\r\nContent-Type: application/json\r\n\
                 Docker-Experimental: false\r\nServer: Docker/24.0.7 (linux)\r\n\
                 Content-Length: {}\r\n\r\n{body}",
                body.len()
            );
        }
        "/v1.43/events" if !st.no_events => {
            assert_eq!(filters["type"], json!(["container"]), "{target}");
            assert_eq!(filters["label"], json!(["ringlb.upstream=api"]), "{target}");
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\nApi-Version: 1.43\r\nContent-Type: application/json\r\n\
                 Server: Docker/24.0.7 (linux)\r\nTransfer-Encoding: chunked\r\n\r\n"
            );
            let _ = conn.flush();
            st.streams.push(conn);
        }
        _ => {
            let body = r#"{"message":"page not found"}"#;
            let _ = write!(
                conn,
                "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\n\
                 Content-Length: {}\r\n\r\n{body}",
                body.len()
            );
        }
    }
}

fn config(engine: &Engine, refresh_ms: u64) -> String {
    format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = 1\nadmin = \"127.0.0.1:0\"\n\n\
         [[upstream]]\nname = \"api\"\nalgorithm = \"round_robin\"\n\
         discovery = {{ kind = \"docker\", socket = \"{}\", label = \"ringlb.upstream=api\", \
         port_label = \"ringlb.port\", network = \"bridge\", refresh_ms = {refresh_ms} }}\n",
        engine.socket.display()
    )
}

fn labels(port: u16) -> Value {
    json!({ "ringlb.upstream": "api", "ringlb.port": port.to_string(), "maintainer": "ops" })
}

fn admin_get(proxy: &Proxy, path: &str) -> String {
    let addr = proxy.server().admin_addr().expect("admin on");
    let req = format!("GET {path} HTTP/1.1\r\nHost: admin\r\n\r\n");
    Client::connect(addr).roundtrip(req.as_bytes()).body_str()
}

fn peer_addrs(proxy: &Proxy) -> Vec<String> {
    let v: Value = serde_json::from_str(&admin_get(proxy, "/upstreams")).expect("JSON");
    let mut out: Vec<String> = v["upstreams"][0]["peers"]
        .as_array()
        .expect("peers")
        .iter()
        .map(|p| p["address"].as_str().unwrap_or_default().to_string())
        .collect();
    out.sort();
    out
}

fn wait_peers(proxy: &Proxy, want: &[&Backend], within: Duration) -> Duration {
    let mut want: Vec<String> = want.iter().map(|b| b.addr().to_string()).collect();
    want.sort();
    let start = Instant::now();
    loop {
        let got = peer_addrs(proxy);
        if got == want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "peers {got:?}, want {want:?}\n{}",
            admin_get(proxy, "/status")
        );
        thread::sleep(Duration::from_millis(10));
    }
}

fn answers(proxy: &Proxy, n: usize) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for _ in 0..n {
        let r = proxy.client().roundtrip(&get("/"));
        assert_eq!(r.status, 200, "{}", show(&r.head));
        *m.entry(r.body_str()).or_insert(0) += 1;
    }
    m
}

#[test]
fn labelled_containers_become_peers_and_events_update_them_at_once() {
    let engine = Engine::start();
    let (b1, b2, b3) = (
        Backend::start("b1"),
        Backend::start("b2"),
        Backend::start("b3"),
    );
    let port = |b: &Backend| b.addr().port();
    engine.set_containers(vec![
        container("a1", "api-1", labels(port(&b1)), "bridge", "127.0.0.1"),
        // Not on the configured network: skipped.
        container("a2", "api-2", labels(port(&b2)), "backend-net", "127.0.0.1"),
        // No port label: skipped.
        container(
            "a4",
            "api-4",
            json!({ "ringlb.upstream": "api" }),
            "bridge",
            "127.0.0.1",
        ),
    ]);
    // A refresh far away: only the events stream can explain fast updates.
    let proxy = Proxy::start(&config(&engine, 60_000));
    wait_peers(&proxy, &[&b1], Duration::from_secs(5));
    assert_eq!(answers(&proxy, 3), BTreeMap::from([("b1".to_string(), 3)]));
    let start = Instant::now();
    while engine.streams() == 0 {
        assert!(start.elapsed() < Duration::from_secs(5), "no events stream");
        thread::sleep(Duration::from_millis(10));
    }

    // A container starts: its event brings it in.
    engine.set_containers(vec![
        container("a1", "api-1", labels(port(&b1)), "bridge", "127.0.0.1"),
        container("a3", "api-3", labels(port(&b3)), "bridge", "127.0.0.1"),
    ]);
    engine.push_event(&event("start", "a3", "api-3"));
    let took = wait_peers(&proxy, &[&b1, &b3], Duration::from_secs(5));
    assert!(took < Duration::from_secs(3), "took {took:?}");
    assert_eq!(
        answers(&proxy, 4),
        BTreeMap::from([("b1".to_string(), 2), ("b3".to_string(), 2)])
    );

    // One dies.
    engine.set_containers(vec![container(
        "a3",
        "api-3",
        labels(port(&b3)),
        "bridge",
        "127.0.0.1",
    )]);
    engine.push_event(&event("die", "a1", "api-1"));
    wait_peers(&proxy, &[&b3], Duration::from_secs(5));
    assert_eq!(answers(&proxy, 3), BTreeMap::from([("b3".to_string(), 3)]));
    assert_eq!(b2.request_count(), 0);

    let status: Value = serde_json::from_str(&admin_get(&proxy, "/status")).unwrap();
    let d = &status["groups"][0]["discovery"];
    assert_eq!(d["kind"], "docker", "{d}");
    assert_eq!(d["name"], "ringlb.upstream=api", "{d}");
    let record = d["peers"][0]["record"].as_str().unwrap_or_default();
    assert!(
        record.starts_with("container a30000000000 api-3 on bridge 127.0.0.1:"),
        "{record}"
    );
    let requests = engine.requests();
    assert!(
        requests
            .iter()
            .any(|r| r.starts_with("/v1.43/events?filters=")),
        "{requests:?}"
    );
    assert!(
        requests
            .iter()
            .filter(|r| r.starts_with("/v1.43/containers/json?filters="))
            .count()
            >= 3,
        "{requests:?}"
    );
}

#[test]
fn without_the_events_stream_the_listing_is_polled_every_refresh_ms() {
    let engine = Engine::start();
    engine.state.lock().unwrap().no_events = true;
    let (b1, b2) = (Backend::start("b1"), Backend::start("b2"));
    engine.set_containers(vec![container(
        "c1",
        "web-1",
        labels(b1.addr().port()),
        "bridge",
        "127.0.0.1",
    )]);
    let proxy = Proxy::start(&config(&engine, 200));
    wait_peers(&proxy, &[&b1], Duration::from_secs(5));
    engine.set_containers(vec![container(
        "c2",
        "web-2",
        labels(b2.addr().port()),
        "bridge",
        "127.0.0.1",
    )]);
    let took = wait_peers(&proxy, &[&b2], Duration::from_secs(5));
    assert!(took < Duration::from_secs(2), "took {took:?}");
    assert_eq!(answers(&proxy, 2), BTreeMap::from([("b2".to_string(), 2)]));

    // The engine goes away: the last good set is held (and the failure shown).
    drop(engine);
    let start = Instant::now();
    loop {
        let status: Value = serde_json::from_str(&admin_get(&proxy, "/status")).unwrap();
        let d = &status["groups"][0]["discovery"];
        if d["holding"] == true {
            let err = d["last_error"].as_str().unwrap_or_default();
            assert!(err.contains("cannot connect"), "{d}");
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "{d}");
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(answers(&proxy, 2), BTreeMap::from([("b2".to_string(), 2)]));
}

#[test]
fn a_container_is_spoken_to_over_tls_named_by_its_container_name() {
    let engine = Engine::start();
    let ca = Ca::new("upstream ca");
    let backend = TlsBackend::start(&ca.leaf(&["api-1"]), None);
    engine.set_containers(vec![container(
        "c1",
        "api-1",
        labels(backend.addr.port()),
        "bridge",
        "127.0.0.1",
    )]);
    let toml = format!(
        "{}tls = {{ ca = \"{}\" }}\n",
        config(&engine, 100),
        ca.write().display()
    );
    let proxy = Proxy::start(&toml);
    let start = Instant::now();
    while peer_addrs(&proxy) != [backend.addr.to_string()] {
        assert!(start.elapsed() < Duration::from_secs(5), "not discovered");
        thread::sleep(Duration::from_millis(10));
    }
    let r = proxy.client().roundtrip(&get("/c"));
    assert_eq!(r.status, 200, "{}", r.body_str());
    // The container's name (without Docker's leading `/`) was sent and verified.
    assert_eq!(r.body_str(), "sni=api-1 client_cert=no path=/c");
}
