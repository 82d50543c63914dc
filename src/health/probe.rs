//! Active probes on the control thread's monoio runtime: `tcp` (the connect succeeds) and
//! `http` (one `Connection: close` request whose status, and optionally body, match).
//!
//! A probe is one future bounded by the check's timeout; many run concurrently on one
//! runtime. The result is `Ok(detail)` or `Err(detail)`, the detail being what `/status` and
//! the state-change log show (`HTTP 200`, `connect: Connection refused (os error 111)`).

use std::net::SocketAddr;

use monoio::io::AsyncWriteRentExt;
use monoio::net::TcpStream;

use crate::config::{CheckKind, HealthCheck, HttpCheck, ProbeMethod};
use crate::http::{parse_response, BodyKind, HttpError, Method, ParseStatus, ResponseHead};
use crate::io::read_append;
use crate::tls::UpstreamTls;

/// How much of a probe's response is read at most (head + body searched by `body_contains`).
/// The head is parsed by the proxy's own [`parse_response`], whose head limit is the same.
pub const MAX_RESPONSE: usize = 64 * 1024;

/// Probe is one peer's prepared probe: where to connect and, for `http`, the request bytes.
#[derive(Debug, Clone)]
pub struct Probe {
    /// Where to connect (the peer's IP, with `health.port` if set).
    pub addr: SocketAddr,
    /// The check.
    check: HealthCheck,
    /// The HTTP request to send, for an `http` check.
    request: Option<Vec<u8>>,
    /// TLS to speak (`health.tls`): the peer's settings or the defaults; `Err` when those
    /// could not be made (no system roots), which every probe reports.
    tls: Option<Result<std::sync::Arc<UpstreamTls>, String>>,
}

impl Probe {
    /// Prepares the probe of the peer at `addr`, written `address` in the config (the default
    /// Host header of an `http` check).
    pub fn new(check: &HealthCheck, addr: SocketAddr, address: &str) -> Probe {
        let mut addr = addr;
        if let Some(port) = check.port {
            addr.set_port(port);
        }
        let request = match &check.kind {
            CheckKind::Tcp | CheckKind::Custom => None,
            CheckKind::Http(http) => {
                Some(http_request(http, http.host.as_deref().unwrap_or(address)))
            }
        };
        Probe {
            addr,
            check: check.clone(),
            request,
            tls: None,
        }
    }

    /// Makes a `tls` check speak TLS with the peer's own settings (`peer_tls`), or else the
    /// defaults for the host of `address`.
    pub fn with_tls(
        mut self,
        peer_tls: Option<&std::sync::Arc<UpstreamTls>>,
        address: &str,
    ) -> Probe {
        if self.check.tls {
            self.tls = Some(match peer_tls {
                // A peer reached over HTTP/2 (`protocol = "h2"`/`"auto"`) offers `h2`; the
                // probe speaks HTTP/1.1 and offers only that.
                Some(t) if t.config.alpn_protocols.iter().any(|p| p == b"h2") => {
                    let mut config = (*t.config).clone();
                    config.alpn_protocols = vec![b"http/1.1".to_vec()];
                    Ok(std::sync::Arc::new(UpstreamTls {
                        config: std::sync::Arc::new(config),
                        server_name: t.server_name.clone(),
                        settings: t.settings.clone(),
                    }))
                }
                Some(t) => Ok(t.clone()),
                None => {
                    let host = address.rsplit_once(':').map_or(address, |(h, _)| h);
                    let host = host.trim_start_matches('[').trim_end_matches(']');
                    UpstreamTls::default_for(host).map(std::sync::Arc::new)
                }
            });
        }
        self
    }

    /// Runs the probe once, within the check's timeout.
    pub async fn run(&self) -> Result<String, String> {
        let timeout = self.check.timeout;
        match monoio::time::timeout(timeout, self.run_unbounded()).await {
            Ok(r) => r,
            Err(_) => Err(format!("timeout after {} ms", timeout.as_millis())),
        }
    }

    async fn run_unbounded(&self) -> Result<String, String> {
        if self.check.kind == CheckKind::Custom {
            // Start and reload refuse this (see `health::hooks::Hooks::check_config`).
            return Err("no health check registered for `kind = \"custom\"`".to_string());
        }
        let stream = TcpStream::connect_addr(self.addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let http = match (&self.check.kind, &self.request) {
            (CheckKind::Http(http), Some(req)) => Some((http, req.clone())),
            _ => None,
        };
        match &self.tls {
            None => match http {
                Some((http, req)) => exchange(stream, req, http).await,
                None => Ok("connected".to_string()),
            },
            Some(Err(e)) => Err(format!("TLS: {e}")),
            Some(Ok(tls)) => {
                let stream = crate::tls::connect(stream, tls)
                    .await
                    .map_err(|e| format!("TLS handshake: {e}"))?;
                match http {
                    Some((http, req)) => exchange(stream, req, http).await,
                    None => Ok("TLS handshake done".to_string()),
                }
            }
        }
    }
}

/// The request an `http` check sends.
pub fn http_request(http: &HttpCheck, host: &str) -> Vec<u8> {
    format!(
        "{} {} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nUser-Agent: ringlb-health\r\n\r\n",
        http.method.name(),
        http.path
    )
    .into_bytes()
}

/// Sends `req` on `stream` and judges the response.
async fn exchange<S>(mut stream: S, req: Vec<u8>, http: &HttpCheck) -> Result<String, String>
where
    S: monoio::io::AsyncReadRent + monoio::io::AsyncWriteRent + monoio::io::CancelableAsyncReadRent,
{
    let (res, _) = stream.write_all(req).await;
    res.map_err(|e| format!("write: {e}"))?;
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let method = match http.method {
        ProbeMethod::Get => Method::Get,
        ProbeMethod::Head => Method::Head,
    };
    let mut resp = ResponseHead::default();
    // (head length, status, content length) once the head is complete.
    let mut head: Option<(usize, u16, Option<usize>)> = None;
    loop {
        let mut eof = false;
        if buf.len() < MAX_RESPONSE {
            match read_append(&mut stream, &mut buf, 4096, MAX_RESPONSE, None).await {
                Ok(0) => eof = true,
                Ok(_) => {}
                Err(e) if head.is_none() => return Err(format!("read: {e}")),
                Err(_) => eof = true,
            }
        } else {
            eof = true; // read all we are willing to
        }
        if head.is_none() {
            match parse_response(&buf, method, &mut resp) {
                Ok(ParseStatus::Complete) => {
                    let status = resp.status;
                    if !http.expect.contains(status) {
                        return Err(format!("HTTP {status} (expected {})", http.expect));
                    }
                    if http.body_contains.is_none() || http.method == ProbeMethod::Head {
                        return Ok(format!("HTTP {status}"));
                    }
                    let length = match resp.body {
                        BodyKind::Length(n) => usize::try_from(n).ok(),
                        _ => None,
                    };
                    head = Some((resp.head_len, status, length));
                }
                Ok(ParseStatus::Partial) if eof => {
                    return Err(if buf.is_empty() {
                        "connection closed without a response".to_string()
                    } else if buf.len() >= MAX_RESPONSE {
                        format!("response head larger than {MAX_RESPONSE} bytes")
                    } else {
                        "connection closed mid-head".to_string()
                    });
                }
                Ok(ParseStatus::Partial) => continue,
                Err(HttpError::BadGateway("response head too large")) => {
                    return Err(format!("response head larger than {MAX_RESPONSE} bytes"));
                }
                Err(e) => return Err(e.detail().unwrap_or("invalid response").to_string()),
            }
        }
        if let Some((n, status, length)) = head {
            let needle = http.body_contains.as_deref().unwrap_or_default().as_bytes();
            let body = &buf[n..];
            if body.windows(needle.len()).any(|w| w == needle) {
                return Ok(format!("HTTP {status}, body matches"));
            }
            if eof || length.is_some_and(|l| body.len() >= l) {
                return Err(format!(
                    "HTTP {status}, body does not contain {:?}",
                    http.body_contains.as_deref().unwrap_or_default()
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{StartState, StatusSet};
    use std::io::{Read, Write};
    use std::time::Duration;

    fn http_check(expect: &str, body: Option<&str>, method: ProbeMethod) -> HealthCheck {
        HealthCheck {
            kind: CheckKind::Http(HttpCheck {
                method,
                path: "/hc".to_string(),
                host: None,
                expect: StatusSet::parse(expect).unwrap(),
                body_contains: body.map(str::to_string),
            }),
            port: None,
            interval: Duration::from_millis(100),
            timeout: Duration::from_millis(300),
            rise: 1,
            fall: 1,
            start: StartState::Unknown,
            tls: false,
        }
    }

    #[test]
    fn a_tls_probe_offers_only_http11_even_when_the_peer_is_reached_over_h2() {
        let text = "[server]\nlisten = [\"127.0.0.1:0\"]\n[[upstream]]\nname = \"u\"\n\
                    protocol = \"auto\"\ntls = { enabled = true, verify = false }\n\
                    peers = [{ address = \"127.0.0.1:1\" }]\n";
        let cfg = crate::config::Config::from_toml_str(text, "t.toml").unwrap();
        let peer_tls = cfg.upstreams[0].peers[0].tls.clone().unwrap();
        assert!(peer_tls.config.alpn_protocols.iter().any(|p| p == b"h2"));
        let check = HealthCheck {
            tls: true,
            ..http_check("200", None, ProbeMethod::Get)
        };
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let probe =
            Probe::new(&check, addr, "127.0.0.1:1").with_tls(Some(&peer_tls), "127.0.0.1:1");
        let Some(Ok(tls)) = &probe.tls else {
            panic!("a TLS probe")
        };
        assert_eq!(tls.config.alpn_protocols, [b"http/1.1".to_vec()]);
        assert_eq!(tls.server_name, peer_tls.server_name);
    }

    fn tcp_check() -> HealthCheck {
        HealthCheck {
            kind: CheckKind::Tcp,
            ..http_check("200", None, ProbeMethod::Get)
        }
    }

    /// A one-shot server: answers the first connection with `reply` (after reading its head),
    /// and returns what it received.
    fn serve_once(
        reply: &'static [u8],
        delay: Duration,
    ) -> (SocketAddr, std::thread::JoinHandle<Vec<u8>>) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let mut got = Vec::new();
            let mut b = [0u8; 1024];
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut b) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&b[..n]),
                }
            }
            std::thread::sleep(delay);
            let _ = s.write_all(reply);
            got
        });
        (addr, t)
    }

    fn run(probe: &Probe) -> Result<String, String> {
        let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        rt.block_on(probe.run())
    }

    #[test]
    fn http_probe_sends_the_request_and_checks_status() {
        let (addr, t) = serve_once(b"HTTP/1.1 204 No Content\r\n\r\n", Duration::ZERO);
        let p = Probe::new(
            &http_check("200-299", None, ProbeMethod::Get),
            addr,
            "api:80",
        );
        assert_eq!(run(&p), Ok("HTTP 204".to_string()));
        assert_eq!(
            String::from_utf8(t.join().unwrap()).unwrap(),
            "GET /hc HTTP/1.1\r\nHost: api:80\r\nConnection: close\r\nUser-Agent: ringlb-health\r\n\r\n"
        );

        let (addr, _t) = serve_once(
            b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n",
            Duration::ZERO,
        );
        let p = Probe::new(&http_check("200-399", None, ProbeMethod::Head), addr, "x");
        assert_eq!(run(&p), Err("HTTP 500 (expected 200-399)".to_string()));
    }

    #[test]
    fn http_probe_body_contains() {
        let (addr, _t) = serve_once(
            b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nstatus: ok\n",
            Duration::ZERO,
        );
        let p = Probe::new(&http_check("200", Some("ok"), ProbeMethod::Get), addr, "x");
        assert_eq!(run(&p), Ok("HTTP 200, body matches".to_string()));

        // Content-Length reached without the text: fails without waiting for close.
        let (addr, _t) = serve_once(
            b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nstarting\n",
            Duration::ZERO,
        );
        let p = Probe::new(&http_check("200", Some("ok"), ProbeMethod::Get), addr, "x");
        assert_eq!(
            run(&p),
            Err("HTTP 200, body does not contain \"ok\"".to_string())
        );
    }

    #[test]
    fn http_probe_failures() {
        let (addr, _t) = serve_once(b"garbage\r\n\r\n", Duration::ZERO);
        let p = Probe::new(&http_check("200", None, ProbeMethod::Get), addr, "x");
        assert!(run(&p).unwrap_err().starts_with("invalid response"));

        let (addr, _t) = serve_once(b"", Duration::ZERO);
        let p = Probe::new(&http_check("200", None, ProbeMethod::Get), addr, "x");
        assert_eq!(
            run(&p),
            Err("connection closed without a response".to_string())
        );

        let (addr, _t) = serve_once(b"HTTP/1.1 200 OK\r\n\r\n", Duration::from_millis(600));
        let p = Probe::new(&http_check("200", None, ProbeMethod::Get), addr, "x");
        assert_eq!(run(&p), Err("timeout after 300 ms".to_string()));
    }

    #[test]
    fn tcp_probe_and_port_override() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        // The traffic address is elsewhere; `port` redirects the probe.
        let mut check = tcp_check();
        check.port = Some(port);
        let p = Probe::new(&check, "127.0.0.1:1".parse().unwrap(), "x");
        assert_eq!(run(&p), Ok("connected".to_string()));
        drop(l);
        let r = run(&p).unwrap_err();
        assert!(r.starts_with("connect: "), "{r}");
    }
}
