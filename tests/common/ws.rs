//! [`WsEcho`]: a WebSocket origin for tunnels reached over HTTP/2 (RFC 8441 through the
//! proxy's HTTP/1.1 upgrade): it checks the handshake's `Sec-WebSocket-Key`, answers `101` with
//! its `Sec-WebSocket-Accept`, then echoes every byte back unchanged; when the client's side
//! ends it sends `bye` and closes. `/refuse` is answered `400 refused`.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;

use base64::Engine;
use sha1::{Digest, Sha1};

use crate::common::IO_TIMEOUT;

/// `Sec-WebSocket-Accept` for `key` (RFC 6455 §4.2.2).
pub fn ws_accept_key(key: &str) -> String {
    let mut h = Sha1::new();
    h.update(key.as_bytes());
    h.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

/// One masked WebSocket frame from a client: FIN set, `opcode`, `payload`.
pub fn ws_client_frame(opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut f = vec![0x80 | opcode];
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n if n <= 0xffff => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// WsEcho is the origin (see the module doc).
pub struct WsEcho {
    pub addr: SocketAddr,
    /// Every request head received.
    heads: Arc<Mutex<Vec<String>>>,
}

impl WsEcho {
    pub fn start() -> WsEcho {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let h = heads.clone();
        thread::spawn(move || {
            for s in listener.incoming() {
                let Ok(s) = s else { return };
                let h = h.clone();
                thread::spawn(move || {
                    let _ = serve(s, &h);
                });
            }
        });
        WsEcho { addr, heads }
    }

    /// The request heads received so far.
    pub fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }
}

/// The value of field `name` in `head` (case-insensitive name).
pub fn head_field<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(n, _)| n.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
}

fn serve(mut s: TcpStream, heads: &Mutex<Vec<String>>) -> io::Result<()> {
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut b)? == 0 {
            return Ok(());
        }
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    heads.lock().unwrap().push(head.clone());
    let path = head.split(' ').nth(1).unwrap_or("");
    let upgrade = head_field(&head, "upgrade").is_some();
    let key = head_field(&head, "sec-websocket-key").filter(|_| upgrade);
    let Some(key) = key.filter(|_| path != "/refuse") else {
        let status = if path == "/refuse" {
            "400 Bad Request"
        } else {
            "200 OK"
        };
        let body = if path == "/refuse" {
            "refused"
        } else {
            "plain"
        };
        let resp = format!(
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        return s.write_all(resp.as_bytes());
    };
    let resp = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\nX-Origin: ws-echo\r\n\r\n",
        ws_accept_key(key)
    );
    s.write_all(resp.as_bytes())?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            break;
        }
        s.write_all(&buf[..n])?;
    }
    s.write_all(b"bye")?;
    s.shutdown(Shutdown::Write)
}
