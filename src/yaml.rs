//! The one place that talks to the YAML crate.
//!
//! serde_yaml is the chosen parser, but its last release is marked
//! deprecated; keeping every call behind this module means swapping it for a
//! maintained fork touches one file.

use serde::de::DeserializeOwned;

/// A YAML error with the position the parser reported (1-based), if any.
#[derive(Debug, Clone)]
pub struct YamlError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// Parses `text` into `T`, keeping the parser's line and column.
pub fn from_str<T: DeserializeOwned>(text: &str) -> Result<T, YamlError> {
    serde_yaml::from_str(text).map_err(|e| {
        let (line, column) = e
            .location()
            .map(|l| (l.line(), l.column()))
            .unwrap_or((1, 1));
        // serde_yaml appends " at line L column C" to its message; the
        // position is reported separately, so drop the duplicate.
        let mut message = e.to_string();
        if let Some(i) = message.find(" at line ") {
            message.truncate(i);
        }
        YamlError {
            line,
            column,
            message,
        }
    })
}
