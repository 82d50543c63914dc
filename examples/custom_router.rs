//! A custom picker in front of three upstream groups:
//!
//! - requests carrying `X-Canary: true` go to the `canary` group;
//! - `/api…` goes to the `api` group with session affinity on the `X-User-Id` header (the
//!   picker hashes the header; the group balances with `consistent_hash`, so one user always
//!   lands on the same peer while it is up);
//! - everything else goes round robin over the `web` group.
//!
//! Run it with `cargo run --example custom_router` and try:
//!
//! ```sh
//! curl -s -H 'X-User-Id: alice' http://127.0.0.1:8081/api/profile   # always the same api peer
//! curl -s -H 'X-Canary: true' http://127.0.0.1:8081/                 # the canary backend
//! curl -s http://127.0.0.1:8081/                                     # web peers in rotation
//! ```

use std::sync::Arc;

use ringlb::balance::stable_hash;
use ringlb::demo::DemoBackends;
use ringlb::failover::FailureHooks;
use ringlb::proxy::{Pick, Picker, RequestInfo, Upstreams};
use ringlb::{Config, Server};

/// CustomRouter is the picker: canary header, then `/api` with user affinity, then web.
pub struct CustomRouter;

/// The policy's retry decisions are fine here: no hooks overridden.
impl FailureHooks for CustomRouter {}

impl Picker for CustomRouter {
    fn pick(&self, req: &RequestInfo<'_>, upstreams: &Upstreams<'_>) -> Pick {
        if req
            .header("x-canary")
            .is_some_and(|v| v.eq_ignore_ascii_case(b"true"))
        {
            return Pick {
                upstream: upstreams.index("canary"),
                hash: None,
            };
        }
        if req.path().starts_with(b"/api") {
            return Pick {
                upstream: upstreams.index("api"),
                hash: req.header("x-user-id").map(stable_hash),
            };
        }
        Pick {
            upstream: upstreams.index("web"),
            hash: None,
        }
    }
}

/// The config of the example: `listen` and the three groups over the given backends
/// (api: two peers, canary: one, web: two).
pub fn example_config(listen: &str, backends: &[std::net::SocketAddr]) -> String {
    let peers = |addrs: &[std::net::SocketAddr]| {
        addrs
            .iter()
            .map(|a| format!("{{ address = \"{a}\" }}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "[server]\nlisten = [\"{listen}\"]\nworkers = 1\nadmin = \"\"\n\n\
         [[upstream]]\nname = \"api\"\nalgorithm = \"consistent_hash\"\nhash_key = \"header:X-User-Id\"\npeers = [{}]\n\n\
         [[upstream]]\nname = \"canary\"\npeers = [{}]\n\n\
         [[upstream]]\nname = \"web\"\nalgorithm = \"round_robin\"\npeers = [{}]\n",
        peers(&backends[0..2]),
        peers(&backends[2..3]),
        peers(&backends[3..5]),
    )
}

#[allow(dead_code)]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let backends = DemoBackends::start(5)?;
    let text = example_config("127.0.0.1:8081", &backends.addrs);
    let config = Config::from_toml_str(&text, "<custom_router example>")?;
    let server = Server::start_with_picker(config, Arc::new(CustomRouter))?;
    println!(
        "custom_router example on http://{}/",
        server.listen_addrs()[0]
    );
    println!("  api peers: demo 1, 2 (affinity on X-User-Id); canary: demo 3; web: demo 4, 5");
    println!("Ctrl-C to stop.");
    let handle = server.shutdown_handle();
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])?;
    std::thread::spawn(move || {
        if signals.forever().next().is_some() {
            handle.shutdown();
        }
    });
    server.wait();
    Ok(())
}
