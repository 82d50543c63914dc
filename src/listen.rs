//! Listen sockets: one per shard per `listen` address (SO_REUSEPORT), bound at start by the
//! server and at a reload by the control thread; and the probe that refuses an address another
//! process holds.

use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

/// Fails with `EADDRINUSE` when another socket listens on `addr` (or holds it without
/// `SO_REUSEADDR`): a bind without `SO_REUSEPORT`, which sharing would need, dropped at once.
/// `SO_REUSEADDR` is set so that connections of an earlier run still in TIME_WAIT do not
/// count; an IPv6 address is probed dual-stack, as [`bind_listener`] binds it.
pub(crate) fn probe_unshared(addr: SocketAddr) -> std::io::Result<()> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    socket.bind(&addr.into())
}

/// Configure sets a listener's own socket options (`tcp = { … }`) before it listens; its error
/// names the option.
pub(crate) type Configure<'a> = &'a dyn Fn(&Socket) -> std::io::Result<()>;

/// Binds one shard's listener: SO_REUSEADDR + SO_REUSEPORT so every shard has its own socket on
/// the same address and the kernel spreads connections across them; `configure` sets the
/// listener's options (each listener gets its own, so a per-listener table can differ).
pub(crate) fn bind_listener(
    addr: SocketAddr,
    backlog: i32,
    configure: Configure<'_>,
) -> std::io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        // `[::]` serves IPv4 too unless the admin set net.ipv6.bindv6only; be explicit.
        socket.set_only_v6(false)?;
    }
    socket.set_nonblocking(true)?;
    configure(&socket)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog)?;
    Ok(socket.into())
}

/// Binds `addr` once per shard (`shards` sockets). Port 0 is resolved by the first bind and the
/// rest bind the port the kernel picked. Returns the bound address and the sockets.
pub(crate) fn bind_for_shards(
    addr: SocketAddr,
    shards: usize,
    backlog: i32,
    configure: Configure<'_>,
) -> std::io::Result<(SocketAddr, Vec<std::net::TcpListener>)> {
    let mut addr = addr;
    let mut sockets = Vec::with_capacity(shards);
    for _ in 0..shards {
        let l = bind_listener(addr, backlog, configure)?;
        if addr.port() == 0 {
            addr = l.local_addr()?;
        }
        sockets.push(l);
    }
    Ok((addr, sockets))
}
