//! The writer thread: takes the shards' batches off the queue, writes each with one
//! `write_all`, reopens the file when asked (SIGUSR1, logrotate), and hands the emptied
//! buffers back for reuse. A failed write or reopen is counted and logged rate-limited; it
//! never stops the thread.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};

use crate::config::AccessTarget;
use crate::process::RateLimit;

use super::{Msg, Shared};

/// Sink is where the writer thread writes: stderr or a file it can reopen.
#[derive(Debug)]
pub(super) enum Sink {
    /// The process's standard error.
    Stderr,
    /// An append-mode file and the path it was opened from (reopened by path).
    File {
        /// The path as configured.
        path: PathBuf,
        /// The open file; replaced by a fresh open of `path` on reopen.
        file: File,
    },
}

impl Sink {
    /// Opens `target`; `None` for [`AccessTarget::Off`]. The error names the path.
    pub(super) fn open(target: &AccessTarget) -> io::Result<Option<Sink>> {
        Ok(match target {
            AccessTarget::Off => None,
            AccessTarget::Stderr => Some(Sink::Stderr),
            AccessTarget::File(path) => Some(Sink::File {
                path: path.clone(),
                file: open_append(path)?,
            }),
        })
    }

    /// Writes all of `bytes`.
    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Sink::Stderr => io::stderr().lock().write_all(bytes),
            Sink::File { file, .. } => file.write_all(bytes),
        }
    }

    /// Opens the path again (after logrotate renamed the file) and writes there from now on;
    /// on failure the old file stays in use. Stderr has nothing to reopen.
    fn reopen(&mut self) -> io::Result<()> {
        if let Sink::File { path, file } = self {
            *file = open_append(path)?;
        }
        Ok(())
    }

    /// What to call this sink in a warning.
    fn name(&self) -> String {
        match self {
            Sink::Stderr => "stderr".to_string(),
            Sink::File { path, .. } => path.display().to_string(),
        }
    }
}

/// Opens `path` for appending, creating it if missing; the error names the path.
fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot open access log `{}`: {e}", path.display()),
            )
        })
}

/// The writer thread's body: runs until [`Msg::Stop`] or until every sender is gone. Buffers
/// whose capacity grew beyond `keep_capacity` are freed instead of recycled.
pub(super) fn run(
    queue: Receiver<Msg>,
    recycle: Sender<Vec<u8>>,
    mut sink: Sink,
    shared: Arc<Shared>,
    keep_capacity: usize,
) {
    let write_failed = RateLimit::per_second();
    let reopen_failed = RateLimit::per_second();
    for msg in queue.iter() {
        let mut batch = match msg {
            Msg::Batch(batch) => batch,
            Msg::Stop => break,
        };
        if shared.reopen.swap(false, Ordering::AcqRel) {
            if let Err(e) = sink.reopen() {
                if let Some(suppressed) = reopen_failed.check(Instant::now()) {
                    tracing::warn!(
                        "access log: reopen failed, still writing to the old file: {e}{suppressed}"
                    );
                }
            }
        }
        if let Err(e) = sink.write_all(&batch.bytes) {
            shared
                .write_errors
                .fetch_add(batch.lines, Ordering::Relaxed);
            if let Some(suppressed) = write_failed.check(Instant::now()) {
                tracing::warn!(
                    "access log: writing {} lines to {} failed: {e}{suppressed}",
                    batch.lines,
                    sink.name()
                );
            }
        }
        if batch.bytes.capacity() <= keep_capacity {
            batch.bytes.clear();
            // A full recycle queue frees the buffer.
            let _ = recycle.try_send(batch.bytes);
        }
    }
}
