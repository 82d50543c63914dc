//! A connection accepted on a TLS listener: the handshake (cut by `request_header_ms`), its
//! failures counted by reason and logged at debug, then the request loop over the TLS stream.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use monoio::net::TcpStream;

use crate::proxy::{self, ShardCtx};
use crate::tls::{accept, reject_cleartext, HandshakeFailure};

/// Runs the server handshake on `stream`, then serves it like a plain connection.
pub(super) async fn serve_tls(
    ctx: &ShardCtx,
    config: Arc<rustls::ServerConfig>,
    stream: TcpStream,
    addr: SocketAddr,
    timeout: Duration,
) {
    let h2 = config.alpn_protocols.iter().any(|p| p == b"h2");
    let http1 = config.alpn_protocols.iter().any(|p| p == b"http/1.1");
    let tls = match accept(config, stream, timeout).await {
        Ok(tls) => tls,
        Err(failed) => {
            count_failure(ctx, failed.reason);
            tracing::debug!(
                shard = %ctx.id,
                client = %addr,
                reason = failed.reason.label(),
                "TLS handshake failed: {}",
                failed.error
            );
            if let Some(tcp) = failed.cleartext {
                reject_cleartext(tcp, timeout).await;
            }
            return;
        }
    };
    // `h2` goes to the HTTP/2 server (the TLS stream under the h2 codec through its
    // owned-buffer adapter); `http/1.1` or no ALPN runs the HTTP/1.1 request loop, except on
    // a listener with `http1 = false` (ALPN offers `h2` alone), where a client that named no
    // protocol speaks h2 as well.
    let alpn = match tls.alpn() {
        None if !http1 => Some(&b"h2"[..]),
        alpn => alpn,
    };
    match alpn {
        Some(b"h2") => {
            Box::pin(proxy::h2::serve_connection(
                ctx,
                proxy::h2::poll_stream(tls),
                Vec::new(),
                addr,
            ))
            .await
        }
        // A listener with `h2 = false` (ALPN without `h2`): no h2c preface either.
        Some(b"http/1.1") | None if !h2 => proxy::serve(ctx, crate::io::Http1Only(tls), addr).await,
        Some(b"http/1.1") | None => proxy::serve(ctx, tls, addr).await,
        Some(other) => {
            tracing::debug!(
                shard = %ctx.id,
                client = %addr,
                "ALPN chose {:?}, which nothing serves",
                String::from_utf8_lossy(other)
            );
        }
    }
}

/// Counts a failed handshake in `ringlb_tls_handshake_failures_total{reason}`.
fn count_failure(ctx: &ShardCtx, reason: HandshakeFailure) {
    if let Some(c) = ctx.metrics.tls_handshake_failures.get(reason as usize) {
        c.inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::TLS_HANDSHAKE_REASONS;

    #[test]
    fn failure_reasons_index_the_metric_labels() {
        let labels: Vec<&str> = HandshakeFailure::ALL.iter().map(|r| r.label()).collect();
        assert_eq!(labels, TLS_HANDSHAKE_REASONS);
        for (i, r) in HandshakeFailure::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
    }
}
