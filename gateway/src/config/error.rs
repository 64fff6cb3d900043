//! Config errors that point at the place to fix: the file, the line and column, the line itself.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// What is wrong with a config file, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The config file.
    pub file: PathBuf,
    /// 1-based line and column of the offending value, when the problem has a place in the file.
    pub position: Option<(usize, usize)>,
    /// What is wrong and what would be valid.
    pub message: String,
    /// The text of the offending line.
    excerpt: Option<String>,
}

impl ConfigError {
    /// An error about the file as a whole (unreadable, or a setting that is missing altogether).
    pub fn whole_file(file: &Path, message: impl Into<String>) -> Self {
        ConfigError { file: file.to_path_buf(), position: None, message: message.into(), excerpt: None }
    }

    /// An error about the bytes at `span` of `text`, the contents of `file`.
    pub fn at(file: &Path, text: &str, span: Range<usize>, message: impl Into<String>) -> Self {
        let start = span.start.min(text.len());
        let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
        let line_end = text[start..].find('\n').map_or(text.len(), |i| start + i);
        let line = text[..start].matches('\n').count() + 1;
        let column = text[line_start..start].chars().count() + 1;
        ConfigError {
            file: file.to_path_buf(),
            position: Some((line, column)),
            message: message.into(),
            excerpt: Some(text[line_start..line_end].trim_end().to_string()),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some((line, column)) = self.position {
            write!(f, ":{line}:{column}")?;
        }
        write!(f, ": {}", self.message)?;
        if let (Some((line, _)), Some(excerpt)) = (self.position, &self.excerpt) {
            write!(f, "\n  {line} | {excerpt}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}
