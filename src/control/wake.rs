//! Waking the other side's event loop from another thread, so that neither a shard nor the
//! control thread has to poll its crossbeam channel on a timer: after a message is queued, one
//! byte goes into a socket pair the receiving runtime waits on (an io_uring read or an epoll
//! wait, like any socket). An idle ringlb then sleeps until there is something to do.
//!
//! Bytes are only a doorbell: a full socket buffer (EAGAIN) means a wake-up is already pending,
//! and the receiver drains the channel, not a byte count.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;

use monoio::io::AsyncReadRent;

/// Waker rings one receiver's doorbell; cheap to clone, usable from any thread, never blocks.
#[derive(Debug, Clone)]
pub struct Waker(Arc<UnixStream>);

impl Waker {
    /// Wakes the receiver (if it is waiting; else its next wait returns at once).
    pub fn wake(&self) {
        let _ = (&*self.0).write(&[1]);
    }
}

/// Doorbell is the receiving end before it is registered with the runtime that waits on it
/// (it moves to that runtime's thread; [`Doorbell::register`] is called there).
#[derive(Debug)]
pub struct Doorbell(UnixStream);

impl Doorbell {
    /// Registers the doorbell with the current thread's monoio runtime.
    pub fn register(self) -> std::io::Result<Bell> {
        monoio::net::UnixStream::from_std(self.0).map(Bell)
    }
}

/// Bell is a doorbell registered with a runtime: what that runtime's loop waits on.
pub struct Bell(monoio::net::UnixStream);

impl Bell {
    /// Waits until woken or `timeout` passes; returns whether it was woken.
    pub async fn wait(&mut self, timeout: Duration) -> bool {
        let buf = vec![0u8; 4096];
        match monoio::time::timeout(timeout, self.0.read(buf)).await {
            Ok((Ok(n), _)) => n > 0,
            Ok((Err(_), _)) => {
                monoio::time::sleep(timeout).await;
                false
            }
            Err(_) => false,
        }
    }
}

/// A connected waker and doorbell.
pub fn doorbell() -> std::io::Result<(Waker, Doorbell)> {
    let (tx, rx) = UnixStream::pair()?;
    tx.set_nonblocking(true)?;
    rx.set_nonblocking(true)?;
    Ok((Waker(Arc::new(tx)), Doorbell(rx)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn a_wake_ends_the_wait_and_an_unwoken_wait_times_out() {
        let (waker, bell) = doorbell().unwrap();
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut bell = bell.register().unwrap();
            let t = Instant::now();
            assert!(!bell.wait(Duration::from_millis(30)).await);
            assert!(t.elapsed() >= Duration::from_millis(30));
            let w = waker.clone();
            let t = Instant::now();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(20));
                w.wake();
            });
            assert!(bell.wait(Duration::from_secs(10)).await, "woken");
            assert!(t.elapsed() < Duration::from_secs(5));
            // Many wakes never block the waker; one wait takes them all (or some of them).
            for _ in 0..100_000 {
                waker.wake();
            }
            assert!(bell.wait(Duration::from_secs(1)).await);
        });
    }
}
