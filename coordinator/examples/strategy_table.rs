//! The table of linear-probe top-1 of several `compare` folders side by side (the strategy
//! comparison's seeds, or the poisoning experiment's attacks): one row per run name, one
//! column per folder, and with `--mean` the mean and spread (half the max − min) over the
//! columns, and the random-init baseline's top-1 (averaged over the columns). Writes `<out>/table.md`, `<out>/table.csv` and the grouped bar chart
//! `<out>/top1.png` (one bar per column).
//!
//! ```sh
//! cargo run -p fedssl-coordinator --example strategy_table -- --out runs/strategies \
//!   --title "CIFAR-10, 8 clients, alpha 0.1" --mean --rows fedavg,fedprox,median \
//!   "seed 0=runs/strategies/seed0" "seed 1=runs/strategies/seed1"
//! ```
//!
//! A run missing from a folder (not run, or failed) is an empty cell and is left out of the
//! mean.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use fedssl_coordinator::experiments::plot::grouped_bar_chart;

/// Linear-probe top-1 and its random-init baseline from `<dir>/<run>/summary.json`.
fn top1(dir: &Path, run: &str) -> Result<Option<(f64, f64)>> {
    let path = dir.join(run).join("summary.json");
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| path.display().to_string())?;
    let get = |p: &str| v.pointer(p).and_then(|x| x.as_f64());
    match (
        get("/eval/linear/top1"),
        get("/eval/random_init/linear/top1"),
    ) {
        (Some(t), r) => Ok(Some((t, r.unwrap_or(f64::NAN)))),
        _ => bail!("{}: no eval.linear.top1", path.display()),
    }
}

/// The command line: `--out`, `--title`, `--rows a,b,c`, `--mean`, then `label=dir` columns.
struct Args {
    out: PathBuf,
    title: String,
    rows: Vec<String>,
    mean: bool,
    columns: Vec<(String, PathBuf)>,
}

fn parse() -> Result<Args> {
    let mut a = Args {
        out: PathBuf::from("."),
        title: String::from("linear probe top-1"),
        rows: Vec::new(),
        mean: false,
        columns: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--out" => a.out = PathBuf::from(value()?),
            "--title" => a.title = value()?,
            "--rows" => a.rows = value()?.split(',').map(str::to_string).collect(),
            "--mean" => a.mean = true,
            col => match col.split_once('=') {
                Some((label, dir)) => a.columns.push((label.to_string(), dir.into())),
                None => bail!("unknown argument `{col}` (columns are label=dir)"),
            },
        }
    }
    if a.rows.is_empty() || a.columns.is_empty() {
        bail!("give --rows and at least one label=dir column");
    }
    Ok(a)
}

fn main() -> Result<()> {
    let a = parse()?;
    std::fs::create_dir_all(&a.out)?;
    let (mut md, mut csv) = (String::new(), String::from("run"));
    let labels: Vec<&str> = a.columns.iter().map(|(l, _)| l.as_str()).collect();
    write!(md, "| top-1 % | {} |", labels.join(" | "))?;
    for l in &labels {
        write!(csv, ",{l}")?;
    }
    if a.mean {
        md.push_str(" mean ± spread |");
        csv.push_str(",mean,spread");
    }
    md.push_str(" random init |\n|---|");
    md.push_str(&"---|".repeat(labels.len() + 1 + usize::from(a.mean)));
    md.push('\n');
    csv.push_str(",random_init\n");
    let mut groups = Vec::new();
    for run in &a.rows {
        let mut cells = Vec::new();
        let mut randoms = Vec::new();
        for (_, dir) in &a.columns {
            let r = top1(dir, run)?;
            if let Some((_, b)) = r {
                randoms.push(b);
            }
            cells.push(r.map(|(t, _)| t));
        }
        // the random-init baseline, averaged over the columns that have the run
        let random = randoms.iter().sum::<f64>() / randoms.len() as f64;
        let got: Vec<f64> = cells.iter().flatten().copied().collect();
        let show = |c: &Option<f64>| c.map_or(String::new(), |t| format!("{:.1}", 100.0 * t));
        let shown: Vec<String> = cells.iter().map(show).collect();
        write!(md, "| {run} | {} |", shown.join(" | "))?;
        let raw: Vec<String> = cells
            .iter()
            .map(|c| c.map_or(String::new(), |t| format!("{t:.4}")))
            .collect();
        write!(csv, "{run},{}", raw.join(","))?;
        if a.mean {
            let (mean, spread) = if got.is_empty() {
                (f64::NAN, f64::NAN)
            } else {
                let max = got.iter().copied().fold(f64::MIN, f64::max);
                let min = got.iter().copied().fold(f64::MAX, f64::min);
                (
                    got.iter().sum::<f64>() / got.len() as f64,
                    (max - min) / 2.0,
                )
            };
            write!(md, " {:.1} ± {:.1} |", 100.0 * mean, 100.0 * spread)?;
            write!(csv, ",{mean:.4},{spread:.4}")?;
        }
        writeln!(md, " {:.1} |", 100.0 * random)?;
        writeln!(csv, ",{random:.4}")?;
        if got.len() == cells.len() {
            groups.push((run.clone(), got));
        }
    }
    std::fs::write(a.out.join("table.md"), &md)?;
    std::fs::write(a.out.join("table.csv"), &csv)?;
    let series: Vec<String> = labels.iter().map(|l| l.to_string()).collect();
    if !groups.is_empty() {
        grouped_bar_chart(
            &a.out.join("top1.png"),
            &a.title,
            "linear probe top-1",
            &series,
            &groups,
        )?;
    }
    print!("{md}");
    Ok(())
}
