//! Formatting one [`Entry`] as a line: combined or JSON, with the escaping each needs and a
//! wall-clock timestamp formatted once per second.
//!
//! Everything appends to a caller's `Vec<u8>`: no allocation per line once the buffer has
//! grown to its working size. Dates are computed here (days → civil date), no crate.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::config::AccessFormat;
use crate::http::{push_ip, push_u64};

use super::Entry;

/// Month abbreviations of nginx's `$time_local`.
const MONTHS: [&[u8; 3]; 12] = [
    b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec",
];

/// Hex digits for `\xHH` and `\u00HH` escapes.
const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// LineFormat is one shard's formatter: the format and the timestamp of the current second,
/// formatted once.
#[derive(Debug)]
pub(crate) struct LineFormat {
    /// Combined or JSON.
    format: AccessFormat,
    /// The second `stamp` was formatted for; `u64::MAX` before the first line.
    stamp_secs: u64,
    /// `stamp_secs` formatted for `format` (`[01/Dec/2026:10:00:00 +0000]` or
    /// `2026-12-01T10:00:00Z`); rewritten in place once a second.
    stamp: Vec<u8>,
}

impl LineFormat {
    /// A formatter for `format`.
    pub(crate) fn new(format: AccessFormat) -> LineFormat {
        LineFormat {
            format,
            stamp_secs: u64::MAX,
            stamp: Vec::with_capacity(32),
        }
    }

    /// Appends `e` as one line (with its `\n`) to `out`, stamped with `at`.
    pub(crate) fn write(&mut self, out: &mut Vec<u8>, e: &Entry<'_>, at: SystemTime) {
        let secs = at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        if secs != self.stamp_secs {
            self.stamp_secs = secs;
            self.stamp.clear();
            match self.format {
                AccessFormat::Combined => time_local(&mut self.stamp, secs),
                AccessFormat::Json => rfc3339(&mut self.stamp, secs),
            }
        }
        match self.format {
            AccessFormat::Combined => combined(out, e, &self.stamp),
            AccessFormat::Json => json(out, e, &self.stamp),
        }
    }
}

/// Appends a combined line:
/// `ADDR - - [TIME] "METHOD TARGET VERSION" STATUS BYTES "REFERER" "UA" "UPSTREAM" PEER TRIES
/// UPSTREAM_TIME TOTAL_TIME`, `-` for what is missing, times in seconds with milliseconds.
fn combined(out: &mut Vec<u8>, e: &Entry<'_>, stamp: &[u8]) {
    // The IP only, as `$remote_addr`; IPv4-mapped addresses (a `[::]` listener) as IPv4.
    push_ip(out, e.client.ip());
    out.extend_from_slice(b" - - ");
    out.extend_from_slice(stamp);
    out.extend_from_slice(b" \"");
    escape_combined(out, e.method);
    out.push(b' ');
    escape_combined(out, e.target);
    out.push(b' ');
    escape_combined(out, e.version.as_bytes());
    out.extend_from_slice(b"\" ");
    push_u64(out, u64::from(e.status));
    out.push(b' ');
    push_u64(out, e.body_bytes);
    for value in [e.referer, e.user_agent, e.upstream.map(str::as_bytes)] {
        out.extend_from_slice(b" \"");
        match value {
            Some(v) => escape_combined(out, v),
            None => out.push(b'-'),
        }
        out.push(b'"');
    }
    out.push(b' ');
    match e.peer {
        Some(peer) => addr(out, peer),
        None => out.push(b'-'),
    }
    out.push(b' ');
    push_u64(out, u64::from(e.tries));
    out.push(b' ');
    match e.upstream_time {
        Some(t) => seconds(out, t),
        None => out.push(b'-'),
    }
    out.push(b' ');
    seconds(out, e.total_time);
    out.push(b'\n');
}

/// Appends a JSON line: one object, every key always present (`null` for what is missing).
fn json(out: &mut Vec<u8>, e: &Entry<'_>, stamp: &[u8]) {
    out.extend_from_slice(b"{\"time\":\"");
    out.extend_from_slice(stamp);
    out.extend_from_slice(b"\",\"client\":\"");
    addr(out, e.client);
    out.extend_from_slice(b"\",\"method\":");
    json_string(out, e.method);
    out.extend_from_slice(b",\"target\":");
    json_string(out, e.target);
    out.extend_from_slice(b",\"version\":");
    json_string(out, e.version.as_bytes());
    out.extend_from_slice(b",\"status\":");
    push_u64(out, u64::from(e.status));
    out.extend_from_slice(b",\"bytes_sent\":");
    push_u64(out, e.body_bytes);
    out.extend_from_slice(b",\"referer\":");
    json_opt(out, e.referer);
    out.extend_from_slice(b",\"user_agent\":");
    json_opt(out, e.user_agent);
    out.extend_from_slice(b",\"upstream\":");
    json_opt(out, e.upstream.map(str::as_bytes));
    out.extend_from_slice(b",\"peer\":");
    match e.peer {
        Some(peer) => {
            out.push(b'"');
            addr(out, peer);
            out.push(b'"');
        }
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"tries\":");
    push_u64(out, u64::from(e.tries));
    out.extend_from_slice(b",\"upstream_time\":");
    match e.upstream_time {
        Some(t) => seconds(out, t),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"total_time\":");
    seconds(out, e.total_time);
    out.extend_from_slice(b"}\n");
}

/// Appends `v` nginx style: `"`, `\`, bytes below 0x20 and from 0x7f as `\xHH`, the rest as is.
fn escape_combined(out: &mut Vec<u8>, v: &[u8]) {
    // Runs of bytes that need no escape are copied whole.
    let mut run = 0;
    for (i, &b) in v.iter().enumerate() {
        if !(0x20..0x7f).contains(&b) || b == b'"' || b == b'\\' {
            out.extend_from_slice(&v[run..i]);
            out.extend_from_slice(&[
                b'\\',
                b'x',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 15)],
            ]);
            run = i + 1;
        }
    }
    out.extend_from_slice(&v[run..]);
}

/// Appends `v` as a JSON string, `null` when absent.
fn json_opt(out: &mut Vec<u8>, v: Option<&[u8]>) {
    match v {
        Some(v) => json_string(out, v),
        None => out.extend_from_slice(b"null"),
    }
}

/// Appends `v` as a quoted JSON string (RFC 8259): `"` and `\` escaped, control characters and
/// DEL as `\n`, `\r`, `\t` or `\u00HH`, valid UTF-8 as is, and every byte that is not part of
/// valid UTF-8 as `\u00HH` (the character of that code point), so the line is valid JSON
/// whatever the client sent.
fn json_string(out: &mut Vec<u8>, v: &[u8]) {
    out.push(b'"');
    // The usual case, valid UTF-8, is checked by the fast whole-slice validation; only a value
    // with invalid bytes goes through the chunk iterator, which validates byte by byte.
    match std::str::from_utf8(v) {
        Ok(valid) => json_escape_valid(out, valid.as_bytes()),
        Err(_) => {
            for chunk in v.utf8_chunks() {
                json_escape_valid(out, chunk.valid().as_bytes());
                for &b in chunk.invalid() {
                    unicode_escape(out, b);
                }
            }
        }
    }
    out.push(b'"');
}

/// Appends valid UTF-8 `valid` with the escapes of [`json_string`].
fn json_escape_valid(out: &mut Vec<u8>, valid: &[u8]) {
    // Runs of bytes that need no escape are copied whole.
    let mut run = 0;
    for (i, &b) in valid.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..0x20 | 0x7f => b"",
            _ => continue,
        };
        out.extend_from_slice(&valid[run..i]);
        if escape.is_empty() {
            unicode_escape(out, b);
        } else {
            out.extend_from_slice(escape);
        }
        run = i + 1;
    }
    out.extend_from_slice(&valid[run..]);
}

/// Appends `\u00HH` for `b`.
fn unicode_escape(out: &mut Vec<u8>, b: u8) {
    out.extend_from_slice(&[
        b'\\',
        b'u',
        b'0',
        b'0',
        HEX[usize::from(b >> 4)],
        HEX[usize::from(b & 15)],
    ]);
}

/// Appends `n` in decimal, zero-padded to `width` digits.
fn padded(out: &mut Vec<u8>, n: u64, width: usize) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    let mut rest = n;
    while rest > 0 || digits.len() - start < width {
        start -= 1;
        digits[start] = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    out.extend_from_slice(&digits[start..]);
}

/// Appends `d` as seconds with milliseconds (`0.002`, `12.345`), as nginx logs times.
fn seconds(out: &mut Vec<u8>, d: Duration) {
    let ms = d.as_millis().min(u128::from(u64::MAX)) as u64;
    push_u64(out, ms / 1000);
    out.push(b'.');
    padded(out, ms % 1000, 3);
}

/// Appends `a` as `ip:port` (`[v6]:port`), IPv4-mapped addresses as IPv4.
fn addr(out: &mut Vec<u8>, a: SocketAddr) {
    let v6 = a.ip().to_canonical().is_ipv6();
    if v6 {
        out.push(b'[');
    }
    push_ip(out, a.ip());
    if v6 {
        out.push(b']');
    }
    out.push(b':');
    push_u64(out, u64::from(a.port()));
}

/// The civil date (year, month 1..=12, day 1..=31) of `days` since 1970-01-01 (H. Hinnant's
/// `civil_from_days`, for non-negative days).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// Appends the UTC time of day of `secs` since the epoch as `HH:MM:SS`.
fn hms(out: &mut Vec<u8>, secs: u64) {
    let t = secs % 86_400;
    padded(out, t / 3600, 2);
    out.push(b':');
    padded(out, t / 60 % 60, 2);
    out.push(b':');
    padded(out, t % 60, 2);
}

/// Appends `secs` since the epoch as nginx's `$time_local` in UTC, bracketed:
/// `[01/Dec/2026:10:00:00 +0000]`.
fn time_local(out: &mut Vec<u8>, secs: u64) {
    let (y, m, d) = civil_from_days(secs / 86_400);
    out.push(b'[');
    padded(out, d, 2);
    out.push(b'/');
    out.extend_from_slice(MONTHS[(m - 1) as usize]);
    out.push(b'/');
    padded(out, y, 4);
    out.push(b':');
    hms(out, secs);
    out.extend_from_slice(b" +0000]");
}

/// Appends `secs` since the epoch as RFC 3339 in UTC: `2026-12-01T10:00:00Z`.
fn rfc3339(out: &mut Vec<u8>, secs: u64) {
    let (y, m, d) = civil_from_days(secs / 86_400);
    padded(out, y, 4);
    out.push(b'-');
    padded(out, m, 2);
    out.push(b'-');
    padded(out, d, 2);
    out.push(b'T');
    hms(out, secs);
    out.push(b'Z');
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-12-01T10:00:00Z.
    const DEC_1_2026_10H: u64 = 1_796_119_200;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn typical() -> Entry<'static> {
        Entry {
            client: "192.0.2.7:51234".parse().unwrap(),
            method: b"GET",
            target: b"/api/v1/items?page=2",
            version: "HTTP/1.1",
            status: 200,
            body_bytes: 1234,
            referer: Some(b"https://example.com/"),
            user_agent: Some(b"curl/8.5.0"),
            upstream: Some("api"),
            peer: Some("10.0.0.1:8080".parse().unwrap()),
            tries: 1,
            upstream_time: Some(Duration::from_micros(2_400)),
            total_time: Duration::from_micros(3_100),
        }
    }

    /// An entry ringlb answered itself: no upstream, no referer, no user agent.
    fn local_answer() -> Entry<'static> {
        Entry {
            client: "[2001:db8::5]:40000".parse().unwrap(),
            method: b"POST",
            target: b"/upload",
            version: "HTTP/1.0",
            status: 413,
            body_bytes: 0,
            referer: None,
            user_agent: None,
            upstream: None,
            peer: None,
            tries: 0,
            upstream_time: None,
            total_time: Duration::from_millis(12_345),
        }
    }

    fn line(format: AccessFormat, e: &Entry<'_>, secs: u64) -> String {
        let mut out = Vec::new();
        LineFormat::new(format).write(&mut out, e, at(secs));
        String::from_utf8(out).expect("every line is ASCII or valid UTF-8")
    }

    #[test]
    fn combined_lines() {
        assert_eq!(
            line(AccessFormat::Combined, &typical(), DEC_1_2026_10H),
            "192.0.2.7 - - [01/Dec/2026:10:00:00 +0000] \"GET /api/v1/items?page=2 HTTP/1.1\" \
             200 1234 \"https://example.com/\" \"curl/8.5.0\" \"api\" 10.0.0.1:8080 1 0.002 \
             0.003\n"
        );
        assert_eq!(
            line(AccessFormat::Combined, &local_answer(), DEC_1_2026_10H + 59),
            "2001:db8::5 - - [01/Dec/2026:10:00:59 +0000] \"POST /upload HTTP/1.0\" 413 0 \
             \"-\" \"-\" \"-\" - 0 - 12.345\n"
        );
    }

    #[test]
    fn json_lines() {
        assert_eq!(
            line(AccessFormat::Json, &typical(), DEC_1_2026_10H),
            "{\"time\":\"2026-12-01T10:00:00Z\",\"client\":\"192.0.2.7:51234\",\
             \"method\":\"GET\",\"target\":\"/api/v1/items?page=2\",\"version\":\"HTTP/1.1\",\
             \"status\":200,\"bytes_sent\":1234,\"referer\":\"https://example.com/\",\
             \"user_agent\":\"curl/8.5.0\",\"upstream\":\"api\",\"peer\":\"10.0.0.1:8080\",\
             \"tries\":1,\"upstream_time\":0.002,\"total_time\":0.003}\n"
        );
        assert_eq!(
            line(AccessFormat::Json, &local_answer(), DEC_1_2026_10H),
            "{\"time\":\"2026-12-01T10:00:00Z\",\"client\":\"[2001:db8::5]:40000\",\
             \"method\":\"POST\",\"target\":\"/upload\",\"version\":\"HTTP/1.0\",\
             \"status\":413,\"bytes_sent\":0,\"referer\":null,\"user_agent\":null,\
             \"upstream\":null,\"peer\":null,\"tries\":0,\"upstream_time\":null,\
             \"total_time\":12.345}\n"
        );
    }

    /// What a hostile client can put in the request line and headers.
    fn hostile() -> Entry<'static> {
        Entry {
            target: b"/a\"b\\c\nd\re\tf\x00g\x7fh\xff\xfe\xc3\xa9\xe2\x82",
            referer: Some(b"\" injected=\"1"),
            user_agent: Some(b"caf\xc3\xa9 \xf0\x9f\xa6\x80 \x1b[31m"),
            ..typical()
        }
    }

    #[test]
    fn combined_escapes_hostile_bytes() {
        let l = line(AccessFormat::Combined, &hostile(), DEC_1_2026_10H);
        assert_eq!(
            l,
            "192.0.2.7 - - [01/Dec/2026:10:00:00 +0000] \
             \"GET /a\\x22b\\x5Cc\\x0Ad\\x0De\\x09f\\x00g\\x7Fh\\xFF\\xFE\\xC3\\xA9\\xE2\\x82 \
             HTTP/1.1\" 200 1234 \"\\x22 injected=\\x221\" \
             \"caf\\xC3\\xA9 \\xF0\\x9F\\xA6\\x80 \\x1B[31m\" \"api\" 10.0.0.1:8080 1 0.002 \
             0.003\n"
        );
        assert_eq!(l.matches('\n').count(), 1);
        assert!(l.bytes().all(|b| (0x20..0x7f).contains(&b) || b == b'\n'));
    }

    #[test]
    fn json_escapes_hostile_bytes_into_valid_json() {
        let l = line(AccessFormat::Json, &hostile(), DEC_1_2026_10H);
        assert_eq!(l.matches('\n').count(), 1);
        assert!(l.ends_with("}\n"));
        let v: serde_json::Value = serde_json::from_str(&l).expect("every line is valid JSON");
        assert_eq!(
            v["target"], "/a\"b\\c\nd\re\tf\u{0}g\u{7f}h\u{ff}\u{fe}é\u{e2}\u{82}",
            "valid UTF-8 is kept, every other byte is its \\u00XX character: {l}"
        );
        assert_eq!(v["referer"], "\" injected=\"1");
        assert_eq!(v["user_agent"], "café 🦀 \u{1b}[31m");
        assert!(
            l.contains(r#""target":"/a\"b\\c\nd\re\tf\u0000g\u007Fh\u00FF\u00FEé\u00E2\u0082""#),
            "{l}"
        );
        assert_eq!(v.as_object().map(|o| o.len()), Some(14));
    }

    #[test]
    fn the_timestamp_follows_the_clock() {
        let mut f = LineFormat::new(AccessFormat::Combined);
        let mut out = Vec::new();
        for secs in [
            DEC_1_2026_10H,
            DEC_1_2026_10H,
            DEC_1_2026_10H + 86_399 - 36_000,
        ] {
            f.write(&mut out, &typical(), at(secs));
        }
        let text = String::from_utf8(out).unwrap();
        let stamps: Vec<&str> = text.lines().map(|l| &l[14..42]).collect();
        assert_eq!(
            stamps,
            [
                "[01/Dec/2026:10:00:00 +0000]",
                "[01/Dec/2026:10:00:00 +0000]",
                "[01/Dec/2026:23:59:59 +0000]",
            ]
        );
    }

    #[test]
    fn dates() {
        let local = |secs| {
            let mut out = Vec::new();
            time_local(&mut out, secs);
            String::from_utf8(out).unwrap()
        };
        let rfc = |secs| {
            let mut out = Vec::new();
            rfc3339(&mut out, secs);
            String::from_utf8(out).unwrap()
        };
        assert_eq!(local(0), "[01/Jan/1970:00:00:00 +0000]");
        assert_eq!(rfc(0), "1970-01-01T00:00:00Z");
        // Leap days: a century leap year (2000) and an ordinary one.
        assert_eq!(rfc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc(951_868_800), "2000-03-01T00:00:00Z");
        assert_eq!(local(1_709_164_800), "[29/Feb/2024:00:00:00 +0000]");
        assert_eq!(rfc(1_735_689_599), "2024-12-31T23:59:59Z");
        assert_eq!(rfc(DEC_1_2026_10H), "2026-12-01T10:00:00Z");
        // 2100 is not a leap year.
        assert_eq!(rfc(4_107_542_400), "2100-03-01T00:00:00Z");
        // Before the epoch (a clock set wrong) logs the epoch.
        let mut out = Vec::new();
        LineFormat::new(AccessFormat::Json).write(
            &mut out,
            &typical(),
            UNIX_EPOCH - Duration::from_secs(5),
        );
        assert!(out.starts_with(b"{\"time\":\"1970-01-01T00:00:00Z\""));
    }

    #[test]
    fn ipv4_mapped_clients_log_as_ipv4() {
        let e = Entry {
            client: "[::ffff:192.0.2.9]:4000".parse().unwrap(),
            peer: Some("[::1]:8080".parse().unwrap()),
            ..typical()
        };
        let l = line(AccessFormat::Combined, &e, DEC_1_2026_10H);
        assert!(l.starts_with("192.0.2.9 - - ["), "{l}");
        assert!(l.contains("\"api\" [::1]:8080 1 "), "{l}");
        let l = line(AccessFormat::Json, &e, DEC_1_2026_10H);
        assert!(l.contains(",\"client\":\"192.0.2.9:4000\","), "{l}");
    }

    #[test]
    fn numbers() {
        let s = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut out = Vec::new();
            f(&mut out);
            String::from_utf8(out).unwrap()
        };
        assert_eq!(s(&|o| padded(o, 7, 3)), "007");
        assert_eq!(s(&|o| padded(o, 12_345, 4)), "12345");
        assert_eq!(s(&|o| seconds(o, Duration::ZERO)), "0.000");
        assert_eq!(s(&|o| seconds(o, Duration::from_micros(999))), "0.000");
        assert_eq!(s(&|o| seconds(o, Duration::from_millis(61_010))), "61.010");
    }
}
