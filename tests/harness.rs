//! Self-checks of the test helpers, without the proxy: the client talks to a backend directly,
//! so a failure elsewhere in the suite can be pinned on the proxy, not on the harness.

mod common;

use common::*;
use std::time::Duration;

#[test]
fn client_and_backend_agree_on_every_framing() {
    let b = Backend::with_handler("h", |r| match r.path() {
        "/len" => Reply::ok("abc").header("X-A", "1"),
        "/chunked" => Reply::chunked(&[b"ab", b"", b"cd"], &[("X-T", "v")]),
        "/pattern" => Reply::pattern(3 << 20, Some(100_000)),
        "/204" => Reply::no_body(204),
        "/100" => Reply::ok("after").interim(103, &[("Link", "x")]),
        "/close" => Reply::until_close("bye"),
        _ => Reply::ok(r.body.clone()),
    });
    let mut c = Client::connect(b.addr());
    let r = c.roundtrip(&get("/len"));
    assert_eq!(
        (r.status, r.body_str().as_str(), r.framing),
        (200, "abc", Framing::Length)
    );
    assert_eq!(r.header("x-a"), Some("1"));
    let r = c.roundtrip(b"HEAD /len HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!((r.header("content-length"), r.body.len()), (Some("3"), 0));
    let r = c.roundtrip(&get("/chunked"));
    assert_eq!(
        (r.body_str().as_str(), r.framing),
        ("abcd", Framing::Chunked)
    );
    assert_eq!(r.trailers, [("X-T".to_string(), "v".to_string())]);
    c.send(&get("/pattern"));
    let mut chk = PatternCheck::default();
    c.response_streamed(false, &mut |d| chk.update(d)).unwrap();
    assert_eq!((chk.len, chk.ok()), (3 << 20, true));
    assert_eq!(c.roundtrip(&get("/204")).status, 204);
    c.send(&get("/100"));
    assert_eq!(c.response().status, 103);
    assert_eq!(c.response().body_str(), "after");
    // Pipelined, with a chunked upload carrying a trailer and a chunk extension.
    c.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nxyz\r\n0\r\nX-Tr: 1\r\n\r\nGET /len HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(c.response().body_str(), "xyz");
    assert_eq!(c.response().body_str(), "abc");
    let r = c.roundtrip(&get("/close"));
    assert_eq!(
        (r.body_str().as_str(), r.framing),
        ("bye", Framing::UntilClose)
    );
    assert_eq!(b.accepts(), 1);
    let echo = &b.requests()[6];
    assert!(echo.chunked);
    assert_eq!(echo.trailers, [("X-Tr".to_string(), "1".to_string())]);
    assert!(b.errors().is_empty(), "{:?}", b.errors());
}

#[test]
fn backend_sends_100_continue_and_closes_as_asked() {
    let b = Backend::with_handler("h", |r| {
        Reply::ok(r.body.clone()).delay(Duration::from_millis(1))
    });
    let mut c = Client::connect(b.addr());
    c.send(b"POST / HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n");
    assert_eq!(c.response().status, 100);
    c.send(b"ok");
    assert_eq!(c.response().body_str(), "ok");
    let r = c.roundtrip(b"GET / HTTP/1.0\r\n\r\n");
    assert_eq!(r.status, 200);
    c.expect_closed();
}

#[test]
fn large_upload_is_checked_not_stored() {
    let b = Backend::with_handler("h", |r| {
        Reply::ok(format!(
            "{} {} {}",
            r.body_len,
            r.body_is_pattern,
            r.body.len()
        ))
    });
    let mut c = Client::connect(b.addr());
    let len = BODY_RECORD_LIMIT + 5;
    c.send(format!("POST / HTTP/1.1\r\nHost: t\r\nContent-Length: {len}\r\n\r\n").as_bytes());
    write_pattern(c.stream(), len, None).unwrap();
    assert_eq!(c.response().body_str(), format!("{len} true 0"));
    // A corrupted byte is noticed.
    let mut body = pattern_bytes(1000);
    body[500] ^= 1;
    assert_eq!(c.roundtrip(&post("/", &body)).body_str(), "1000 false 1000");
}

#[test]
fn refusing_addr_refuses() {
    let a = refusing_addr();
    assert!(std::net::TcpStream::connect(a).is_err());
}
