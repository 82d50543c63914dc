//! The `[server] h2` table: HTTP/2 on the downstream side — whether cleartext listeners take
//! prior-knowledge h2c, the SETTINGS ringlb advertises, and the abuse limits. Its file struct,
//! its checked runtime type ([`H2Config`]), and its validation.
//!
//! ```toml
//! [server]
//! h2 = { max_concurrent_streams = 256, initial_window = 65535, max_frame_size = 16384,
//!        max_header_list_size = 16384 }
//! ```
//!
//! The table applies to every listener of the process (HTTP/2 settings are per connection,
//! and a connection keeps the ones it started with). Kept apart from `file.rs`/`validate.rs`
//! like the `[log]` keys: `validate.rs` calls [`h2`], which reports errors as `(key path,
//! reason)` pairs.

use std::ops::RangeInclusive;

use serde::{Deserialize, Serialize};

use super::health::KeyError;

/// Allowed `max_concurrent_streams`.
const STREAMS_RANGE: RangeInclusive<u64> = 1..=65_535;
/// Allowed `initial_window` (RFC 9113 §6.9.2: at most 2^31-1).
const WINDOW_RANGE: RangeInclusive<u64> = 1..=(1 << 31) - 1;
/// Allowed `max_frame_size` (RFC 9113 §6.5.2).
const FRAME_RANGE: RangeInclusive<u64> = 16_384..=16_777_215;
/// Allowed `max_header_list_size`.
const HEADER_LIST_RANGE: RangeInclusive<u64> = 1024..=1 << 20;
/// Allowed frame rates (`max_resets_per_sec`, `max_pings_per_sec`, `max_settings_per_sec`).
const RATE_RANGE: RangeInclusive<u64> = 1..=1_000_000;

/// H2File is the `[server] h2` table as written.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct H2File {
    /// Default true: cleartext listeners take HTTP/2 with prior knowledge.
    pub h2c: Option<bool>,
    /// Default 256.
    pub max_concurrent_streams: Option<u64>,
    /// Default 65535.
    pub initial_window: Option<u64>,
    /// Default 16384.
    pub max_frame_size: Option<u64>,
    /// Default 16384.
    pub max_header_list_size: Option<u64>,
    /// Default 200.
    pub max_resets_per_sec: Option<u64>,
    /// Default 20.
    pub max_pings_per_sec: Option<u64>,
    /// Default 20.
    pub max_settings_per_sec: Option<u64>,
}

/// H2Config is the `[server] h2` table: HTTP/2 towards clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct H2Config {
    /// Cleartext listeners take HTTP/2 with prior knowledge (a connection that opens with the
    /// connection preface); HTTP/1.1 keeps working on the same port. Default true.
    pub h2c: bool,
    /// SETTINGS_MAX_CONCURRENT_STREAMS: streams a client may have open on one connection.
    /// Default 256.
    pub max_concurrent_streams: u32,
    /// SETTINGS_INITIAL_WINDOW_SIZE: the receive window of each stream, in bytes; what a
    /// client may send on a stream before ringlb forwarded it. Default 65535.
    pub initial_window: u32,
    /// SETTINGS_MAX_FRAME_SIZE: the largest frame payload ringlb accepts. Default 16384.
    pub max_frame_size: u32,
    /// SETTINGS_MAX_HEADER_LIST_SIZE: the largest decoded header list (RFC 9113 §6.5.2: names,
    /// values and 32 bytes per field); a larger one is answered 431, which also bounds HPACK
    /// bombs and CONTINUATION floods. Default 16384.
    pub max_header_list_size: u32,
    /// RST_STREAM frames a client may send per second on one connection; beyond, it is sent
    /// GOAWAY (ENHANCE_YOUR_CALM): the rapid-reset defence (CVE-2023-44487). Default 200.
    pub max_resets_per_sec: u32,
    /// PING frames (not acknowledgements) a client may send per second; beyond, GOAWAY.
    /// Default 20.
    pub max_pings_per_sec: u32,
    /// SETTINGS frames (not acknowledgements) a client may send per second; beyond, GOAWAY.
    /// Default 20.
    pub max_settings_per_sec: u32,
}

impl Default for H2Config {
    fn default() -> Self {
        H2Config {
            h2c: true,
            max_concurrent_streams: 256,
            initial_window: 65_535,
            max_frame_size: 16_384,
            max_header_list_size: 16_384,
            max_resets_per_sec: 200,
            max_pings_per_sec: 20,
            max_settings_per_sec: 20,
        }
    }
}

impl H2Config {
    /// The receive window of a whole connection: room for 16 streams' windows (or all of
    /// them, when fewer may be open), so that uploads on several streams do not wait on each
    /// other while memory per connection stays bounded.
    pub fn connection_window(&self) -> u32 {
        let streams = self.max_concurrent_streams.clamp(1, 16);
        self.initial_window
            .saturating_mul(streams)
            .min((1 << 31) - 1)
    }
}

/// Checks `[server] h2`.
pub(crate) fn h2(f: Option<&H2File>) -> Result<H2Config, KeyError> {
    let d = H2Config::default();
    let Some(f) = f else {
        return Ok(d);
    };
    let num = |key: &str, v: Option<u64>, range: RangeInclusive<u64>, def: u32| match v {
        None => Ok(def),
        Some(n) if range.contains(&n) => Ok(n as u32),
        Some(n) => Err((
            format!("server.h2.{key}"),
            format!("{n} is out of range {}..={}", range.start(), range.end()),
        )),
    };
    Ok(H2Config {
        h2c: f.h2c.unwrap_or(d.h2c),
        max_concurrent_streams: num(
            "max_concurrent_streams",
            f.max_concurrent_streams,
            STREAMS_RANGE,
            d.max_concurrent_streams,
        )?,
        initial_window: num(
            "initial_window",
            f.initial_window,
            WINDOW_RANGE,
            d.initial_window,
        )?,
        max_frame_size: num(
            "max_frame_size",
            f.max_frame_size,
            FRAME_RANGE,
            d.max_frame_size,
        )?,
        max_header_list_size: num(
            "max_header_list_size",
            f.max_header_list_size,
            HEADER_LIST_RANGE,
            d.max_header_list_size,
        )?,
        max_resets_per_sec: num(
            "max_resets_per_sec",
            f.max_resets_per_sec,
            RATE_RANGE,
            d.max_resets_per_sec,
        )?,
        max_pings_per_sec: num(
            "max_pings_per_sec",
            f.max_pings_per_sec,
            RATE_RANGE,
            d.max_pings_per_sec,
        )?,
        max_settings_per_sec: num(
            "max_settings_per_sec",
            f.max_settings_per_sec,
            RATE_RANGE,
            d.max_settings_per_sec,
        )?,
    })
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn load(h2: &str) -> Result<Config, String> {
        let text = format!(
            "[server]\nlisten = [\"127.0.0.1:0\"]\n{h2}\n\n[[upstream]]\nname = \"u\"\n\
             peers = [{{ address = \"127.0.0.1:1\" }}]\n"
        );
        Config::from_toml_str(&text, "t.toml").map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_and_overrides() {
        let c = load("").unwrap();
        assert_eq!(c.server.h2, super::H2Config::default());
        assert!(c.server.h2.h2c);
        assert_eq!(c.server.h2.max_concurrent_streams, 256);
        let c = load("h2 = { h2c = false, max_concurrent_streams = 8, initial_window = 1000 }")
            .unwrap();
        assert!(!c.server.h2.h2c);
        assert_eq!(c.server.h2.max_concurrent_streams, 8);
        assert_eq!(c.server.h2.initial_window, 1000);
        assert_eq!(c.server.h2.connection_window(), 8000);
        assert_eq!(c.server.h2.max_frame_size, 16_384);
    }

    #[test]
    fn out_of_range_values_name_the_key() {
        let err = load("h2 = { max_frame_size = 100 }").unwrap_err();
        assert!(err.contains("server.h2.max_frame_size"), "{err}");
        assert!(err.contains("16384..=16777215"), "{err}");
        let err = load("h2 = { max_concurrent_streams = 0 }").unwrap_err();
        assert!(err.contains("server.h2.max_concurrent_streams"), "{err}");
        let err = load("h2 = { bogus = 1 }").unwrap_err();
        assert!(err.contains("bogus"), "{err}");
    }
}
