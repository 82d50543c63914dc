//! The admin HTTP endpoint: `GET /status` (the JSON document of peer health and shard
//! counters), `GET /health` (`ok`); any other path is 404, another method on those two 405.
//!
//! One request per connection, answered with `Connection: close`, within [`TIMEOUT`]. The head
//! is parsed by the proxy's own parser ([`http::parse_request`]) under [`limits`]; a head that
//! does not fit in [`MAX_HEAD`] bytes gets no answer, any other parse error a 400.
//!
//! The endpoint runs on the control thread, which accepts the connections and calls [`serve`]
//! for each; what `/status` shows comes from the thread through the [`Host`] trait, so this
//! module knows nothing of health state machines.

use std::time::Duration;

use monoio::io::AsyncWriteRentExt;
use monoio::net::TcpStream;
use serde_json::Value;

use crate::config::Limits;
use crate::http::{self, HttpError, Method, ParseStatus, RequestHead};
use crate::io::read_append;

/// An admin request must arrive and be answered within this.
pub const TIMEOUT: Duration = Duration::from_secs(5);
/// Largest admin request head.
pub const MAX_HEAD: usize = 8 * 1024;

/// Host is what the admin endpoint asks of the thread that runs it.
pub trait Host {
    /// The `/status` document.
    fn status(&self) -> Value;
}

/// The parser limits of an admin request head: [`MAX_HEAD`] bytes, the proxy's defaults
/// otherwise.
pub fn limits() -> Limits {
    Limits {
        max_header_bytes: MAX_HEAD,
        ..Limits::default()
    }
}

/// Serves one admin connection: reads one request head and answers it, within [`TIMEOUT`],
/// then closes.
pub async fn serve(host: &impl Host, stream: TcpStream) {
    let _ = monoio::time::timeout(TIMEOUT, serve_unbounded(host, stream)).await;
}

async fn serve_unbounded(host: &impl Host, mut stream: TcpStream) {
    let limits = limits();
    let mut head = RequestHead::default();
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    loop {
        if buf.len() >= MAX_HEAD {
            return;
        }
        match read_append(&mut stream, &mut buf, 1024, MAX_HEAD, None).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        match http::parse_request(&buf, &limits, &mut head) {
            Ok(ParseStatus::Complete) => break,
            Ok(ParseStatus::Partial) => {}
            Err(HttpError::HeaderTooLarge) if buf.len() >= MAX_HEAD => return,
            Err(_) => {
                let _ = write_response(&mut stream, 400, "text/plain", "bad request\n").await;
                return;
            }
        }
    }
    let path = head.path.get(&buf);
    let (status, kind, body) = match (head.method, path) {
        (Method::Get, b"/status") => (200, "application/json", format!("{:#}\n", host.status())),
        (Method::Get, b"/health") => (200, "text/plain", "ok\n".to_string()),
        (_, b"/status" | b"/health") => (405, "text/plain", "method not allowed\n".to_string()),
        _ => (404, "text/plain", "not found\n".to_string()),
    };
    let _ = write_response(&mut stream, status, kind, &body).await;
}

/// Writes a complete `Connection: close` response.
async fn write_response(
    stream: &mut TcpStream,
    status: u16,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    let reason = http::status_reason(status);
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n",
        body.len()
    );
    if status == 405 {
        out.push_str("Allow: GET\r\n");
    }
    out.push_str("\r\n");
    out.push_str(body);
    let (res, _) = stream.write_all(out.into_bytes()).await;
    res.map(|_| ())
}
