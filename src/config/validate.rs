//! File structs → checked runtime `Config`.
// STUB: to be implemented (see the config helper's brief).
use super::file::ConfigFile;
use super::{Config, ConfigError};

pub(crate) fn validate(_file: ConfigFile, _source: &str) -> Result<Config, ConfigError> {
    todo!()
}
