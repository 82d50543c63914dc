//! [`Hooks`]: the library user's additions to the control thread (custom checks by upstream
//! name, health observers), handed over at start and kept across reloads.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::custom::HealthCheck;
use super::observer::{HealthObserver, Observers};
use crate::config::{CheckKind, Config};

/// Hooks are the custom checks (by upstream name) and the health observers the control
/// thread runs; see [`StartOptions::health_check`](crate::server::StartOptions::health_check)
/// and [`StartOptions::health_observer`](crate::server::StartOptions::health_observer).
#[derive(Clone, Default)]
pub struct Hooks {
    /// Custom checks by upstream name.
    checks: BTreeMap<String, Arc<dyn HealthCheck>>,
    /// Observers, in registration order.
    pub(crate) observers: Observers,
}

impl Hooks {
    /// Registers `check` for the upstream named `upstream` (replacing an earlier one).
    pub fn add_check(&mut self, upstream: &str, check: Arc<dyn HealthCheck>) {
        self.checks.insert(upstream.to_string(), check);
    }

    /// Registers `observer` (after the ones registered before).
    pub fn add_observer(&mut self, observer: Arc<dyn HealthObserver>) {
        self.observers.0.push(observer);
    }

    /// The check registered for `upstream`, if any.
    pub fn check(&self, upstream: &str) -> Option<&Arc<dyn HealthCheck>> {
        self.checks.get(upstream)
    }

    /// Whether `config` can run with these hooks: every upstream with
    /// `health = { kind = "custom" }` has a check registered. `Err((key, reason))`.
    pub(crate) fn check_config(&self, config: &Config) -> Result<(), (String, String)> {
        for (i, u) in config.upstreams.iter().enumerate() {
            let custom = u
                .health
                .as_ref()
                .is_some_and(|h| h.kind == CheckKind::Custom);
            if custom && self.check(&u.name).is_none() {
                return Err((
                    format!("upstream[{i}].health.kind"),
                    format!(
                        "upstream `{}` has `kind = \"custom\"` but no health check is \
                         registered for it (StartOptions::health_check)",
                        u.name
                    ),
                ));
            }
        }
        Ok(())
    }

    /// What start also requires: every registered check names an upstream with
    /// `kind = "custom"` (a typo in the name would otherwise go unnoticed). `Err(reason)`.
    pub(crate) fn check_registrations(&self, config: &Config) -> Result<(), String> {
        for name in self.checks.keys() {
            let custom = config.upstreams.iter().any(|u| {
                u.name == *name
                    && u.health
                        .as_ref()
                        .is_some_and(|h| h.kind == CheckKind::Custom)
            });
            if !custom {
                return Err(format!(
                    "a health check is registered for upstream `{name}`, but no upstream of \
                     that name has `health = {{ kind = \"custom\", … }}`"
                ));
            }
        }
        Ok(())
    }
}
