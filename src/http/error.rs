//! The one place where errors become HTTP status codes (invariant 5).
//!
//! [`HttpError::status`] maps every error the proxy answers itself to exactly one status code, and
//! [`write_error_response`] turns it into a complete, self-delimited response on the wire.

use super::rewrite::push_u64;

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
    /// 503: no eligible peer (`Retry-After: 1`).
    #[error("service unavailable: {0}")]
    ServiceUnavailable(&'static str),
    /// 503 with `Retry-After` seconds: the upstream's queue is full or the wait in it ran out.
    #[error("service unavailable: {0}")]
    Overloaded(&'static str, u32),
    /// 429 with `Retry-After` seconds: the client's `rate` (an upstream's per-client rate limit)
    /// is spent until then.
    #[error("too many requests: {0}")]
    TooManyRequests(&'static str, u32),
    /// 504: upstream timeout.
    #[error("gateway timeout: {0}")]
    GatewayTimeout(&'static str),
    /// Any other 4xx/5xx status a picker's failure hook chose to answer with.
    #[error("status {0}")]
    Status(u16),
}

impl HttpError {
    /// The status code this error is answered with.
    pub fn status(&self) -> u16 {
        match self {
            HttpError::BadRequest(_) => 400,
            HttpError::NotFound => 404,
            HttpError::RequestTimeout => 408,
            HttpError::PayloadTooLarge => 413,
            HttpError::UriTooLong => 414,
            HttpError::HeaderTooLarge => 431,
            HttpError::NotImplemented(_) => 501,
            HttpError::BadGateway(_) => 502,
            HttpError::ServiceUnavailable(_) | HttpError::Overloaded(..) => 503,
            HttpError::TooManyRequests(..) => 429,
            HttpError::GatewayTimeout(_) => 504,
            HttpError::Status(code) => *code,
        }
    }

    /// The reason phrase sent with [`HttpError::status`]: `status_reason` of it.
    pub fn reason(&self) -> &'static str {
        status_reason(self.status())
    }

    /// The short detail text for the response body, if the variant carries one.
    pub fn detail(&self) -> Option<&'static str> {
        match self {
            HttpError::BadRequest(d)
            | HttpError::NotImplemented(d)
            | HttpError::BadGateway(d)
            | HttpError::ServiceUnavailable(d)
            | HttpError::Overloaded(d, _)
            | HttpError::TooManyRequests(d, _)
            | HttpError::GatewayTimeout(d) => Some(d),
            HttpError::NotFound
            | HttpError::Status(_)
            | HttpError::RequestTimeout
            | HttpError::PayloadTooLarge
            | HttpError::UriTooLong
            | HttpError::HeaderTooLarge => None,
        }
    }

    /// The `Retry-After` seconds sent with this error: 1 for a plain 503, the variant's own for
    /// [`HttpError::Overloaded`] and [`HttpError::TooManyRequests`], none otherwise.
    pub fn retry_after(&self) -> Option<u32> {
        match self {
            HttpError::ServiceUnavailable(_) => Some(1),
            HttpError::Overloaded(_, s) | HttpError::TooManyRequests(_, s) => Some(*s),
            HttpError::Status(503 | 429) => Some(1),
            _ => None,
        }
    }

    /// Whether the client connection must be closed after answering this error.
    ///
    /// True for every request-side error (400, 408, 413, 414, 431, 501): after those the framing
    /// of the rest of the byte stream is unknown or untrusted (RFC 9112 §6.3 item 4 requires the
    /// close for bad framing), so the proxy must not read a next request from it. False for
    /// 502/503/504, where the request itself was fine and fully consumed.
    pub fn closes_connection(&self) -> bool {
        !matches!(
            self,
            HttpError::NotFound
                | HttpError::Status(_)
                | HttpError::BadGateway(_)
                | HttpError::ServiceUnavailable(_)
                | HttpError::Overloaded(..)
                | HttpError::TooManyRequests(..)
                | HttpError::GatewayTimeout(_)
        )
    }
}

/// The standard reason phrase of a status code (RFC 9110 §15 wording; 413 is "Content Too
/// Large" since RFC 9110 renamed "Payload Too Large"), or a generic one for a code not listed.
/// The one reason-phrase table: error answers, the admin endpoint and anything else ringlb
/// answers itself use it.
pub fn status_reason(code: u16) -> &'static str {
    match code {
        100 => "Continue",
        200 => "OK",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        413 => "Content Too Large",
        414 => "URI Too Long",
        421 => "Misdirected Request",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ if code < 200 => "Informational",
        _ if code < 300 => "Success",
        _ if code < 400 => "Redirection",
        _ if code < 500 => "Client Error",
        _ => "Server Error",
    }
}

/// Writes a complete error response for `err` to `out` (appending; `out` is not cleared).
///
/// The response is `HTTP/1.1 <code> <reason>`, a `text/plain` body such as
/// `502 Bad Gateway: connect failed\n` with its `Content-Length`, `Connection: keep-alive` or
/// `Connection: close` per `keep_alive`, and `Retry-After` for 503 and 429 (see
/// [`HttpError::retry_after`]). The caller decides
/// `keep_alive`; see [`HttpError::closes_connection`] for errors that forbid keeping it.
///
/// The answer to a HEAD request (`head_request`) is the same head without the body (RFC 9110
/// §9.3.2): its `Content-Length` says what a GET would have received, and a client keeping the
/// connection reads no body bytes it does not expect.
///
/// Returns the body bytes written (0 for a HEAD request).
pub fn write_error_response(
    err: &HttpError,
    keep_alive: bool,
    head_request: bool,
    out: &mut Vec<u8>,
) -> u64 {
    let status = err.status();
    let reason = err.reason().as_bytes();
    let detail = err.detail();

    // Body: "<code> <reason>[: <detail>]\n".
    let mut body_len = 3 + 1 + reason.len() + 1;
    if let Some(d) = detail {
        body_len += 2 + d.len();
    }

    out.reserve(160 + 2 * reason.len() + detail.map_or(0, str::len));
    out.extend_from_slice(b"HTTP/1.1 ");
    push_u64(out, u64::from(status));
    out.push(b' ');
    out.extend_from_slice(reason);
    out.extend_from_slice(b"\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: ");
    push_u64(out, body_len as u64);
    out.extend_from_slice(if keep_alive {
        b"\r\nConnection: keep-alive\r\n".as_slice()
    } else {
        b"\r\nConnection: close\r\n".as_slice()
    });
    if let Some(secs) = err.retry_after() {
        out.extend_from_slice(b"Retry-After: ");
        push_u64(out, u64::from(secs));
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if head_request {
        return 0;
    }

    push_u64(out, u64::from(status));
    out.push(b' ');
    out.extend_from_slice(reason);
    if let Some(d) = detail {
        out.extend_from_slice(b": ");
        out.extend_from_slice(d.as_bytes());
    }
    out.push(b'\n');
    body_len as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        let cases = [
            (HttpError::BadRequest("x"), 400),
            (HttpError::RequestTimeout, 408),
            (HttpError::PayloadTooLarge, 413),
            (HttpError::UriTooLong, 414),
            (HttpError::HeaderTooLarge, 431),
            (HttpError::NotImplemented("x"), 501),
            (HttpError::BadGateway("x"), 502),
            (HttpError::ServiceUnavailable("x"), 503),
            (HttpError::GatewayTimeout("x"), 504),
        ];
        for (err, code) in cases {
            assert_eq!(err.status(), code, "{err:?}");
            assert!(!err.reason().is_empty());
            assert_eq!(err.closes_connection(), code < 502, "{err:?}");
        }
    }

    #[test]
    fn bad_gateway_response_bytes() {
        let mut out = b"prefix".to_vec();
        write_error_response(
            &HttpError::BadGateway("connect failed"),
            true,
            false,
            &mut out,
        );
        let body = "502 Bad Gateway: connect failed\n";
        let expected = format!(
            "prefixHTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain; charset=utf-8\r\n\
             Content-Length: {}\r\nConnection: keep-alive\r\n\r\n{body}",
            body.len()
        );
        assert_eq!(String::from_utf8(out).unwrap(), expected);
    }

    #[test]
    fn service_unavailable_has_retry_after() {
        let mut out = Vec::new();
        write_error_response(
            &HttpError::ServiceUnavailable("no eligible peer"),
            false,
            false,
            &mut out,
        );
        let body = "503 Service Unavailable: no eligible peer\n";
        let expected = format!(
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n\
             Content-Length: {}\r\nConnection: close\r\nRetry-After: 1\r\n\r\n{body}",
            body.len()
        );
        assert_eq!(String::from_utf8(out).unwrap(), expected);
    }

    #[test]
    fn detail_less_response_bytes() {
        let mut out = Vec::new();
        write_error_response(&HttpError::HeaderTooLarge, false, false, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 431 Request Header Fields Too Large\r\n\
             Content-Type: text/plain; charset=utf-8\r\nContent-Length: 36\r\n\
             Connection: close\r\n\r\n431 Request Header Fields Too Large\n"
        );
    }

    #[test]
    fn every_error_body_matches_content_length() {
        let errs = [
            HttpError::BadRequest("bad"),
            HttpError::RequestTimeout,
            HttpError::PayloadTooLarge,
            HttpError::UriTooLong,
            HttpError::HeaderTooLarge,
            HttpError::NotImplemented("CONNECT"),
            HttpError::BadGateway("x"),
            HttpError::ServiceUnavailable("y"),
            HttpError::GatewayTimeout("z"),
        ];
        for err in errs {
            let mut out = Vec::new();
            write_error_response(&err, true, false, &mut out);
            let text = String::from_utf8(out).unwrap();
            let (head, body) = text.split_once("\r\n\r\n").unwrap();
            let cl: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .unwrap()
                .trim()
                .parse()
                .unwrap();
            assert_eq!(cl, body.len(), "{err:?}");
            assert!(body.starts_with(&format!("{} {}", err.status(), err.reason())));
        }
    }

    #[test]
    fn head_request_gets_the_head_only() {
        let mut get = Vec::new();
        let get_body = write_error_response(&HttpError::BadGateway("x"), true, false, &mut get);
        let mut head = Vec::new();
        let head_body = write_error_response(&HttpError::BadGateway("x"), true, true, &mut head);
        let end = get.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        assert_eq!(head, &get[..end]);
        assert!(get.len() > end);
        assert_eq!(get_body, (get.len() - end) as u64, "the body bytes written");
        assert_eq!(head_body, 0);
    }
}
