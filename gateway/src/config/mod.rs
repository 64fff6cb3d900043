//! Loading the config file: read, parse (`raw`), validate into the typed `model`.
//!
//! Each stage has its own type, so everything past this module works with values that are known
//! to be valid. Errors carry the file, line and column ([`ConfigError`]).

mod env;
mod error;
mod model;
mod raw;
mod validate;

use std::path::Path;

pub use error::ConfigError;
pub use model::*;

/// Reads and validates the config file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::whole_file(path, format!("cannot read the config file: {e}")))?;
    parse(path, &text)
}

/// Validates `text` as if it were the contents of the file at `path`.
pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
    let raw: raw::RawConfig = toml::from_str(text).map_err(|e| {
        let message = e.message().trim_end().to_string();
        match e.span() {
            Some(span) => ConfigError::at(path, text, span, message),
            None => ConfigError::whole_file(path, message),
        }
    })?;
    validate::Validator { file: path, text }.config(raw)
}
