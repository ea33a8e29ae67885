//! Reading a scenario: a TOML file (or a run's `scenario.json`), the `--set` overrides applied
//! to its tree, then validation; errors name the file or the override to blame, and never
//! echo a control character of the file raw.

use std::path::Path;

use anyhow::{bail, Context, Result};

use super::overrides::{apply_override, json_to_toml};
use super::Scenario;

impl Scenario {
    /// Reads and validates a scenario file, applying `overrides` (`key.path=value`, value
    /// parsed as TOML, falling back to a string). Errors name the file and the key.
    ///
    /// A file whose name ends in `.json` is read as JSON: the `scenario.json` a run writes
    /// into its output folder (the resolved scenario), so that a run's backbone can be
    /// evaluated or a run repeated with exactly its scenario. Its `data.path` was already
    /// resolved when the run started and is taken as it is; a relative `data.path` of a TOML
    /// file is resolved against the file's folder.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read scenario {}", path.display()))?;
        let json = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("json"));
        let parse = |overrides: &[String]| {
            if json {
                Self::from_json_str(&text, overrides)
            } else {
                Self::from_toml_str(&text, overrides)
            }
        };
        let mut sc = match parse(overrides) {
            Ok(sc) => sc,
            // Blame the file only if the file alone is wrong; otherwise the --set overrides.
            Err(e) if overrides.is_empty() || parse(&[]).is_err() => {
                return Err(e.context(format!("in scenario {}", path.display())))
            }
            Err(e) => return Err(blame_overrides(e, overrides, parse)),
        };
        for p in [&mut sc.data.path, &mut sc.eval.path].into_iter().flatten() {
            if p.is_relative() && !json {
                let base = path.parent().unwrap_or(Path::new("."));
                *p = base.join(&*p);
            }
        }
        Ok(sc)
    }

    /// Parses scenario TOML text with overrides and validates it.
    pub fn from_toml_str(text: &str, overrides: &[String]) -> Result<Self> {
        check_no_control_characters(text)?;
        let value: toml::Value =
            toml::from_str(text).map_err(|e| anyhow::anyhow!("{}", escape_controls(&e)))?;
        Self::from_value(value, overrides)
    }

    /// Parses a scenario in JSON (a run's `scenario.json`) with overrides and validates it.
    /// `null` values (options left unset) count as absent keys.
    pub fn from_json_str(text: &str, overrides: &[String]) -> Result<Self> {
        check_no_control_characters(text)?;
        let json: serde_json::Value =
            serde_json::from_str(text).map_err(|e| anyhow::anyhow!("{}", escape_controls(&e)))?;
        if !json.is_object() {
            bail!("a scenario in JSON must be an object");
        }
        let value = json_to_toml(json).context("a scenario in JSON cannot hold null in a list")?;
        Self::from_value(value, overrides)
    }

    fn from_value(mut value: toml::Value, overrides: &[String]) -> Result<Self> {
        for o in overrides {
            apply_override(&mut value, o)?;
        }
        super::limits::check_value_sizes(&value)?;
        let sc: Scenario = value
            .try_into()
            .map_err(|e: toml::de::Error| anyhow::anyhow!("{}", escape_controls(&e)))?;
        sc.validate()?;
        Ok(sc)
    }
}

/// The error `e` of a scenario that is valid without its `overrides`, blamed on the override
/// that breaks it: the first whose prefix of the overrides fails with the same error (`parse`
/// parses the file with the overrides it is given), or all of them.
fn blame_overrides(
    e: anyhow::Error,
    overrides: &[String],
    parse: impl Fn(&[String]) -> Result<Scenario>,
) -> anyhow::Error {
    let full = format!("{e:#}");
    // An error about the override's own syntax already names it.
    if full.starts_with("--set `") {
        return e;
    }
    let culprit = (0..overrides.len()).find_map(|i| match parse(&overrides[..=i]) {
        Err(p) if format!("{p:#}") == full => Some(&overrides[i]),
        _ => None,
    });
    let shown = |o: &str| super::limits::shorten(o, super::limits::SHOWN_CHARS + 40);
    let context = match culprit {
        Some(o) => format!("in --set {}", shown(o)),
        None => format!(
            "in --set {}",
            overrides
                .iter()
                .map(|o| shown(o))
                .collect::<Vec<_>>()
                .join(" --set ")
        ),
    };
    e.context(context)
}

/// Errors at the first control character of `text` other than tab and line breaks (TOML and
/// JSON allow none), naming it, its line and its column (1-based, in characters). The parsers
/// would report it at another place without saying what is wrong, and echo it raw.
fn check_no_control_characters(text: &str) -> Result<()> {
    let (mut line, mut column) = (1, 0);
    for c in text.chars() {
        if c == '\n' {
            (line, column) = (line + 1, 0);
            continue;
        }
        column += 1;
        if c.is_ascii_control() && c != '\t' && c != '\r' {
            let what = if c == '\0' {
                "a NUL byte".to_string()
            } else {
                format!("the byte {}", c.escape_default())
            };
            bail!(
                "the file contains {what} (a control character, U+{:04X}) at line {line}, column {column}: a scenario is text, in which only tabs and line breaks may be control characters",
                c as u32
            );
        }
    }
    Ok(())
}

/// A parser's message with every control character but line breaks and tabs escaped, so that
/// no byte of the file reaches the terminal raw.
/// Lines longer than [`super::limits::MESSAGE_LINE_CHARS`] are shortened.
fn escape_controls(e: &impl std::fmt::Display) -> String {
    let msg = super::limits::shorten_lines(&e.to_string(), super::limits::MESSAGE_LINE_CHARS);
    msg.chars()
        .map(|c| {
            if c.is_control() && c != '\n' && c != '\t' {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nul_byte_is_named_with_its_place_and_never_echoed() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("nul.toml");
        std::fs::write(&p, "seed = 1\nname = \"a\0b\"\n").unwrap();
        let e = format!("{:#}", Scenario::load(&p, &[]).unwrap_err());
        assert!(e.contains("nul.toml"), "{e}");
        assert!(
            e.contains("a NUL byte (a control character, U+0000) at line 2, column 10"),
            "{e}"
        );
        assert!(!e.contains('\0'), "{e:?}");
        // another control character, in a JSON scenario
        let p = dir.path().join("scenario.json");
        std::fs::write(&p, "{\"name\": \"a\u{1b}[31mred\"}").unwrap();
        let e = format!("{:#}", Scenario::load(&p, &[]).unwrap_err());
        assert!(e.contains("scenario.json"), "{e}");
        assert!(
            e.contains("the byte \\u{1b} (a control character, U+001B) at line 1, column 12"),
            "{e}"
        );
        assert!(!e.contains('\u{1b}'), "{e:?}");
        // tabs and CRLF line breaks are text
        let sc = Scenario::from_toml_str("seed = 2\r\n[federation]\r\n\trounds = 3\r\n", &[]);
        assert_eq!(sc.unwrap().federation.rounds, 3);
    }

    #[test]
    fn parse_errors_echo_no_control_character() {
        // a lone carriage return and a C1 control (U+009B, a terminal's CSI) are not refused
        // up front; the parser's error quotes the line, escaped
        for text in ["seed = 1\rname = \"x\"\n", "seed = 1\nname = x\u{9b}y\n"] {
            let e = format!("{:#}", Scenario::from_toml_str(text, &[]).unwrap_err());
            assert!(e.contains("TOML parse error"), "{e}");
            assert!(
                !e.chars().any(|c| c.is_control() && c != '\n' && c != '\t'),
                "{e:?}"
            );
        }
    }
}
