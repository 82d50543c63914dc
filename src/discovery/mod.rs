//! Discovery: peers from DNS records (A/AAAA/SRV) or Docker containers, followed without a
//! restart.
//!
//! Resolution runs off the shards and off the control thread's monoio runtime: on the resolver
//! thread `ringlb-dns`, a small current-thread tokio runtime (hickory-resolver runs on tokio),
//! one task per discovered upstream. Each task looks, feeds the answer to its [`PeerSet`]
//! (the `hold` semantics, `set.rs`), and sends the resulting set as an [`Update`] to the control
//! thread (an unbounded crossbeam channel and the control thread's doorbell). The control
//! thread keeps the latest set of every upstream in [`Discovered`], and when one changes it
//! takes the reload path with the configuration as loaded plus the discovered peers
//! ([`Discovered::merge`]): one snapshot to every shard, surviving peers keep their state
//! (health, breaker, EWMA, loads, pooled connections), removed peers drain.
//!
//! Discovered peers come after an upstream's listed `peers`, are named by their socket address
//! (`10.0.0.1:8080`, `[::1]:8080`), and take the upstream's defaults: weight 1 (SRV: the record's
//! weight), its health check, pool, breaker and timeouts, and its `tls` (the template, with the
//! server name `tls.sni`, else the name the peer was found by: [`Found::name`]).

mod dns;
mod docker;
mod lookup;
mod set;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::Sender;
use serde_json::{json, Value};

pub(crate) use lookup::lookup;
pub(crate) use set::{Answer, Found, Outcome, PeerSet, Timing};

use crate::config::{Config, Discovery, DnsDiscovery, PeerConfig};
use crate::control::Waker;
use crate::metrics::DiscoveryGauges;

/// Update is one answer of one upstream's discovery, as the resolver thread reports it.
#[derive(Debug, Clone)]
pub(crate) struct Update {
    /// The upstream's name.
    pub upstream: String,
    /// The discovery it answers (an update for a spec no longer configured is dropped).
    pub spec: Discovery,
    /// The upstream's discovered peers after this answer, sorted by address.
    pub peers: Vec<Found>,
    /// What the answer was.
    pub outcome: Outcome,
    /// When the last valid answer came (wall clock) and its TTL in seconds.
    pub last_answer: Option<(SystemTime, Option<u32>)>,
    /// Why lookups fail, while they do.
    pub last_error: Option<String>,
    /// Whether a failure holds the last good set now.
    pub holding: bool,
    /// When the next look comes.
    pub next_look: Duration,
}

/// Sink is where a source task sends its updates: the control thread's channel and doorbell.
#[derive(Clone)]
struct Sink {
    tx: Sender<Update>,
    waker: Waker,
}

impl Sink {
    /// Sends one update built from `set` after an answer labelled `outcome`.
    fn send(
        &self,
        upstream: &str,
        spec: &Discovery,
        set: &PeerSet,
        outcome: Outcome,
        next: Duration,
    ) {
        let _ = self.tx.send(Update {
            upstream: upstream.to_string(),
            spec: spec.clone(),
            peers: set.peers().to_vec(),
            outcome,
            last_answer: set.last_answer,
            last_error: set.last_error.clone(),
            holding: set.holding(),
            next_look: next,
        });
        self.waker.wake();
    }
}

/// Command is what the control thread tells the resolver thread.
enum Command {
    /// The discovered upstreams now: (name, spec). Tasks of specs that stay keep running.
    Configure(Vec<(String, Discovery)>),
    /// End every task and the thread.
    Stop,
}

/// Resolver is the running resolver thread `ringlb-dns`; dropping it stops and joins it.
pub(crate) struct Resolver {
    tx: tokio::sync::mpsc::UnboundedSender<Command>,
    thread: Option<JoinHandle<()>>,
}

impl Resolver {
    /// Starts the thread; its updates go to `tx`, each followed by a ring of `waker`.
    pub fn start(tx: Sender<Update>, waker: Waker) -> Result<Resolver, String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot build the resolver thread's runtime: {e}"))?;
        let (cmd_tx, cmd_rx) = tokio::sync::mpsc::unbounded_channel();
        let sink = Sink { tx, waker };
        let thread = std::thread::Builder::new()
            .name("ringlb-dns".to_string())
            .spawn(move || runtime.block_on(resolver_main(cmd_rx, sink)))
            .map_err(|e| format!("cannot spawn the resolver thread: {e}"))?;
        Ok(Resolver {
            tx: cmd_tx,
            thread: Some(thread),
        })
    }

    /// Tells the thread which upstreams to discover now.
    pub fn configure(&self, specs: Vec<(String, Discovery)>) {
        let _ = self.tx.send(Command::Configure(specs));
    }
}

impl Drop for Resolver {
    fn drop(&mut self) {
        let _ = self.tx.send(Command::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The resolver thread's main task: starts and ends one task per discovered upstream.
async fn resolver_main(mut rx: tokio::sync::mpsc::UnboundedReceiver<Command>, sink: Sink) {
    let mut tasks: HashMap<String, (Discovery, tokio::task::JoinHandle<()>)> = HashMap::new();
    while let Some(cmd) = rx.recv().await {
        let specs = match cmd {
            Command::Stop => break,
            Command::Configure(specs) => specs,
        };
        tasks.retain(|name, (spec, task)| {
            let keep = specs.iter().any(|(n, s)| n == name && s == spec);
            if !keep {
                task.abort();
            }
            keep
        });
        for (name, spec) in specs {
            if tasks.contains_key(&name) {
                continue;
            }
            let task = match &spec {
                Discovery::Dns(d) => tokio::spawn(dns_source(
                    name.clone(),
                    spec.clone(),
                    d.clone(),
                    sink.clone(),
                )),
                Discovery::Docker(d) => tokio::spawn(docker::source(
                    name.clone(),
                    spec.clone(),
                    d.clone(),
                    sink.clone(),
                )),
            };
            tasks.insert(name, (spec, task));
        }
    }
    for (_, (_, task)) in tasks {
        task.abort();
    }
}

/// The hold timing of a DNS discovery.
fn dns_timing(d: &DnsDiscovery) -> Timing {
    Timing {
        refresh: d.refresh,
        min_ttl: d.min_ttl,
        max_ttl: d.max_ttl,
        hold: d.hold,
        hold_obsolete: d.hold_obsolete,
    }
}

/// One DNS-discovered upstream: look, update, sleep until the TTL (or a hold) ends, again.
async fn dns_source(upstream: String, spec: Discovery, d: DnsDiscovery, sink: Sink) {
    let mut set = PeerSet::new(&upstream, dns_timing(&d));
    let resolver = loop {
        match dns::resolver(&d) {
            Ok(r) => break r,
            Err(why) => {
                let (outcome, _) = set.observe(Answer::Failed(why), Instant::now());
                sink.send(&upstream, &spec, &set, outcome, dns::REBUILD_WAIT);
                tokio::time::sleep(dns::REBUILD_WAIT).await;
            }
        }
    };
    // hickory bounds each query by `timeout`; this bounds a whole look (SRV targets included).
    let bound = d.timeout * 4 + Duration::from_secs(1);
    loop {
        let answer = match tokio::time::timeout(bound, dns::lookup(&resolver, &d)).await {
            Ok(a) => a,
            Err(_) => Answer::Failed("timeout".to_string()),
        };
        let (outcome, wait) = set.observe(answer, Instant::now());
        sink.send(&upstream, &spec, &set, outcome, wait);
        tokio::time::sleep(wait).await;
    }
}

/// Source is what the control thread knows of one discovered upstream.
#[derive(Debug)]
struct Source {
    /// The discovery configured for it.
    spec: Discovery,
    /// Its latest update (`None` before the first answer).
    last: Option<Update>,
    /// Answers by result so far.
    updates: BTreeMap<Outcome, u64>,
    /// When the last update came.
    at: Option<Instant>,
}

/// Discovered is the control thread's view of every discovered upstream: the latest peer set
/// of each, what `/status` and `/metrics` show of it, and how it joins the loaded
/// configuration.
#[derive(Debug, Default)]
pub(crate) struct Discovered {
    sources: HashMap<String, Source>,
}

impl Discovered {
    /// Follows `loaded` (a configuration as loaded, before discovery): sources of upstreams
    /// that are gone or whose discovery changed are dropped (their peers with them). Returns
    /// the specs the resolver thread should run.
    pub fn configure(&mut self, loaded: &Config) -> Vec<(String, Discovery)> {
        let specs: Vec<(String, Discovery)> = loaded
            .upstreams
            .iter()
            .filter_map(|u| u.discovery.as_ref().map(|d| (u.name.clone(), d.clone())))
            .collect();
        self.sources
            .retain(|name, s| specs.iter().any(|(n, d)| n == name && *d == s.spec));
        for (name, spec) in &specs {
            self.sources.entry(name.clone()).or_insert_with(|| Source {
                spec: spec.clone(),
                last: None,
                updates: BTreeMap::new(),
                at: None,
            });
        }
        specs
    }

    /// Takes one update; returns whether the upstream's peers changed (a new generation is
    /// due).
    pub fn update(&mut self, u: Update) -> bool {
        let Some(source) = self.sources.get_mut(&u.upstream) else {
            return false;
        };
        if source.spec != u.spec {
            return false; // from a task the last reload replaced
        }
        *source.updates.entry(u.outcome).or_default() += 1;
        let before = source.last.as_ref().map_or(&[][..], |l| l.peers.as_slice());
        let changed = before != u.peers.as_slice();
        source.last = Some(u);
        source.at = Some(Instant::now());
        changed
    }

    /// `loaded` with each discovered upstream's peers after its listed ones (a discovered
    /// address that a listed peer already has is left out).
    pub fn merge(&self, loaded: &Config) -> Config {
        let mut out = loaded.clone();
        for u in &mut out.upstreams {
            let Some(found) = self.peers(&u.name) else {
                continue;
            };
            for f in found {
                if u.peers.iter().any(|p| p.addr == f.addr) {
                    continue;
                }
                // The upstream's `tls`, with the peer's own server name (a name rustls cannot
                // use leaves the peer out rather than speaking cleartext to it).
                let tls = match u.tls.as_ref().map(|t| t.for_name(&f.name)) {
                    None => None,
                    Some(Ok(t)) => Some(Arc::new(t)),
                    Some(Err(why)) => {
                        tracing::warn!(
                            upstream = %u.name,
                            "discovery: {} ({}) left out: no TLS server name: {why}",
                            f.addr,
                            f.record
                        );
                        continue;
                    }
                };
                u.peers.push(PeerConfig {
                    address: f.addr.to_string(),
                    addr: f.addr,
                    weight: f.weight,
                    backup: f.backup,
                    region: None,
                    drain: false,
                    tls,
                    limits: u.peer_limits,
                    timeouts: u.timeouts,
                    pool: u.pool,
                });
            }
        }
        out
    }

    /// The discovered peers of `upstream` now, if it is discovered and has answered.
    fn peers(&self, upstream: &str) -> Option<&[Found]> {
        self.sources
            .get(upstream)
            .and_then(|s| s.last.as_ref())
            .map(|l| l.peers.as_slice())
    }

    /// The `/status` part of `upstream`'s discovery (`None` when it has none).
    pub fn status(&self, upstream: &str) -> Option<Value> {
        let s = self.sources.get(upstream)?;
        let unix_ms = |t: SystemTime| {
            t.duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64)
        };
        let (name, record_type) = match &s.spec {
            Discovery::Dns(d) => (d.name.clone(), Some(d.record_type.name())),
            Discovery::Docker(d) => (d.label.clone(), None),
        };
        let last = s.last.as_ref();
        let answer = last.and_then(|l| l.last_answer);
        let updates: serde_json::Map<String, Value> = s
            .updates
            .iter()
            .map(|(o, n)| (o.name().to_string(), json!(n)))
            .collect();
        Some(json!({
            "kind": s.spec.kind(),
            "name": name,
            "type": record_type,
            "last_answer_unix_ms": answer.map(|(t, _)| unix_ms(t)),
            "last_answer_ago_ms": answer.and_then(|(t, _)| SystemTime::now().duration_since(t).ok())
                .map(|d| d.as_millis() as u64),
            "ttl_s": answer.and_then(|(_, ttl)| ttl),
            "last_result": last.map(|l| l.outcome.name()),
            "last_error": last.and_then(|l| l.last_error.clone()),
            "holding": last.is_some_and(|l| l.holding),
            "next_look_ms": last.map(|l| {
                let since = s.at.map_or(Duration::ZERO, |t| t.elapsed());
                l.next_look.saturating_sub(since).as_millis() as u64
            }),
            "updates": updates,
            "peers": last.map_or_else(Vec::new, |l| l.peers.iter().map(|f| json!({
                "address": f.addr.to_string(),
                "weight": f.weight,
                "backup": f.backup,
                "record": f.record,
            })).collect::<Vec<Value>>()),
        }))
    }

    /// Whether `address` of `upstream` is a discovered peer (not a listed one in `loaded`).
    pub fn is_discovered(&self, loaded: &Config, upstream: &str, address: &str) -> bool {
        let listed = loaded
            .upstreams
            .iter()
            .find(|u| u.name == upstream)
            .is_some_and(|u| u.peers.iter().any(|p| p.address == address));
        !listed
            && self
                .peers(upstream)
                .is_some_and(|p| p.iter().any(|f| f.addr.to_string() == address))
    }

    /// The `ringlb_discovery_*` figures, by upstream name.
    pub fn gauges(&self) -> Vec<DiscoveryGauges> {
        let mut out: Vec<DiscoveryGauges> = self
            .sources
            .iter()
            .map(|(name, s)| DiscoveryGauges {
                upstream: name.clone(),
                updates: s.updates.iter().map(|(o, n)| (o.name(), *n)).collect(),
                peers: self.peers(name).map_or(0, |p| p.len() as u64),
            })
            .collect();
        out.sort_by(|a, b| a.upstream.cmp(&b.upstream));
        out
    }
}
