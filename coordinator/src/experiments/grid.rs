//! The grid of `sweep`: `--grid KEY=[v1, v2, …]` axes, their Cartesian product (the cells),
//! and each cell's readable, filesystem-safe name.
//!
//! A grid value is exactly what `--set KEY=VALUE` takes
//! ([`fedssl_shared::config::overrides::parse_value`]): a TOML value (`0.1`, `"fedprox"`,
//! `{kind = "dirichlet", alpha = 0.1}`), or a bare word read as a string (`fedprox`). The list
//! is split at its top-level commas (commas inside quotes, `[…]` and `{…}` stay in their
//! value), so `--grid 'partition=[{kind="iid"}, {kind="dirichlet", alpha=0.1}]'` and
//! `--grid 'federation.strategy.kind=[fedavg, fedprox]'` both work. A cell's scenario is the
//! base scenario with one `KEY=VALUE` override per axis, applied after the `--set` ones.
//!
//! Names: an axis is named by its key's last part (the part before a final `kind`:
//! `federation.strategy.kind` → `strategy`), or by the whole key when two axes would share
//! that name; a value by its text without quotes, a table's values joined by `-` with `kind`
//! first (`{kind = "dirichlet", alpha = 0.1}` → `dirichlet-0.1`), a list's the same way. When
//! two values of an axis would share a name, that axis names its tables' values with their
//! keys (`kind-dirichlet_alpha-0.1`). Characters other than ASCII letters, digits, `.`, `_`,
//! `+` and `-` become `_`. A cell is `axis=value` for every axis, joined by `__`:
//! `partition=dirichlet-0.1__strategy=fedprox`; a name over [`MAX_CELL_NAME`] characters is
//! cut and ends in a hash of the whole name.

use anyhow::{bail, ensure, Context, Result};
use fedssl_shared::config::overrides::parse_value;

/// The longest cell name (a folder name: file systems allow 255 bytes).
pub const MAX_CELL_NAME: usize = 150;

/// One value of an axis.
#[derive(Clone, Debug, PartialEq)]
pub struct AxisValue {
    /// The value's text as given (what `--set KEY=` receives).
    pub raw: String,
    /// The value as `--set` reads it.
    pub value: toml::Value,
    /// Its name in cell names and tables.
    pub label: String,
}

/// One `--grid KEY=[…]` axis.
#[derive(Clone, Debug, PartialEq)]
pub struct Axis {
    /// The scenario key, e.g. `federation.strategy.kind`.
    pub key: String,
    /// Its name in cell names and tables, e.g. `strategy`.
    pub label: String,
    /// Its values, in the order given.
    pub values: Vec<AxisValue>,
}

/// One cell of the grid: a value of every axis.
#[derive(Clone, Debug, PartialEq)]
pub struct Cell {
    /// The cell's folder name, e.g. `partition=iid__strategy=fedprox`.
    pub name: String,
    /// The index of its value on each axis.
    pub index: Vec<usize>,
}

/// The axes of a sweep, checked: distinct keys, none inside another, no `seed` (the sweep's
/// `--seeds` sets it), at least one value each, distinct values and names.
#[derive(Clone, Debug, PartialEq)]
pub struct Grid {
    /// The axes in the order given; the first varies slowest over the cells.
    pub axes: Vec<Axis>,
}

/// One axis spec, `KEY=[v1, v2, …]`, and where it was written (`--grid`, or a sweep file's
/// `[[sweep.axis]]`): errors name that place.
#[derive(Clone, Debug, PartialEq)]
pub struct AxisSpec {
    /// `KEY=[v1, v2, …]`.
    pub spec: String,
    /// Where it was written, e.g. `--grid` or `[[sweep.axis]] of sweep.toml`.
    pub origin: String,
}

impl AxisSpec {
    /// A `--grid` flag's spec.
    pub fn flag(spec: &str) -> Self {
        Self {
            spec: spec.to_string(),
            origin: "--grid".into(),
        }
    }
}

impl Grid {
    /// Reads `--grid` specs (`KEY=[v1, v2, …]`). Errors name the spec and what is wrong.
    pub fn parse(specs: &[String]) -> Result<Self> {
        let specs: Vec<AxisSpec> = specs.iter().map(|s| AxisSpec::flag(s)).collect();
        Self::parse_specs(&specs)
    }

    /// Reads axis specs from wherever they were written; errors name the place, the spec and
    /// what is wrong.
    pub fn parse_specs(specs: &[AxisSpec]) -> Result<Self> {
        let mut axes = specs
            .iter()
            .map(|s| parse_axis(&s.spec, &s.origin))
            .collect::<Result<Vec<_>>>()?;
        check_keys(&axes, specs)?;
        let short: Vec<String> = axes.iter().map(|a| short_key(&a.key)).collect();
        for (i, a) in axes.iter_mut().enumerate() {
            let shared = short.iter().filter(|s| **s == short[i]).count() > 1;
            a.label = sanitize(if shared { &a.key } else { &short[i] });
        }
        Ok(Self { axes })
    }

    /// Every cell, in grid order: the Cartesian product of the axes, the first axis varying
    /// slowest. No axes: one cell, named `base`.
    pub fn cells(&self) -> Vec<Cell> {
        let mut index: Vec<Vec<usize>> = vec![vec![]];
        for a in &self.axes {
            index = index
                .into_iter()
                .flat_map(|prefix| {
                    (0..a.values.len()).map(move |v| {
                        let mut i = prefix.clone();
                        i.push(v);
                        i
                    })
                })
                .collect();
        }
        index
            .into_iter()
            .map(|index| Cell {
                name: self.cell_name(&index),
                index,
            })
            .collect()
    }

    /// The name of the cell with value `index[k]` on axis `k`.
    fn cell_name(&self, index: &[usize]) -> String {
        if self.axes.is_empty() {
            return "base".into();
        }
        let name = self
            .axes
            .iter()
            .zip(index)
            .map(|(a, &v)| format!("{}={}", a.label, a.values[v].label))
            .collect::<Vec<_>>()
            .join("__");
        shorten_name(name)
    }

    /// The `KEY=VALUE` overrides of `cell`, one per axis, as `--set` takes them.
    pub fn overrides(&self, cell: &Cell) -> Vec<String> {
        self.axes
            .iter()
            .zip(&cell.index)
            .map(|(a, &v)| format!("{}={}", a.key, a.values[v].raw))
            .collect()
    }

    /// `cell`'s value names, one per axis.
    pub fn labels(&self, cell: &Cell) -> Vec<String> {
        self.axes
            .iter()
            .zip(&cell.index)
            .map(|(a, &v)| a.values[v].label.clone())
            .collect()
    }
}

/// One `KEY=[v1, v2, …]` spec, its values named (compactly, or with their keys where the
/// compact names would collide).
fn parse_axis(spec: &str, origin: &str) -> Result<Axis> {
    let (key, list) = spec
        .split_once('=')
        .with_context(|| format!("{origin} `{spec}`: expected KEY=[v1, v2, …]"))?;
    let key = key.trim();
    ensure!(!key.is_empty(), "{origin} `{spec}`: empty key");
    ensure!(
        key.split('.')
            .all(|p| !p.trim().is_empty() && p == p.trim()),
        "{origin} `{spec}`: `{key}` is not a key path (a.b.c)"
    );
    ensure!(
        key != "seed",
        "{origin} `{spec}`: the seed is not a grid axis; give the seeds with --seeds or the file's [sweep] seeds"
    );
    let raws = split_list(list.trim()).with_context(|| format!("{origin} `{key}`"))?;
    ensure!(
        !raws.is_empty(),
        "{origin} `{key}`: the list of values is empty"
    );
    let values: Vec<toml::Value> = raws.iter().map(|r| parse_value(r)).collect();
    for (i, v) in values.iter().enumerate() {
        if let Some(j) = values[..i].iter().position(|w| same_value(w, v)) {
            bail!(
                "{origin} `{key}`: the value `{}` is listed twice (as `{}` and `{}`)",
                raws[i],
                raws[j],
                raws[i]
            );
        }
    }
    let mut labels: Vec<String> = values.iter().map(|v| sanitize(&compact(v))).collect();
    if has_duplicates(&labels) {
        labels = values.iter().map(|v| sanitize(&verbose(v))).collect();
    }
    if let Some((i, j)) = first_duplicate(&labels) {
        bail!(
            "{origin} `{key}`: the values `{}` and `{}` would share the folder name `{}`",
            raws[j],
            raws[i],
            labels[i]
        );
    }
    Ok(Axis {
        key: key.to_string(),
        label: String::new(),
        values: raws
            .into_iter()
            .zip(values)
            .zip(labels)
            .map(|((raw, value), label)| AxisValue { raw, value, label })
            .collect(),
    })
}

/// Whether two grid values set the same scenario: equal, counting an integer and a float of
/// the same number (`1`, `1.0`) as equal, also inside arrays and tables.
fn same_value(a: &toml::Value, b: &toml::Value) -> bool {
    use toml::Value::{Array, Float, Integer, Table};
    match (a, b) {
        (Integer(i), Float(f)) | (Float(f), Integer(i)) => *i as f64 == *f,
        (Array(x), Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same_value(p, q))
        }
        (Table(x), Table(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, p)| y.get(k).is_some_and(|q| same_value(p, q)))
        }
        _ => a == b,
    }
}

/// Refuses two axes on the same key, or one inside the other (`partition` and
/// `partition.alpha`: the later override would undo part of the earlier one).
fn check_keys(axes: &[Axis], specs: &[AxisSpec]) -> Result<()> {
    for (i, a) in axes.iter().enumerate() {
        for (j, b) in axes[..i].iter().enumerate() {
            let (oa, ob) = (&specs[i].origin, &specs[j].origin);
            if a.key == b.key {
                bail!("{ob} `{}` is given twice: one axis per key", a.key);
            }
            let inside = |x: &str, y: &str| x.starts_with(&format!("{y}."));
            if inside(&a.key, &b.key) || inside(&b.key, &a.key) {
                bail!(
                    "{ob} `{}` and {oa} `{}`: one key is inside the other; give one axis of whole values instead",
                    b.key,
                    a.key
                );
            }
        }
    }
    Ok(())
}

/// The values of a `[v1, v2, …]` list, each trimmed, split at the commas outside quotes,
/// brackets and braces; a trailing comma is allowed.
pub fn split_list(list: &str) -> Result<Vec<String>> {
    let inner = list
        .strip_prefix('[')
        .and_then(|l| l.strip_suffix(']'))
        .with_context(|| format!("`{list}`: expected a list of values in brackets, [v1, v2, …]"))?;
    let mut values = Vec::new();
    let (mut depth, mut quote, mut escaped) = (0i32, None::<char>, false);
    let mut current = String::new();
    for c in inner.chars() {
        match quote {
            Some(q) => {
                if escaped {
                    escaped = false;
                } else if c == '\\' && q == '"' {
                    escaped = true;
                } else if c == q {
                    quote = None;
                }
            }
            None => match c {
                '"' | '\'' => quote = Some(c),
                '[' | '{' => depth += 1,
                ']' | '}' => {
                    depth -= 1;
                    ensure!(depth >= 0, "`{list}`: unbalanced `{c}`");
                }
                ',' if depth == 0 => {
                    values.push(std::mem::take(&mut current));
                    continue;
                }
                _ => {}
            },
        }
        current.push(c);
    }
    ensure!(quote.is_none(), "`{list}`: a quote is not closed");
    ensure!(depth == 0, "`{list}`: a bracket or brace is not closed");
    values.push(current);
    let mut values: Vec<String> = values.into_iter().map(|v| v.trim().to_string()).collect();
    if values.last().is_some_and(|v| v.is_empty()) {
        values.pop();
    }
    if let Some(i) = values.iter().position(|v| v.is_empty()) {
        bail!("`{list}`: value {} is empty", i + 1);
    }
    Ok(values)
}

/// The axis name of `key`: its last part, or the one before a final `kind`.
fn short_key(key: &str) -> String {
    let parts: Vec<&str> = key.split('.').collect();
    match parts.as_slice() {
        [.., before, "kind"] => before.to_string(),
        [.., last] => last.to_string(),
        [] => key.to_string(),
    }
}

/// A table's entries, `kind` first, then the others in key order.
fn kind_first(t: &toml::Table) -> Vec<(&String, &toml::Value)> {
    let mut e: Vec<(&String, &toml::Value)> = t.iter().collect();
    e.sort_by_key(|(k, _)| *k != "kind");
    e
}

/// A value's compact name: strings without quotes, tables' and lists' values joined by `-`.
fn compact(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        toml::Value::Array(a) if a.is_empty() => "empty".into(),
        toml::Value::Array(a) => a.iter().map(compact).collect::<Vec<_>>().join("-"),
        toml::Value::Table(t) if t.is_empty() => "default".into(),
        toml::Value::Table(t) => kind_first(t)
            .into_iter()
            .map(|(_, v)| compact(v))
            .collect::<Vec<_>>()
            .join("-"),
        other => other.to_string(),
    }
}

/// A value's name with its tables' keys: `kind-dirichlet_alpha-0.1`.
fn verbose(v: &toml::Value) -> String {
    match v {
        toml::Value::Table(t) if !t.is_empty() => kind_first(t)
            .into_iter()
            .map(|(k, v)| format!("{k}-{}", verbose(v)))
            .collect::<Vec<_>>()
            .join("_"),
        toml::Value::Array(a) if !a.is_empty() => {
            a.iter().map(verbose).collect::<Vec<_>>().join("-")
        }
        other => compact(other),
    }
}

/// `s` with every character but ASCII letters, digits, `.`, `_`, `+` and `-` as `_`.
fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '+' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// `name`, or when longer than [`MAX_CELL_NAME`] its start and a hash of the whole.
fn shorten_name(name: String) -> String {
    if name.len() <= MAX_CELL_NAME {
        return name;
    }
    // FNV-1a: stable across builds and platforms
    let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{}-{hash:016x}", &name[..MAX_CELL_NAME - 17])
}

fn has_duplicates(labels: &[String]) -> bool {
    first_duplicate(labels).is_some()
}

/// `(i, j)`, `j < i`, of the first label equal to an earlier one.
fn first_duplicate(labels: &[String]) -> Option<(usize, usize)> {
    labels
        .iter()
        .enumerate()
        .find_map(|(i, l)| labels[..i].iter().position(|m| m == l).map(|j| (i, j)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grid(specs: &[&str]) -> Result<Grid> {
        Grid::parse(&specs.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn lists_split_at_top_level_commas_only() {
        assert_eq!(
            split_list(r#"[{kind="iid"}, {kind="dirichlet", alpha=0.1}, "a,b", 'c,d', [1, 2],]"#)
                .unwrap(),
            [
                r#"{kind="iid"}"#,
                r#"{kind="dirichlet", alpha=0.1}"#,
                r#""a,b""#,
                "'c,d'",
                "[1, 2]"
            ]
        );
        assert_eq!(
            split_list("[fedavg, fedprox]").unwrap(),
            ["fedavg", "fedprox"]
        );
        assert_eq!(split_list(r#"["a\"]", b]"#).unwrap(), [r#""a\"]""#, "b"]);
        assert!(split_list("[]").unwrap().is_empty());
        for bad in ["fedavg, fedprox", "[a, , b]", "[{a=1]", "[\"a]"] {
            assert!(split_list(bad).is_err(), "{bad}");
        }
    }

    /// The hand example: 3 partitions × 2 strategies, in grid order, with their names and
    /// overrides.
    #[test]
    fn cells_are_the_product_in_grid_order_with_readable_names() {
        let g = grid(&[
            r#"partition=[{kind="iid"}, {kind="dirichlet", alpha=0.1}, {kind="label_quantity", classes_per_client=2}]"#,
            r#"federation.strategy.kind=["fedavg", fedprox]"#,
        ])
        .unwrap();
        assert_eq!(g.axes[0].label, "partition");
        assert_eq!(g.axes[1].label, "strategy");
        let cells = g.cells();
        let names: Vec<&str> = cells.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "partition=iid__strategy=fedavg",
                "partition=iid__strategy=fedprox",
                "partition=dirichlet-0.1__strategy=fedavg",
                "partition=dirichlet-0.1__strategy=fedprox",
                "partition=label_quantity-2__strategy=fedavg",
                "partition=label_quantity-2__strategy=fedprox",
            ]
        );
        assert_eq!(
            g.overrides(&cells[3]),
            [
                r#"partition={kind="dirichlet", alpha=0.1}"#,
                "federation.strategy.kind=fedprox"
            ]
        );
        assert_eq!(g.labels(&cells[4]), ["label_quantity-2", "fedavg"]);
        // no axis: one cell
        let none = grid(&[]).unwrap().cells();
        assert_eq!(none.len(), 1);
        assert_eq!(none[0].name, "base");
    }

    #[test]
    fn names_stay_distinct_and_safe() {
        // compact names would collide: the axis names its values with their keys
        let g = grid(&[r#"t=[{kind="a", x=1}, {kind="a", y=1}]"#]).unwrap();
        let labels: Vec<&str> = g.axes[0].values.iter().map(|v| v.label.as_str()).collect();
        assert_eq!(labels, ["kind-a_x-1", "kind-a_y-1"]);
        // two axes with the same last part are named by their whole keys
        let g = grid(&["a.lr=[1, 2]", "b.lr=[3]"]).unwrap();
        assert_eq!(g.cells()[1].name, "a.lr=2__b.lr=3");
        // unsafe characters
        let g = grid(&[r#"name=["a/b c", "x:y"]"#]).unwrap();
        assert_eq!(g.cells()[0].name, "name=a_b_c");
        // over-long names are cut and hashed, still distinct
        let long = format!("x=[{}, {}y]", "a".repeat(300), "a".repeat(300));
        let cells = grid(&[&long]).unwrap().cells();
        assert!(cells.iter().all(|c| c.name.len() == MAX_CELL_NAME));
        assert_ne!(cells[0].name, cells[1].name);
    }

    #[test]
    fn bad_axes_are_refused_naming_them() {
        let err = |specs: &[&str]| format!("{:#}", grid(specs).unwrap_err());
        assert!(err(&["partition"]).contains("expected KEY=[v1, v2, …]"));
        assert!(err(&["seed=[0, 1]"]).contains("--seeds"));
        assert!(err(&["a=[]"]).contains("--grid `a`: the list of values is empty"));
        assert!(err(&["a=[1, 2, 1]"]).contains("`1` is listed twice"));
        assert!(err(&["a=[x, \"x\"]"]).contains("listed twice"));
        // the same number written as an integer and as a float is the same run
        assert!(err(&["a=[1, 1.0]"]).contains("`1.0` is listed twice (as `1` and `1.0`)"));
        assert!(err(&["a=[{b=2}, {b=2.0}]"]).contains("listed twice"));
        assert!(err(&["a=[1]", "a=[2]"]).contains("`a` is given twice"));
        assert!(err(&["partition=[iid]", "partition.alpha=[0.1]"]).contains("inside the other"));
        assert!(err(&["a..b=[1]"]).contains("not a key path"));
        assert!(err(&["a=1, 2"]).contains("--grid `a`"));
    }
}
