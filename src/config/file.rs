//! The config file format: serde structs that mirror the TOML exactly.
// STUB: to be implemented (see the config helper's brief).
use serde::Deserialize;

/// ConfigFile is the whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConfigFile {}
