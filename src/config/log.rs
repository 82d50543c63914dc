//! The `[log]` table: the access log's keys, their file struct, their checked runtime types
//! ([`LogConfig`]), their validation and their lines in [`Config::describe`](super::Config::describe).
//!
//! ```toml
//! [log]
//! access = "off"              # "off" | "stderr" | "/var/log/ringlb/access.log"
//! access_format = "combined"  # "combined" | "json"
//! access_buffer_bytes = 32768 # a shard hands its buffer to the writer beyond this
//! access_queue = 64           # buffers waiting for the writer; beyond, lines are dropped
//! ```
//!
//! Kept apart from `file.rs`/`validate.rs` like the health keys: `validate.rs` calls
//! [`log`], which reports errors as `(key path, reason)` pairs.

use std::fmt::{self, Write as _};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::health::KeyError;

/// Default `log.access_buffer_bytes`.
pub const DEFAULT_ACCESS_BUFFER_BYTES: usize = 32 * 1024;
/// Default `log.access_queue`.
pub const DEFAULT_ACCESS_QUEUE: usize = 64;
/// Allowed `log.access_buffer_bytes`: 1 KiB ..= 16 MiB.
const ACCESS_BUFFER_BYTES_RANGE: RangeInclusive<u64> = 1024..=16 << 20;
/// Allowed `log.access_queue`.
const ACCESS_QUEUE_RANGE: RangeInclusive<u64> = 1..=65_536;

/// LogFile is the `[log]` table as written.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LogFile {
    /// `"off"` (default), `"stderr"` or a file path.
    pub access: Option<String>,
    /// `"combined"` (default) or `"json"`.
    pub access_format: Option<AccessFormatFile>,
    /// Default 32768; 1024..=16 MiB.
    pub access_buffer_bytes: Option<u64>,
    /// Default 64; 1..=65536.
    pub access_queue: Option<u64>,
}

/// AccessFormatFile is `access_format = "combined" | "json"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum AccessFormatFile {
    /// `"combined"`.
    Combined,
    /// `"json"`.
    Json,
}

/// LogConfig is the `[log]` table: where access log lines go and how they look.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// Where access log lines are written. Default [`AccessTarget::Off`].
    pub access: AccessTarget,
    /// The line format. Default [`AccessFormat::Combined`].
    pub access_format: AccessFormat,
    /// A shard hands its buffered lines to the writer thread once they exceed this many bytes
    /// (and on every flush tick). Default 32 KiB.
    pub access_buffer_bytes: usize,
    /// Buffers that may wait for the writer thread; a shard whose hand-off finds the queue
    /// full drops that buffer's lines and counts them. Default 64.
    pub access_queue: usize,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            access: AccessTarget::Off,
            access_format: AccessFormat::Combined,
            access_buffer_bytes: DEFAULT_ACCESS_BUFFER_BYTES,
            access_queue: DEFAULT_ACCESS_QUEUE,
        }
    }
}

/// AccessTarget is where the access log goes (`access = …`). A file literally named `off` or
/// `stderr` is written `./off`, `./stderr`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessTarget {
    /// `"off"`: no access log (the default).
    Off,
    /// `"stderr"`: the process's standard error, next to its own log.
    Stderr,
    /// A file, opened for appending (created if missing) and reopened on SIGUSR1. A relative
    /// path is relative to the working directory ringlb starts in.
    File(PathBuf),
}

/// AccessFormat is the access log's line format (`access_format = …`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessFormat {
    /// nginx's `combined` with the upstream fields appended:
    /// `ADDR - - [TIME] "REQUEST" STATUS BYTES "REFERER" "UA" "UPSTREAM" PEER TRIES UTIME TIME`.
    Combined,
    /// One JSON object per line.
    Json,
}

impl AccessFormat {
    /// The config-file name of this format.
    pub fn name(self) -> &'static str {
        match self {
            AccessFormat::Combined => "combined",
            AccessFormat::Json => "json",
        }
    }
}

/// Checks `[log]`.
pub(crate) fn log(f: &LogFile) -> Result<LogConfig, KeyError> {
    let defaults = LogConfig::default();
    let access = match f.access.as_deref() {
        None | Some("off") => AccessTarget::Off,
        Some("stderr") => AccessTarget::Stderr,
        Some(path) => AccessTarget::File(access_path(path)?),
    };
    let access_format = match f.access_format {
        None | Some(AccessFormatFile::Combined) => AccessFormat::Combined,
        Some(AccessFormatFile::Json) => AccessFormat::Json,
    };
    let range =
        |name: &str, value: Option<u64>, range: RangeInclusive<u64>, default: usize| match value {
            None => Ok(default),
            Some(n) if range.contains(&n) => Ok(n as usize),
            Some(n) => Err((
                format!("log.{name}"),
                format!(
                    "must be between {} and {}, got {n}",
                    range.start(),
                    range.end()
                ),
            )),
        };
    Ok(LogConfig {
        access,
        access_format,
        access_buffer_bytes: range(
            "access_buffer_bytes",
            f.access_buffer_bytes,
            ACCESS_BUFFER_BYTES_RANGE,
            defaults.access_buffer_bytes,
        )?,
        access_queue: range(
            "access_queue",
            f.access_queue,
            ACCESS_QUEUE_RANGE,
            defaults.access_queue,
        )?,
    })
}

/// Checks `log.access` as a file path: not empty, not a directory, in a directory that exists.
fn access_path(text: &str) -> Result<PathBuf, KeyError> {
    let err = |reason: String| ("log.access".to_string(), reason);
    if text.is_empty() {
        return Err(err(
            "must be \"off\", \"stderr\" or a file path, got \"\"".to_string()
        ));
    }
    let path = PathBuf::from(text);
    if path.is_dir() {
        return Err(err(format!(
            "`{text}` is a directory; name the log file in it"
        )));
    }
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !dir.is_dir() {
        return Err(err(format!(
            "the directory `{}` of `{text}` does not exist",
            dir.display()
        )));
    }
    Ok(path)
}

/// Writes the `log` lines for [`Config::describe`](super::Config::describe).
pub(crate) fn describe(out: &mut String, l: &LogConfig) -> fmt::Result {
    writeln!(out, "log")?;
    let target = match &l.access {
        AccessTarget::Off => return writeln!(out, "  access            off"),
        AccessTarget::Stderr => "stderr".to_string(),
        AccessTarget::File(path) => format!("file {}", path.display()),
    };
    writeln!(out, "  access            {target}")?;
    writeln!(out, "  access_format     {}", l.access_format.name())?;
    writeln!(
        out,
        "  access_buffer     {} bytes per shard, queue {} buffers",
        l.access_buffer_bytes, l.access_queue
    )
}

#[cfg(test)]
mod tests {
    use super::super::{Config, ConfigError};
    use super::*;

    /// The smallest valid config body: one upstream with one peer.
    const MIN: &str = "[[upstream]]\nname = \"a\"\npeers = [{ address = \"127.0.0.1:8001\" }]\n";

    fn load(log: &str) -> Result<Config, ConfigError> {
        Config::from_toml_str(&format!("[log]\n{log}{MIN}"), "test.toml")
    }

    /// Expects an error at exactly `key` of test.toml, on line 2 (the first `[log]` key), whose
    /// Display contains `reason`.
    #[track_caller]
    fn expect_err(log: &str, key: &str, reason: &str) {
        let e = load(log).expect_err("an invalid [log] table");
        let shown = e.to_string();
        assert_eq!(
            (e.file.as_str(), e.key.as_str()),
            ("test.toml", key),
            "{shown}"
        );
        assert!(
            shown.starts_with(&format!("test.toml: key `{key}`: ")),
            "{shown}"
        );
        assert!(shown.contains(reason), "expected {reason:?} in: {shown}");
        assert!(shown.ends_with("(line 2)"), "{shown}");
    }

    #[test]
    fn off_by_default() {
        let c = Config::from_toml_str(MIN, "test.toml").unwrap();
        assert_eq!(c.log, LogConfig::default());
        assert_eq!(c.log.access, AccessTarget::Off);
        assert_eq!(c.log.access_format, AccessFormat::Combined);
        assert!(c.describe().contains("\nlog\n  access            off\n"));
    }

    #[test]
    fn every_key() {
        let dir = std::env::temp_dir();
        let path = dir.join("ringlb-access.log");
        let c = load(&format!(
            "access = \"{}\"\naccess_format = \"json\"\naccess_buffer_bytes = 4096\n\
             access_queue = 8\n",
            path.display()
        ))
        .unwrap();
        assert_eq!(
            c.log,
            LogConfig {
                access: AccessTarget::File(path.clone()),
                access_format: AccessFormat::Json,
                access_buffer_bytes: 4096,
                access_queue: 8,
            }
        );
        let d = c.describe();
        let want = format!(
            "log\n  access            file {}\n  access_format     json\n  \
             access_buffer     4096 bytes per shard, queue 8 buffers\n",
            path.display()
        );
        assert!(d.contains(&want), "missing {want:?} in:\n{d}");

        let c = load("access = \"stderr\"\naccess_format = \"combined\"\n").unwrap();
        assert_eq!(c.log.access, AccessTarget::Stderr);
        assert_eq!(c.log.access_format, AccessFormat::Combined);
        // A bare file name is in the working directory, which exists.
        let c = load("access = \"access.log\"\n").unwrap();
        assert_eq!(
            c.log.access,
            AccessTarget::File(PathBuf::from("access.log"))
        );
    }

    #[test]
    fn bad_access() {
        expect_err(
            "access = \"\"\n",
            "log.access",
            "\"off\", \"stderr\" or a file path",
        );
        let dir = std::env::temp_dir();
        expect_err(
            &format!("access = \"{}\"\n", dir.display()),
            "log.access",
            "is a directory",
        );
        expect_err(
            "access = \"/nonexistent/ringlb/access.log\"\n",
            "log.access",
            "the directory `/nonexistent/ringlb` of `/nonexistent/ringlb/access.log` does not \
             exist",
        );
        expect_err(
            "access = true\n",
            "log.access",
            "invalid type: boolean `true`",
        );
    }

    #[test]
    fn bad_format_and_ranges() {
        expect_err(
            "access_format = \"xml\"\n",
            "log.access_format",
            "unknown variant `xml`, expected `combined` or `json`",
        );
        expect_err(
            "access_buffer_bytes = 100\n",
            "log.access_buffer_bytes",
            "must be between 1024 and 16777216, got 100",
        );
        expect_err(
            "access_queue = 0\n",
            "log.access_queue",
            "must be between 1 and 65536, got 0",
        );
        expect_err(
            "acces = \"stderr\"\n",
            "log.acces",
            "unknown field `acces`, expected one of `access`, `access_format`",
        );
    }
}
