//! Starting and stopping the whole proxy.
// STUB: being written.
use crate::config::Config;
use std::net::SocketAddr;

/// StartError is why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

/// Server is a running proxy: its shards and control thread.
pub struct Server {
    listen: Vec<SocketAddr>,
}

impl Server {
    /// Starts the proxy; returns once every listener is bound.
    pub fn start(_config: Config) -> Result<Server, StartError> {
        todo!()
    }
    /// The bound listen addresses (port 0 resolved), in config order.
    pub fn listen_addrs(&self) -> &[SocketAddr] {
        &self.listen
    }
    /// Graceful stop: stop accepting, let in-flight requests finish within
    /// `shutdown_timeout`, close idle connections, join every thread.
    pub fn shutdown(self) {}
}
