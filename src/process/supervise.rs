//! Supervision of the threads the process cannot run without: the control thread (health
//! checks, admin) and the binary's signal thread.
//!
//! A panic there must not leave the process half alive (serving traffic with no health checks,
//! or ignoring SIGTERM). [`run_supervised`] catches it, logs it at error with the thread's name
//! and the panic message, and runs the caller's `on_panic` action, which stops the process
//! (the control thread stops every shard; the signal thread starts a graceful shutdown and
//! the binary then exits non-zero). The action is a parameter so that a test can observe it
//! instead of losing its own process.

use std::any::Any;
use std::io;
use std::panic::{self, AssertUnwindSafe};
use std::thread::JoinHandle;

/// PanicReport is what a supervised thread's panic leaves behind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PanicReport {
    /// The supervised thread's name (e.g. `ringlb-ctl`).
    pub thread: String,
    /// The panic message (`<non-string panic payload>` when it carried something else).
    pub message: String,
}

/// run_supervised runs `body` on the current thread. If it panics, the panic is logged at
/// error (`thread `NAME` panicked: MESSAGE`), `on_panic` runs with the report, and the result
/// is `None`; otherwise the result is `Some` of what `body` returned.
pub fn run_supervised<R>(
    thread: &str,
    body: impl FnOnce() -> R,
    on_panic: impl FnOnce(&PanicReport),
) -> Option<R> {
    // AssertUnwindSafe: whatever `body` left behind half-updated is dropped with it; the
    // caller's `on_panic` stops everything that depended on it, so nothing observes it.
    match panic::catch_unwind(AssertUnwindSafe(body)) {
        Ok(r) => Some(r),
        Err(payload) => {
            let report = PanicReport {
                thread: thread.to_string(),
                message: panic_message(payload.as_ref()),
            };
            tracing::error!("thread `{}` panicked: {}", report.thread, report.message);
            on_panic(&report);
            None
        }
    }
}

/// spawn_supervised spawns a thread named `name` running `body` under `run_supervised`
/// with `on_panic` as the panic action. Joining it succeeds even when `body` panicked.
pub fn spawn_supervised<F, P>(name: &str, body: F, on_panic: P) -> io::Result<JoinHandle<()>>
where
    F: FnOnce() + Send + 'static,
    P: FnOnce(&PanicReport) + Send + 'static,
{
    let thread = name.to_string();
    std::thread::Builder::new()
        .name(thread.clone())
        .spawn(move || {
            run_supervised(&thread, body, on_panic);
        })
}

/// The message of a panic payload (`panic!` carries a `&str` or a `String`).
fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "<non-string panic payload>".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{mpsc, Arc, Mutex};

    /// Collects everything logged through it.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().expect("not poisoned").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.lock().expect("not poisoned")).into_owned()
        }
    }

    /// Serialises this module's tests: they share `run_supervised`'s log callsite, and a
    /// test logging through it with no subscriber while another installs its capturing one
    /// can leave the callsite's cached interest at "never" for the capturing test.
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

    fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
        ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` with every log line of this thread going to the returned buffer.
    fn logged<R>(f: impl FnOnce() -> R) -> (R, String) {
        let out = Captured::default();
        let writer = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        let r = tracing::subscriber::with_default(subscriber, f);
        (r, out.text())
    }

    #[test]
    fn a_panic_is_logged_and_the_exit_action_runs() {
        let _serial = one_at_a_time();
        let mut exits = Vec::new();
        let (result, log) = logged(|| {
            run_supervised(
                "ringlb-test",
                || -> u32 { panic!("probe table corrupt: {}", 7) },
                |r| exits.push(r.clone()),
            )
        });
        assert_eq!(result, None);
        assert_eq!(
            exits,
            vec![PanicReport {
                thread: "ringlb-test".into(),
                message: "probe table corrupt: 7".into(),
            }],
            "the exit action runs exactly once, with the report"
        );
        let line = log
            .lines()
            .find(|l| l.contains("panicked"))
            .unwrap_or_else(|| panic!("no panic line in the log: {log:?}"));
        assert!(line.contains("ERROR"), "{line}");
        assert!(
            line.contains("thread `ringlb-test` panicked: probe table corrupt: 7"),
            "{line}"
        );
    }

    #[test]
    fn a_static_str_payload_is_reported_too() {
        let _serial = one_at_a_time();
        let mut message = None;
        run_supervised(
            "t",
            || panic!("plain"),
            |r| message = Some(r.message.clone()),
        );
        assert_eq!(message.as_deref(), Some("plain"));
    }

    #[test]
    fn a_body_that_returns_takes_no_exit_path() {
        let _serial = one_at_a_time();
        let mut exited = false;
        let (result, log) = logged(|| run_supervised("t", || 42, |_| exited = true));
        assert_eq!(result, Some(42));
        assert!(!exited);
        assert!(log.is_empty(), "nothing to log: {log:?}");
    }

    #[test]
    fn a_spawned_thread_that_panics_runs_the_action_on_that_thread() {
        let _serial = one_at_a_time();
        let (tx, rx) = mpsc::channel();
        let t = spawn_supervised(
            "ringlb-sup-test",
            || panic!("signal loop broke"),
            move |r| {
                let name = std::thread::current().name().map(str::to_string);
                let _ = tx.send((r.clone(), name));
            },
        )
        .expect("spawn");
        assert!(t.join().is_ok(), "the supervisor caught the panic");
        let (report, name) = rx
            .try_recv()
            .expect("the exit action ran before the thread ended");
        assert_eq!(report.thread, "ringlb-sup-test");
        assert_eq!(report.message, "signal loop broke");
        assert_eq!(name.as_deref(), Some("ringlb-sup-test"));
    }
}
