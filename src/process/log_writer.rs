//! The log writer: stderr, where a failed write is dropped and counted instead of reported.
//!
//! tracing-subscriber reports a writer error with `eprintln!`, which panics when stderr is a
//! closed pipe (`ringlb … 2>&1 | head -n1`): the thread that logged would die. A writer that
//! never fails keeps every thread alive; [`dropped_log_writes`] says how much was lost.

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};

use tracing_subscriber::fmt::MakeWriter;

/// Log writes refused by the OS since the process started (one per log line).
static DROPPED_LOG_WRITES: AtomicU64 = AtomicU64::new(0);

/// dropped_log_writes is how many log lines could not be written since the process started
/// (stderr closed or full); each line that failed counts once.
pub fn dropped_log_writes() -> u64 {
    DROPPED_LOG_WRITES.load(Ordering::Relaxed)
}

/// DropOnError is a writer that always succeeds: what the inner writer refuses is dropped and
/// counted in [`dropped_log_writes`].
#[derive(Debug)]
pub struct DropOnError<W>(pub W);

impl<W: Write> Write for DropOnError<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.0.write_all(buf).is_err() {
            DROPPED_LOG_WRITES.fetch_add(1, Ordering::Relaxed);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        // Nothing to report: a flush that fails loses what a later write would lose anyway.
        let _ = self.0.flush();
        Ok(())
    }
}

/// StderrLog is the `MakeWriter` the binary logs through: unbuffered stderr wrapped in
/// `DropOnError`, so logging never fails and never panics.
#[derive(Debug, Clone, Copy, Default)]
pub struct StderrLog;

impl<'a> MakeWriter<'a> for StderrLog {
    type Writer = DropOnError<io::Stderr>;

    fn make_writer(&'a self) -> Self::Writer {
        DropOnError(io::stderr())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Refuses every write, as a closed pipe does.
    struct ClosedPipe;

    impl Write for ClosedPipe {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::from(io::ErrorKind::BrokenPipe))
        }
        fn flush(&mut self) -> io::Result<()> {
            Err(io::Error::from(io::ErrorKind::BrokenPipe))
        }
    }

    #[test]
    fn refused_writes_succeed_and_are_counted() {
        let before = dropped_log_writes();
        let mut w = DropOnError(ClosedPipe);
        for _ in 0..3 {
            assert_eq!(w.write(b"a log line\n").expect("never fails"), 11);
        }
        w.write_all(b"another line\n").expect("never fails");
        w.flush().expect("never fails");
        assert!(dropped_log_writes() >= before + 4);
    }

    #[test]
    fn accepted_writes_pass_through() {
        let mut w = DropOnError(Vec::new());
        w.write_all(b"one\ntwo\n")
            .expect("a Vec accepts everything");
        assert_eq!(w.0, b"one\ntwo\n");
    }
}
