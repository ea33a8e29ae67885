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
    /// file is resolved against the file's folder, and the mixed dataset's `data.path` (where
    /// its sources' relative paths start) defaults to that folder.
    ///
    /// A sweep file's `[sweep]` table ([`SWEEP_TABLE`]) is refused, naming it:
    /// [`Scenario::load_sweep_file`] reads such a file.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self> {
        Ok(Self::load_with(path, overrides, false)?.0)
    }

    /// Reads a sweep file as [`Scenario::load`] reads a scenario, its `[sweep]` table
    /// ([`SWEEP_TABLE`]: the grid and seeds of `fedssl-coordinator sweep`) taken out before
    /// the rest is read as the base scenario (so that it never reaches a run's scenario) and
    /// returned as it is written (`None` without one); the coordinator's sweep reads it. The
    /// `overrides` apply to the base scenario only: one that sets a `sweep.*` key is refused.
    pub fn load_sweep_file(
        path: &Path,
        overrides: &[String],
    ) -> Result<(Self, Option<toml::Value>)> {
        Self::load_with(path, overrides, true)
    }

    fn load_with(
        path: &Path,
        overrides: &[String],
        take_sweep: bool,
    ) -> Result<(Self, Option<toml::Value>)> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read scenario {}", path.display()))?;
        let json = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("json"));
        let parse_with_sweep = |overrides: &[String]| {
            if json {
                let value = json_value(&text)?;
                Self::from_value_with(value, overrides, take_sweep)
            } else {
                let value = toml_value(&text)?;
                Self::from_value_with(value, overrides, take_sweep)
            }
        };
        let parse = |overrides: &[String]| parse_with_sweep(overrides).map(|(sc, _)| sc);
        let (mut sc, sweep) = match parse_with_sweep(overrides) {
            Ok(sc) => sc,
            // Blame the file only if the file alone is wrong; otherwise the --set overrides.
            Err(e) if overrides.is_empty() || parse(&[]).is_err() => {
                return Err(e.context(format!("in scenario {}", path.display())))
            }
            Err(e) => return Err(blame_overrides(e, overrides, parse)),
        };
        if !json {
            let base = path.parent().unwrap_or(Path::new("."));
            for p in [&mut sc.data.path, &mut sc.eval.path].into_iter().flatten() {
                if p.is_relative() {
                    *p = base.join(&*p);
                }
            }
            // the mixed dataset's sources' relative paths start from data.path, by default
            // the file's folder
            if sc.data.dataset == crate::data::DatasetKind::Mixed && sc.data.path.is_none() {
                let here = if base.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    base
                };
                sc.data.path = Some(here.to_path_buf());
            }
        }
        Ok((sc, sweep))
    }

    /// Parses scenario TOML text with overrides and validates it. A `[sweep]` table is
    /// refused ([`Scenario::load`]).
    pub fn from_toml_str(text: &str, overrides: &[String]) -> Result<Self> {
        Ok(Self::from_value_with(toml_value(text)?, overrides, false)?.0)
    }

    /// Parses a scenario in JSON (a run's `scenario.json`) with overrides and validates it.
    /// `null` values (options left unset) count as absent keys.
    pub fn from_json_str(text: &str, overrides: &[String]) -> Result<Self> {
        Ok(Self::from_value_with(json_value(text)?, overrides, false)?.0)
    }

    /// The scenario of `value` with `overrides`, validated; its `[sweep]` table taken out and
    /// returned when `take_sweep`, refused otherwise (and a `[sweep]` an override makes,
    /// always).
    fn from_value_with(
        mut value: toml::Value,
        overrides: &[String],
        take_sweep: bool,
    ) -> Result<(Self, Option<toml::Value>)> {
        let sweep = match value.as_table_mut() {
            Some(t) if take_sweep => t.remove(SWEEP_TABLE),
            _ => None,
        };
        if value.get(SWEEP_TABLE).is_some() {
            bail!(
                "[{SWEEP_TABLE}] is the grid and seeds of a sweep, not a key of a run: run this file with `fedssl-coordinator sweep FILE --out DIR`, or leave the table out"
            );
        }
        for o in overrides {
            apply_override(&mut value, o)?;
        }
        if value.get(SWEEP_TABLE).is_some() {
            bail!("--set {SWEEP_TABLE}.…: the sweep's grid and seeds are not scenario keys; --grid and --seeds give them");
        }
        super::limits::check_value_sizes(&value)?;
        let sc: Scenario = value
            .try_into()
            .map_err(|e: toml::de::Error| anyhow::anyhow!("{}", escape_controls(&e)))?;
        sc.validate()?;
        Ok((sc, sweep))
    }
}

/// The top-level table of a sweep file that holds the sweep's grid and seeds
/// (`fedssl-coordinator sweep`); never part of a run's scenario ([`Scenario::load`] refuses
/// it, [`Scenario::load_sweep_file`] takes it out).
pub const SWEEP_TABLE: &str = "sweep";

/// `text` as a TOML tree, after refusing control characters.
fn toml_value(text: &str) -> Result<toml::Value> {
    check_no_control_characters(text)?;
    toml::from_str(text).map_err(|e| anyhow::anyhow!("{}", escape_controls(&e)))
}

/// `text` (a JSON object) as a TOML tree, after refusing control characters; `null` values
/// are absent keys.
fn json_value(text: &str) -> Result<toml::Value> {
    check_no_control_characters(text)?;
    let json: serde_json::Value =
        serde_json::from_str(text).map_err(|e| anyhow::anyhow!("{}", escape_controls(&e)))?;
    if !json.is_object() {
        bail!("a scenario in JSON must be an object");
    }
    json_to_toml(json).context("a scenario in JSON cannot hold null in a list")
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
