//! The access log (`[log] access = …`): one line per request, written off the request path.
//!
//! - [`Entry`]: what one line says, borrowed from the request (bytes of the request buffer,
//!   names, addresses, times): building one costs nothing.
//! - [`ShardLog`]: one per shard, used from that shard's thread only (`Cell`/`RefCell`, no
//!   locks: invariant 1). [`ShardLog::record`] formats the line straight into a shard-local
//!   buffer; a buffer beyond `access_buffer_bytes`, and whatever is buffered at each
//!   [`ShardLog::flush`] (the shard's tick), is handed to the writer thread with one `try_send`
//!   on a bounded queue. A full queue (a slow disk) drops that buffer's lines and counts them
//!   ([`AccessLog::dropped`]): the request path never waits for the disk.
//! - [`AccessLog`]: the process side. It opens the target, runs the writer thread
//!   (`ringlb-accesslog`), hands out a [`ShardLog`] per shard and an [`AccessLogHandle`] for the
//!   signal thread (SIGUSR1 → [`AccessLogHandle::reopen`]) and for metrics, and on
//!   [`AccessLog::shutdown`] (or drop) lets the writer write what is queued before it joins.
//!
//! The writer writes each buffer with one `write_all` and hands the emptied buffer back to the
//! shards over a second bounded queue, so buffers are reused instead of allocated. A failed
//! write never panics: its lines are counted ([`AccessLog::write_errors`]) and the failure is
//! logged at most once a second.
//!
//! Formats (`access_format`), both one line per request in UTC:
//!
//! ```text
//! 192.0.2.7 - - [01/Dec/2026:10:00:00 +0000] "GET /a?b=1 HTTP/1.1" 200 1234 "-" "curl/8.5.0" "api" 10.0.0.1:8080 1 0.002 0.003
//! {"time":"2026-12-01T10:00:00Z","client":"192.0.2.7:51234","method":"GET",…,"total_time":0.003}
//! ```

mod format;
mod writer;

use std::cell::{Cell, RefCell};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, SendTimeoutError, Sender};

use crate::config::LogConfig;
use crate::process::spawn_supervised;

use format::LineFormat;
use writer::Sink;

/// How long [`AccessLog::shutdown`] waits for the writer to write what is queued.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Room for a few lines beyond the hand-off threshold in a new buffer, so the line that crosses
/// the threshold does not reallocate.
const LINE_SLACK: usize = 4096;

/// Entry is one access log line's facts, borrowed from the request that ended.
#[derive(Debug, Clone, Copy)]
pub struct Entry<'a> {
    /// The client's address (combined logs its IP, JSON `ip:port`).
    pub client: SocketAddr,
    /// The request method as the client sent it.
    pub method: &'a [u8],
    /// The request target as the client sent it.
    pub target: &'a [u8],
    /// The request's HTTP version, `HTTP/1.1` or `HTTP/1.0`.
    pub version: &'a str,
    /// The status sent to the client.
    pub status: u16,
    /// Body bytes sent to the client (head excluded, as nginx's `$body_bytes_sent`).
    pub body_bytes: u64,
    /// The `Referer` header value, if any.
    pub referer: Option<&'a [u8]>,
    /// The `User-Agent` header value, if any.
    pub user_agent: Option<&'a [u8]>,
    /// The upstream group's name; `None` when ringlb answered without one (a 400, say).
    pub upstream: Option<&'a str>,
    /// The peer of the last try; `None` when no try reached a peer.
    pub peer: Option<SocketAddr>,
    /// How many tries went to peers (0 when none did).
    pub tries: u32,
    /// From the first request byte sent to the response head received, of the last try;
    /// `None` when no try got a response head.
    pub upstream_time: Option<Duration>,
    /// From the first request byte read to the last response byte written.
    pub total_time: Duration,
}

/// Msg is what travels on the queue to the writer thread.
#[derive(Debug)]
enum Msg {
    /// Lines to write.
    Batch(Batch),
    /// Write what came before, then end.
    Stop,
}

/// Batch is one shard buffer on its way to the writer.
#[derive(Debug)]
struct Batch {
    /// Whole lines, each ending in `\n`.
    bytes: Vec<u8>,
    /// How many lines `bytes` holds (what is counted when they are lost).
    lines: u64,
}

/// Shared is what the shards, the writer and the handles share: counters and the reopen flag.
#[derive(Debug, Default)]
struct Shared {
    /// Lines dropped because the writer's queue was full (or the writer gone).
    dropped: AtomicU64,
    /// Lines lost because writing them failed.
    write_errors: AtomicU64,
    /// Set by [`AccessLogHandle::reopen`]; the writer reopens the file before its next batch.
    reopen: AtomicBool,
}

/// AccessLog is the running access log of a process: the writer thread and what the shards
/// and the signal thread need from it. Dropping it is [`AccessLog::shutdown`].
#[derive(Debug)]
pub struct AccessLog {
    /// The line format and buffer sizes every [`ShardLog`] gets.
    config: LogConfig,
    /// The queue to the writer (cloned into every [`ShardLog`]; `Stop` goes here too).
    queue: Sender<Msg>,
    /// Buffers the writer emptied, for the shards to reuse.
    recycled: Receiver<Vec<u8>>,
    /// Counters and the reopen flag.
    shared: Arc<Shared>,
    /// The writer thread; `None` once it was stopped.
    writer: Option<JoinHandle<()>>,
}

impl AccessLog {
    /// start opens the configured target and starts the writer thread; `Ok(None)` when the
    /// access log is off. An error (the file cannot be opened) names the path.
    pub fn start(config: &LogConfig) -> io::Result<Option<AccessLog>> {
        let Some(sink) = Sink::open(&config.access)? else {
            return Ok(None);
        };
        let (queue, batches) = crossbeam_channel::bounded(config.access_queue);
        let (recycle, recycled) = crossbeam_channel::bounded(config.access_queue);
        let shared = Arc::new(Shared::default());
        let keep_capacity = 2 * (config.access_buffer_bytes + LINE_SLACK);
        let writer_shared = shared.clone();
        let writer = spawn_supervised(
            "ringlb-accesslog",
            move || writer::run(batches, recycle, sink, writer_shared, keep_capacity),
            // The panic is logged; the shards' hand-offs then fail and count their lines as
            // dropped, and serving goes on.
            |_| {},
        )?;
        Ok(Some(AccessLog {
            config: config.clone(),
            queue,
            recycled,
            shared,
            writer: Some(writer),
        }))
    }

    /// shard_log is a new shard's logger (move it to the shard's thread).
    pub fn shard_log(&self) -> ShardLog {
        ShardLog {
            format: RefCell::new(LineFormat::new(self.config.access_format)),
            buf: RefCell::new(Vec::with_capacity(
                self.config.access_buffer_bytes + LINE_SLACK,
            )),
            lines: Cell::new(0),
            threshold: self.config.access_buffer_bytes,
            queue: self.queue.clone(),
            recycled: self.recycled.clone(),
            shared: self.shared.clone(),
        }
    }

    /// handle is a cheap, thread-safe handle for reopening and reading the counters (for the
    /// signal thread and for metrics).
    pub fn handle(&self) -> AccessLogHandle {
        AccessLogHandle(self.shared.clone())
    }

    /// reopen asks the writer to reopen the file before it writes its next batch (SIGUSR1).
    pub fn reopen(&self) {
        self.handle().reopen();
    }

    /// dropped is how many lines were dropped because the writer's queue was full.
    pub fn dropped(&self) -> u64 {
        self.handle().dropped()
    }

    /// write_errors is how many lines were lost because writing them failed.
    pub fn write_errors(&self) -> u64 {
        self.handle().write_errors()
    }

    /// shutdown lets the writer write everything queued so far (flush the shards' logs first:
    /// dropping a [`ShardLog`] flushes it), then joins it. It waits at most 5 s; `false` when
    /// the writer did not finish in time (a stalled disk) and was left behind.
    pub fn shutdown(mut self) -> bool {
        self.stop()
    }

    /// The body of [`AccessLog::shutdown`] and of drop.
    fn stop(&mut self) -> bool {
        let Some(writer) = self.writer.take() else {
            return true;
        };
        let deadline = Instant::now() + SHUTDOWN_GRACE;
        let finished = match self.queue.send_deadline(Msg::Stop, deadline) {
            // Disconnected: the writer is already gone (it panicked); join it.
            Ok(()) | Err(SendTimeoutError::Disconnected(_)) => loop {
                if writer.is_finished() {
                    break true;
                }
                if Instant::now() >= deadline {
                    break false;
                }
                std::thread::sleep(Duration::from_millis(1));
            },
            Err(SendTimeoutError::Timeout(_)) => false,
        };
        if !finished {
            tracing::warn!("access log: the writer is stalled; leaving it behind");
            return false;
        }
        // spawn_supervised's thread catches the body's panic, so joining cannot fail.
        let _ = writer.join();
        true
    }
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        self.stop();
    }
}

/// AccessLogHandle reopens the access log and reads its counters from any thread.
#[derive(Debug, Clone)]
pub struct AccessLogHandle(Arc<Shared>);

impl AccessLogHandle {
    /// reopen asks the writer to reopen the file before it writes its next batch: call it on
    /// SIGUSR1 after logrotate renamed the file. Lines already queued may still go to the old
    /// file; nothing is lost. A no-op for stderr.
    pub fn reopen(&self) {
        self.0.reopen.store(true, Ordering::Release);
    }

    /// dropped is how many lines were dropped because the writer's queue was full.
    pub fn dropped(&self) -> u64 {
        self.0.dropped.load(Ordering::Relaxed)
    }

    /// write_errors is how many lines were lost because writing them failed.
    pub fn write_errors(&self) -> u64 {
        self.0.write_errors.load(Ordering::Relaxed)
    }
}

/// ShardLog is one shard's access logger: a local buffer of formatted lines that it hands to
/// the writer thread. `Send` (it is made on the process side) but used by one thread only.
/// Dropping it flushes it.
#[derive(Debug)]
pub struct ShardLog {
    /// The format and the cached timestamp of the current second.
    format: RefCell<LineFormat>,
    /// Formatted lines not yet handed off.
    buf: RefCell<Vec<u8>>,
    /// How many lines `buf` holds.
    lines: Cell<u64>,
    /// Hand `buf` off once it holds this many bytes.
    threshold: usize,
    /// The queue to the writer.
    queue: Sender<Msg>,
    /// Buffers the writer emptied.
    recycled: Receiver<Vec<u8>>,
    /// The counters.
    shared: Arc<Shared>,
}

impl ShardLog {
    /// record appends `e` as one line, stamped with the wall clock, and hands the buffer off
    /// when it is past the threshold. Never blocks, never fails.
    pub fn record(&self, e: &Entry<'_>) {
        let full = {
            let mut buf = self.buf.borrow_mut();
            self.format
                .borrow_mut()
                .write(&mut buf, e, SystemTime::now());
            self.lines.set(self.lines.get() + 1);
            buf.len() >= self.threshold
        };
        if full {
            self.flush();
        }
    }

    /// flush hands whatever is buffered to the writer (call it on the shard's tick); nearly
    /// free when nothing is. Never blocks: if the queue is full the lines are dropped and
    /// counted.
    pub fn flush(&self) {
        let lines = self.lines.get();
        if lines == 0 {
            return;
        }
        self.lines.set(0);
        let mut buf = self.buf.borrow_mut();
        let bytes = std::mem::take(&mut *buf);
        match self.queue.try_send(Msg::Batch(Batch { bytes, lines })) {
            Ok(()) => {
                *buf = self
                    .recycled
                    .try_recv()
                    .unwrap_or_else(|_| Vec::with_capacity(self.threshold + LINE_SLACK));
            }
            Err(refused) => {
                self.shared.dropped.fetch_add(lines, Ordering::Relaxed);
                if let Msg::Batch(mut batch) = refused.into_inner() {
                    batch.bytes.clear();
                    *buf = batch.bytes;
                }
            }
        }
    }

    /// dropped is how many lines (of every shard) were dropped because the writer's queue was
    /// full.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }
}

impl Drop for ShardLog {
    fn drop(&mut self) {
        self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AccessFormat, AccessTarget};
    use std::ffi::CString;
    use std::io::Read as _;
    use std::os::unix::ffi::OsStrExt as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    use std::os::unix::io::AsRawFd as _;
    use std::path::{Path, PathBuf};

    /// A path under the temp dir no other test (or run) uses.
    fn temp_path(name: &str) -> PathBuf {
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        std::env::temp_dir().join(format!("ringlb-access-{}-{n}-{name}", std::process::id()))
    }

    fn file_config(path: &Path, format: AccessFormat) -> LogConfig {
        LogConfig {
            access: AccessTarget::File(path.to_path_buf()),
            access_format: format,
            ..LogConfig::default()
        }
    }

    /// A typical entry whose target is `/n`.
    fn entry(target: &[u8]) -> Entry<'_> {
        Entry {
            client: "192.0.2.7:51234".parse().unwrap(),
            method: b"GET",
            target,
            version: "HTTP/1.1",
            status: 200,
            body_bytes: 1234,
            referer: None,
            user_agent: Some(b"curl/8.5.0"),
            upstream: Some("api"),
            peer: Some("10.0.0.1:8080".parse().unwrap()),
            tries: 1,
            upstream_time: Some(Duration::from_millis(2)),
            total_time: Duration::from_millis(3),
        }
    }

    /// Records `/<n>` for every n in `range`.
    fn record_range(log: &ShardLog, range: std::ops::Range<u32>) {
        for n in range {
            log.record(&entry(format!("/{n}").as_bytes()));
        }
    }

    /// The targets of the combined lines in `path`, in order.
    fn targets(path: &Path) -> Vec<String> {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        text.lines()
            .map(|l| {
                l.split('"')
                    .nth(1)
                    .and_then(|request| request.split(' ').nth(1))
                    .unwrap_or_else(|| panic!("not a combined line: {l:?}"))
                    .to_string()
            })
            .collect()
    }

    /// Waits (5 s at most) until `path` holds `lines` lines.
    #[track_caller]
    fn wait_for_lines(path: &Path, lines: usize) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while targets(path).len() < lines {
            assert!(
                Instant::now() < deadline,
                "{} never got {lines} lines",
                path.display()
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    #[test]
    fn off_starts_nothing() {
        assert!(AccessLog::start(&LogConfig::default()).unwrap().is_none());
    }

    #[test]
    fn a_file_that_cannot_be_opened_is_an_error_naming_it() {
        let config = file_config(Path::new("/nonexistent/ringlb/a.log"), AccessFormat::Json);
        let e = AccessLog::start(&config).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("cannot open access log `/nonexistent/ringlb/a.log`: "),
            "{e}"
        );
    }

    #[test]
    fn lines_reach_the_file_in_order_from_every_shard() {
        let path = temp_path("order.log");
        let config = LogConfig {
            access_buffer_bytes: 1024,
            ..file_config(&path, AccessFormat::Combined)
        };
        let log = AccessLog::start(&config).unwrap().expect("on");
        let (a, b) = (log.shard_log(), log.shard_log());
        // 300 lines of ~140 bytes: many hand-offs past the 1 KiB threshold.
        record_range(&a, 0..300);
        a.flush();
        // A second shard on its own thread; dropping it flushes it.
        std::thread::spawn(move || record_range(&b, 1000..1003))
            .join()
            .unwrap();
        // An empty flush sends nothing.
        a.flush();
        drop(a);
        assert!(log.shutdown(), "the writer finished");

        let got = targets(&path);
        let want: Vec<String> = (0..300)
            .chain(1000..1003)
            .map(|n| format!("/{n}"))
            .collect();
        assert_eq!(got, want);
        let text = std::fs::read_to_string(&path).unwrap();
        let first = text.lines().next().unwrap();
        // The stamp is the wall clock; the rest is fixed.
        assert!(first.starts_with("192.0.2.7 - - ["), "{first}");
        assert!(
            first.ends_with(
                " +0000] \"GET /0 HTTP/1.1\" 200 1234 \"-\" \"curl/8.5.0\" \"api\" \
                 10.0.0.1:8080 1 0.002 0.003"
            ),
            "{first}"
        );
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn json_lines_in_the_file_parse() {
        let path = temp_path("json.log");
        let log = AccessLog::start(&file_config(&path, AccessFormat::Json))
            .unwrap()
            .expect("on");
        let shard = log.shard_log();
        shard.record(&entry(b"/\xff\"\n"));
        drop(shard);
        assert!(log.shutdown());
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["target"], "/\u{ff}\"\n");
        assert_eq!(v["status"], 200);
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn reopen_after_logrotate_renamed_the_file() {
        let path = temp_path("rotate.log");
        let rotated = path.with_extension("log.1");
        let log = AccessLog::start(&file_config(&path, AccessFormat::Combined))
            .unwrap()
            .expect("on");
        let shard = log.shard_log();
        record_range(&shard, 0..2);
        shard.flush();
        wait_for_lines(&path, 2);

        // logrotate: rename, then SIGUSR1.
        std::fs::rename(&path, &rotated).unwrap();
        log.handle().reopen();
        record_range(&shard, 2..5);
        shard.flush();
        wait_for_lines(&path, 3);
        // A second reopen with nothing renamed keeps appending to the same file.
        log.reopen();
        record_range(&shard, 5..6);
        drop(shard);
        assert!(log.shutdown());

        assert_eq!(targets(&rotated), ["/0", "/1"]);
        assert_eq!(targets(&path), ["/2", "/3", "/4", "/5"]);
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::remove_file(&rotated);
    }

    /// Makes a FIFO at `path` and opens its read end without blocking (and without reading).
    fn fifo(path: &Path) -> std::fs::File {
        let c = CString::new(path.as_os_str().as_bytes()).unwrap();
        // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
        let rc = unsafe { libc::mkfifo(c.as_ptr(), 0o600) };
        assert_eq!(rc, 0, "mkfifo: {}", io::Error::last_os_error());
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .unwrap()
    }

    #[test]
    fn a_stalled_writer_drops_and_counts_whole_batches() {
        let path = temp_path("stalled.fifo");
        let mut reader = fifo(&path);
        let config = LogConfig {
            access_queue: 1,
            access_buffer_bytes: 1024,
            ..file_config(&path, AccessFormat::Combined)
        };
        let log = AccessLog::start(&config).unwrap().expect("on");
        let handle = log.handle();
        let shard = log.shard_log();
        // Nobody reads: the pipe fills, the writer blocks in write, the queue (1 batch) fills,
        // and then hand-offs drop.
        let mut recorded = 0u64;
        let deadline = Instant::now() + Duration::from_secs(10);
        while handle.dropped() < 100 {
            assert!(
                Instant::now() < deadline,
                "nothing dropped after {recorded} lines"
            );
            // Two lines a batch: drops count lines, not batches.
            shard.record(&entry(b"/stalled"));
            shard.record(&entry(b"/stalled"));
            shard.flush();
            recorded += 2;
        }
        assert_eq!(shard.dropped(), handle.dropped());

        // Now read everything: what was not dropped arrives, and nothing else.
        let drain = std::thread::spawn(move || {
            let mut got = Vec::new();
            let mut chunk = [0u8; 65536];
            loop {
                match reader.read(&mut chunk) {
                    Ok(0) => return got,
                    Ok(n) => got.extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(1))
                    }
                    Err(e) => panic!("reading the fifo: {e}"),
                }
            }
        });
        drop(shard);
        assert!(log.shutdown(), "the writer finished once the pipe was read");
        let got = drain.join().unwrap();
        let written = got.iter().filter(|&&b| b == b'\n').count() as u64;
        assert_eq!(written + handle.dropped(), recorded);
        assert_eq!(handle.write_errors(), 0);
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn a_failed_write_is_counted_not_fatal() {
        let path = temp_path("closed.fifo");
        let reader = fifo(&path);
        let log = AccessLog::start(&file_config(&path, AccessFormat::Json))
            .unwrap()
            .expect("on");
        // The only reader goes away: every write fails with EPIPE.
        drop(reader);
        let handle = log.handle();
        let shard = log.shard_log();
        for _ in 0..3 {
            shard.record(&entry(b"/lost"));
            shard.flush();
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while log.write_errors() < 3 {
            assert!(
                Instant::now() < deadline,
                "{} write errors",
                log.write_errors()
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        // The writer lives on.
        shard.record(&entry(b"/lost"));
        drop(shard);
        assert!(log.shutdown());
        assert_eq!(handle.write_errors(), 4);
        assert_eq!(handle.dropped(), 0);
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn shutdown_leaves_a_writer_stalled_for_good_behind() {
        let path = temp_path("never-read.fifo");
        let reader = fifo(&path);
        // SAFETY: F_GETPIPE_SZ only reads the pipe's capacity; `reader` is an open fd.
        let capacity = unsafe { libc::fcntl(reader.as_raw_fd(), libc::F_GETPIPE_SZ) };
        let capacity = usize::try_from(capacity).expect("F_GETPIPE_SZ gives the capacity");
        let config = LogConfig {
            access_buffer_bytes: 4 * capacity,
            ..file_config(&path, AccessFormat::Combined)
        };
        let log = AccessLog::start(&config).unwrap().expect("on");
        let shard = log.shard_log();
        // One batch larger than the pipe, which nobody reads: the writer can never finish it.
        let mut lines = 0;
        while lines * 100 <= 2 * capacity {
            shard.record(&entry(b"/stalled"));
            lines += 1;
        }
        drop(shard);
        let start = Instant::now();
        assert!(!log.shutdown(), "the writer cannot finish: nobody reads");
        let waited = start.elapsed();
        assert!(
            waited >= SHUTDOWN_GRACE && waited < SHUTDOWN_GRACE + Duration::from_secs(2),
            "{waited:?}"
        );
        // The writer left behind gets EPIPE and ends.
        drop(reader);
        let _ = std::fs::remove_file(&path);
    }
}
