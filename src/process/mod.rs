//! What keeps the process controllable when its surroundings misbehave: a closed stderr, a
//! panicking control or signal thread, a flood of identical warnings.
//!
//! - `log_writer`: the tracing writer. Writing the log never fails and never panics: a write
//!   that the OS refuses (a closed pipe, a full disk) is dropped and counted
//!   (`dropped_log_writes`).
//! - `rate_limit`: `RateLimit`, a shard-local (Cell-based, lock-free) limiter for warnings
//!   that can repeat many times a second (`accept failed: Too many open files`): one line per
//!   interval, carrying the count of the repeats it suppressed.
//! - `supervise`: runs a thread body under `catch_unwind`; a panic is logged and handed to an
//!   injectable action (for the control thread: stop every shard, so the process exits
//!   non-zero instead of running half alive).

mod log_writer;
mod rate_limit;
mod supervise;

pub(crate) use log_writer::dropped_log_writes;
pub use log_writer::StderrLog;
pub(crate) use rate_limit::RateLimit;
pub use supervise::{spawn_supervised, PanicReport};
