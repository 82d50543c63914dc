//! The control thread's side of the admin endpoint ([`admin::Host`]): what `/status`,
//! `/upstreams` and `/config` show, and how `POST /reload` and the peer changes are applied —
//! a peer change edits the running configuration's file model, validates it again in full and
//! takes the reload path (one snapshot to every shard), so it is exactly as safe as a reload.
//! A change lasts until the next reload from the file.

use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::{Instant, UNIX_EPOCH};

use serde_json::{json, Value};

use super::Ctl;
use crate::admin::{self, ApiError, PeerChange, PeerPatch};
use crate::balance::PeerId;
use crate::config::file::PeerFile;
use crate::config::{Config, GroupId, UpstreamConfig, MAX_WEIGHT};
use crate::health::state::Status;
use crate::metrics::{render, ControlGauges, PeerControl, PeerState};
use crate::process::dropped_log_writes;

impl admin::Host for Rc<Ctl> {
    fn token(&self) -> Option<String> {
        self.config.borrow().server.admin_token.clone()
    }

    fn status(&self) -> Value {
        status(self)
    }

    fn upstreams(&self) -> Value {
        let config = self.config.borrow().clone();
        let groups: Vec<Value> = (0..config.upstreams.len())
            .map(|gi| upstream_json(self, &config, GroupId::new(gi)))
            .collect();
        json!({
            "generation": self.generation.get(),
            "upstreams": groups,
        })
    }

    fn config_toml(&self) -> String {
        self.config.borrow().to_toml()
    }

    fn metrics(&self) -> String {
        let config = self.config.borrow().clone();
        let groups = self.groups.borrow();
        let mut peers = Vec::new();
        for (u, g) in config.upstreams.iter().zip(groups.iter()) {
            for (p, h) in u.peers.iter().zip(g.peers.iter()) {
                peers.push(PeerControl {
                    upstream: u.name.clone(),
                    peer: p.address.clone(),
                    state: match h.status() {
                        Status::Up => PeerState::Up,
                        Status::Down => PeerState::Down,
                        Status::Ejected => PeerState::Ejected,
                        Status::Unknown => PeerState::Unknown,
                    },
                    ejections: h.ejections,
                });
            }
        }
        let reloads = self.reloads.borrow().clone();
        let gauges = ControlGauges {
            version: env!("CARGO_PKG_VERSION").to_string(),
            peers,
            reloads_ok: reloads.ok,
            reloads_error: reloads.error,
            last_reload_success_unix_seconds: reloads.last_success_unix,
            observations_dropped: self
                .stats
                .iter()
                .map(|s| s.dropped_observations.load(Ordering::Relaxed))
                .sum(),
        };
        let mut out = String::with_capacity(16 * 1024);
        render(&self.metrics.borrow(), &gauges, &mut out);
        out
    }

    fn reload(&self) -> Result<Value, ApiError> {
        match Ctl::reload(self, None) {
            Ok(report) => Ok(json!({
                "ok": true,
                "generation": report.generation,
                "needs_restart": report.needs_restart,
            })),
            Err(reason) => Err(ApiError::new(400, None, reason)),
        }
    }

    fn change_peers(&self, change: PeerChange) -> Result<Value, ApiError> {
        let config = self.config.borrow().clone();
        let name = match &change {
            PeerChange::Add { upstream, .. }
            | PeerChange::Update { upstream, .. }
            | PeerChange::Remove { upstream, .. } => upstream.clone(),
        };
        let Some(gi) = config.upstream_index(&name) else {
            return Err(ApiError::new(
                404,
                Some("upstream"),
                format!("no upstream named `{name}`"),
            ));
        };
        let group = &config.upstreams[gi.index()];
        let find = |address: &str| -> Result<PeerId, ApiError> {
            group
                .peers
                .iter()
                .position(|p| p.address == address)
                .map(PeerId::new)
                .ok_or_else(|| {
                    ApiError::new(
                        404,
                        Some("address"),
                        format!("upstream `{name}` has no peer `{address}`"),
                    )
                })
        };
        let check_weight = |w: Option<u32>| match w {
            Some(w) if w > MAX_WEIGHT => Err(ApiError::new(
                400,
                Some("weight"),
                format!("must be between 0 and {MAX_WEIGHT}, got {w}"),
            )),
            _ => Ok(()),
        };
        let edit = match change {
            PeerChange::Add { peer, .. } => {
                check_weight(peer.weight)?;
                if group.peers.iter().any(|p| p.address == peer.address) {
                    return Err(ApiError::new(
                        409,
                        Some("address"),
                        format!("upstream `{name}` already has peer `{}`", peer.address),
                    ));
                }
                Edit::Push(PeerFile {
                    address: peer.address,
                    weight: peer.weight,
                    backup: peer.backup,
                    region: peer.region,
                    drain: None,
                    tls: None,
                })
            }
            PeerChange::Update { address, patch, .. } => {
                check_weight(patch.weight)?;
                Edit::Patch(find(&address)?, patch)
            }
            PeerChange::Remove { address, .. } => {
                let i = find(&address)?;
                if group.peers.len() == 1 {
                    return Err(ApiError::new(
                        409,
                        Some("address"),
                        format!("`{address}` is the last peer of upstream `{name}`"),
                    ));
                }
                Edit::Remove(i)
            }
        };
        let next = config
            .edited(|file| {
                // The file model lists the upstreams and peers in the same order as the
                // validated config.
                if let Some(u) = file.upstream.get_mut(gi.index()) {
                    edit.apply(&mut u.peers);
                }
                Ok(())
            })
            .map_err(|e| ApiError::new(400, Some(&e.key), e.reason))?;
        let report = Ctl::reload(self, Some(next)).map_err(|e| ApiError::new(400, None, e))?;
        let config = self.config.borrow().clone();
        Ok(json!({
            "ok": true,
            "generation": report.generation,
            "upstream": upstream_json(self, &config, gi),
        }))
    }
}

/// Edit is a checked change of one upstream's peer list in the file model.
enum Edit {
    /// Append a peer.
    Push(PeerFile),
    /// Change a peer.
    Patch(PeerId, PeerPatch),
    /// Remove a peer.
    Remove(PeerId),
}

impl Edit {
    fn apply(self, peers: &mut Vec<PeerFile>) {
        match self {
            Edit::Push(p) => peers.push(p),
            Edit::Patch(id, patch) => {
                let Some(p) = peers.get_mut(id.index()) else {
                    return;
                };
                if let Some(w) = patch.weight {
                    p.weight = Some(w);
                }
                if let Some(b) = patch.backup {
                    p.backup = Some(b);
                }
                if let Some(d) = patch.drain {
                    p.drain = d.then_some(true);
                }
            }
            Edit::Remove(id) => {
                if id.index() < peers.len() {
                    peers.remove(id.index());
                }
            }
        }
    }
}

/// One group and its peers as `/upstreams` shows them.
fn upstream_json(ctl: &Ctl, config: &Config, gi: GroupId) -> Value {
    let u: &UpstreamConfig = &config.upstreams[gi.index()];
    let groups = ctl.groups.borrow();
    let health = groups.get(gi.index());
    let peers: Vec<Value> = u
        .peers
        .iter()
        .enumerate()
        .map(|(pi, p)| {
            let h = health.and_then(|g| g.peers.get(pi));
            json!({
                "address": p.address,
                "addr": p.addr.to_string(),
                "weight": p.weight,
                "backup": p.backup,
                "region": p.region,
                "drain": p.drain,
                "state": h.map(|h| h.status().name()),
                "eligible": h.is_some_and(|h| h.is_eligible()) && p.weight > 0 && !p.drain,
            })
        })
        .collect();
    json!({
        "name": u.name,
        "algorithm": u.algorithm.name(),
        "peers": peers,
    })
}

/// The `/status` document.
fn status(ctl: &Ctl) -> Value {
    let groups = ctl.groups.borrow();
    let config = ctl.config.borrow().clone();
    let now = Instant::now();
    let ms_since = |t: Instant| now.saturating_duration_since(t).as_millis() as u64;
    let groups: Vec<Value> = config
        .upstreams
        .iter()
        .zip(groups.iter())
        .map(|(u, g)| {
            let peers: Vec<Value> = u
                .peers
                .iter()
                .zip(g.peers.iter())
                .map(|(p, h)| {
                    let totals = ctl
                        .metrics
                        .borrow()
                        .peer_totals(&u.name, &p.address)
                        .unwrap_or_default();
                    let last_check = h.last_check.as_ref().map(|c| {
                        json!({
                            "ok": c.ok,
                            "result": c.detail,
                            "ago_ms": ms_since(c.at),
                            "unix_ms": c.wall.duration_since(UNIX_EPOCH)
                                .map_or(0, |d| d.as_millis() as u64),
                        })
                    });
                    json!({
                        "address": p.address,
                        "addr": p.addr.to_string(),
                        "weight": p.weight,
                        "backup": p.backup,
                        "region": p.region,
                        "drain": p.drain,
                        "state": h.status().name(),
                        "eligible": h.is_eligible(),
                        "why": h.why,
                        "last_check": last_check,
                        "consecutive_successes": h.successes,
                        "consecutive_failures": h.failures,
                        "passive_consecutive_failures": h.passive_failures,
                        "ejected": h.is_ejected(),
                        "ejected_for_ms": h.ejected_until
                            .map_or(0, |t| t.saturating_duration_since(now).as_millis() as u64),
                        "ejections": h.ejections,
                        "changed_ago_ms": h.changed_at.map(ms_since),
                        "requests_total": totals.requests,
                        "failures_total": totals.failures,
                        "active_requests": totals.active,
                        "average_response_ms": totals
                            .mean_response_seconds
                            .map(|s| (s * 1e6).round() / 1e3),
                    })
                })
                .collect();
            json!({
                "name": u.name,
                "active_check": u.health.is_some(),
                "local_region": u.local_region,
                "when_all_down": u.when_all_down.name(),
                "ejected": g.ejected(),
                "max_ejected": g.max_ejected(),
                "peers": peers,
            })
        })
        .collect();
    let shards: Vec<Value> = ctl
        .stats
        .iter()
        .enumerate()
        .map(|(i, s)| {
            json!({
                "shard": i,
                "sent_observations": s.sent_observations.load(Ordering::Relaxed),
                "dropped_observations": s.dropped_observations.load(Ordering::Relaxed),
                "health_changes_applied": s.changes_applied.load(Ordering::Relaxed),
                "last_apply_lag_us": s.last_apply_lag_ns.load(Ordering::Relaxed) / 1000,
                "max_apply_lag_us": s.max_apply_lag_ns.load(Ordering::Relaxed) / 1000,
            })
        })
        .collect();
    let reloads = ctl.reloads.borrow().clone();
    json!({
        "uptime_ms": ms_since(ctl.started),
        "generation": ctl.generation.get(),
        "reloads": {
            "ok": reloads.ok,
            "error": reloads.error,
            "last_success_unix": reloads.last_success_unix,
            "last_error": reloads.last_error,
        },
        "observations_received": ctl.received.get(),
        "health_changes_pushed": ctl.pushed.get(),
        "dropped_log_writes": dropped_log_writes(),
        "groups": groups,
        "shards": shards,
    })
}
