//! TLS end to end: the real proxy (in-process `Server`) with TLS listeners and TLS upstreams,
//! certificates made in the test with `rcgen`, and a rustls client on the test side asserting
//! what comes over the wire.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};

/// A client config trusting `ca`, offering `alpn`.
fn client_config(ca: &Ca, alpn: &[&[u8]]) -> Arc<ClientConfig> {
    let mut c = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(ca.roots())
        .with_no_client_auth();
    c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(c)
}

type Tls = StreamOwned<ClientConnection, TcpStream>;

/// Connects and completes the handshake with `name` as SNI (an IP sends none).
fn tls_connect(addr: SocketAddr, config: &Arc<ClientConfig>, name: &str) -> Tls {
    try_tls_connect(addr, config, name).unwrap_or_else(|e| panic!("TLS handshake: {e}"))
}

fn try_tls_connect(
    addr: SocketAddr,
    config: &Arc<ClientConfig>,
    name: &str,
) -> std::io::Result<Tls> {
    let tcp = TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(IO_TIMEOUT))?;
    tcp.set_write_timeout(Some(IO_TIMEOUT))?;
    let server = ServerName::try_from(name.to_string()).unwrap();
    let conn = ClientConnection::new(config.clone(), server).unwrap();
    let mut tls = StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock)?;
    }
    Ok(tls)
}

/// A response read off a TLS stream: status, headers, body (Content-Length framing).
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn read_response<S: Read>(s: &mut S) -> Resp {
    let mut buf = Vec::new();
    let mut byte = [0u8; 4096];
    loop {
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut r = httparse::Response::new(&mut headers);
            r.parse(&buf[..end + 4]).unwrap();
            let status = r.code.unwrap();
            let headers: Vec<(String, String)> = r
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_string(),
                        String::from_utf8_lossy(h.value).trim().to_string(),
                    )
                })
                .collect();
            let len: usize = headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
                .map(|(_, v)| v.parse().unwrap())
                .unwrap_or(0);
            let mut body = buf[end + 4..].to_vec();
            while body.len() < len {
                let n = s.read(&mut byte).unwrap();
                assert!(n > 0, "connection closed mid-body");
                body.extend_from_slice(&byte[..n]);
            }
            return Resp {
                status,
                headers,
                body,
            };
        }
        let n = s.read(&mut byte).unwrap();
        assert!(
            n > 0,
            "connection closed before a response head: {}",
            show(&buf)
        );
        buf.extend_from_slice(&byte[..n]);
    }
}

fn roundtrip(tls: &mut Tls, req: &[u8]) -> Resp {
    tls.write_all(req).unwrap();
    tls.flush().unwrap();
    read_response(tls)
}

/// The TOML of a proxy whose only listener is TLS with `tls` (an inline table's inside),
/// in front of `backends`.
fn tls_proxy_toml(tls: &str, workers: usize, extra: &str, backends: &[&Backend]) -> String {
    let peers: Vec<String> = backends
        .iter()
        .map(|b| format!("{{ address = \"{}\" }}", b.addr()))
        .collect();
    format!(
        "[server]\nlisten = [{{ address = \"127.0.0.1:0\", tls = {{ {tls} }} }}]\n\
         workers = {workers}\nadmin = \"127.0.0.1:0\"\nshutdown_timeout_ms = 2000\n\
         {extra}\n[[upstream]]\nname = \"app\"\npeers = [{}]\n",
        peers.join(", ")
    )
}

fn single(cert: &(PathBuf, PathBuf)) -> String {
    format!(
        "cert = \"{}\", key = \"{}\"",
        cert.0.display(),
        cert.1.display()
    )
}

/// The value of `ringlb_tls_handshake_failures_total{reason}` from the admin endpoint.
fn handshake_failures(proxy: &Proxy, reason: &str) -> u64 {
    let admin = proxy.server().admin_addr().expect("admin endpoint");
    let r = Client::connect(admin).roundtrip(b"GET /metrics HTTP/1.1\r\nHost: admin\r\n\r\n");
    let text = r.body_str();
    let line = format!("ringlb_tls_handshake_failures_total{{reason=\"{reason}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&line))
        .unwrap_or_else(|| panic!("no {line} in:\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

/// Waits (up to 5 s) until `f` holds.
fn eventually(what: &str, f: impl Fn() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < Duration::from_secs(5), "timed out: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn https_get_and_post_round_trip_with_forwarded_proto() {
    let backend = Backend::with_handler("app", |r| {
        Reply::ok(format!(
            "{} {} proto={} body={}",
            r.method,
            r.path(),
            r.header("x-forwarded-proto").unwrap_or("-"),
            r.body_str()
        ))
    });
    let ca = Ca::new("test ca");
    let files = ca.leaf(&["localhost"]).write();
    let proxy = Proxy::start(&tls_proxy_toml(&single(&files), 1, "", &[&backend]));
    let cfg = client_config(&ca, &[b"http/1.1"]);
    let mut tls = tls_connect(proxy.addr, &cfg, "localhost");
    assert_eq!(tls.conn.alpn_protocol(), Some(&b"http/1.1"[..]));

    let r = roundtrip(&mut tls, b"GET /hello HTTP/1.1\r\nHost: localhost\r\n\r\n");
    assert_eq!(r.status, 200);
    assert_eq!(
        String::from_utf8_lossy(&r.body),
        "GET /hello proto=https body="
    );
    assert_eq!(r.header("content-length"), Some("28"));
    // The same connection carries a POST with a body (keep-alive over TLS).
    let r = roundtrip(
        &mut tls,
        b"POST /submit HTTP/1.1\r\nHost: localhost\r\nContent-Length: 11\r\n\r\nhello world",
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        String::from_utf8_lossy(&r.body),
        "POST /submit proto=https body=hello world"
    );
    // A large body crosses several TLS records both ways.
    let big = vec![b'x'; 200_000];
    let mut req = format!(
        "POST /big HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n",
        big.len()
    )
    .into_bytes();
    req.extend_from_slice(&big);
    let r = roundtrip(&mut tls, &req);
    assert_eq!(r.status, 200);
    assert_eq!(
        r.body.len(),
        "POST /big proto=https body=".len() + big.len()
    );
    assert_eq!(backend.requests().len(), 3);
    proxy.shutdown();
}

#[test]
fn sni_selects_the_certificate_and_unknown_names_get_the_default() {
    let backend = Backend::start("app");
    let ca = Ca::new("test ca");
    // `a` is chosen by its configured name only (its SANs also cover c.example and the IP,
    // which then see it as the default); `b` by the names in its SANs.
    let a = ca.leaf(&["a.example", "c.example", "127.0.0.1"]);
    let b = ca.leaf(&["b.example", "*.b.example"]);
    let (af, bf) = (a.write(), b.write());
    let tls = format!(
        "certificates = [{{ cert = \"{}\", key = \"{}\", names = [\"a.example\"] }}, \
         {{ cert = \"{}\", key = \"{}\" }}]",
        af.0.display(),
        af.1.display(),
        bf.0.display(),
        bf.1.display()
    );
    let proxy = Proxy::start(&tls_proxy_toml(&tls, 1, "", &[&backend]));
    let cfg = client_config(&ca, &[]);
    let served = |name: &str| {
        let t = tls_connect(proxy.addr, &cfg, name);
        t.conn.peer_certificates().unwrap()[0].clone()
    };
    assert_eq!(served("a.example"), a.der);
    assert_eq!(served("b.example"), b.der);
    assert_eq!(served("x.b.example"), b.der, "wildcard from the SANs");
    assert_eq!(
        served("c.example"),
        a.der,
        "no certificate named: the default"
    );
    assert_eq!(served("127.0.0.1"), a.der, "no SNI at all: the default");
    // A request goes through on the SNI-chosen certificate too.
    let mut t = tls_connect(proxy.addr, &cfg, "b.example");
    let r = roundtrip(&mut t, b"GET / HTTP/1.1\r\nHost: b.example\r\n\r\n");
    assert_eq!((r.status, r.body.as_slice()), (200, &b"app"[..]));
    proxy.shutdown();
}

#[test]
fn alpn_prefers_h2_then_http11_and_refuses_a_client_with_neither() {
    let backend = Backend::start("app");
    let ca = Ca::new("test ca");
    let files = ca.leaf(&["localhost"]).write();
    let proxy = Proxy::start(&tls_proxy_toml(&single(&files), 1, "", &[&backend]));
    let both = client_config(&ca, &[b"http/1.1", b"h2"]);
    let t = tls_connect(proxy.addr, &both, "localhost");
    assert_eq!(t.conn.alpn_protocol(), Some(&b"h2"[..]));
    let h1 = client_config(&ca, &[b"http/1.1"]);
    let mut t = tls_connect(proxy.addr, &h1, "localhost");
    assert_eq!(t.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    let r = roundtrip(&mut t, b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n");
    assert_eq!(r.status, 200);
    let none = client_config(&ca, &[]);
    let t = tls_connect(proxy.addr, &none, "localhost");
    assert_eq!(t.conn.alpn_protocol(), None);
    drop(t);
    let h2 = client_config(&ca, &[b"h2"]);
    let t = tls_connect(proxy.addr, &h2, "localhost");
    assert_eq!(t.conn.alpn_protocol(), Some(&b"h2"[..]));
    drop(t);
    let other = client_config(&ca, &[b"spdy/3.1"]);
    let err = try_tls_connect(proxy.addr, &other, "localhost").err();
    assert!(
        err.is_some(),
        "a client offering neither h2 nor http/1.1 must be refused"
    );
    eventually("the refusal is counted", || {
        handshake_failures(&proxy, "incompatible") == 1
    });
    proxy.shutdown();
}

/// Relays a local cleartext socket through `tls` (one thread, short read timeouts on both
/// sides), so that a tokio-based h2 client can run over a rustls client connection. Returns
/// the local address to connect to.
fn tls_bridge(mut tls: Tls) -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let Ok((mut plain, _)) = listener.accept() else {
            return;
        };
        let tick = Some(Duration::from_millis(5));
        let _ = plain.set_read_timeout(tick);
        let _ = tls.sock.set_read_timeout(tick);
        let mut buf = vec![0u8; 64 * 1024];
        let idle = |e: &std::io::Error| {
            matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            )
        };
        loop {
            match plain.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    if tls.write_all(&buf[..n]).and_then(|_| tls.flush()).is_err() {
                        return;
                    }
                }
                Err(e) if idle(&e) => {}
                Err(_) => return,
            }
            match tls.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    if plain.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
                Err(e) if idle(&e) => {}
                Err(_) => return,
            }
        }
    });
    addr
}

#[test]
fn an_h2_client_over_tls_with_alpn_h2_gets_the_backends_bytes() {
    let backend = Backend::start("app-over-h2-tls");
    let ca = Ca::new("test ca");
    let files = ca.leaf(&["localhost"]).write();
    let proxy = Proxy::start(&tls_proxy_toml(&single(&files), 1, "", &[&backend]));
    let cfg = client_config(&ca, &[b"h2"]);
    let t = tls_connect(proxy.addr, &cfg, "localhost");
    assert_eq!(t.conn.alpn_protocol(), Some(&b"h2"[..]));
    let (status, body) = h2_get(t);
    assert_eq!(status, http::StatusCode::OK);
    assert_eq!(body, b"app-over-h2-tls");
    proxy.shutdown();
}

/// A GET of `/` as HTTP/2 over `t` (bridged to the tokio h2 client): status and body.
fn h2_get(t: Tls) -> (http::StatusCode, Vec<u8>) {
    let local = tls_bridge(t);
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(async move {
            let tcp = tokio::net::TcpStream::connect(local).await.expect("bridge");
            let (send, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
            tokio::spawn(conn);
            let mut send = send.ready().await.expect("ready");
            let req = http::Request::get("https://localhost/")
                .body(())
                .expect("request");
            let (resp, _) = send.send_request(req, true).expect("send");
            let resp = tokio::time::timeout(IO_TIMEOUT, resp)
                .await
                .expect("response in time")
                .expect("response");
            let (parts, mut recv) = resp.into_parts();
            let mut data = Vec::new();
            while let Some(chunk) = recv.data().await {
                let chunk = chunk.expect("body chunk");
                let _ = recv.flow_control().release_capacity(chunk.len());
                data.extend_from_slice(&chunk);
            }
            (parts.status, data)
        })
}

#[test]
fn a_listener_with_http1_false_speaks_h2_to_every_client_that_connects() {
    let backend = Backend::start("app-h2-only");
    let ca = Ca::new("test ca");
    let files = ca.leaf(&["localhost"]).write();
    let toml = tls_proxy_toml(&single(&files), 1, "", &[&backend]).replacen(
        "tls = {",
        "http1 = false, tls = {",
        1,
    );
    assert!(toml.contains("http1 = false"), "{toml}");
    let proxy = Proxy::start(&toml);
    let both = client_config(&ca, &[b"http/1.1", b"h2"]);
    let t = tls_connect(proxy.addr, &both, "localhost");
    assert_eq!(t.conn.alpn_protocol(), Some(&b"h2"[..]));
    assert_eq!(h2_get(t), (http::StatusCode::OK, b"app-h2-only".to_vec()));
    // A client naming no protocol is taken to speak the only one there is.
    let none = client_config(&ca, &[]);
    let t = tls_connect(proxy.addr, &none, "localhost");
    assert_eq!(t.conn.alpn_protocol(), None);
    assert_eq!(h2_get(t), (http::StatusCode::OK, b"app-h2-only".to_vec()));
    // One that insists on HTTP/1.1 has no protocol in common with the listener.
    let h1 = client_config(&ca, &[b"http/1.1"]);
    assert!(
        try_tls_connect(proxy.addr, &h1, "localhost").is_err(),
        "http/1.1 only must be refused"
    );
    assert_eq!(backend.request_count(), 2);
    proxy.shutdown();
}

#[test]
fn second_handshake_is_resumed_on_tls13_and_tls12_across_shards() {
    let backend = Backend::start("app");
    let ca = Ca::new("test ca");
    let files = ca.leaf(&["localhost"]).write();
    let proxy = Proxy::start(&tls_proxy_toml(&single(&files), 2, "", &[&backend]));
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let cfg = Arc::new(
            ClientConfig::builder_with_provider(provider())
                .with_protocol_versions(&[version])
                .unwrap()
                .with_root_certificates(ca.roots())
                .with_no_client_auth(),
        );
        // Several reconnects: the kernel spreads them over both shards, and every one after
        // the first must resume (the ticket key is shared by the shards).
        for i in 0..6 {
            let mut t = tls_connect(proxy.addr, &cfg, "localhost");
            let r = roundtrip(&mut t, b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n");
            assert_eq!(r.status, 200);
            let kind = t.conn.handshake_kind();
            let want = if i == 0 {
                rustls::HandshakeKind::Full
            } else {
                rustls::HandshakeKind::Resumed
            };
            assert_eq!(kind, Some(want), "{version:?} connection {i}");
        }
    }
    proxy.shutdown();
}

#[test]
fn reload_swaps_the_certificate_and_keeps_open_connections() {
    let backend = Backend::start("app");
    let ca = Ca::new("test ca");
    let old = ca.leaf(&["localhost"]);
    let files = old.write();
    let config = write_config(&tls_proxy_toml(&single(&files), 1, "", &[&backend]));
    let proxy = Proxy::start_file(&config);
    let cfg = client_config(&ca, &[]);
    let mut before = tls_connect(proxy.addr, &cfg, "localhost");
    assert_eq!(before.conn.peer_certificates().unwrap()[0], old.der);
    assert_eq!(
        roundtrip(&mut before, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").status,
        200
    );

    // Renewed in place: same paths, new certificate and key.
    let new = ca.leaf(&["localhost"]);
    std::fs::write(&files.0, &new.cert_pem).unwrap();
    std::fs::write(&files.1, &new.key_pem).unwrap();
    proxy.server().reload().expect("reload");
    eventually("new handshakes get the new certificate", || {
        let t = tls_connect(proxy.addr, &cfg, "localhost");
        t.conn.peer_certificates().unwrap()[0] == new.der
    });
    // The connection made before the reload still works.
    let r = roundtrip(&mut before, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!((r.status, r.body.as_slice()), (200, &b"app"[..]));

    // A reload with a broken key is refused and the running certificate stays.
    std::fs::write(&files.1, "not a key").unwrap();
    let err = proxy
        .server()
        .reload()
        .expect_err("a bad key must be refused");
    assert!(err.contains("server.listen[0].tls.key"), "{err}");
    let t = tls_connect(proxy.addr, &cfg, "localhost");
    assert_eq!(t.conn.peer_certificates().unwrap()[0], new.der);
    proxy.shutdown();
}

#[test]
fn cleartext_client_on_a_tls_port_gets_a_400_and_a_clean_close() {
    let backend = Backend::start("app");
    let ca = Ca::new("test ca");
    let files = ca.leaf(&["localhost"]).write();
    let proxy = Proxy::start(&tls_proxy_toml(&single(&files), 1, "", &[&backend]));
    let mut s = TcpStream::connect(proxy.addr).unwrap();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut got = Vec::new();
    // read_to_end fails on a reset: the close must be a FIN after the answer.
    s.read_to_end(&mut got).expect("a clean close, not a reset");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{text}");
    assert!(text.contains("Connection: close\r\n"), "{text}");
    assert!(text.ends_with("use https:// here.\n"), "{text}");
    assert_eq!(backend.requests().len(), 0);
    eventually("counted as cleartext", || {
        handshake_failures(&proxy, "cleartext") == 1
    });
    // The listener still serves TLS clients.
    let mut t = tls_connect(proxy.addr, &client_config(&ca, &[]), "localhost");
    let r = roundtrip(&mut t, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(r.status, 200);
    proxy.shutdown();
}

#[test]
fn a_silent_client_is_cut_by_request_header_ms() {
    let backend = Backend::start("app");
    let ca = Ca::new("test ca");
    let files = ca.leaf(&["localhost"]).write();
    let toml = tls_proxy_toml(
        &single(&files),
        1,
        "[timeouts]\nrequest_header_ms = 300\n",
        &[&backend],
    );
    let proxy = Proxy::start(&toml);
    let mut s = TcpStream::connect(proxy.addr).unwrap();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let t = Instant::now();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    let took = t.elapsed();
    assert!(got.is_empty());
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(5),
        "closed after {took:?}"
    );
    // A client that starts the handshake and stalls is cut the same way.
    let mut s = TcpStream::connect(proxy.addr).unwrap();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.write_all(&[0x16, 0x03, 0x01, 0x00, 0x40, 0x01]).unwrap();
    let _ = s.read_to_end(&mut got);
    eventually("both counted as timeouts", || {
        handshake_failures(&proxy, "timeout") == 2
    });
    proxy.shutdown();
}

#[test]
fn bad_certificates_and_keys_are_config_errors_naming_file_key_and_reason() {
    let ca = Ca::new("test ca");
    let a = ca.leaf(&["a.example"]).write();
    let b = ca.leaf(&["b.example"]).write();
    let backend = Backend::start("app");
    let check = |tls: String, key: &str, reason: &str| {
        let toml = tls_proxy_toml(&tls, 1, "", &[&backend]);
        let e = ringlb::Config::from_toml_str(&toml, "t.toml").expect_err(&tls);
        assert_eq!(e.file, "t.toml");
        assert_eq!(e.key, key, "{e}");
        assert!(e.reason.contains(reason), "{e}");
    };
    let p = |p: &PathBuf| p.display().to_string();
    // A key that belongs to another certificate.
    check(
        format!("cert = \"{}\", key = \"{}\"", p(&a.0), p(&b.1)),
        "server.listen[0].tls.key",
        "mismatched key",
    );
    // Unreadable files name themselves.
    check(
        format!("cert = \"/nonexistent/c.pem\", key = \"{}\"", p(&a.1)),
        "server.listen[0].tls.cert",
        "cannot read `/nonexistent/c.pem`",
    );
    check(
        format!("cert = \"{}\", key = \"/nonexistent/k.pem\"", p(&a.0)),
        "server.listen[0].tls.key",
        "cannot read `/nonexistent/k.pem`",
    );
    // A key file given as the certificate, and the other way round.
    check(
        format!("cert = \"{}\", key = \"{}\"", p(&a.1), p(&a.1)),
        "server.listen[0].tls.cert",
        "holds no certificate",
    );
    check(
        format!("cert = \"{}\", key = \"{}\"", p(&a.0), p(&a.0)),
        "server.listen[0].tls.key",
        "holds no private key",
    );
    // The second entry of several.
    check(
        format!(
            "certificates = [{{ cert = \"{}\", key = \"{}\" }}, {{ cert = \"{}\", key = \"{}\" }}]",
            p(&a.0),
            p(&a.1),
            p(&b.0),
            p(&a.1)
        ),
        "server.listen[0].tls.certificates[1].key",
        "mismatched key",
    );
    check(
        format!("cert = \"{}\"", p(&a.0)),
        "server.listen[0].tls.key",
        "needs `key`",
    );
    check(
        "certificates = []".to_string(),
        "server.listen[0].tls.certificates",
        "at least one",
    );
}

#[test]
fn an_expired_certificate_is_a_warning() {
    let ca = Ca::new("test ca");
    let expired = ca
        .leaf_with(&["old.example"], |p| {
            p.not_before = rcgen::date_time_ymd(2020, 1, 1);
            p.not_after = rcgen::date_time_ymd(2021, 1, 1);
        })
        .write();
    let fresh = ca.leaf(&["new.example"]).write();
    let backend = Backend::start("app");
    let config = config_from(tls_proxy_toml(&single(&expired), 1, "", &[&backend]));
    let w = config.warnings();
    assert_eq!(w.len(), 1, "{w:?}");
    assert_eq!(w[0].key, "server.listen[0].tls");
    assert!(w[0].reason.contains("expired"), "{}", w[0].reason);
    assert!(
        w[0].reason.contains(&expired.0.display().to_string()),
        "{}",
        w[0].reason
    );
    let config = config_from(tls_proxy_toml(&single(&fresh), 1, "", &[&backend]));
    assert!(config.warnings().is_empty());
}

#[test]
fn routes_match_on_the_sni_the_client_sent() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let ca = Ca::new("test ca");
    let files = ca.leaf(&["a.example", "b.example"]).write();
    let toml = format!(
        "[server]\nlisten = [\"127.0.0.1:0\", {{ address = \"127.0.0.2:0\", tls = {{ {} }} }}]\n\
         workers = 1\nadmin = \"\"\n\
         [[upstream]]\nname = \"a\"\npeers = [{{ address = \"{}\" }}]\n\
         [[upstream]]\nname = \"b\"\npeers = [{{ address = \"{}\" }}]\n\
         [[route]]\nsni = \"B.example\"\nupstream = \"b\"\n\
         [[route]]\nupstream = \"a\"\n",
        single(&files),
        a.addr(),
        b.addr()
    );
    let proxy = Proxy::start(&toml);
    let tls_addr = proxy.server().listen_addrs()[1];
    let cfg = client_config(&ca, &[]);
    let body = |name: &str, host: &str| {
        let mut t = tls_connect(tls_addr, &cfg, name);
        let req = format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n");
        String::from_utf8(roundtrip(&mut t, req.as_bytes()).body).unwrap()
    };
    assert_eq!(body("b.example", "b.example"), "b");
    // The SNI decides, not the Host header.
    assert_eq!(body("b.example", "a.example"), "b");
    assert_eq!(body("a.example", "b.example"), "a");
    // A cleartext connection has no SNI: never matches an `sni` route.
    let r = proxy
        .client()
        .roundtrip(b"GET / HTTP/1.1\r\nHost: b.example\r\n\r\n");
    assert_eq!(r.body_str(), "a");
    proxy.shutdown();

    let bad = toml.replace("sni = \"B.example\"", "sni = \"*.example\"");
    let e = ringlb::Config::from_toml_str(&bad, "t.toml").unwrap_err();
    assert_eq!(e.key, "route[0].sni", "{e}");
}

// ---------------------------------------------------------------------------------------------
// Upstream TLS.

/// A cleartext proxy in front of `peers` (each `{ address = …, … }` written out), with
/// `upstream_extra` lines in the upstream table.
fn plain_proxy_toml(upstream_extra: &str, peers: &[String]) -> String {
    format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = 1\nadmin = \"127.0.0.1:0\"\n\
         shutdown_timeout_ms = 2000\n\n[[upstream]]\nname = \"app\"\npeers = [{}]\n{upstream_extra}\n",
        peers.join(", ")
    )
}

fn metrics_text(proxy: &Proxy) -> String {
    let admin = proxy.server().admin_addr().expect("admin endpoint");
    Client::connect(admin)
        .roundtrip(b"GET /metrics HTTP/1.1\r\nHost: admin\r\n\r\n")
        .body_str()
}

/// The value of one sample line that starts with `prefix`.
fn sample_value(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no {prefix} in:\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

fn peer_failures(proxy: &Proxy, peer: SocketAddr, kind: &str) -> f64 {
    sample_value(
        &metrics_text(proxy),
        &format!("ringlb_peer_failures_total{{upstream=\"app\",peer=\"{peer}\",kind=\"{kind}\"}} "),
    )
}

#[test]
fn upstream_tls_verified_with_the_right_ca_and_pooled() {
    let ca = Ca::new("upstream ca");
    let backend = TlsBackend::start(&ca.leaf(&["backend.example"]), None);
    let ca_file = ca.write();
    let toml = plain_proxy_toml(
        &format!(
            "tls = {{ enabled = true, sni = \"backend.example\", verify = true, ca = \"{}\", alpn = [\"http/1.1\"] }}",
            ca_file.display()
        ),
        &[format!("{{ address = \"{}\" }}", backend.addr)],
    );
    let proxy = Proxy::start(&toml);
    let mut c = proxy.client();
    for i in 0..3 {
        let r = c.roundtrip(format!("GET /r{i} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes());
        assert_eq!(r.status, 200, "{}", r.body_str());
        assert_eq!(
            r.body_str(),
            format!("sni=backend.example client_cert=no path=/r{i}")
        );
    }
    // One TLS connection carried all three (pooled, and the pool's liveness check holds for
    // it).
    assert_eq!(backend.accepts(), 1);
    // A large response over upstream TLS, then to a TLS client too.
    let r = c.roundtrip(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), 300_000);
    assert!(r.body.iter().all(|&b| b == b'b'));
    assert_eq!(backend.accepts(), 1);
    let r = c.roundtrip(b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc");
    assert_eq!(r.status, 200);
    assert_eq!(backend.accepts(), 1);
    proxy.shutdown();
}

#[test]
fn a_self_signed_upstream_certificate_given_as_ca_is_trusted_for_its_names_and_dates() {
    // `openssl req -x509` makes a self-signed certificate marked CA:TRUE, which webpki will
    // not take as a server's own; given as the upstream's `ca`, it is the peer's pinned
    // certificate (as OpenSSL, and so nginx, take it). Its names and dates still count.
    let good = self_signed(&["backend.example"], |_| {});
    let expired = self_signed(&["backend.example"], |p| {
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2021, 1, 1);
    });
    let check = |leaf: &Leaf, sni: &str| {
        let backend = TlsBackend::start(leaf, None);
        let ca_file = temp_path("tls-pinned", "pem");
        std::fs::write(&ca_file, &leaf.cert_pem).unwrap();
        let toml = plain_proxy_toml(
            &format!(
                "tls = {{ enabled = true, sni = \"{sni}\", ca = \"{}\" }}",
                ca_file.display()
            ),
            &[format!("{{ address = \"{}\" }}", backend.addr)],
        );
        let proxy = Proxy::start(&toml);
        let r = proxy
            .client()
            .roundtrip(b"GET /p HTTP/1.1\r\nHost: x\r\n\r\n");
        let failures = peer_failures(&proxy, backend.addr, "tls_failure");
        proxy.shutdown();
        (r.status, r.body_str(), failures)
    };
    let (status, body, failures) = check(&good, "backend.example");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, "sni=backend.example client_cert=no path=/p");
    assert_eq!(failures, 0.0);
    // Another name than the certificate's: refused.
    let (status, _, failures) = check(&good, "other.example");
    assert_eq!(status, 502);
    assert!(failures >= 1.0, "{failures}");
    // Expired: refused.
    let (status, _, failures) = check(&expired, "backend.example");
    assert_eq!(status, 502);
    assert!(failures >= 1.0, "{failures}");
}

#[test]
fn a_failing_upstream_tls_handshake_is_a_warning_at_most_once_a_second() {
    // The binary at its default level (warn): the reason is in the log, once, not once per
    // request and retry.
    let ca = Ca::new("upstream ca");
    let backend = TlsBackend::start(&ca.leaf(&["backend.example"]), None);
    let ca_file = ca.write();
    let toml = plain_proxy_toml(
        &format!(
            "tls = {{ enabled = true, sni = \"wrong.example\", ca = \"{}\" }}\n\
             retry = {{ max_retries = 0 }}",
            ca_file.display()
        ),
        &[format!("{{ address = \"{}\" }}", backend.addr)],
    );
    // (no admin endpoint: the process's only listening port is then the proxy's)
    let toml = toml.replace("admin = \"127.0.0.1:0\"", "admin = \"\"");
    let mut p = ProxyProcess::spawn_with_log_level(&toml, "warn");
    let mut c = Client::connect(p.addr);
    let started = Instant::now();
    for _ in 0..5 {
        let r = c.roundtrip(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(r.status, 502);
    }
    p.signal(libc::SIGTERM);
    p.wait_exit(IO_TIMEOUT).expect("exits");
    let log = p.log_text();
    let warned: Vec<_> = log
        .lines()
        .filter(|l| l.contains("TLS handshake with the peer failed"))
        .collect();
    // Five failed handshakes (no retries): one warning, unless the five took over a second.
    let most = 1 + started.elapsed().as_secs() as usize;
    assert!(!warned.is_empty() && warned.len() <= most, "{log}");
    assert!(warned[0].contains("WARN"), "{}", warned[0]);
    assert!(
        warned[0].contains("not valid for name \"wrong.example\""),
        "{}",
        warned[0]
    );
}

#[test]
fn upstream_tls_with_the_wrong_ca_or_sni_is_a_tls_failure() {
    let ca = Ca::new("upstream ca");
    let other = Ca::new("someone else");
    let backend = TlsBackend::start(&ca.leaf(&["backend.example"]), None);
    for (name, tls) in [
        (
            "wrong CA",
            format!(
                "tls = {{ sni = \"backend.example\", ca = \"{}\" }}",
                other.write().display()
            ),
        ),
        (
            "wrong SNI",
            format!(
                "tls = {{ sni = \"other.example\", ca = \"{}\" }}",
                ca.write().display()
            ),
        ),
    ] {
        let toml = plain_proxy_toml(&tls, &[format!("{{ address = \"{}\" }}", backend.addr)]);
        let proxy = Proxy::start(&toml);
        let r = proxy
            .client()
            .roundtrip(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(r.status, 502, "{name}: {}", r.body_str());
        assert!(
            r.body_str().contains("TLS handshake with upstream failed"),
            "{name}: {}",
            r.body_str()
        );
        // Every try (retries on the one peer included) failed the same way.
        let tries = sample_value(
            &metrics_text(&proxy),
            &format!(
                "ringlb_peer_requests_total{{upstream=\"app\",peer=\"{}\"}} ",
                backend.addr
            ),
        );
        assert!(tries >= 1.0);
        assert_eq!(
            peer_failures(&proxy, backend.addr, "tls_failure"),
            tries,
            "{name}"
        );
        assert_eq!(
            peer_failures(&proxy, backend.addr, "connect_failure"),
            0.0,
            "{name}"
        );
        proxy.shutdown();
    }
    // Retried like a connect failure: a second peer with the right settings answers.
    let good = TlsBackend::start(&ca.leaf(&["backend.example"]), None);
    let toml = plain_proxy_toml(
        "",
        &[
            format!(
                "{{ address = \"{}\", tls = {{ sni = \"backend.example\", ca = \"{}\" }} }}",
                backend.addr,
                other.write().display()
            ),
            format!(
                "{{ address = \"{}\", tls = {{ sni = \"backend.example\", ca = \"{}\" }} }}",
                good.addr,
                ca.write().display()
            ),
        ],
    );
    let proxy = Proxy::start(&toml);
    let mut c = proxy.client();
    for _ in 0..4 {
        let r = c.roundtrip(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(r.status, 200, "{}", r.body_str());
    }
    assert!(peer_failures(&proxy, backend.addr, "tls_failure") >= 1.0);
    proxy.shutdown();
}

#[test]
fn upstream_mtls_presents_the_client_certificate() {
    let ca = Ca::new("upstream ca");
    let backend = TlsBackend::start(&ca.leaf(&["backend.example"]), Some(&ca));
    let client = ca.leaf(&["ringlb.client"]).write();
    let ca_file = ca.write();
    let base = format!("sni = \"backend.example\", ca = \"{}\"", ca_file.display());
    let peers = [format!("{{ address = \"{}\" }}", backend.addr)];
    // Without a client certificate the backend refuses the connection.
    let proxy = Proxy::start(&plain_proxy_toml(&format!("tls = {{ {base} }}"), &peers));
    let r = proxy
        .client()
        .roundtrip(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(r.status, 502, "{}", r.body_str());
    assert!(peer_failures(&proxy, backend.addr, "tls_failure") >= 1.0);
    proxy.shutdown();
    // With one it is served.
    let tls = format!(
        "tls = {{ {base}, client_cert = \"{}\", client_key = \"{}\" }}",
        client.0.display(),
        client.1.display()
    );
    let proxy = Proxy::start(&plain_proxy_toml(&tls, &peers));
    let r = proxy
        .client()
        .roundtrip(b"GET /m HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(r.status, 200, "{}", r.body_str());
    assert_eq!(r.body_str(), "sni=backend.example client_cert=yes path=/m");
    proxy.shutdown();
    // A client key that is not the certificate's is a config error.
    let other = ca.leaf(&["x"]).write();
    let bad = format!(
        "tls = {{ {base}, client_cert = \"{}\", client_key = \"{}\" }}",
        client.0.display(),
        other.1.display()
    );
    let e = ringlb::Config::from_toml_str(&plain_proxy_toml(&bad, &peers), "t.toml").unwrap_err();
    assert_eq!(e.key, "upstream[0].tls.client_key", "{e}");
    assert!(e.reason.contains("mismatched key"), "{e}");
}

#[test]
fn health_checks_run_over_tls() {
    let ca = Ca::new("upstream ca");
    let other = Ca::new("someone else");
    let good = TlsBackend::start(&ca.leaf(&["backend.example"]), None);
    let bad = TlsBackend::start(&ca.leaf(&["backend.example"]), None);
    let toml = plain_proxy_toml(
        "health = { kind = \"https\", path = \"/hc\", interval_ms = 100, timeout_ms = 1000, rise = 1, fall = 1 }",
        &[
            format!(
                "{{ address = \"{}\", tls = {{ sni = \"backend.example\", ca = \"{}\" }} }}",
                good.addr,
                ca.write().display()
            ),
            // The probe of this one fails verification.
            format!(
                "{{ address = \"{}\", tls = {{ sni = \"backend.example\", ca = \"{}\" }} }}",
                bad.addr,
                other.write().display()
            ),
        ],
    );
    let described = config_from(&toml).describe();
    assert!(described.contains(" over TLS, every 100 ms"), "{described}");
    assert!(
        described.contains("  tls sni=backend.example;verify=true;ca="),
        "{described}"
    );
    let proxy = Proxy::start(&toml);
    let up = |peer: SocketAddr| {
        let text = metrics_text(&proxy);
        let prefix = format!("ringlb_peer_up{{upstream=\"app\",peer=\"{peer}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map(|v| v.trim().to_string())
    };
    eventually("the good peer is up, the bad one down", || {
        up(good.addr).as_deref() == Some("1") && up(bad.addr).as_deref() == Some("0")
    });
    // The probes went over TLS: the good backend saw connections (the probe's, at least).
    assert!(good.accepts() >= 1);
    proxy.shutdown();

    // `tls = true` on an http check is the same; `kind = "https"` with `tls = false` is not.
    let e = ringlb::Config::from_toml_str(
        &plain_proxy_toml(
            "health = { kind = \"https\", tls = false }",
            &[format!("{{ address = \"{}\" }}", good.addr)],
        ),
        "t.toml",
    )
    .unwrap_err();
    assert_eq!(e.key, "upstream[0].health.tls", "{e}");
}

/// Picks the upstream named like the SNI's first label (`b.example` → `b`), else `a`.
struct BySni;

impl ringlb::failover::FailureHooks for BySni {}

impl ringlb::proxy::Picker for BySni {
    fn pick(
        &self,
        info: &ringlb::proxy::RequestInfo<'_>,
        upstreams: &ringlb::proxy::Upstreams<'_>,
    ) -> ringlb::proxy::Pick {
        let name = info.sni().and_then(|s| s.split('.').next()).unwrap_or("a");
        ringlb::proxy::Pick {
            upstream: upstreams.index(name).or(upstreams.index("a")),
            hash: None,
        }
    }
}

#[test]
fn a_picker_sees_the_sni() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let ca = Ca::new("test ca");
    let files = ca.leaf(&["a.example", "b.example"]).write();
    let toml = format!(
        "[server]\nlisten = [{{ address = \"127.0.0.1:0\", tls = {{ {} }} }}]\nworkers = 1\n\
         admin = \"\"\n\
         [[upstream]]\nname = \"a\"\npeers = [{{ address = \"{}\" }}]\n\
         [[upstream]]\nname = \"b\"\npeers = [{{ address = \"{}\" }}]\n",
        single(&files),
        a.addr(),
        b.addr()
    );
    let proxy = Proxy::start_with_picker(&toml, Arc::new(BySni));
    let cfg = client_config(&ca, &[]);
    for (sni, want) in [("b.example", "b"), ("a.example", "a")] {
        let mut t = tls_connect(proxy.addr, &cfg, sni);
        let r = roundtrip(&mut t, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(String::from_utf8_lossy(&r.body), want, "{sni}");
    }
    proxy.shutdown();
}

#[test]
fn tls_on_both_sides_carries_a_large_response() {
    let ca = Ca::new("test ca");
    let backend = TlsBackend::start(&ca.leaf(&["backend.example"]), None);
    let files = ca.leaf(&["localhost"]).write();
    let toml = format!(
        "[server]\nlisten = [{{ address = \"127.0.0.1:0\", tls = {{ {} }} }}]\nworkers = 1\n\
         admin = \"\"\n[[upstream]]\nname = \"app\"\n\
         tls = {{ sni = \"backend.example\", ca = \"{}\" }}\npeers = [{{ address = \"{}\" }}]\n",
        single(&files),
        ca.write().display(),
        backend.addr
    );
    let proxy = Proxy::start(&toml);
    let mut t = tls_connect(proxy.addr, &client_config(&ca, &[]), "localhost");
    for _ in 0..2 {
        let r = roundtrip(&mut t, b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(r.status, 200);
        assert_eq!(r.body.len(), 300_000);
        assert!(r.body.iter().all(|&b| b == b'b'));
        let r = roundtrip(&mut t, b"GET /small HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(
            String::from_utf8_lossy(&r.body),
            "sni=backend.example client_cert=no path=/small"
        );
    }
    assert_eq!(backend.accepts(), 1);
    proxy.shutdown();
}

#[test]
fn tls_failures_count_for_passive_health() {
    let ca = Ca::new("upstream ca");
    let other = Ca::new("someone else");
    let backend = TlsBackend::start(&ca.leaf(&["backend.example"]), None);
    let toml = plain_proxy_toml(
        &format!(
            "tls = {{ sni = \"backend.example\", ca = \"{}\" }}\n\
             retry = {{ max_retries = 0 }}\n\
             passive = {{ consecutive_failures = 2, eject_ms = 60000, max_eject_percent = 100 }}",
            other.write().display()
        ),
        &[format!("{{ address = \"{}\" }}", backend.addr)],
    );
    let proxy = Proxy::start(&toml);
    let mut c = proxy.client();
    for _ in 0..2 {
        let r = c.roundtrip(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(r.status, 502);
    }
    let prefix = format!(
        "ringlb_peer_ejections_total{{upstream=\"app\",peer=\"{}\"}} ",
        backend.addr
    );
    eventually("two TLS failures in a row eject the peer", || {
        sample_value(&metrics_text(&proxy), &prefix) == 1.0
    });
    proxy.shutdown();
}

/// A TLS keep-alive connection that parks between requests (`client_park_ms = 20`, pauses of
/// 80 ms): every answer is byte-exact and in order on the one connection — small and large
/// bodies both ways, two requests pipelined into a parked connection, and a head sent a few
/// bytes (a TLS record each) at a time across park times.
#[test]
fn tls_keep_alive_requests_across_parks_are_byte_exact() {
    let backend = Backend::with_handler("app", |r| {
        let mut body = format!("{} {} ", r.method, r.path()).into_bytes();
        body.extend_from_slice(&r.body);
        Reply::ok(body)
    });
    let ca = Ca::new("test ca");
    let files = ca.leaf(&["localhost"]).write();
    let extra = "[timeouts]\nclient_park_ms = 20";
    let proxy = Proxy::start(&tls_proxy_toml(&single(&files), 1, extra, &[&backend]));
    let cfg = client_config(&ca, &[b"http/1.1"]);
    let mut tls = tls_connect(proxy.addr, &cfg, "localhost");
    let pause = || std::thread::sleep(Duration::from_millis(80));
    for i in 0..4 {
        pause();
        let r = roundtrip(
            &mut tls,
            format!("GET /k{i} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes(),
        );
        assert_eq!(
            (r.status, r.body),
            (200, format!("GET /k{i} ").into_bytes())
        );
    }
    // Large bodies (many records) both ways, after a park each.
    for len in [100_000usize, 300_000] {
        pause();
        let big = pattern_bytes(len);
        let mut req =
            format!("POST /big HTTP/1.1\r\nHost: localhost\r\nContent-Length: {len}\r\n\r\n")
                .into_bytes();
        req.extend_from_slice(&big);
        let r = roundtrip(&mut tls, &req);
        assert_eq!(r.status, 200);
        assert_eq!(&r.body[..10], b"POST /big ");
        assert!(r.body[10..] == big[..], "{len}-byte body echoed byte-exact");
    }
    // Two requests in one write (one record) to a parked connection.
    pause();
    tls.write_all(
        b"GET /p1 HTTP/1.1\r\nHost: localhost\r\n\r\nGET /p2 HTTP/1.1\r\nHost: localhost\r\n\r\n",
    )
    .unwrap();
    tls.flush().unwrap();
    assert_eq!(read_response(&mut tls).body, b"GET /p1 ");
    assert_eq!(read_response(&mut tls).body, b"GET /p2 ");
    // A head trickling in, one small record at a time, across park times.
    for piece in b"GET /slow HTTP/1.1\r\nHost: localhost\r\n\r\n".chunks(9) {
        tls.write_all(piece).unwrap();
        tls.flush().unwrap();
        std::thread::sleep(Duration::from_millis(40));
    }
    assert_eq!(read_response(&mut tls).body, b"GET /slow ");
    let paths: Vec<String> = backend
        .requests()
        .iter()
        .map(|r| r.path().to_string())
        .collect();
    assert_eq!(
        paths,
        ["/k0", "/k1", "/k2", "/k3", "/big", "/big", "/p1", "/p2", "/slow"]
    );
    proxy.shutdown();
}

/// The real binary with 1 000 idle TLS keep-alive clients (each did its handshake and one
/// request): once parked they hold no buffers — no request/response buffers, no ciphertext
/// buffers of the TLS adaptor, rustls's deframer buffer at its 4 KiB floor — so the RSS growth
/// per idle client stays far below the ~50 KiB it was when a TLS connection could not park.
/// Every client is still served afterwards.
#[test]
fn idle_tls_clients_hold_no_buffers() {
    let limit = raise_nofile();
    let n = 1000usize.min((limit.saturating_sub(256) / 2) as usize);
    let backend = Backend::start("rss");
    let ca = Ca::new("test ca");
    let files = ca.leaf(&["localhost"]).write();
    // No admin listener: the binary's address is found as its one listening socket.
    let toml = tls_proxy_toml(&single(&files), 1, "", &[&backend])
        .replace("admin = \"127.0.0.1:0\"", "admin = \"\"");
    let p = ProxyProcess::spawn(&toml);
    let cfg = client_config(&ca, &[b"http/1.1"]);
    let get = |tls: &mut Tls, path: &str| {
        let r = roundtrip(
            tls,
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes(),
        );
        assert_eq!(r.status, 200, "{path}");
    };
    // Warm up: the pools, the session cache and one-time allocations.
    let mut warm: Vec<Tls> = (0..50)
        .map(|_| tls_connect(p.addr, &cfg, "localhost"))
        .collect();
    for t in warm.iter_mut() {
        get(t, "/w");
    }
    drop(warm);
    std::thread::sleep(Duration::from_millis(300));
    let before = p.status_kb("VmRSS");
    let mut open = Vec::with_capacity(n);
    for i in 0..n {
        let mut t = tls_connect(p.addr, &cfg, "localhost");
        get(&mut t, &format!("/i{i}"));
        open.push(t);
    }
    // Past the reaper's release of freed pages (1 s after the pool last shrank).
    std::thread::sleep(Duration::from_millis(2500));
    let after = p.status_kb("VmRSS");
    let per = (after.saturating_sub(before) * 1024) as f64 / n as f64;
    eprintln!("VmRSS {before} kB -> {after} kB with {n} idle TLS clients: {per:.0} B per client");
    assert!(per < 16384.0, "{per:.0} B per idle TLS client");
    for (i, t) in open.iter_mut().enumerate().step_by(97) {
        get(t, &format!("/again{i}"));
    }
}

#[test]
fn websocket_over_h2_over_tls_echoes_and_half_closes() {
    let ws = WsEcho::start();
    let ca = Ca::new("test ca");
    let files = ca.leaf(&["localhost"]).write();
    let toml = format!(
        "[server]\nlisten = [{{ address = \"127.0.0.1:0\", tls = {{ {} }} }}]\n\
         workers = 1\nadmin = \"\"\nshutdown_timeout_ms = 2000\n\
         [[upstream]]\nname = \"app\"\npeers = [{{ address = \"{}\" }}]\n",
        single(&files),
        ws.addr
    );
    let proxy = Proxy::start(&toml);
    let t = tls_connect(proxy.addr, &client_config(&ca, &[b"h2"]), "localhost");
    assert_eq!(t.conn.alpn_protocol(), Some(&b"h2"[..]));
    let local = tls_bridge(t);
    let frame = ws_client_frame(1, &[b'x'; 40_000], [9, 8, 7, 6]);
    let (status, echoed, rest) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(async {
            let tcp = tokio::net::TcpStream::connect(local).await.expect("bridge");
            let (send, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
            tokio::spawn(conn);
            let mut send = send.ready().await.expect("ready");
            let deadline = Instant::now() + IO_TIMEOUT;
            while !send.is_extended_connect_protocol_enabled() {
                assert!(Instant::now() < deadline, "no extended CONNECT");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let req = http::Request::builder()
                .method("CONNECT")
                .uri("https://localhost/ws")
                .header("sec-websocket-version", "13")
                .extension(h2::ext::Protocol::from("websocket"))
                .body(())
                .unwrap();
            let (resp, mut up) = send.send_request(req, false).expect("send");
            let resp = tokio::time::timeout(IO_TIMEOUT, resp)
                .await
                .expect("response in time")
                .expect("response");
            let (parts, mut down) = resp.into_parts();
            let mut data = bytes::Bytes::from(frame.clone());
            while !data.is_empty() {
                up.reserve_capacity(data.len());
                let n = std::future::poll_fn(|cx| up.poll_capacity(cx))
                    .await
                    .unwrap()
                    .unwrap();
                up.send_data(data.split_to(n.min(data.len())), false)
                    .unwrap();
            }
            let mut echoed = Vec::new();
            while echoed.len() < frame.len() {
                let chunk = tokio::time::timeout(IO_TIMEOUT, down.data())
                    .await
                    .expect("echo in time")
                    .expect("more data")
                    .expect("data");
                let _ = down.flow_control().release_capacity(chunk.len());
                echoed.extend_from_slice(&chunk);
            }
            up.send_data(bytes::Bytes::new(), true).unwrap();
            let mut rest = Vec::new();
            while let Some(chunk) = tokio::time::timeout(IO_TIMEOUT, down.data())
                .await
                .expect("the end in time")
            {
                rest.extend_from_slice(&chunk.expect("data"));
            }
            (parts.status, echoed, rest)
        });
    assert_eq!(status, http::StatusCode::OK);
    assert!(echoed == frame, "byte-exact echo over TLS");
    assert_eq!(
        rest, b"bye",
        "the half-close reached the origin, its answer came back"
    );
    let head = ws.heads()[0].clone();
    assert_eq!(head_field(&head, "upgrade"), Some("websocket"), "{head}");
    proxy.shutdown();
}

#[test]
fn a_listener_with_h2_false_negotiates_http11_and_serves_no_preface() {
    let backend = Backend::start("app");
    let ca = Ca::new("test ca");
    let files = ca.leaf(&["localhost"]).write();
    let toml = tls_proxy_toml(&single(&files), 1, "", &[&backend]).replacen(
        "tls = {",
        "h2 = false, tls = {",
        1,
    );
    assert!(toml.contains("h2 = false"), "{toml}");
    let proxy = Proxy::start(&toml);
    let both = client_config(&ca, &[b"h2", b"http/1.1"]);
    let mut t = tls_connect(proxy.addr, &both, "localhost");
    assert_eq!(t.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    let r = roundtrip(&mut t, b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n");
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"app");
    drop(t);
    // A client that insists on h2 has no protocol in common with the listener.
    let h2 = client_config(&ca, &[b"h2"]);
    assert!(
        try_tls_connect(proxy.addr, &h2, "localhost").is_err(),
        "h2 only must be refused"
    );
    // The HTTP/2 preface over an http/1.1 TLS connection is not served as HTTP/2 either.
    let mut t = tls_connect(proxy.addr, &both, "localhost");
    t.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").unwrap();
    t.flush().unwrap();
    let r = read_response(&mut t);
    assert_eq!(r.status, 400);
    assert_eq!(backend.request_count(), 1);
    proxy.shutdown();
}
