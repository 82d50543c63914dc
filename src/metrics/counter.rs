//! Single-writer counters and gauges.
//!
//! # The single-writer contract
//!
//! Every value here is written by exactly one thread: the shard that owns it (the one whose
//! snapshot handed it the `Arc`). That thread updates with a relaxed `load` followed by a relaxed
//! `store`, which on x86-64 and AArch64 compiles to plain moves — no lock-prefixed
//! read-modify-write, no contention on the request path (invariant 1). Any other thread (the
//! control thread, at scrape time) only reads with a relaxed `load` and may see a value a few
//! updates old, never a torn one.
//!
//! Two writers on one value would not be undefined behaviour (these are atomics), but they
//! would lose updates: that is the contract's only protection, so keep it.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// A monotonically increasing `u64` (wrapping at `u64::MAX`) with one writer.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// A counter at zero.
    pub const fn new() -> Self {
        Self(AtomicU64::new(0))
    }

    /// Adds one. Only the owning shard calls this.
    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }

    /// Adds `n`. Only the owning shard calls this.
    #[inline]
    pub fn add(&self, n: u64) {
        let v = self.0.load(Relaxed);
        self.0.store(v.wrapping_add(n), Relaxed);
    }

    /// The current value; any thread may read.
    #[inline]
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// A `u64` that goes up and down (active requests, idle connections) with one writer.
/// Going below zero saturates at zero.
#[derive(Debug, Default)]
pub struct Gauge(AtomicU64);

impl Gauge {
    /// A gauge at zero.
    pub const fn new() -> Self {
        Self(AtomicU64::new(0))
    }

    /// Adds one. Only the owning shard calls this.
    #[inline]
    pub fn inc(&self) {
        let v = self.0.load(Relaxed);
        self.0.store(v.saturating_add(1), Relaxed);
    }

    /// Subtracts one, stopping at zero. Only the owning shard calls this.
    #[inline]
    pub fn dec(&self) {
        let v = self.0.load(Relaxed);
        self.0.store(v.saturating_sub(1), Relaxed);
    }

    /// Sets the value. Only the owning shard calls this.
    #[inline]
    pub fn set(&self, v: u64) {
        self.0.store(v, Relaxed);
    }

    /// The current value; any thread may read.
    #[inline]
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// An `f64` gauge stored as its bits (a peer's EWMA response time in seconds), with one
/// writer. It starts without a value (NaN inside), so a shard that never measured the peer
/// is told apart from one that measured zero.
#[derive(Debug)]
pub struct F64Gauge(AtomicU64);

impl Default for F64Gauge {
    fn default() -> Self {
        Self::new()
    }
}

impl F64Gauge {
    /// A gauge without a value.
    pub const fn new() -> Self {
        Self(AtomicU64::new(f64::NAN.to_bits()))
    }

    /// Sets the value; a NaN clears it. Only the owning shard calls this.
    #[inline]
    pub fn set(&self, v: f64) {
        self.0.store(v.to_bits(), Relaxed);
    }

    /// Removes the value. Only the owning shard calls this.
    #[inline]
    pub fn clear(&self) {
        self.0.store(f64::NAN.to_bits(), Relaxed);
    }

    /// The current value, `None` if never set or cleared; any thread may read.
    #[inline]
    pub fn get(&self) -> Option<f64> {
        let v = f64::from_bits(self.0.load(Relaxed));
        (!v.is_nan()).then_some(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_adds_and_wraps() {
        let c = Counter::new();
        c.inc();
        c.add(41);
        assert_eq!(c.get(), 42);
        c.add(u64::MAX);
        assert_eq!(c.get(), 41);
    }

    #[test]
    fn gauge_goes_up_and_down_and_stops_at_zero() {
        let g = Gauge::new();
        g.inc();
        g.inc();
        g.dec();
        assert_eq!(g.get(), 1);
        g.dec();
        g.dec();
        assert_eq!(g.get(), 0);
        g.set(7);
        assert_eq!(g.get(), 7);
    }

    #[test]
    fn f64_gauge_tells_unset_from_zero() {
        let g = F64Gauge::new();
        assert_eq!(g.get(), None);
        g.set(0.0);
        assert_eq!(g.get(), Some(0.0));
        g.set(0.125);
        assert_eq!(g.get(), Some(0.125));
        g.clear();
        assert_eq!(g.get(), None);
    }
}
