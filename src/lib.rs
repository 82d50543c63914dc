//! ringlb: a thread-per-core HTTP/1.1 reverse proxy and load balancer on io_uring.
//!
//! # Layout
//! - [`config`]: the TOML file format and the validated runtime `Config`.
//! - [`control`]: the protocol between the control thread and the shards (`ControlMsg`,
//!   `HealthChange`, `Observation`, the shard's outcome reporter, the wake-up primitive).
//! - [`server`]: starts and stops the whole proxy ([`Server`]): control thread + shards.
//! - [`shard`]: one pinned thread with its own monoio runtime, listeners, pool and selectors.
//! - [`http`]: head parsing, framing, chunked codec, head rewriting, error responses.
//! - [`proxy`]: the per-connection request loop: route → select → forward → failover.
//! - [`upstream`]: peers, upstream groups, the per-shard connection pool.
//! - [`balance`]: the `Selector` trait, one file per algorithm, the eligibility wrapper.
//! - [`failover`]: retry policy, backoff, retry budget, circuit breaker, failure hooks.
//! - [`health`]: the control thread: health state machines, probes, passive ejection, and the
//!   task that serves the admin endpoint.
//! - [`admin`]: the admin HTTP endpoint (`/status`, `/health`), served through the `http` parser.
//! - [`demo`]: in-process demo backends for `ringlb demo`.
//! - [`process`]: what keeps the process controllable: a log writer that never fails, a
//!   rate limiter for repeated warnings, panic supervision of the control and signal threads.
//!
//! Invariants (see docs/architecture.md): the request path takes no locks and does no cross-shard
//! communication; one shard = one core = one runtime; bad input gets a clear HTTP answer.

pub mod admin;
pub mod balance;
pub mod config;
pub mod control;
pub mod demo;
pub mod failover;
pub mod health;
pub mod http;
pub mod process;
pub mod proxy;
pub mod server;
pub mod shard;
pub mod upstream;

pub use config::Config;
pub use server::Server;
