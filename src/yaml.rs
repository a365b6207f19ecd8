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
///
/// A key repeated in a map is an error, as one repeated in a struct is:
/// serde fills a map with the last value and says nothing, so a config
/// with `s1:` written twice lost the first block's agents, and a reload
/// signed them out (found by review). serde_yaml's own `Value` refuses a
/// repeated key, so text that parses is read into one as well.
pub fn from_str<T: DeserializeOwned>(text: &str) -> Result<T, YamlError> {
    let parsed = serde_yaml::from_str(text).map_err(|e| error(text, e))?;
    serde_yaml::from_str::<serde_yaml::Value>(text).map_err(|e| error(text, e))?;
    Ok(parsed)
}

/// `e` with the position an editor should jump to.
fn error(text: &str, e: serde_yaml::Error) -> YamlError {
    {
        let (mut line, mut column) = e
            .location()
            .map(|l| (l.line(), l.column()))
            .unwrap_or((1, 1));
        let mut message = e.to_string();
        // serde_yaml appends " at line L column C" (the position reported
        // separately) and, for a scanner error, ", while scanning … at line
        // L column C": the place the trouble began, such as the line of an
        // unclosed quote. Only the duplicate goes (found by review: cutting
        // at the first " at line " also lost where the quote was opened).
        let dup = format!(" at line {line} column {column}");
        if let Some(i) = message.find(&dup) {
            message.replace_range(i..i + dup.len(), "");
        }
        // A repeated key is reported where its mapping starts (line 1 at
        // the top level, found by review): point at the repeat instead.
        if let Some(at) = repeated_key(&message).and_then(|k| second_key_line(text, k, line)) {
            (line, column) = at;
        }
        YamlError {
            line,
            column,
            message,
        }
    }
}

/// The key of serde's "duplicate field `k`" or serde_yaml's "duplicate
/// entry with key \"k\"".
fn repeated_key(message: &str) -> Option<&str> {
    let rest = message
        .split_once("duplicate field `")
        .map(|(_, r)| r.split_once('`'))
        .or_else(|| {
            message
                .split_once("duplicate entry with key \"")
                .map(|(_, r)| r.split_once('"'))
        })??;
    Some(rest.0)
}

/// Line and column (1-based) of the second line from line `from` on that
/// starts a mapping entry `key:` at the indentation of the first such line.
fn second_key_line(text: &str, key: &str, from: usize) -> Option<(usize, usize)> {
    let mut indent = None;
    for (i, l) in text.lines().enumerate().skip(from.saturating_sub(1)) {
        let body = l.trim_start();
        let Some(after) = body.strip_prefix(key) else {
            continue;
        };
        let after = after.trim_start_matches([' ', '"', '\'']);
        if !after.starts_with(':') {
            continue;
        }
        let here = l.len() - body.len();
        match indent {
            None => indent = Some(here),
            Some(first) if first == here => return Some((i + 1, here + 1)),
            Some(_) => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Conf {
        listen: Option<String>,
        clock: Option<Clock>,
        shops:
            Option<std::collections::BTreeMap<String, std::collections::BTreeMap<String, String>>>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Clock {
        target_secs: Option<f64>,
        nudge_secs: Option<f64>,
    }

    /// (text, line, column, what the message must say): the position is the
    /// one an editor should jump to, and the message keeps the parser's
    /// context.
    #[test]
    fn errors_point_at_the_trouble() {
        let cases: &[(&str, usize, usize, &str)] = &[
            (
                "clock:\n  target_secs: 30\nlisten: \"127.0.0.1:8080\n",
                4,
                1,
                "while scanning a quoted scalar at line 3 column 9",
            ),
            (
                "clock:\n  target_secs: 30\nclock:\n  nudge_secs: 20\n",
                3,
                1,
                "duplicate field `clock`",
            ),
            (
                "clock:\n  target_secs: 30\n  target_secs: 40\n",
                3,
                3,
                "duplicate field `target_secs`",
            ),
            // A map's key repeated: serde keeps the last and says nothing.
            (
                "shops:\n  s1:\n    a1: t1\n  s2:\n    b1: u1\n  s1:\n    a2: t2\n",
                6,
                3,
                "duplicate entry with key \"s1\"",
            ),
            (
                "shops:\n  s1:\n    a1: t1\n    a1: t9\n",
                4,
                5,
                "duplicate entry with key \"a1\"",
            ),
        ];
        for &(text, line, column, says) in cases {
            let e = from_str::<Conf>(text).unwrap_err();
            assert_eq!(
                (e.line, e.column),
                (line, column),
                "{text:?}: {}",
                e.message
            );
            assert!(e.message.contains(says), "{text:?}: {}", e.message);
            assert!(
                !e.message
                    .contains(&format!(" at line {line} column {column}")),
                "the position is not repeated: {}",
                e.message
            );
        }
    }
}
