//! `--set key.path=value` overrides, applied to the scenario's TOML tree before it is read,
//! and the JSON of a run's `scenario.json` turned into that tree.

use anyhow::{bail, Context, Result};

/// A JSON value as TOML: objects become tables, `null` entries of objects are dropped (TOML
/// has no null; an unset option is an absent key); `None` for a top-level or array-element
/// `null`.
pub(crate) fn json_to_toml(v: serde_json::Value) -> Option<toml::Value> {
    use serde_json::Value as J;
    Some(match v {
        J::Null => return None,
        J::Bool(b) => toml::Value::Boolean(b),
        J::Number(n) => match n.as_i64() {
            Some(i) => toml::Value::Integer(i),
            None => toml::Value::Float(n.as_f64()?),
        },
        J::String(s) => toml::Value::String(s),
        J::Array(a) => toml::Value::Array(a.into_iter().map(json_to_toml).collect::<Option<_>>()?),
        J::Object(o) => toml::Value::Table(
            o.into_iter()
                .filter_map(|(k, v)| json_to_toml(v).map(|v| (k, v)))
                .collect(),
        ),
    })
}

/// The value of a `--set key=value` override: `raw` read as a TOML value (`3`, `0.1`,
/// `"fedprox"`, `[16, 32]`, `{kind = "iid"}`), or, when it is not one, `raw` itself as a
/// string (`--set partition.kind=iid`).
pub fn parse_value(raw: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()))
}

/// Applies one `a.b.c=value` override to a TOML tree, creating tables as needed.
/// An over-long override or key is shown shortened in the errors ([`super::limits::shorten`]).
pub(crate) fn apply_override(root: &mut toml::Value, spec: &str) -> Result<()> {
    let short = |s: &str| super::limits::shorten(s, super::limits::SHOWN_CHARS + 40);
    let (key, raw) = spec
        .split_once('=')
        .with_context(|| format!("--set `{}`: expected key.path=value", short(spec)))?;
    let key = key.trim();
    if key.is_empty() {
        bail!("--set `{}`: empty key", short(spec));
    }
    let key = &short(key);
    let value = parse_value(raw);
    let parts: Vec<&str> = key.split('.').collect();
    let mut cur = root;
    for p in &parts[..parts.len() - 1] {
        let table = cur
            .as_table_mut()
            .with_context(|| format!("--set `{key}`: `{p}` is not inside a table"))?;
        cur = table
            .entry(p.to_string())
            .or_insert_with(|| toml::Value::Table(Default::default()));
    }
    let table = cur
        .as_table_mut()
        .with_context(|| format!("--set `{key}`: parent is not a table"))?;
    table.insert(parts[parts.len() - 1].to_string(), value);
    Ok(())
}
