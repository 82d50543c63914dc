//! `config`: the config loader (`Config::from_toml_str`) on arbitrary UTF-8 text.
//!
//! It returns `Ok` or `Err`, never panics; an error's `Display` names the source; a loaded
//! config can be described (`ringlb check`) and gives a non-empty shard list.
//!
//! Peer addresses of the form `host:port` go to the system resolver. A fuzzer must not send
//! DNS queries (slow, flaky, and it would leave the machine), so inputs with a string value
//! that `resolve` would hand to the resolver, other than `localhost`, are skipped before
//! loading. IP literals, bad ports and every other check are still exercised.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringlb::Config;
use std::net::SocketAddr;

/// Whether some string in `v` looks like `host:port` with a host name other than localhost.
fn names_a_host(v: &toml::Value) -> bool {
    match v {
        toml::Value::String(s) => {
            if s.parse::<SocketAddr>().is_ok() {
                return false;
            }
            match s.rsplit_once(':') {
                Some((host, port)) => {
                    // Loosely mirrors the pre-checks of the loader's `resolve`: a non-empty
                    // host and a valid port mean a lookup may follow.
                    !host.is_empty()
                        && !host.eq_ignore_ascii_case("localhost")
                        && port.parse::<u16>().is_ok()
                }
                None => false,
            }
        }
        toml::Value::Array(a) => a.iter().any(names_a_host),
        toml::Value::Table(t) => t.values().any(names_a_host),
        _ => false,
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Anything the TOML parser rejects fails the same way in the loader, without lookups.
    if let Ok(value) = text.parse::<toml::Table>() {
        if value.values().any(names_a_host) {
            return;
        }
    }
    match Config::from_toml_str(text, "fuzz.toml") {
        Ok(cfg) => {
            let described = cfg.describe();
            assert!(!described.is_empty());
            assert!(!cfg.shard_cpus().is_empty());
        }
        Err(e) => {
            let shown = e.to_string();
            assert!(shown.starts_with("fuzz.toml"), "{shown}");
        }
    }
});
