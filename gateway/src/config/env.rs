//! `${VAR}` substitution, so secrets live in the environment and not in the file.
//!
//! Substitution happens while the file is deserialised (see [`Text`]), so an unset variable is
//! reported by the TOML parser with the line and column of the value that named it.

use std::borrow::Cow;

use serde::{Deserialize, Deserializer};

/// A string value of the config file with `${VAR}` already replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Text(pub String);

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        match substitute(&raw, |name| std::env::var(name).ok()) {
            Ok(Cow::Borrowed(_)) => Ok(Text(raw)),
            Ok(Cow::Owned(s)) => Ok(Text(s)),
            Err(e) => Err(serde::de::Error::custom(e)),
        }
    }
}

/// Replaces every `${NAME}` in `s` with `lookup(NAME)`; a name that is unset or malformed is an error.
pub fn substitute(s: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<Cow<'_, str>, String> {
    if !s.contains("${") {
        return Ok(Cow::Borrowed(s));
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find('}').ok_or_else(|| format!("`${{` without a closing `}}` in \"{s}\""))?;
        let name = &after[..end];
        let valid = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(format!(
                "`${{{name}}}` is not a variable name: use letters, digits and `_`, as in ${{API_KEY}}"
            ));
        }
        let value =
            lookup(name).ok_or_else(|| format!("environment variable `{name}` is not set (named as ${{{name}}})"))?;
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(Cow::Owned(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        (name == "KEY").then(|| "s3cret".to_string())
    }

    #[test]
    fn replaces_variables_anywhere_in_a_string() {
        assert_eq!(substitute("a-${KEY}-b${KEY}", env).unwrap(), "a-s3cret-bs3cret");
        assert!(matches!(substitute("plain", env).unwrap(), Cow::Borrowed("plain")));
    }

    #[test]
    fn unset_or_malformed_variables_are_errors() {
        assert_eq!(
            substitute("${NOPE}", env).unwrap_err(),
            "environment variable `NOPE` is not set (named as ${NOPE})"
        );
        assert!(substitute("${KEY", env).unwrap_err().contains("without a closing"));
        assert!(substitute("${1X}", env).unwrap_err().contains("not a variable name"));
    }
}
