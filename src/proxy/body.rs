//! Tracking how far a message body has been forwarded.

use std::ops::Range;

use crate::http::{copy_without, BodyKind, ChunkedDecoder, HttpError};

/// BodyProgress follows one message body across the reads it arrives in.
pub struct BodyProgress {
    /// How the body is delimited.
    kind: BodyKind,
    /// Bytes still expected for `Length` bodies.
    remaining: u64,
    /// The chunked scanner for `Chunked` bodies.
    decoder: ChunkedDecoder,
    /// Payload bytes seen so far (enforces `max_body_bytes` on chunked bodies).
    payload: u64,
    /// The most payload bytes allowed.
    limit: Option<u64>,
    /// Whether body bytes were read beyond the first buffer (the request can't be replayed).
    streaming: bool,
    /// Reused scratch for chunk payload ranges when counting payload against `limit`.
    scratch: Vec<Range<usize>>,
    /// The non-canonical framing bytes (chunk-size whitespace and extensions) of the last
    /// `advance`'s data: they are not forwarded.
    strip: Vec<Range<usize>>,
    /// Whether the end of the body was seen.
    done: bool,
}

impl BodyProgress {
    /// Starts following a body of this kind.
    pub fn new(kind: BodyKind, limit: Option<u64>) -> Self {
        let (remaining, done) = match kind {
            BodyKind::None => (0, true),
            BodyKind::Length(n) => (n, n == 0),
            BodyKind::Chunked | BodyKind::UntilClose => (0, false),
        };
        BodyProgress {
            kind,
            remaining,
            decoder: ChunkedDecoder::new(),
            payload: 0,
            limit,
            streaming: false,
            scratch: Vec::new(),
            strip: Vec::new(),
            done,
        }
    }

    /// Whether the whole body was seen.
    #[inline]
    pub fn done(&self) -> bool {
        self.done
    }

    /// Marks that body bytes are now read from the peer beyond the first buffer.
    pub fn mark_streaming(&mut self) {
        self.streaming = true;
    }

    /// Whether [`BodyProgress::mark_streaming`] was called.
    pub fn started_streaming(&self) -> bool {
        self.streaming
    }

    /// The bytes a `Content-Length` body still expects; `None` for other bodies.
    pub fn length_left(&self) -> Option<u64> {
        matches!(self.kind, BodyKind::Length(_)).then_some(self.remaining)
    }

    /// The ranges of the data given to the last [`BodyProgress::advance`] that are not
    /// forwarded (non-canonical chunk framing; see [`copy_without`]). Usually empty.
    pub fn strip(&self) -> &[Range<usize>] {
        &self.strip
    }

    /// Appends the body bytes `data[..taken]` of the last [`BodyProgress::advance`] to `out`,
    /// in canonical framing.
    pub fn copy_taken(&self, data: &[u8], taken: usize, out: &mut Vec<u8>) {
        copy_without(&data[..taken], &self.strip, out);
    }

    /// Takes the body bytes at the start of `data`; returns how many belong to the body (the
    /// rest belongs to whatever follows). For chunked bodies, `ranges` (when given) receives
    /// the payload ranges within `data`, and [`BodyProgress::strip`] the framing bytes not to
    /// forward.
    pub fn advance(
        &mut self,
        data: &[u8],
        ranges: Option<&mut Vec<Range<usize>>>,
    ) -> Result<usize, HttpError> {
        self.strip.clear();
        if self.done {
            return Ok(0);
        }
        match self.kind {
            BodyKind::None => Ok(0),
            BodyKind::Length(_) => {
                let take = self.remaining.min(data.len() as u64);
                self.remaining -= take;
                self.done = self.remaining == 0;
                Ok(take as usize)
            }
            BodyKind::UntilClose => Ok(data.len()),
            BodyKind::Chunked => {
                let mut strip = std::mem::take(&mut self.strip);
                let res = self.advance_chunked(data, ranges, &mut strip);
                self.strip = strip;
                let (consumed, done) = res?;
                self.done = done;
                Ok(consumed)
            }
        }
    }

    fn advance_chunked(
        &mut self,
        data: &[u8],
        ranges: Option<&mut Vec<Range<usize>>>,
        strip: &mut Vec<Range<usize>>,
    ) -> Result<(usize, bool), HttpError> {
        match (ranges, self.limit) {
            (Some(r), _) => {
                let start = r.len();
                let res = self.decoder.decode_framed(data, Some(r), strip)?;
                let n: usize = r[start..].iter().map(|x| x.len()).sum();
                self.count(n)?;
                Ok(res)
            }
            (None, Some(_)) => {
                let mut scratch = std::mem::take(&mut self.scratch);
                scratch.clear();
                let res = self.decoder.decode_framed(data, Some(&mut scratch), strip);
                let n: usize = scratch.iter().map(|x| x.len()).sum();
                self.scratch = scratch;
                let res = res?;
                self.count(n)?;
                Ok(res)
            }
            (None, None) => self.decoder.decode_framed(data, None, strip),
        }
    }

    fn count(&mut self, n: usize) -> Result<(), HttpError> {
        self.payload += n as u64;
        match self.limit {
            Some(limit) if self.payload > limit => Err(HttpError::PayloadTooLarge),
            _ => Ok(()),
        }
    }
}
