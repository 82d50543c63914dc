//! The chunked transfer coding (RFC 9112 §7.1) as an incremental scanner.
// STUB: to be implemented (see the http helper's brief).
use super::HttpError;
use std::ops::Range;

/// ChunkedDecoder walks a chunked body incrementally.
#[derive(Debug, Default, Clone)]
pub struct ChunkedDecoder {
    _state: u8,
}

impl ChunkedDecoder {
    /// Creates a decoder at the start of a chunked body.
    pub fn new() -> Self {
        ChunkedDecoder::default()
    }

    /// Advances over `input`; returns `(consumed, done)`.
    pub fn decode(
        &mut self,
        _input: &[u8],
        _data: Option<&mut Vec<Range<usize>>>,
    ) -> Result<(usize, bool), HttpError> {
        todo!()
    }

    /// Whether the final chunk, trailers and last CRLF were seen.
    pub fn is_done(&self) -> bool {
        todo!()
    }
}
