//! [`Config`]: the `[plugin.config]` table, handed to [`Plugin::init`](crate::Plugin::init).

use serde::de::DeserializeOwned;

/// The plugin's `[plugin.config]` table from the gateway config, as JSON.
///
/// The gateway turns the TOML table into a JSON object (`{}` when the table is absent) and calls
/// `init` with it once per plugin instance. Parse it with [`Config::json`]; add
/// `#[serde(deny_unknown_fields)]` to your config type so a misspelt key fails the load instead
/// of being ignored.
///
/// ```
/// use sluice_sdk::Config;
///
/// #[derive(serde::Deserialize)]
/// #[serde(deny_unknown_fields)]
/// struct Limits {
///     per_minute: u32,
/// }
///
/// let limits: Limits = Config::new(r#"{"per_minute": 60}"#).json().unwrap();
/// assert_eq!(limits.per_minute, 60);
///
/// let err = Config::new(r#"{"per_minute": "sixty"}"#).json::<Limits>().err().unwrap();
/// assert!(err.contains("invalid type: string \"sixty\", expected u32"), "{err}");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    raw: String,
}

impl Config {
    /// Wraps a JSON text; the gateway does this for you, tests may too.
    pub fn new(raw: impl Into<String>) -> Self {
        Config { raw: raw.into() }
    }

    /// The JSON text as the gateway sent it.
    pub fn raw(&self) -> &str {
        &self.raw
    }

    /// Parses the config into `T`. An empty text counts as `{}`. The error names what was wrong
    /// and where, e.g. ``invalid plugin config: missing field `keys` at line 1 column 2``; return
    /// it from `init` as it is and the gateway reports it with the plugin's name.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, String> {
        let text = if self.raw.trim().is_empty() { "{}" } else { &self.raw };
        serde_json::from_str(text).map_err(|e| format!("invalid plugin config: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Auth {
        header: String,
        #[serde(default)]
        keys: Vec<String>,
    }

    #[test]
    fn json_parses_and_keeps_the_raw_text() {
        let config = Config::new(r#"{"header":"x-api-key","keys":["a"]}"#);
        let auth: Auth = config.json().unwrap();
        assert_eq!(auth.header, "x-api-key");
        assert_eq!(auth.keys, ["a"]);
        assert_eq!(config.raw(), r#"{"header":"x-api-key","keys":["a"]}"#);
    }

    #[test]
    fn errors_name_the_problem() {
        let missing = Config::new("{}").json::<Auth>().unwrap_err();
        assert_eq!(missing, "invalid plugin config: missing field `header` at line 1 column 2");
        let unknown = Config::new(r#"{"header":"h","kyes":[]}"#).json::<Auth>().unwrap_err();
        assert!(unknown.contains("unknown field `kyes`"), "{unknown}");
        let broken = Config::new("{").json::<Auth>().unwrap_err();
        assert!(broken.starts_with("invalid plugin config: EOF"), "{broken}");
    }

    #[test]
    fn empty_text_counts_as_an_empty_object() {
        #[derive(serde::Deserialize)]
        struct Nothing {}
        assert!(Config::new("").json::<Nothing>().is_ok());
        assert!(Config::new("  ").json::<Nothing>().is_ok());
    }
}
