//! `fedssl-coordinator sweep <scenario.toml> --grid 'KEY=[v1, v2, …]' … --seeds 0,1 --out DIR`:
//! every cell of the grid ([`crate::experiments::grid`]) × every seed is one `simulate` run
//! in `DIR/<cell>/seed-<s>/`, made by the experiments' one runner
//! ([`crate::experiments::runner`]): resumable, a finished run of the same scenario is
//! skipped, a changed or interrupted one run again. Every cell's scenario is loaded and
//! validated before the first run (a bad key or value: one error naming the cell and the
//! axis, nothing run). Then, into `DIR`:
//!
//! * `results.csv`: one row per finished run — the cell, its value on every axis, the seed,
//!   linear top-1 / top-5, MLP top-1, random-init linear top-1, rounds, wall seconds, the
//!   numbers as in its `summary.json` (fractions in [0, 1]);
//! * `results.md`: one row per cell in grid order — linear top-1 % mean ± sample std
//!   (n − 1) over its seeds (`–` for the std of one seed), random-init top-1 % mean, seeds;
//! * `top1.png`: linear top-1 against the first axis's values, one line per value of the
//!   other axes, error bars = std;
//! * with `[federation.dp]`: the (ε, δ) each run spent (the Rényi bound,
//!   [`crate::privacy::accountant`]) in both tables, and `top1_vs_epsilon.png`, linear top-1
//!   against ε ([`crate::experiments::epsilon_chart`]).
//!
//! The grid and seeds can be written in the scenario file itself, a `[sweep]` table
//! ([`SweepTable`]), so that a sweep is one file; `--grid` and `--seeds` override it.
//!
//! A run that fails is said and the others still run; the command then errors after writing
//! the results of those that finished.

use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use fedssl_shared::config::Scenario;
use fedssl_shared::weights::write_atomic;
use serde_json::Value;

use crate::experiments::epsilon_chart;
use crate::experiments::grid::{AxisSpec, Cell, Grid};
use crate::experiments::plot::{self, Series};
use crate::experiments::runner::{execute, Options, PlannedRun, Status};
use crate::experiments::tables::{csv_row, markdown_header, markdown_row, pct};
use crate::run::outputs::plural;

/// What `sweep` is asked.
#[derive(Clone, Debug, Default)]
pub struct SweepSpec {
    /// The base scenario file.
    pub scenario: PathBuf,
    /// `--grid KEY=[…]` specs, in order (the first is the plot's x axis), after the file's
    /// `[[sweep.axis]]` ones; one of the same key replaces the file's ([`SweepTable`]).
    pub grid: Vec<String>,
    /// `--seeds`; empty: the file's `[sweep] seeds`, else the scenario's own seed.
    pub seeds: Vec<u64>,
    /// `--set` overrides of every cell (applied before the grid's).
    pub sets: Vec<String>,
    /// `--data-dir`.
    pub data_dir: Option<PathBuf>,
    /// `--out`.
    pub out: PathBuf,
    /// Progress bars (off with `--quiet`).
    pub progress: bool,
}

/// The runs of a sweep, planned and validated.
#[derive(Clone, Debug)]
pub struct SweepPlan {
    /// The grid.
    pub grid: Grid,
    /// Its cells in grid order.
    pub cells: Vec<Cell>,
    /// The seeds.
    pub seeds: Vec<u64>,
    /// One run per cell × seed, cell-major: run `c · seeds + s` is cell `c`, seed `s`.
    pub runs: Vec<PlannedRun>,
    /// Whether `--data-dir` is read by some run: `false` without `--data-dir`, or when every
    /// cell's data is synthetic ([`Scenario::set_data_dir`]).
    pub data_dir_read: bool,
}

/// One finished run's line of `results.csv`.
#[derive(Clone, Debug, PartialEq)]
pub struct ResultRow {
    /// Index of its cell in [`SweepPlan::cells`].
    pub cell: usize,
    /// Its seed.
    pub seed: u64,
    /// Linear-probe top-1, in [0, 1].
    pub linear_top1: f64,
    /// Linear-probe top-5.
    pub linear_top5: f64,
    /// MLP-probe top-1, when the scenario ran it.
    pub mlp_top1: Option<f64>,
    /// Random-init linear-probe top-1, when the scenario ran the baseline.
    pub random_init_top1: Option<f64>,
    /// Rounds completed.
    pub rounds: u64,
    /// Wall seconds of the run.
    pub wall_seconds: f64,
    /// ε of the sampled-Gaussian Rényi bound the run spent under `federation.dp`
    /// (`f64::INFINITY` with noise multiplier 0, which `summary.json` writes as `null`);
    /// `None` without DP.
    pub epsilon: Option<f64>,
    /// The δ of `epsilon`.
    pub delta: Option<f64>,
}

/// A cell's line of `results.md`.
#[derive(Clone, Debug, PartialEq)]
pub struct CellStats {
    /// Mean linear top-1 over the finished seeds (`None` when none finished).
    pub mean: Option<f64>,
    /// Sample standard deviation (n − 1) of the linear top-1; `None` with fewer than 2.
    pub std: Option<f64>,
    /// Mean random-init top-1 over the seeds that have it.
    pub random_init_mean: Option<f64>,
    /// Finished seeds.
    pub n: usize,
    /// ε its runs spent (the same for every seed: it depends on z, the sampling rate and the
    /// rounds only; the largest if they differ); `None` without DP.
    pub epsilon: Option<f64>,
    /// The δ of `epsilon`.
    pub delta: Option<f64>,
}

/// What a sweep did.
#[derive(Debug)]
pub struct SweepReport {
    /// The plan it ran.
    pub plan: SweepPlan,
    /// The finished runs' rows, in plan order.
    pub rows: Vec<ResultRow>,
    /// Labels of the runs skipped (finished before with the same scenario).
    pub skipped: Vec<String>,
    /// Labels of the runs made now.
    pub ran: Vec<String>,
    /// `label: reason` of the runs that failed.
    pub failed: Vec<String>,
}

/// Plans the sweep: every cell × seed's scenario loaded (the base file, `--set`, the cell's
/// grid values, `seed`, `--data-dir`) and validated, nothing written. Errors name the cell
/// and the axis (or the `--set`) to blame.
pub fn plan(spec: &SweepSpec) -> Result<SweepPlan> {
    // the base alone, with --set: its errors are the file's or a --set's
    let (base, table) = Scenario::load_sweep_file(&spec.scenario, &spec.sets)?;
    let table = match table {
        Some(t) => SweepTable::read(t)
            .with_context(|| format!("[sweep] of {}", spec.scenario.display()))?,
        None => SweepTable::default(),
    };
    let specs = table.grid_specs(&spec.grid, &spec.scenario);
    let grid = Grid::parse_specs(&specs)?;
    for s in &spec.sets {
        let key = s.split_once('=').map_or(s.as_str(), |(k, _)| k).trim();
        if grid.axes.iter().any(|a| a.key == key) {
            bail!(
                "`{key}` is both a --set and a grid axis (--grid or [[sweep.axis]]): give it once"
            );
        }
    }
    let (seeds, from) = if !spec.seeds.is_empty() {
        (spec.seeds.clone(), "--seeds".to_string())
    } else if let Some(seeds) = &table.seeds {
        let from = format!("[sweep] seeds of {}", spec.scenario.display());
        ensure!(
            !seeds.is_empty(),
            "{from} is empty: list at least one seed, or leave the key out for the scenario's seed"
        );
        (seeds.clone(), from)
    } else {
        (vec![base.seed], "seed".to_string())
    };
    if let Some((i, s)) = seeds
        .iter()
        .enumerate()
        .find(|(i, s)| seeds[..*i].contains(s))
    {
        bail!("{from}: seed {s} is listed twice (position {})", i + 1);
    }
    let cells = grid.cells();
    let mut runs = Vec::with_capacity(cells.len() * seeds.len());
    let mut data_dir_read = false;
    for cell in &cells {
        let (sc, read) = load_cell(spec, &grid, &specs, cell)?;
        data_dir_read |= read;
        for &seed in &seeds {
            let mut sc = sc.clone();
            sc.seed = seed;
            runs.push(PlannedRun {
                label: format!("{}/seed-{seed}", cell.name),
                scenario: sc,
                dir: spec.out.join(&cell.name).join(format!("seed-{seed}")),
            });
        }
    }
    Ok(SweepPlan {
        grid,
        cells,
        seeds,
        runs,
        data_dir_read,
    })
}

/// The `[sweep]` table of a sweep file: the seeds and the grid's axes, so that a sweep is one
/// file. Written
///
/// ```toml
/// [sweep]
/// seeds = [0, 1]
///
/// [[sweep.axis]]
/// key = "partition"
/// values = [{ kind = "iid" }, { kind = "dirichlet", alpha = 0.5 }]
///
/// [[sweep.axis]]
/// key = "federation.strategy.kind"
/// values = ["fedavg", "fedprox"]
/// ```
///
/// each axis exactly the `--grid KEY=[…]` of the same values, in file order (the first is
/// the plot's x axis). On the command line, `--grid KEY=[…]` replaces the file's axis of the
/// same key (in its place; a new key is appended) and `--seeds` replaces its seeds. The
/// table never reaches a run's scenario ([`Scenario::load_sweep_file`]); `simulate` of the
/// file refuses it.
#[derive(Clone, Debug, Default, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepTable {
    /// `seeds`: the sweep's seeds (`--seeds` replaces them; absent: the scenario's `seed`;
    /// an empty list is refused).
    #[serde(default)]
    pub seeds: Option<Vec<u64>>,
    /// `[[sweep.axis]]`: the grid's axes in order.
    #[serde(default)]
    pub axis: Vec<AxisTable>,
}

/// One `[[sweep.axis]]`: a scenario key and its values, each as `--set KEY=` takes it.
#[derive(Clone, Debug, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AxisTable {
    /// The scenario key, e.g. `"federation.strategy.kind"` or `"partition"`.
    pub key: String,
    /// Its values: TOML values (`"fedprox"`, `0.1`, `{ kind = "iid" }`).
    pub values: Vec<toml::Value>,
}

impl SweepTable {
    /// Reads a `[sweep]` table; unknown keys are refused by name.
    pub fn read(value: toml::Value) -> Result<Self> {
        value
            .try_into()
            .map_err(|e: toml::de::Error| anyhow::anyhow!("{}", e.message()))
    }

    /// The axis specs of `file`'s axes (`KEY=[v1, v2, …]`, each value as inline TOML, named
    /// `[[sweep.axis]] of FILE` in errors), with the command line's `flags` (`--grid`)
    /// replacing the axis of their key or appended after.
    pub fn grid_specs(&self, flags: &[String], file: &Path) -> Vec<AxisSpec> {
        let key_of = |spec: &str| spec.split_once('=').map(|(k, _)| k.trim().to_string());
        let mut specs: Vec<AxisSpec> = self
            .axis
            .iter()
            .map(|a| {
                let values: Vec<String> = a.values.iter().map(|v| v.to_string()).collect();
                AxisSpec {
                    spec: format!("{}=[{}]", a.key, values.join(", ")),
                    origin: format!("[[sweep.axis]] of {}", file.display()),
                }
            })
            .collect();
        for f in flags {
            let replaced = key_of(f).and_then(|k| {
                specs
                    .iter()
                    .position(|s| key_of(&s.spec).as_deref() == Some(k.as_str()))
            });
            match replaced {
                Some(i) => specs[i] = AxisSpec::flag(f),
                None => specs.push(AxisSpec::flag(f)),
            }
        }
        specs
    }
}

/// The scenario of `cell` (its seed still the base's) and whether it reads `--data-dir`. An
/// error is blamed on the first axis whose value makes the scenario invalid.
fn load_cell(
    spec: &SweepSpec,
    grid: &Grid,
    specs: &[AxisSpec],
    cell: &Cell,
) -> Result<(Scenario, bool)> {
    let with = |n: usize| {
        let mut o = spec.sets.clone();
        o.extend(grid.overrides(cell).into_iter().take(n));
        Scenario::load_sweep_file(&spec.scenario, &o).map(|(sc, _)| sc)
    };
    let axes = grid.axes.len();
    let mut sc = match with(axes) {
        Ok(sc) => sc,
        Err(e) => {
            let culprit = (1..=axes).find(|&n| with(n).is_err()).unwrap_or(axes);
            let a = &grid.axes[culprit - 1];
            let v = &a.values[cell.index[culprit - 1]];
            bail!(
                "sweep cell `{}`: {} {}={}: {}",
                cell.name,
                specs[culprit - 1].origin,
                a.key,
                v.raw,
                without_set_blame(&e)
            );
        }
    };
    ensure!(
        sc.eval.enabled,
        "sweep cell `{}`: a sweep tabulates the linear probe, so it needs eval.enabled = true",
        cell.name
    );
    let read = match &spec.data_dir {
        Some(d) => sc.set_data_dir(d), // unread on synthetic data: `sweep` says so once
        None => false,
    };
    Ok((sc, read))
}

/// `e` without the `in --set …` context that [`Scenario::load`] puts on an override's error
/// (the sweep names its own axis instead).
fn without_set_blame(e: &anyhow::Error) -> String {
    let mut chain: Vec<String> = e.chain().map(|c| c.to_string()).collect();
    if chain.len() > 1 && chain[0].starts_with("in --set ") {
        chain.remove(0);
    }
    chain.join(": ")
}

/// Plans, runs (skipping finished runs of the same scenario) and writes the results (see the
/// module docs). Errors before anything runs on a bad cell; after writing the results when
/// a run failed.
pub async fn sweep(spec: &SweepSpec) -> Result<SweepReport> {
    let plan = plan(spec)?;
    if let (Some(d), false) = (&spec.data_dir, plan.data_dir_read) {
        eprintln!(
            "warning: --data-dir {} is not read: the sweep's data is synthetic (generated in memory, no files)",
            d.display()
        );
    }
    let absolute = std::path::absolute(&spec.out).unwrap_or_else(|_| spec.out.clone());
    if let Some(run) = absolute
        .ancestors()
        .find(|d| d.join("summary.json").is_file())
    {
        bail!(
            "--out {}: {} holds a run (its summary.json): a sweep writes its runs in folders \
             below --out and its results beside them, never inside another run; choose another folder",
            spec.out.display(),
            run.display()
        );
    }
    std::fs::create_dir_all(&spec.out)
        .with_context(|| format!("cannot create output folder {}", spec.out.display()))?;
    eprintln!(
        "sweep: {} × {} = {} into {}",
        plural(plan.cells.len(), "cell", "cells"),
        plural(plan.seeds.len(), "seed", "seeds"),
        plural(plan.runs.len(), "run", "runs"),
        spec.out.display()
    );
    let outcomes = execute(
        plan.runs.clone(),
        Options {
            reuse: true,
            progress: spec.progress,
            keep_going: true,
        },
    )
    .await;
    let (mut rows, mut skipped, mut ran, mut failed) = (vec![], vec![], vec![], vec![]);
    for (i, o) in outcomes.into_iter().enumerate() {
        let (cell, seed) = (i / plan.seeds.len(), plan.seeds[i % plan.seeds.len()]);
        match o.status {
            Status::Failed(e) => {
                failed.push(format!("{}: {e:#}", o.label));
                continue;
            }
            Status::Skipped => skipped.push(o.label.clone()),
            Status::Ran => ran.push(o.label.clone()),
        }
        let s = o.summary.as_ref().context("a finished run has a summary")?;
        match row_of(s, cell, seed) {
            Ok(r) => rows.push(r),
            Err(e) => failed.push(format!("{}: {e:#}", o.label)),
        }
    }
    eprintln!(
        "sweep: {} ran, {} skipped (finished, same scenario), {} failed",
        ran.len(),
        skipped.len(),
        failed.len()
    );
    if !rows.is_empty() {
        write_results(&spec.out, &plan, &rows)?;
        eprintln!("results: {}", spec.out.join("results.md").display());
    }
    if !failed.is_empty() {
        // the same reason for every failed run (a missing dataset folder, say) is said once
        let reasons: Vec<&str> = failed
            .iter()
            .map(|f| f.split_once(": ").map_or(f.as_str(), |(_, r)| r))
            .collect();
        let what = if failed.len() > 1 && reasons.iter().all(|r| *r == reasons[0]) {
            format!("each: {}", reasons[0])
        } else {
            failed.join("; ")
        };
        let others = if rows.is_empty() {
            String::new()
        } else {
            format!(
                "; {} lists the others",
                spec.out.join("results.csv").display()
            )
        };
        bail!(
            "{} of {} sweep runs failed ({what}){others}",
            failed.len(),
            plan.runs.len(),
        );
    }
    Ok(SweepReport {
        plan,
        rows,
        skipped,
        ran,
        failed,
    })
}

/// A run's row from its `summary.json`.
pub fn row_of(summary: &Value, cell: usize, seed: u64) -> Result<ResultRow> {
    let f = |p: &str| summary.pointer(p).and_then(Value::as_f64);
    Ok(ResultRow {
        cell,
        seed,
        linear_top1: f("/eval/linear/top1").context("summary.json has no eval.linear.top1")?,
        linear_top5: f("/eval/linear/top5").context("summary.json has no eval.linear.top5")?,
        mlp_top1: f("/eval/mlp/top1"),
        random_init_top1: f("/eval/random_init/linear/top1"),
        rounds: summary
            .pointer("/rounds_completed")
            .and_then(Value::as_u64)
            .context("summary.json has no rounds_completed")?,
        wall_seconds: f("/wall_seconds").context("summary.json has no wall_seconds")?,
        epsilon: summary
            .pointer("/privacy")
            .map(|_| f("/privacy/epsilon_rdp").unwrap_or(f64::INFINITY)),
        delta: f("/privacy/delta"),
    })
}

/// Mean and sample std (n − 1) of each cell's linear top-1 over its rows.
pub fn cell_stats(cells: usize, rows: &[ResultRow]) -> Vec<CellStats> {
    (0..cells)
        .map(|c| {
            let v: Vec<f64> = rows
                .iter()
                .filter(|r| r.cell == c)
                .map(|r| r.linear_top1)
                .collect();
            let ri: Vec<f64> = rows
                .iter()
                .filter(|r| r.cell == c)
                .filter_map(|r| r.random_init_top1)
                .collect();
            let (mean, std) = mean_std(&v);
            let largest = |g: fn(&ResultRow) -> Option<f64>| {
                rows.iter()
                    .filter(|r| r.cell == c)
                    .filter_map(g)
                    .reduce(f64::max)
            };
            CellStats {
                mean,
                std,
                random_init_mean: mean_std(&ri).0,
                n: v.len(),
                epsilon: largest(|r| r.epsilon),
                delta: largest(|r| r.delta),
            }
        })
        .collect()
}

/// Mean (none of no values) and sample std with n − 1 (none of fewer than two).
pub fn mean_std(v: &[f64]) -> (Option<f64>, Option<f64>) {
    if v.is_empty() {
        return (None, None);
    }
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let std = (v.len() > 1)
        .then(|| (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt());
    (Some(mean), std)
}

/// Writes `results.csv`, `results.md`, `top1.png` and, with DP, `top1_vs_epsilon.png` into
/// `out`.
pub fn write_results(out: &Path, plan: &SweepPlan, rows: &[ResultRow]) -> Result<()> {
    write_atomic(&out.join("results.csv"), results_csv(plan, rows).as_bytes())?;
    let stats = cell_stats(plan.cells.len(), rows);
    let mut md = results_md(plan, &stats);
    if !plan.grid.axes.is_empty() && stats.iter().any(|s| s.mean.is_some()) {
        top1_chart(&out.join("top1.png"), plan, &stats)?;
        md += "\n![linear top-1](top1.png)\n";
    }
    if epsilon_chart::draw(&out.join("top1_vs_epsilon.png"), plan, &stats)? {
        md += "\n![linear top-1 against ε](top1_vs_epsilon.png)\n";
    }
    write_atomic(&out.join("results.md"), md.as_bytes())
}

/// `results.csv`: a header, then one line per row (numbers as in `summary.json`).
pub fn results_csv(plan: &SweepPlan, rows: &[ResultRow]) -> String {
    let mut header = vec!["cell".to_string()];
    header.extend(plan.grid.axes.iter().map(|a| a.key.clone()));
    header.extend(
        [
            "seed",
            "linear_top1",
            "linear_top5",
            "mlp_top1",
            "random_init_top1",
            "rounds",
            "wall_seconds",
            "epsilon_rdp",
            "delta",
        ]
        .map(String::from),
    );
    let opt = |v: Option<f64>| v.map_or(String::new(), |v| v.to_string());
    let mut s = csv_row(&header);
    for r in rows {
        let cell = &plan.cells[r.cell];
        let mut line = vec![cell.name.clone()];
        line.extend(plan.grid.labels(cell));
        line.extend([
            r.seed.to_string(),
            r.linear_top1.to_string(),
            r.linear_top5.to_string(),
            opt(r.mlp_top1),
            opt(r.random_init_top1),
            r.rounds.to_string(),
            r.wall_seconds.to_string(),
            opt(r.epsilon),
            opt(r.delta),
        ]);
        s += &csv_row(&line);
    }
    s
}

/// `results.md`: one row per cell in grid order.
pub fn results_md(plan: &SweepPlan, stats: &[CellStats]) -> String {
    let mut s = String::from("# Sweep: linear-probe top-1\n\n");
    let seeds: Vec<String> = plan.seeds.iter().map(|s| s.to_string()).collect();
    s += &format!(
        "Mean ± sample std (n − 1) over the seeds ({}), in %.\n\n",
        seeds.join(", ")
    );
    let mut header: Vec<&str> = plan.grid.axes.iter().map(|a| a.label.as_str()).collect();
    if header.is_empty() {
        header.push("cell");
    }
    header.extend(["linear top-1 %", "random init top-1 %"]);
    let dp = stats.iter().any(|st| st.epsilon.is_some());
    if dp {
        header.extend(["ε (RDP)", "δ"]);
    }
    header.push("seeds");
    s += &markdown_header(&header);
    for (cell, st) in plan.cells.iter().zip(stats) {
        let mut line = plan.grid.labels(cell);
        if line.is_empty() {
            line.push(cell.name.clone());
        }
        line.push(match st.mean {
            Some(m) => format!("{} ± {}", pct(m), st.std.map_or("–".into(), pct)),
            None => "–".into(),
        });
        line.push(st.random_init_mean.map_or("–".into(), pct));
        if dp {
            line.push(st.epsilon.map_or("–".into(), epsilon_label));
            line.push(st.delta.map_or("–".into(), |d| format!("{d:.3e}")));
        }
        line.push(st.n.to_string());
        s += &markdown_row(&line);
    }
    s
}

/// ε as the tables write it: two decimals, `∞` for an unbounded one (noise multiplier 0).
pub fn epsilon_label(e: f64) -> String {
    if e.is_finite() {
        format!("{e:.2}")
    } else {
        "∞".into()
    }
}

/// The lines of a sweep's charts: one per combination of the values of every axis but the
/// first (`per_x` of them), named `label=value, …` (empty with a single axis); line `j`'s
/// cell at the first axis's value `x` is `x · per_x + j`. Returns `(per_x, names)`.
pub fn lines(plan: &SweepPlan) -> (usize, Vec<String>) {
    let axes = &plan.grid.axes;
    let per_x = plan.cells.len() / axes[0].values.len();
    let names = (0..per_x)
        .map(|j| {
            axes[1..]
                .iter()
                .zip(&plan.cells[j].index[1..])
                .map(|(a, &v)| format!("{}={}", a.label, a.values[v].label))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .collect();
    (per_x, names)
}

/// `top1.png`: x the first axis's values, one line per combination of the other axes' values
/// (one line with a single axis), error bars = std; the lines are drawn slightly apart so
/// that their bars do not hide each other.
fn top1_chart(path: &Path, plan: &SweepPlan, stats: &[CellStats]) -> Result<()> {
    let first = &plan.grid.axes[0];
    let categories: Vec<String> = first.values.iter().map(|v| v.label.clone()).collect();
    let (per_x, names) = lines(plan);
    let spread = 0.15_f64.min(0.6 / per_x as f64);
    let series: Vec<Series> = names
        .into_iter()
        .enumerate()
        .map(|(j, name)| {
            let dx = (j as f64 - (per_x as f64 - 1.0) / 2.0) * spread;
            let (mut points, mut err) = (vec![], vec![]);
            for x in 0..first.values.len() {
                let st = &stats[x * per_x + j];
                if let Some(m) = st.mean {
                    points.push((x as f64 + dx, m));
                    err.push(st.std.unwrap_or(0.0));
                }
            }
            Series {
                name: if name.is_empty() {
                    "linear top-1".into()
                } else {
                    name
                },
                points,
                err,
                baseline: false,
            }
        })
        .filter(|s| !s.points.is_empty())
        .collect();
    plot::categories_chart(
        path,
        "Linear probe top-1 (mean over seeds, bars: std)",
        &first.key,
        "linear top-1",
        &categories,
        &series,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_and_sample_std() {
        assert_eq!(mean_std(&[]), (None, None));
        assert_eq!(mean_std(&[0.25]), (Some(0.25), None));
        let (m, s) = mean_std(&[0.3, 0.5]);
        assert!((m.unwrap() - 0.4).abs() < 1e-12);
        // n − 1: sqrt(((0.1)² + (0.1)²) / 1)
        assert!((s.unwrap() - 0.02f64.sqrt()).abs() < 1e-12);
    }

    fn spec(dir: &Path, grid: &[&str]) -> SweepSpec {
        let p = dir.join("base.toml");
        std::fs::write(
            &p,
            "name = \"b\"\n[federation.strategy]\nkind = \"fedavg\"\n",
        )
        .unwrap();
        SweepSpec {
            scenario: p,
            grid: grid.iter().map(|s| s.to_string()).collect(),
            seeds: vec![0, 1],
            out: dir.join("out"),
            ..SweepSpec::default()
        }
    }

    #[test]
    fn a_dp_run_reports_its_epsilon_and_z_0_is_unbounded() {
        let summary = |privacy: &str| -> Value {
            serde_json::from_str(&format!(
                r#"{{"eval": {{"linear": {{"top1": 0.3, "top5": 0.8}}}},
                    "rounds_completed": 2, "wall_seconds": 9.5{privacy}}}"#
            ))
            .unwrap()
        };
        let plain = row_of(&summary(""), 0, 0).unwrap();
        assert_eq!((plain.epsilon, plain.delta), (None, None));
        // serde_json writes the accountant's ε = ∞ (z = 0) as null
        let z0 = row_of(
            &summary(r#", "privacy": {"epsilon_rdp": null, "delta": 0.125}"#),
            1,
            0,
        )
        .unwrap();
        assert_eq!(z0.epsilon, Some(f64::INFINITY));
        let z1 = row_of(
            &summary(r#", "privacy": {"epsilon_rdp": 2.69, "delta": 0.125}"#),
            2,
            0,
        )
        .unwrap();
        assert_eq!((z1.epsilon, z1.delta), (Some(2.69), Some(0.125)));
        let dir = tempfile::tempdir().unwrap();
        let mut s = spec(dir.path(), &["federation.rounds=[1, 2, 3]"]);
        s.seeds = vec![0];
        let p = plan(&s).unwrap();
        let stats = cell_stats(3, &[plain, z0, z1.clone()]);
        let md = results_md(&p, &stats);
        assert!(md.contains("| ε (RDP) | δ | seeds |"), "{md}");
        assert!(md.contains("| 30.0 ± – | – | – | – | 1 |"), "{md}");
        assert!(md.contains("| ∞ | 1.250e-1 |"), "{md}");
        assert!(md.contains("| 2.69 | 1.250e-1 |"), "{md}");
        let csv = results_csv(&p, &[z1]);
        assert!(
            csv.lines().nth(1).unwrap().ends_with(",9.5,2.69,0.125"),
            "{csv}"
        );
    }

    #[test]
    fn the_plan_is_cells_times_seeds_in_their_folders() {
        let dir = tempfile::tempdir().unwrap();
        let s = spec(
            dir.path(),
            &[
                "federation.strategy.kind=[fedavg, fedprox]",
                "federation.rounds=[1, 3]",
            ],
        );
        let p = plan(&s).unwrap();
        assert_eq!(p.runs.len(), 8);
        let r = &p.runs[5];
        assert_eq!(r.label, "strategy=fedprox__rounds=1/seed-1");
        assert_eq!(
            r.dir,
            s.out.join("strategy=fedprox__rounds=1").join("seed-1")
        );
        assert_eq!(r.scenario.seed, 1);
        assert_eq!(r.scenario.federation.rounds, 1);
        assert_eq!(r.scenario.federation.strategy.name(), "fedprox");
        assert!(!s.out.exists(), "planning writes nothing");
    }

    #[test]
    fn a_bad_sweep_table_is_blamed_on_the_table_not_the_flags() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("s.toml");
        let err = |table: &str, seeds: Vec<u64>| {
            std::fs::write(&file, format!("name = \"b\"\n{table}")).unwrap();
            let s = SweepSpec {
                scenario: file.clone(),
                seeds,
                out: dir.path().join("out"),
                ..SweepSpec::default()
            };
            format!("{:#}", plan(&s).unwrap_err())
        };
        let f = file.display();
        let e = err("[sweep]\nseeds = []\n", vec![]);
        assert!(
            e.starts_with(&format!("[sweep] seeds of {f} is empty")),
            "{e}"
        );
        let e = err("[sweep]\nseeds = [1, 1]\n", vec![]);
        assert!(
            e.starts_with(&format!("[sweep] seeds of {f}: seed 1 is listed twice")),
            "{e}"
        );
        let e = err("[sweep]\nseeds = [1]\n", vec![2, 2]);
        assert!(e.starts_with("--seeds: seed 2 is listed twice"), "{e}");
        let axis = |key: &str, values: &str| {
            format!("[[sweep.axis]]\nkey = \"{key}\"\nvalues = {values}\n")
        };
        let e = err(&axis("federation.rounds", "[]"), vec![]);
        assert_eq!(
            e,
            format!("[[sweep.axis]] of {f} `federation.rounds`: the list of values is empty")
        );
        let e = err(&axis("federation.clients", "[3, 0]"), vec![]);
        assert!(
            e.starts_with(&format!(
                "sweep cell `clients=0`: [[sweep.axis]] of {f} federation.clients=0:"
            )),
            "{e}"
        );
        assert!(!e.contains("--grid") && !e.contains("--set"), "{e}");
    }

    #[test]
    fn a_bad_cell_is_refused_naming_the_cell_and_the_axis() {
        let dir = tempfile::tempdir().unwrap();
        let err = |grid: &[&str]| format!("{:#}", plan(&spec(dir.path(), grid)).unwrap_err());
        let e = err(&["federation.roundz=[2]"]);
        assert!(
            e.starts_with("sweep cell `roundz=2`: --grid federation.roundz=2:")
                && e.contains("roundz"),
            "{e}"
        );
        assert!(!e.contains("--set"), "{e}");
        // a bad value in the second cell of the second axis
        let e = err(&[
            "federation.strategy.kind=[fedavg]",
            "federation.clients=[3, 0]",
        ]);
        assert!(
            e.starts_with("sweep cell `strategy=fedavg__clients=0`: --grid federation.clients=0:"),
            "{e}"
        );
        let e = err(&["federation.strategy.kind=[fedavg, nosuch]"]);
        assert!(e.contains("strategy=nosuch") && e.contains("nosuch"), "{e}");
        let e = err(&["eval.enabled=[true, false]"]);
        assert!(
            e.contains("enabled=false") && e.contains("eval.enabled = true"),
            "{e}"
        );
        assert!(!dir.path().join("out").exists());
    }
}
