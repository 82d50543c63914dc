//! The chunked transfer coding (RFC 9112 §7.1) as an incremental scanner.
//!
//! [`ChunkedDecoder`] is a byte-level state machine: it accepts the body split anywhere (one
//! byte at a time works), never allocates, and stops exactly at the end of the chunked body so
//! pipelined bytes after it stay with the caller. It reports where the payload bytes are instead
//! of copying them, so the proxy can either forward the raw bytes or re-frame the payload.
//!
//! Strictness (request-smuggling defence): sizes are 1–16 hex digits, every line ends in CRLF
//! (a bare LF is an error), data must be followed by CRLF, size lines (with extensions) and
//! the trailer section are bounded, and every trailer line must be a valid field line
//! (`token ":" value`, no obs-fold, no control characters): a request line or a folded line
//! among the trailers is an error, never forwarded.
//!
//! Canonical framing: a proxy must not copy framing bytes another parser could read
//! differently. [`ChunkedDecoder::decode_framed`] also reports the bytes a canonical encoding
//! leaves out — the whitespace and extensions of chunk-size lines (`3 ;x=y\r\n` → `3\r\n`) —
//! so the caller can forward the body without them ([`copy_without`]) and otherwise as it came.

use super::HttpError;
use std::ops::Range;

/// MAX_SIZE_LINE is the longest chunk-size line accepted (size + extensions, without CRLF).
const MAX_SIZE_LINE: u32 = 4096;
/// MAX_TRAILER_BYTES is the largest trailer section accepted (all trailer lines with CRLFs).
const MAX_TRAILER_BYTES: u32 = 16 * 1024;
/// MAX_SIZE_DIGITS is the most hex digits of a chunk size (16 digits = the whole u64 range).
const MAX_SIZE_DIGITS: u32 = 16;

/// State is where the decoder is inside the chunked body.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the start of a chunk-size line; at least one hex digit must follow.
    #[default]
    SizeStart,
    /// Inside the hex digits of a chunk size.
    Size,
    /// After the size and some whitespace (BWS): only more BWS, `;` or CR may follow.
    ExtensionBws,
    /// Inside chunk extensions (after a `;`), up to the CR.
    Extension,
    /// The CR of the size line was seen; LF must follow.
    SizeLf,
    /// Inside chunk data; `remaining` bytes of it are still to come.
    Data,
    /// The data of a chunk ended; CR must follow.
    DataCr,
    /// The CR after chunk data was seen; LF must follow.
    DataLf,
    /// At the start of a trailer line (or of the final CRLF) after the last chunk.
    TrailerStart,
    /// Inside the field name of a trailer line (a token; `:` ends it).
    TrailerName,
    /// Inside the value of a trailer line, up to the CR.
    Trailer,
    /// The CR of a trailer line was seen; LF must follow.
    TrailerLf,
    /// The CR of the final empty line was seen; LF must follow.
    FinalLf,
    /// The whole chunked body has been consumed.
    Done,
}

/// ChunkedDecoder walks a chunked body incrementally.
///
/// Feed it the bytes as they arrive with [`ChunkedDecoder::decode`]; it keeps its position
/// between calls, so input may be split at any byte. After an error the decoder's state is
/// unspecified and the connection must be dropped (the framing is unknown).
#[derive(Debug, Default, Clone)]
pub struct ChunkedDecoder {
    /// Where in the chunked grammar the next byte falls.
    state: State,
    /// The chunk size being read (`Size`), or the data bytes still expected (`Data`).
    remaining: u64,
    /// Hex digits read of the current size (bounded by MAX_SIZE_DIGITS).
    digits: u32,
    /// Bytes of the current size line so far (bounded by MAX_SIZE_LINE).
    line_len: u32,
    /// Bytes of the trailer section so far (bounded by MAX_TRAILER_BYTES).
    trailer_len: u32,
}

/// Whether `b` is a `tchar` of a token (RFC 9110 §5.6.2), the characters of a field name.
#[inline]
fn is_tchar(b: u8) -> bool {
    matches!(b,
        b'!' | b'#' | b'$' | b'%' | b'&' | b'\'' | b'*' | b'+' | b'-' | b'.' | b'^' | b'_'
        | b'`' | b'|' | b'~' | b'0'..=b'9' | b'a'..=b'z' | b'A'..=b'Z')
}

/// Appends `input` to `out` without the ranges in `strip` (ascending, within `input`, as
/// [`ChunkedDecoder::decode_framed`] reports them).
pub fn copy_without(input: &[u8], strip: &[Range<usize>], out: &mut Vec<u8>) {
    let mut at = 0;
    for r in strip {
        out.extend_from_slice(&input[at..r.start]);
        at = r.end;
    }
    out.extend_from_slice(&input[at..]);
}

/// The value of an ASCII hex digit.
#[inline]
fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

impl ChunkedDecoder {
    /// Creates a decoder at the start of a chunked body.
    pub fn new() -> Self {
        ChunkedDecoder::default()
    }

    /// Advances over `input`; returns `(consumed, done)`.
    ///
    /// Consumes bytes up to and including the end of the chunked body (last chunk, trailer
    /// fields and the final CRLF) and never beyond it: when `done` is true,
    /// `input[consumed..]` belongs to whatever follows the body. When `done` is false, all of
    /// `input` was consumed. If `data` is given, the ranges of `input` that hold payload bytes
    /// (chunk data only: no sizes, extensions, CRLFs or trailers) are pushed to it in order.
    /// Called again after the end, it consumes nothing and returns `(0, true)`.
    ///
    /// Errors are `HttpError::BadRequest` (bad size, missing CRLF, over-long size line or
    /// trailer section); a proxy decoding a response maps them to 502 itself.
    pub fn decode(
        &mut self,
        input: &[u8],
        data: Option<&mut Vec<Range<usize>>>,
    ) -> Result<(usize, bool), HttpError> {
        self.decode_inner(input, data, None)
    }

    /// [`ChunkedDecoder::decode`], also pushing to `strip` the ranges of `input` that a
    /// canonical encoding of the body leaves out: the whitespace and chunk extensions after each
    /// chunk size. Forwarding `input[..consumed]` without them ([`copy_without`]) sends the same
    /// chunks and trailers in canonical framing.
    pub fn decode_framed(
        &mut self,
        input: &[u8],
        data: Option<&mut Vec<Range<usize>>>,
        strip: &mut Vec<Range<usize>>,
    ) -> Result<(usize, bool), HttpError> {
        self.decode_inner(input, data, Some(strip))
    }

    fn decode_inner(
        &mut self,
        input: &[u8],
        mut data: Option<&mut Vec<Range<usize>>>,
        mut strip: Option<&mut Vec<Range<usize>>>,
    ) -> Result<(usize, bool), HttpError> {
        if self.state == State::Done {
            return Ok((0, true));
        }
        let mut pos = 0usize;
        // Start of the non-canonical part of a size line being skipped, if inside one.
        let mut skip_from =
            matches!(self.state, State::ExtensionBws | State::Extension).then_some(0);
        while pos < input.len() {
            if self.state == State::Data {
                // Skip over as much chunk data as is available in one step.
                let avail = input.len() - pos;
                let take = if self.remaining < avail as u64 {
                    self.remaining as usize
                } else {
                    avail
                };
                if let Some(ranges) = data.as_deref_mut() {
                    ranges.push(pos..pos + take);
                }
                pos += take;
                self.remaining -= take as u64;
                if self.remaining == 0 {
                    self.state = State::DataCr;
                }
                continue;
            }
            let Some(&b) = input.get(pos) else { break };
            let before = self.state;
            pos += 1;
            self.step(b)?;
            if strip.is_some() {
                match (before, self.state) {
                    (State::Size, State::ExtensionBws | State::Extension) => {
                        skip_from = Some(pos - 1);
                    }
                    (State::ExtensionBws | State::Extension, State::SizeLf) => {
                        match (skip_from.take(), strip.as_deref_mut()) {
                            // (nothing to push when the line's tail began in an earlier input)
                            (Some(from), Some(s)) if from < pos - 1 => s.push(from..pos - 1),
                            _ => {}
                        }
                    }
                    _ => {}
                }
            }
            if self.state == State::Done {
                return Ok((pos, true));
            }
        }
        if let (Some(from), Some(s)) = (skip_from, strip) {
            if from < pos {
                s.push(from..pos);
            }
        }
        Ok((pos, self.state == State::Done))
    }

    /// Advances the state machine over one byte outside chunk data.
    #[inline]
    fn step(&mut self, b: u8) -> Result<(), HttpError> {
        match self.state {
            State::SizeStart => match hex_value(b) {
                Some(v) => {
                    self.remaining = u64::from(v);
                    self.digits = 1;
                    self.line_len = 1;
                    self.state = State::Size;
                }
                None => return Err(HttpError::BadRequest("invalid chunk size")),
            },
            // The CR ending the size line does not count against MAX_SIZE_LINE.
            State::Size | State::ExtensionBws | State::Extension if b == b'\r' => {
                self.state = State::SizeLf;
            }
            State::Size => {
                self.bump_line()?;
                if let Some(v) = hex_value(b) {
                    self.digits += 1;
                    if self.digits > MAX_SIZE_DIGITS {
                        return Err(HttpError::BadRequest("chunk size too large"));
                    }
                    // Cannot overflow: at most 16 hex digits fit in a u64.
                    self.remaining = (self.remaining << 4) | u64::from(v);
                } else {
                    match b {
                        // chunk-ext = *( BWS ";" BWS ext-name [ BWS "=" BWS ext-val ] )
                        b';' => self.state = State::Extension,
                        b' ' | b'\t' => self.state = State::ExtensionBws,
                        _ => return Err(HttpError::BadRequest("invalid chunk size")),
                    }
                }
            }
            State::ExtensionBws => {
                self.bump_line()?;
                match b {
                    b' ' | b'\t' => {}
                    b';' => self.state = State::Extension,
                    _ => return Err(HttpError::BadRequest("invalid chunk size")),
                }
            }
            State::Extension => {
                self.bump_line()?;
                match b {
                    // Extensions are skipped, but a bare LF or other controls in them are the
                    // stuff of smuggling attacks: reject. (Trailing BWS before the CR is not in
                    // the grammar but unambiguous, so "1 \r\n" is accepted.)
                    b'\t' | b' '..=0x7e | 0x80..=0xff => {}
                    _ => return Err(HttpError::BadRequest("invalid chunk extension")),
                }
            }
            State::SizeLf => {
                if b != b'\n' {
                    return Err(HttpError::BadRequest("invalid chunk size line"));
                }
                if self.remaining == 0 {
                    // last-chunk: trailer section follows.
                    self.trailer_len = 0;
                    self.state = State::TrailerStart;
                } else {
                    self.state = State::Data;
                }
            }
            State::Data => {
                // decode() handles data in bulk; a single byte here still works.
                self.remaining = self.remaining.saturating_sub(1);
                if self.remaining == 0 {
                    self.state = State::DataCr;
                }
            }
            State::DataCr => {
                if b != b'\r' {
                    return Err(HttpError::BadRequest("missing CRLF after chunk data"));
                }
                self.state = State::DataLf;
            }
            State::DataLf => {
                if b != b'\n' {
                    return Err(HttpError::BadRequest("missing CRLF after chunk data"));
                }
                self.state = State::SizeStart;
            }
            State::TrailerStart => {
                self.bump_trailer()?;
                match b {
                    b'\r' => self.state = State::FinalLf,
                    // A field line starts with its name: not whitespace (obs-fold, RFC 9112
                    // §5.2), not a colon, nothing but token characters.
                    _ if is_tchar(b) => self.state = State::TrailerName,
                    _ => return Err(HttpError::BadRequest("invalid trailer section")),
                }
            }
            State::TrailerName => {
                self.bump_trailer()?;
                match b {
                    b':' => self.state = State::Trailer,
                    _ if is_tchar(b) => {}
                    // e.g. "GET /x HTTP/1.1": a request line is not a field line.
                    _ => return Err(HttpError::BadRequest("invalid trailer field")),
                }
            }
            State::Trailer => {
                self.bump_trailer()?;
                match b {
                    b'\r' => self.state = State::TrailerLf,
                    // field-value: VCHAR, obs-text, SP and HTAB; no other control characters.
                    b'\t' | b' '..=0x7e | 0x80..=0xff => {}
                    _ => return Err(HttpError::BadRequest("invalid trailer field")),
                }
            }
            State::TrailerLf => {
                self.bump_trailer()?;
                if b != b'\n' {
                    return Err(HttpError::BadRequest("invalid trailer field"));
                }
                self.state = State::TrailerStart;
            }
            State::FinalLf => {
                if b != b'\n' {
                    return Err(HttpError::BadRequest("invalid end of chunked body"));
                }
                self.state = State::Done;
            }
            State::Done => {}
        }
        Ok(())
    }

    /// Counts one more byte of the size line against MAX_SIZE_LINE.
    #[inline]
    fn bump_line(&mut self) -> Result<(), HttpError> {
        self.line_len += 1;
        if self.line_len > MAX_SIZE_LINE {
            return Err(HttpError::BadRequest("chunk size line too long"));
        }
        Ok(())
    }

    /// Counts one more byte of the trailer section against MAX_TRAILER_BYTES.
    #[inline]
    fn bump_trailer(&mut self) -> Result<(), HttpError> {
        self.trailer_len += 1;
        if self.trailer_len > MAX_TRAILER_BYTES {
            return Err(HttpError::BadRequest("trailer section too large"));
        }
        Ok(())
    }

    /// Whether the final chunk, trailers and last CRLF were seen.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `input` fed in pieces split at `splits`; returns (payload, consumed, done).
    fn decode_split(input: &[u8], splits: &[usize]) -> Result<(Vec<u8>, usize, bool), HttpError> {
        let mut dec = ChunkedDecoder::new();
        let mut payload = Vec::new();
        let mut consumed = 0;
        let mut bounds: Vec<usize> = splits.to_vec();
        bounds.push(input.len());
        let mut start = 0;
        for end in bounds {
            let piece = &input[start..end];
            let mut ranges = Vec::new();
            let (n, done) = dec.decode(piece, Some(&mut ranges))?;
            for r in ranges {
                payload.extend_from_slice(&piece[r]);
            }
            consumed += n;
            if done {
                assert!(dec.is_done());
                return Ok((payload, consumed, true));
            }
            assert_eq!(n, piece.len(), "not done, so everything is consumed");
            start = end;
        }
        Ok((payload, consumed, dec.is_done()))
    }

    fn check_all_splits(input: &[u8], body_len: usize, payload: &[u8]) {
        // Whole.
        assert_eq!(
            decode_split(input, &[]).unwrap(),
            (payload.to_vec(), body_len, true)
        );
        // Split once at every position.
        for i in 0..=input.len() {
            assert_eq!(
                decode_split(input, &[i]).unwrap(),
                (payload.to_vec(), body_len, true),
                "split at {i}"
            );
        }
        // One byte at a time.
        let every: Vec<usize> = (1..input.len()).collect();
        assert_eq!(
            decode_split(input, &every).unwrap(),
            (payload.to_vec(), body_len, true)
        );
    }

    #[test]
    fn simple_body_every_split() {
        let body = b"4\r\nWiki\r\n5\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\n\r\n";
        check_all_splits(body, body.len(), b"Wikipedia in\r\n\r\nchunks.");
    }

    #[test]
    fn extensions_and_trailers_every_split() {
        let body = b"4;name=value\r\nWiki\r\n5 ; a=\"q;x\"; b\r\npedia\r\n0;last\r\n\
                     Expires: never\r\nX-Sum: 12\r\n\r\n";
        check_all_splits(body, body.len(), b"Wikipedia");
    }

    #[test]
    fn whitespace_before_extension_or_crlf() {
        let body = b"1 \t;a=b\r\nx\r\n2 \r\nyz\r\n0\r\n\r\n";
        check_all_splits(body, body.len(), b"xyz");
    }

    #[test]
    fn stops_at_body_end_with_pipelined_bytes() {
        let body = b"3\r\nabc\r\n0\r\nT: v\r\n\r\n";
        let mut input = body.to_vec();
        input.extend_from_slice(b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n");
        for i in 0..=body.len() {
            assert_eq!(
                decode_split(&input, &[i]).unwrap(),
                (b"abc".to_vec(), body.len(), true),
                "split at {i}"
            );
        }
        let mut dec = ChunkedDecoder::new();
        assert_eq!(dec.decode(&input, None).unwrap(), (body.len(), true));
        // After the end nothing more is consumed.
        assert_eq!(dec.decode(b"more", None).unwrap(), (0, true));
    }

    #[test]
    fn payload_ranges_are_relative_to_input() {
        let mut dec = ChunkedDecoder::new();
        let mut ranges = Vec::new();
        let input = b"2\r\nab\r\n3\r\ncde\r\n0\r\n\r\n";
        assert_eq!(
            dec.decode(input, Some(&mut ranges)).unwrap(),
            (input.len(), true)
        );
        assert_eq!(ranges, vec![3..5, 10..13]);
    }

    #[test]
    fn large_chunk_sizes() {
        let mut dec = ChunkedDecoder::new();
        assert_eq!(
            dec.decode(b"ffffffffffffffff\r\n", None).unwrap(),
            (18, false)
        );
        assert_eq!(dec.remaining, u64::MAX);
        let mut dec = ChunkedDecoder::new();
        assert_eq!(
            dec.decode(b"00000000000000001\r\n", None),
            Err(HttpError::BadRequest("chunk size too large"))
        );
        let mut dec = ChunkedDecoder::new();
        assert_eq!(
            dec.decode(b"10000000000000000\r\n", None),
            Err(HttpError::BadRequest("chunk size too large"))
        );
    }

    #[test]
    fn bad_inputs() {
        let cases: &[&[u8]] = &[
            b"\r\n",            // empty size
            b";ext\r\n",        // no digits before extension
            b"-1\r\n",          // sign
            b"+1\r\n",          // sign
            b"0x1\r\n",         // prefix
            b"g\r\n",           // not hex
            b"1\nx\r\n",        // bare LF after size
            b"1 \n",            // bare LF after BWS
            b"1 2\r\n",         // two numbers
            b"1 x\r\n",         // garbage after BWS
            b"1;a\nb\r\nx\r\n", // bare LF inside an extension
            b"1;a\0\r\n",       // NUL inside an extension
            b"1\rx",            // CR not followed by LF
            b"3\r\nabcX\r\n",   // data longer than the size
            b"3\r\nabc\nX",     // bare LF after data
            b"3\r\nabc\r0",     // CR without LF after data
            b"0\r\n\n",         // bare LF as final line
            b"0\r\nT: v\n\r\n", // bare LF in a trailer
            b"0\r\n\r\r",       // final CR without LF
        ];
        for case in cases {
            let mut dec = ChunkedDecoder::new();
            assert!(
                matches!(dec.decode(case, None), Err(HttpError::BadRequest(_))),
                "{:?}",
                String::from_utf8_lossy(case)
            );
            // And the same split one byte at a time.
            let mut dec = ChunkedDecoder::new();
            let res: Result<(), HttpError> = case.chunks(1).try_for_each(|c| {
                dec.decode(c, None)?;
                Ok(())
            });
            assert!(res.is_err(), "{:?}", String::from_utf8_lossy(case));
        }
    }

    #[test]
    fn size_line_and_trailer_bounds() {
        let mut line = b"1;".to_vec();
        line.resize(MAX_SIZE_LINE as usize, b'a');
        line.extend_from_slice(b"\r\nx\r\n0\r\n\r\n");
        let mut dec = ChunkedDecoder::new();
        assert_eq!(dec.decode(&line, None).unwrap(), (line.len(), true));

        let mut line = b"1;".to_vec();
        line.resize(MAX_SIZE_LINE as usize + 1, b'a');
        line.extend_from_slice(b"\r\n");
        let mut dec = ChunkedDecoder::new();
        assert_eq!(
            dec.decode(&line, None),
            Err(HttpError::BadRequest("chunk size line too long"))
        );

        let mut body = b"0\r\n".to_vec();
        while body.len() < MAX_TRAILER_BYTES as usize + 100 {
            body.extend_from_slice(b"X-Trailer: some value\r\n");
        }
        body.extend_from_slice(b"\r\n");
        let mut dec = ChunkedDecoder::new();
        assert_eq!(
            dec.decode(&body, None),
            Err(HttpError::BadRequest("trailer section too large"))
        );
    }

    #[test]
    fn empty_input_and_partial_state() {
        let mut dec = ChunkedDecoder::new();
        assert_eq!(dec.decode(b"", None).unwrap(), (0, false));
        assert!(!dec.is_done());
        assert_eq!(dec.decode(b"0\r\n", None).unwrap(), (3, false));
        assert!(!dec.is_done());
        assert_eq!(dec.decode(b"\r\n", None).unwrap(), (2, true));
        assert!(dec.is_done());
    }

    /// Decodes `input` split at `at` with `decode_framed`; returns the canonical bytes.
    fn framed_split(input: &[u8], at: usize) -> Vec<u8> {
        let mut dec = ChunkedDecoder::new();
        let mut out = Vec::new();
        for piece in [&input[..at], &input[at..]] {
            let mut strip = Vec::new();
            let (n, _) = dec.decode_framed(piece, None, &mut strip).unwrap();
            copy_without(&piece[..n], &strip, &mut out);
        }
        assert!(dec.is_done());
        out
    }

    #[test]
    fn canonical_framing_drops_size_whitespace_and_extensions_at_every_split() {
        let input = b"3 \r\nabc\r\n2;ext=\"v\" ;b\r\nde\r\nA\t ; x\r\n0123456789\r\n0\t\r\nX-Sum: 5\r\n\r\n";
        let want = b"3\r\nabc\r\n2\r\nde\r\nA\r\n0123456789\r\n0\r\nX-Sum: 5\r\n\r\n";
        for at in 0..=input.len() {
            assert_eq!(framed_split(input, at), want, "split at {at}");
        }
        // Canonical input is forwarded as it is, with nothing to strip.
        let mut strip = Vec::new();
        ChunkedDecoder::new()
            .decode_framed(want, None, &mut strip)
            .unwrap();
        assert!(strip.is_empty());
    }

    #[test]
    fn trailer_lines_must_be_field_lines() {
        let ok: &[&[u8]] = &[
            b"0\r\n\r\n",
            b"0\r\nX-A: 1\r\n\r\n",
            b"0\r\nX-A:\r\nx-b:  two words\t\r\n\r\n",
            b"0\r\nA!#$%&'*+-.^_`|~9:v\x80\xff\r\n\r\n",
        ];
        for body in ok {
            for at in 0..=body.len() {
                assert!(decode_split(body, &[at]).is_ok(), "{body:?} split at {at}");
            }
        }
        let bad: &[&[u8]] = &[
            b"0\r\nGET /smug HTTP/1.1\r\nHost: a\r\n\r\n",
            b"0\r\nX-A: 1\r\n  folded\r\n\r\n",
            b"0\r\nX-A: 1\r\n\tfolded\r\n\r\n",
            b"0\r\nNoColon\r\n\r\n",
            b"0\r\n: empty name\r\n\r\n",
            b"0\r\nX A: space in name\r\n\r\n",
            b"0\r\nX-A: a\x01b\r\n\r\n",
            b"0\r\nX-A: a\x7fb\r\n\r\n",
            b"0\r\nX-A: a\nb\r\n\r\n",
        ];
        for body in bad {
            for at in 0..=body.len() {
                assert!(decode_split(body, &[at]).is_err(), "{body:?} split at {at}");
            }
        }
    }
}
