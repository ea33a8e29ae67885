//! `fedssl-coordinator compare`: runs several scenarios (`simulate`) into `<out>/<name>/` and
//! writes, into `<out>`, the comparison of their evaluation suites:
//!
//! * `probes.md` / `probes.csv`: linear and MLP probe on the pre-logits, pretrained and random init;
//! * `per_layer.md` / `per_layer.csv` / `per_layer.png`: the linear probe of every layer;
//! * `few_labels.md` / `few_labels.csv` / `few_labels.png`: top-1 against labels per class,
//!   pretrained and random init;
//! * `knn_rounds.png`: the k-NN monitor per round (when `eval.knn_every > 0`);
//! * `report.md`: all the tables.
//!
//! `compare` is a preset of the experiments' runner (as `sweep` and `compare-pretexts`): each
//! scenario file one run, kept with `--reuse` when it finished with the same scenario.
//!
//! The Revisiting experiment is `compare scenarios/revisiting-resnet.toml
//! scenarios/revisiting-vgg.toml --out runs/revisiting`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use fedssl_shared::config::Scenario;

use crate::eval::few_labels::FewLabelResult;
use crate::eval::probe::scoring::ProbeResult;
use crate::eval::suite::EvalFile;
use crate::experiments::plot::{self, Series};
use crate::experiments::runner::{execute, Options, PlannedRun, Status};
use crate::experiments::tables::{csv_row, markdown_header, markdown_row, pct};

/// One finished run of the comparison.
pub struct RunResult {
    /// Scenario name (its folder under `<out>`).
    pub name: String,
    /// `eval.json`.
    pub eval: EvalFile,
    /// `(round, knn_top1)` from `rounds.jsonl`.
    pub knn: Vec<(usize, f64)>,
}

/// Runs (or, with `reuse`, reloads) every scenario and writes the comparison into `out`.
/// Scenario errors name the file; every run must have `eval.enabled = true`. The runs are
/// made by the experiments' runner ([`crate::experiments::runner`], one `simulate` run per
/// scenario in `<out>/<name>/`); with `reuse` a run that finished with the same scenario is
/// kept. The first run that fails stops the comparison.
pub async fn run_compare(
    scenarios: &[PathBuf],
    out: &Path,
    data_dir: Option<&Path>,
    overrides: &[String],
    reuse: bool,
    progress: bool,
) -> Result<Vec<RunResult>> {
    // every scenario is loaded and checked before the first run starts
    let mut loaded = Vec::with_capacity(scenarios.len());
    for path in scenarios {
        let mut sc = Scenario::load(path, overrides)?;
        anyhow::ensure!(
            sc.eval.enabled,
            "scenario {}: compare needs eval.enabled = true",
            path.display()
        );
        if let Some(d) = data_dir {
            sc.set_data_dir(d);
        }
        loaded.push((path, sc));
    }
    check_distinct_names(&loaded)?;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let planned = loaded
        .iter()
        .map(|(_, sc)| PlannedRun {
            label: sc.name.clone(),
            scenario: sc.clone(),
            dir: out.join(&sc.name),
        })
        .collect();
    let options = Options {
        reuse,
        progress,
        keep_going: false,
    };
    let mut runs = Vec::new();
    for (outcome, (path, sc)) in execute(planned, options).await.into_iter().zip(&loaded) {
        if let Status::Failed(e) = outcome.status {
            return Err(e.context(format!("run of {} failed", path.display())));
        }
        runs.push(load_run(&outcome.dir, &sc.name)?);
    }
    write_report(out, &runs)?;
    eprintln!("comparison written to {}", out.join("report.md").display());
    Ok(runs)
}

/// Refuses two scenarios with the same `name`: each run goes to `<out>/<name>/`, so the
/// second would overwrite the first (the same file given twice included). The error names
/// the duplicate and both files.
pub fn check_distinct_names(scenarios: &[(&PathBuf, Scenario)]) -> Result<()> {
    for (i, (path, sc)) in scenarios.iter().enumerate() {
        if let Some((first, _)) = scenarios[..i].iter().find(|(_, s)| s.name == sc.name) {
            anyhow::bail!(
                "duplicate scenario name `{}` ({} and {}): each run is written to <out>/<name>/, so every scenario of a comparison needs its own name",
                sc.name,
                first.display(),
                path.display()
            );
        }
    }
    Ok(())
}

/// Reads a run folder's `eval.json` and the `knn_top1` of its `rounds.jsonl`.
pub fn load_run(dir: &Path, name: &str) -> Result<RunResult> {
    let p = dir.join("eval.json");
    let eval: EvalFile = serde_json::from_str(
        &std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))?,
    )
    .with_context(|| format!("{} is not an eval.json", p.display()))?;
    let mut knn = Vec::new();
    if let Ok(text) = std::fs::read_to_string(dir.join("rounds.jsonl")) {
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line)?;
            if let (Some(r), Some(k)) = (v["round"].as_u64(), v["knn_top1"].as_f64()) {
                knn.push((r as usize, k));
            }
        }
    }
    Ok(RunResult {
        name: name.to_string(),
        eval,
        knn,
    })
}

/// Writes the tables and plots of `runs` into `out` (see the module docs): `probes.*`
/// always, `per_layer.*` and `few_labels.*` when a run has them, `knn_rounds.png` when a run
/// monitored k-NN, and `report.md` holding every table.
pub fn write_report(out: &Path, runs: &[RunResult]) -> Result<()> {
    let mut md = String::from("# Evaluation comparison\n\n");
    md += &probes_section(out, runs)?;
    if runs.iter().any(|r| !r.eval.eval.per_layer.is_empty()) {
        md += &per_layer_section(out, runs)?;
    }
    if runs.iter().any(|r| !r.eval.eval.few_labels.is_empty()) {
        md += &few_labels_section(out, runs)?;
    }
    md += &knn_section(out, runs)?;
    std::fs::write(out.join("report.md"), md)?;
    Ok(())
}

/// The probes on the pre-logits (linear, MLP; pretrained and random init): writes
/// `probes.csv`, returns the Markdown section.
fn probes_section(out: &Path, runs: &[RunResult]) -> Result<String> {
    let mut csv = csv_row(&[
        "run",
        "backbone",
        "backbone_values",
        "probe",
        "init",
        "top1",
        "top5",
        "weight_decay",
    ]);
    let mut md = String::from("## Probes on the pre-logits (top-1 / top-5 %)\n\n");
    md += &markdown_header(&[
        "run",
        "backbone",
        "values",
        "linear",
        "MLP",
        "random-init linear",
        "random-init MLP",
    ]);
    let cell = |p: Option<&ProbeResult>| {
        p.map(|p| format!("{} / {} (wd {})", pct(p.top1), pct(p.top5), p.weight_decay))
            .unwrap_or_else(|| "–".into())
    };
    for r in runs {
        let e = &r.eval.eval;
        let ri = e.random_init.as_ref();
        let rows = [
            ("linear", "pretrained", Some(&e.linear)),
            ("mlp", "pretrained", e.mlp.as_ref()),
            ("linear", "random", ri.map(|x| &x.linear)),
            ("mlp", "random", ri.and_then(|x| x.mlp.as_ref())),
        ];
        let (name, backbone) = (&r.name, &r.eval.backbone);
        let values = r.eval.backbone_values.to_string();
        md += &markdown_row(
            &[name.clone(), backbone.clone(), values.clone()]
                .into_iter()
                .chain(rows.iter().map(|(_, _, p)| cell(*p)))
                .collect::<Vec<_>>(),
        );
        for (probe, init, p) in rows {
            if let Some(p) = p {
                csv += &csv_row(&[
                    name,
                    backbone,
                    &values,
                    probe,
                    init,
                    &p.top1.to_string(),
                    &p.top5.to_string(),
                    &p.weight_decay.to_string(),
                ]);
            }
        }
    }
    std::fs::write(out.join("probes.csv"), &csv)?;
    Ok(md)
}

/// The linear probe of every layer: writes `per_layer.csv` and `per_layer.png`, returns the
/// Markdown section.
fn per_layer_section(out: &Path, runs: &[RunResult]) -> Result<String> {
    let mut csv = csv_row(&[
        "run",
        "backbone",
        "layer",
        "shape",
        "dim",
        "top1",
        "top5",
        "weight_decay",
    ]);
    let mut md = String::from("\n## Linear probe per layer (top-1 %)\n\n");
    md += &markdown_header(&["run", "layer", "shape", "pooled dim", "top-1", "top-5"]);
    let mut chart = Vec::new();
    for r in runs {
        let layers = &r.eval.eval.per_layer;
        for l in layers {
            let shape = l
                .shape
                .iter()
                .map(|v| v.to_string())
                .collect::<Vec<_>>()
                .join("x");
            let (name, dim) = (&r.name, l.dim.to_string());
            md += &markdown_row(&[
                name,
                &l.layer,
                &shape,
                &dim,
                &pct(l.probe.top1),
                &pct(l.probe.top5),
            ]);
            csv += &csv_row(&[
                name,
                &r.eval.backbone,
                &l.layer,
                &shape,
                &dim,
                &l.probe.top1.to_string(),
                &l.probe.top5.to_string(),
                &l.probe.weight_decay.to_string(),
            ]);
        }
        chart.push((
            r.name.clone(),
            layers
                .iter()
                .map(|l| (l.layer.clone(), l.probe.top1))
                .collect(),
        ));
    }
    std::fs::write(out.join("per_layer.csv"), &csv)?;
    plot::per_layer(&out.join("per_layer.png"), &chart)?;
    md += "\n![per layer](per_layer.png)\n";
    Ok(md)
}

/// Top-1 against labels per class, pretrained and random init: writes `few_labels.csv` and
/// `few_labels.png`, returns the Markdown section.
fn few_labels_section(out: &Path, runs: &[RunResult]) -> Result<String> {
    let mut csv = csv_row(&[
        "run",
        "point",
        "train_labels",
        "init",
        "top1_mean",
        "top1_std",
        "top5_mean",
        "top5_std",
        "seeds",
    ]);
    let mut md = String::from("\n## Few labels: linear probe top-1 % (mean ± std over draws)\n\n");
    md += &markdown_header(&["run", "labels", "pretrained", "random init", "gap (points)"]);
    let mut series = Vec::new();
    for r in runs {
        let e = &r.eval.eval;
        let rand = e
            .random_init
            .as_ref()
            .map(|x| &x.few_labels[..])
            .unwrap_or(&[]);
        for f in &e.few_labels {
            let b = rand.iter().find(|x| x.label == f.label);
            md += &markdown_row(&[
                r.name.clone(),
                format!("{} ({:.0} images)", f.label, f.train_labels),
                format!("{} ± {}", pct(f.top1_mean), pct(f.top1_std)),
                b.map(|b| format!("{} ± {}", pct(b.top1_mean), pct(b.top1_std)))
                    .unwrap_or_else(|| "–".into()),
                b.map(|b| format!("{:+.1}", 100.0 * (f.top1_mean - b.top1_mean)))
                    .unwrap_or_else(|| "–".into()),
            ]);
            for (init, x) in [("pretrained", Some(f)), ("random", b)] {
                if let Some(x) = x {
                    csv += &csv_row(&[
                        r.name.clone(),
                        x.label.clone(),
                        x.train_labels.to_string(),
                        init.to_string(),
                        x.top1_mean.to_string(),
                        x.top1_std.to_string(),
                        x.top5_mean.to_string(),
                        x.top5_std.to_string(),
                        x.seeds.to_string(),
                    ]);
                }
            }
        }
        let mk = |name: String, v: &[FewLabelResult], baseline| Series {
            name,
            points: v.iter().map(|f| (f.per_class, f.top1_mean)).collect(),
            err: v.iter().map(|f| f.top1_std).collect(),
            baseline,
        };
        if !e.few_labels.is_empty() {
            series.push(mk(format!("{} pretrained", r.name), &e.few_labels, false));
        }
        if !rand.is_empty() {
            series.push(mk(format!("{} random init", r.name), rand, true));
        }
    }
    std::fs::write(out.join("few_labels.csv"), &csv)?;
    plot::few_labels(&out.join("few_labels.png"), &series)?;
    md += "\n![few labels](few_labels.png)\n";
    Ok(md)
}

/// The k-NN monitor per round: writes `knn_rounds.png` and returns its Markdown section when
/// a run monitored k-NN; an empty section otherwise.
fn knn_section(out: &Path, runs: &[RunResult]) -> Result<String> {
    let knn: Vec<(String, Vec<(usize, f64)>)> = runs
        .iter()
        .filter(|r| !r.knn.is_empty())
        .map(|r| (r.name.clone(), r.knn.clone()))
        .collect();
    if knn.is_empty() {
        return Ok(String::new());
    }
    plot::knn_per_round(&out.join("knn_rounds.png"), &knn)?;
    Ok("\n## k-NN monitor per round\n\n![k-NN per round](knn_rounds.png)\n".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn duplicate_names_are_refused_before_anything_runs() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.toml");
        let b = dir.path().join("b.toml");
        std::fs::write(&a, "name = \"same\"\n").unwrap();
        std::fs::write(&b, "name = \"same\"\n[federation]\nrounds = 3\n").unwrap();
        let out = dir.path().join("out");
        for list in [vec![a.clone(), b.clone()], vec![a.clone(), a.clone()]] {
            let e = run_compare(&list, &out, None, &[], false, false)
                .await
                .err()
                .expect("duplicate names must be refused");
            let e = format!("{e:#}");
            assert!(
                e.contains("duplicate scenario name `same`")
                    && e.contains(&list[0].display().to_string())
                    && e.contains(&list[1].display().to_string()),
                "{e}"
            );
            assert!(!out.exists(), "nothing may be written before the check");
        }
        // distinct names pass the check
        let sc = |name: &str| Scenario {
            name: name.into(),
            ..Scenario::default()
        };
        check_distinct_names(&[(&a, sc("x")), (&b, sc("y"))]).unwrap();
    }
}
