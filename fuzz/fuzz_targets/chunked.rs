//! `chunked`: `ChunkedDecoder` gives the same answer however the input is split.
//!
//! Input: byte 0 = number of split points (mod 8), then that many bytes, each the distance from
//! the previous split point; the rest is the chunked body (plus whatever follows it). The body
//! is decoded by one decoder fed the pieces in order, in one call, and one byte at a time: the
//! outcome (error, or consumed count, done and the payload bytes concatenated) must be equal.
//! Per call: when not done everything was consumed, payload ranges are ordered, inside the
//! piece and inside the consumed part; after done, a further call consumes nothing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringlb::http::{ChunkedDecoder, HttpError};

/// The outcome of decoding a whole input.
#[derive(Debug, PartialEq)]
enum Outcome {
    Err(HttpError),
    Ok {
        consumed: usize,
        done: bool,
        payload: Vec<u8>,
    },
}

/// Decodes `input` fed in pieces ending at `bounds` (ascending, the last one `input.len()`).
fn decode(input: &[u8], bounds: &[usize]) -> Outcome {
    let mut dec = ChunkedDecoder::new();
    let mut payload = Vec::new();
    let mut start = 0;
    for &end in bounds {
        let piece = &input[start..end];
        let mut ranges = Vec::new();
        let (n, done) = match dec.decode(piece, Some(&mut ranges)) {
            Ok(r) => r,
            Err(e) => return Outcome::Err(e),
        };
        assert!(n <= piece.len());
        assert_eq!(done, dec.is_done());
        let mut last = 0;
        for r in ranges {
            assert!(
                last <= r.start && r.start <= r.end && r.end <= n,
                "{r:?} of {n}"
            );
            last = r.end;
            payload.extend_from_slice(&piece[r]);
        }
        if done {
            assert_eq!(dec.decode(&piece[n..], None), Ok((0, true)));
            return Outcome::Ok {
                consumed: start + n,
                done: true,
                payload,
            };
        }
        assert_eq!(n, piece.len(), "not done, so all consumed");
        start = end;
    }
    Outcome::Ok {
        consumed: input.len(),
        done: false,
        payload,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&count, rest)) = data.split_first() else {
        return;
    };
    let count = usize::from(count % 8).min(rest.len());
    let (gaps, input) = rest.split_at(count);
    let mut bounds = Vec::with_capacity(count + 1);
    let mut at = 0;
    for &gap in gaps {
        at = (at + usize::from(gap)).min(input.len());
        bounds.push(at);
    }
    bounds.push(input.len());

    let split = decode(input, &bounds);
    let whole = decode(input, &[input.len()]);
    assert_eq!(split, whole, "split at {bounds:?}");
    let every: Vec<usize> = (1..=input.len()).collect();
    let bytewise = decode(input, &every);
    assert_eq!(bytewise, whole, "one byte at a time");
    if let Outcome::Ok {
        consumed, payload, ..
    } = &whole
    {
        assert!(payload.len() <= *consumed);
    }
});
