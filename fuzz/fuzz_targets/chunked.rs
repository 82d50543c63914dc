//! `chunked`: `ChunkedDecoder` gives the same answer however the input is split.
//!
//! Input: byte 0 = number of split points (mod 8), then that many bytes, each the distance from
//! the previous split point; the rest is the chunked body (plus whatever follows it). The body
//! is decoded by one decoder fed the pieces in order, in one call, and one byte at a time: the
//! outcome (error, or consumed count, done and the payload bytes concatenated) must be equal.
//! Per call: when not done everything was consumed, payload ranges are ordered, inside the
//! piece and inside the consumed part; after done, a further call consumes nothing.
//! Canonical framing (`decode_framed` + `copy_without`, what the proxy forwards) is the same
//! however the input is split, and is a fixed point: it decodes to the same payload with
//! nothing left to strip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringlb::http::{copy_without, ChunkedDecoder, HttpError};

/// The outcome of decoding a whole input.
#[derive(Debug, PartialEq)]
enum Outcome {
    Err(HttpError),
    Ok {
        consumed: usize,
        done: bool,
        payload: Vec<u8>,
        /// What the proxy forwards: the consumed bytes in canonical framing.
        framed: Vec<u8>,
    },
}

/// Decodes `input` fed in pieces ending at `bounds` (ascending, the last one `input.len()`).
fn decode(input: &[u8], bounds: &[usize]) -> Outcome {
    let mut dec = ChunkedDecoder::new();
    let mut payload = Vec::new();
    let mut framed = Vec::new();
    let mut start = 0;
    for &end in bounds {
        let piece = &input[start..end];
        let mut ranges = Vec::new();
        let mut strip = Vec::new();
        let (n, done) = match dec.decode_framed(piece, Some(&mut ranges), &mut strip) {
            Ok(r) => r,
            Err(e) => return Outcome::Err(e),
        };
        let mut last = 0;
        for r in &strip {
            assert!(
                last <= r.start && r.start < r.end && r.end <= n,
                "{r:?} of {n}"
            );
            last = r.end;
        }
        copy_without(&piece[..n], &strip, &mut framed);
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
                framed,
            };
        }
        assert_eq!(n, piece.len(), "not done, so all consumed");
        start = end;
    }
    Outcome::Ok {
        consumed: input.len(),
        done: false,
        payload,
        framed,
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
        consumed,
        payload,
        done,
        framed,
    } = &whole
    {
        assert!(payload.len() <= *consumed);
        assert!(framed.len() <= *consumed);
        if *done {
            // The canonical form is a fixed point with the same payload.
            let again = decode(framed, &[framed.len()]);
            assert_eq!(
                again,
                Outcome::Ok {
                    consumed: framed.len(),
                    done: true,
                    payload: payload.clone(),
                    framed: framed.clone(),
                },
                "canonical form of {input:?}"
            );
        }
    }
});
