//! Request and response head parsing (httparse into offsets) and framing decisions.
// STUB: to be implemented (see the http helper's brief).
use super::{HttpError, Method, RequestHead, ResponseHead};
use crate::config::Limits;

/// ParseStatus says whether a complete head was parsed or more bytes are needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseStatus {
    /// The head is complete; `head.head_len` bytes of the buffer belong to it.
    Complete,
    /// More bytes are needed (not an error, unless a limit is already exceeded).
    Partial,
}

/// Parses a request head from the start of `buf` into `head`.
pub fn parse_request(
    _buf: &[u8],
    _limits: &Limits,
    _head: &mut RequestHead,
) -> Result<ParseStatus, HttpError> {
    todo!()
}

/// Parses a response head from the start of `buf` into `head`.
pub fn parse_response(
    _buf: &[u8],
    _request_method: Method,
    _head: &mut ResponseHead,
) -> Result<ParseStatus, HttpError> {
    todo!()
}
