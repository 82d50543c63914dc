//! [`Connection`]: an upstream connection as the pool keeps it and the request path uses it,
//! plain TCP or TLS, one `io::Transport` over both (a match per I/O call, no box on the
//! plain path).

use monoio::io::Split;
use monoio::net::TcpStream;

use crate::io::Transport;
use crate::tls::ClientTlsStream;

/// Connection is an upstream connection: plain TCP, or TLS over it (the peer has `tls`).
pub enum Connection {
    /// Cleartext.
    Plain(TcpStream),
    /// TLS (boxed: the rustls state is large and the plain case should not pay for it).
    Tls(Box<ClientTlsStream>),
}

impl From<TcpStream> for Connection {
    fn from(s: TcpStream) -> Connection {
        Connection::Plain(s)
    }
}

impl From<ClientTlsStream> for Connection {
    fn from(s: ClientTlsStream) -> Connection {
        Connection::Tls(Box::new(s))
    }
}

impl Connection {
    /// The protocol the peer chose by ALPN (TLS only).
    pub fn alpn(&self) -> Option<&[u8]> {
        match self {
            Connection::Plain(_) => None,
            Connection::Tls(s) => s.conn().alpn_protocol(),
        }
    }

    /// Whether this idle connection is still open and has nothing to read (see
    /// [`super::is_quiet`]): for TLS, the socket must be quiet and rustls must hold no
    /// unread bytes either (a record that arrived with the last response).
    pub fn is_quiet(&self) -> bool {
        match self {
            Connection::Plain(s) => super::is_quiet(s),
            Connection::Tls(s) => s.is_idle() && super::is_quiet(s.tcp()),
        }
    }
}

impl std::os::fd::AsRawFd for Connection {
    /// The TCP socket's descriptor (under TLS too): what the pool keys connection ages by.
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        match self {
            Connection::Plain(s) => s.as_raw_fd(),
            Connection::Tls(s) => s.tcp().as_raw_fd(),
        }
    }
}

// SAFETY: each variant is `Split`; a read and a write on the enum are a read and a write on
// the one stream inside it.
unsafe impl Split for Connection {}

crate::io::delegate_io!(Connection { Plain, Tls });

impl Transport for Connection {
    fn shutdown_write(&mut self) -> bool {
        match self {
            Connection::Plain(s) => s.shutdown_write(),
            Connection::Tls(s) => s.shutdown_write(),
        }
    }

    async fn wait_readable(&mut self) -> std::io::Result<()> {
        match self {
            Connection::Plain(s) => s.wait_readable().await,
            Connection::Tls(s) => s.wait_readable().await,
        }
    }

    fn is_tls(&self) -> bool {
        matches!(self, Connection::Tls(_))
    }

    fn splice_fd(&self) -> Option<std::os::fd::RawFd> {
        match self {
            Connection::Plain(s) => s.splice_fd(),
            Connection::Tls(_) => None,
        }
    }
}
