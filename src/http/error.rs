//! The one place where errors become HTTP status codes.
// STUB: to be implemented (see the http helper's brief).

/// HttpError is every way a request can fail that the proxy itself answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    /// 400: malformed request or ambiguous framing.
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// 404: routes are configured and none matches the request.
    #[error("no route for this request")]
    NotFound,
    /// 408: the client did not send its head in time.
    #[error("request timeout")]
    RequestTimeout,
    /// 413: body larger than `max_body_bytes`.
    #[error("payload too large")]
    PayloadTooLarge,
    /// 414: request line longer than the limit.
    #[error("uri too long")]
    UriTooLong,
    /// 431: head larger than `max_header_bytes` or more than MAX_HEADERS fields.
    #[error("request header fields too large")]
    HeaderTooLarge,
    /// 501: unknown transfer coding or unsupported method (CONNECT).
    #[error("not implemented: {0}")]
    NotImplemented(&'static str),
    /// 502: upstream connect failure or invalid upstream response.
    #[error("bad gateway: {0}")]
    BadGateway(&'static str),
    /// 503: no eligible peer.
    #[error("service unavailable: {0}")]
    ServiceUnavailable(&'static str),
    /// 504: upstream timeout.
    #[error("gateway timeout: {0}")]
    GatewayTimeout(&'static str),
}

impl HttpError {
    /// The status code this error is answered with.
    pub fn status(&self) -> u16 {
        todo!()
    }
}

/// Writes a complete error response for `err` to `out`.
pub fn write_error_response(_err: &HttpError, _keep_alive: bool, _out: &mut Vec<u8>) {
    todo!()
}
