//! Error locations: byte offset ↔ key path (`upstream[0].peers[2].address`) ↔ line number.
//!
//! Used only on the error path. toml reports a byte span but not (publicly) the key path;
//! validation reports a key path but has no spans. Both are translated here by walking
//! toml's spanned document (`toml::de::DeTable`), so every [`ConfigError`] can carry the key
//! path and, where the key is in the file, its line.
use std::ops::Range;

use toml::de::{DeTable, DeValue};

use super::ConfigError;

/// One step of a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    /// A table key: `.name`.
    Key(String),
    /// An array index: `[N]`.
    Index(usize),
}

/// Formats segments as `server.listen[1]`.
fn format_path(path: &[Segment]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Segment::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Segment::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// Parses a key path written by [`format_path`] (or by validation) back into segments.
fn parse_path(path: &str) -> Vec<Segment> {
    let mut out = Vec::new();
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let mut rest = part;
        if let Some(open) = rest.find('[') {
            out.push(Segment::Key(rest[..open].to_string()));
            rest = &rest[open..];
            while let Some(stripped) = rest.strip_prefix('[') {
                let Some(close) = stripped.find(']') else {
                    break;
                };
                if let Ok(i) = stripped[..close].parse() {
                    out.push(Segment::Index(i));
                }
                rest = &stripped[close + 1..];
            }
        } else {
            out.push(Segment::Key(rest.to_string()));
        }
    }
    out
}

/// The 1-based line and column of byte `offset` in `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text.as_bytes()[..offset];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |nl| nl + 1);
    let column = String::from_utf8_lossy(&before[line_start..])
        .chars()
        .count()
        + 1;
    (line, column)
}

/// Whether `span` covers `offset` (an empty span covers its own start).
fn covers(span: &Range<usize>, offset: usize) -> bool {
    span.contains(&offset) || (span.is_empty() && span.start == offset)
}

/// The best (smallest) node found so far whose span covers the offset.
struct Best {
    /// Span length of the node.
    len: usize,
    /// Its path.
    path: Vec<Segment>,
}

/// Walks `value` at `path`, recording in `best` the smallest key or value span covering
/// `offset`. Tables are always descended into: a `[table]` header's span does not cover the
/// keys below it.
fn find_in_value(value: &DeValue<'_>, offset: usize, path: &mut Vec<Segment>, best: &mut Best) {
    match value {
        DeValue::Table(table) => find_in_table(table, offset, path, best),
        DeValue::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                path.push(Segment::Index(i));
                consider(&item.span(), offset, path, best);
                find_in_value(item.get_ref(), offset, path, best);
                path.pop();
            }
        }
        _ => {}
    }
}

/// [`find_in_value`] for the entries of one table.
fn find_in_table(table: &DeTable<'_>, offset: usize, path: &mut Vec<Segment>, best: &mut Best) {
    for (key, value) in table.iter() {
        path.push(Segment::Key(key.get_ref().to_string()));
        consider(&key.span(), offset, path, best);
        consider(&value.span(), offset, path, best);
        find_in_value(value.get_ref(), offset, path, best);
        path.pop();
    }
}

/// Records `path` in `best` if `span` covers `offset` and is no larger than the best so far
/// (ties go to the later, i.e. deeper, node).
fn consider(span: &Range<usize>, offset: usize, path: &[Segment], best: &mut Best) {
    if covers(span, offset) && span.len() <= best.len {
        best.len = span.len();
        best.path = path.to_vec();
    }
}

/// The key path of the innermost key or value at byte `offset` of `text`, if `text` parses.
fn path_at(text: &str, offset: usize) -> Option<Vec<Segment>> {
    let doc = DeTable::parse(text).ok()?;
    let mut best = Best {
        len: usize::MAX,
        path: Vec::new(),
    };
    find_in_table(doc.get_ref(), offset, &mut Vec::new(), &mut best);
    (!best.path.is_empty()).then_some(best.path)
}

/// The byte offset where key path `path` is written in `text`: the key itself, or the array
/// element for a trailing index. When the full path is not in the file (a defaulted key),
/// the deepest written ancestor; `None` when not even the first segment is written.
fn offset_of(text: &str, path: &[Segment]) -> Option<usize> {
    let doc = DeTable::parse(text).ok()?;
    let mut found = None;
    let root = DeValue::Table(doc.into_inner());
    let mut value = &root;
    for seg in path {
        match (seg, value) {
            (Segment::Key(k), DeValue::Table(table)) => {
                let Some((key, v)) = table.iter().find(|(key, _)| key.get_ref() == k) else {
                    break;
                };
                found = Some(key.span().start);
                value = v.get_ref();
            }
            (Segment::Index(i), DeValue::Array(items)) => {
                let Some(item) = items.get(*i) else {
                    break;
                };
                found = Some(item.span().start);
                value = item.get_ref();
            }
            _ => break,
        }
    }
    found
}

/// Converts a toml deserialization error into a [`ConfigError`] with the key path (when the
/// text parses as TOML) and the line; `[[upstream]]` keys from later issues get "not
/// supported yet" instead of toml's "unknown field".
pub(crate) fn toml_error(text: &str, source: &str, err: &toml::de::Error) -> ConfigError {
    let message = err.message().trim_end();
    let Some(span) = err.span() else {
        return ConfigError {
            file: source.to_string(),
            key: String::new(),
            reason: message.to_string(),
        };
    };
    let (line, column) = line_col(text, span.start);
    let Some(mut path) = path_at(text, span.start) else {
        // Not even valid TOML: a syntax error, located by line and column.
        return ConfigError {
            file: source.to_string(),
            key: String::new(),
            reason: format!("{message} (line {line}, column {column})"),
        };
    };
    // toml points "missing field" errors at the table that lacks the field.
    if let Some(field) = backticked_after(message, "missing field ") {
        path.push(Segment::Key(field.to_string()));
    }
    let reason = format!("{message} (line {line})");
    ConfigError {
        file: source.to_string(),
        key: format_path(&path),
        reason,
    }
}

/// The backticked word right after `prefix` at the start of `message`: `missing field `x``
/// → `x`.
fn backticked_after<'m>(message: &'m str, prefix: &str) -> Option<&'m str> {
    let rest = message.strip_prefix(prefix)?.strip_prefix('`')?;
    rest.split_once('`').map(|(word, _)| word)
}

/// Appends ` (line N)` to a validation error's reason when its key is written in `text`.
pub(crate) fn with_line(text: &str, mut err: ConfigError) -> ConfigError {
    if err.key.is_empty() {
        return err;
    }
    if let Some(offset) = offset_of(text, &parse_path(&err.key)) {
        let (line, _) = line_col(text, offset);
        err.reason = format!("{} (line {line})", err.reason);
    }
    err
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
[server]
listen = [\"a\", \"b\"]
foo = 1

[[upstream]]
name = \"x\"
peers = [ { address = \"a\", bogus = 1 } ]

[[upstream]]
nme = \"y\"
timeouts.connect_ms = \"x\"
";

    fn at(needle: &str) -> String {
        let offset = TEXT.rfind(needle).expect("needle is in TEXT");
        format_path(&path_at(TEXT, offset).unwrap_or_default())
    }

    #[test]
    fn finds_paths_at_offsets() {
        assert_eq!(at("foo"), "server.foo");
        assert_eq!(at("\"b\""), "server.listen[1]");
        assert_eq!(at("bogus"), "upstream[0].peers[0].bogus");
        assert_eq!(at("nme"), "upstream[1].nme");
        assert_eq!(at("\"x\"\n"), "upstream[1].timeouts.connect_ms");
    }

    #[test]
    fn paths_round_trip() {
        for p in [
            "server",
            "server.listen[1]",
            "upstream[0].peers[2].address",
            "a[1][2].b",
        ] {
            assert_eq!(format_path(&parse_path(p)), p);
        }
    }

    #[test]
    fn finds_offsets_of_paths() {
        let line = |p: &str| offset_of(TEXT, &parse_path(p)).map(|o| line_col(TEXT, o).0);
        assert_eq!(line("server.foo"), Some(3));
        assert_eq!(line("server.listen[1]"), Some(2));
        assert_eq!(line("upstream[0].peers[0].bogus"), Some(7));
        assert_eq!(line("upstream[1]"), Some(9));
        assert_eq!(line("upstream[1].timeouts.connect_ms"), Some(11));
        // A defaulted key falls back to its deepest written ancestor.
        assert_eq!(line("server.backlog"), Some(1));
        assert_eq!(line("limits.max_header_bytes"), None);
    }

    #[test]
    fn line_and_column() {
        assert_eq!(line_col("ab\ncd", 0), (1, 1));
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
        assert_eq!(line_col("ab\ncd", 99), (2, 3));
    }
}
