//! `compare-pretexts`: trains every pretext task federated under one budget and tabulates
//! the linear probe of each against the random-init baseline of its backbone.
//!
//! The budget is the scenario's: the same data slice, partition, clients, rounds, local
//! epochs, batch size (images per step) and optimiser for every task, so every task sees the
//! same images the same number of times. Only `pretext.task` changes, and the backbone where
//! a task needs its own (masked image modelling needs a ViT): such a task is compared with
//! the random-init baseline of that backbone. Each task's run is a whole `simulate` run in
//! `<out>/<task>/` (summary, rounds, checkpoints); the table goes to `<out>/compare.md` and
//! `<out>/compare.csv`, the bar chart to `<out>/compare.png`. It is a preset of the
//! experiments' runner (as `sweep` and `compare`): one planned run per task.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use fedssl_shared::config::Scenario;
use fedssl_shared::pretext::PretextKind;
use fedssl_shared::weights::write_atomic;
use serde::Serialize;

use crate::experiments::runner::{execute, Options, PlannedRun, Status};
use crate::experiments::tables::{csv_row, markdown_header, markdown_row};

/// One task's line of the comparison.
#[derive(Clone, Debug, Serialize)]
pub struct CompareRow {
    /// The pretext task.
    pub task: String,
    /// The backbone it trained.
    pub backbone: String,
    /// How the probes saw the images: `"whole"` or `"patch grid"` (`eval.view`); the
    /// random-init baseline is evaluated the same way.
    pub view: String,
    /// Linear-probe top-1 of the federated backbone, in [0, 1].
    pub top1: f64,
    /// Linear-probe top-5, in [0, 1].
    pub top5: f64,
    /// Linear-probe top-1 of the same backbone at random initialisation, in [0, 1].
    pub random_init_top1: f64,
    /// Its top-5.
    pub random_init_top5: f64,
    /// MLP-probe top-1 of the federated backbone, when the scenario runs the MLP probe.
    pub mlp_top1: Option<f64>,
    /// MLP-probe top-1 of the random-init backbone.
    pub random_init_mlp_top1: Option<f64>,
    /// Rounds that completed.
    pub rounds_completed: usize,
    /// Wall seconds of the whole run (training and evaluation).
    pub wall_seconds: f64,
    /// The run's folder.
    pub run_dir: PathBuf,
}

impl CompareRow {
    /// Top-1 gain over random init, in percentage points.
    pub fn gain_points(&self) -> f64 {
        100.0 * (self.top1 - self.random_init_top1)
    }

    /// The row of a finished run from its `summary.json`.
    fn from_summary_json(v: &serde_json::Value, run_dir: PathBuf) -> Result<Self> {
        let f = |path: &[&str]| -> Result<f64> {
            let mut x = v;
            for k in path {
                x = &x[*k];
            }
            x.as_f64().with_context(|| {
                format!(
                    "{}: no `{}`",
                    run_dir.join("summary.json").display(),
                    path.join(".")
                )
            })
        };
        Ok(Self {
            task: v["pretext"].as_str().unwrap_or("?").to_string(),
            backbone: v["backbone"].as_str().unwrap_or("?").to_string(),
            view: String::new(),
            top1: f(&["eval", "linear", "top1"])?,
            top5: f(&["eval", "linear", "top5"])?,
            random_init_top1: f(&["eval", "random_init", "linear", "top1"])?,
            random_init_top5: f(&["eval", "random_init", "linear", "top5"])?,
            mlp_top1: f(&["eval", "mlp", "top1"]).ok(),
            random_init_mlp_top1: f(&["eval", "random_init", "mlp", "top1"]).ok(),
            rounds_completed: f(&["rounds_completed"])? as usize,
            wall_seconds: f(&["wall_seconds"])?,
            run_dir,
        })
    }
}

/// The scenario of `task` under `base`'s budget: `pretext.task` set, the backbone switched
/// when the task needs its own, evaluation and the random-init baseline on. Errors if the
/// result does not validate.
pub fn scenario_for(base: &Scenario, task: PretextKind) -> Result<Scenario> {
    let mut sc = base.clone();
    sc.pretext.task = task;
    if let Some(b) = task.required_backbone() {
        sc.model.backbone = b;
    }
    sc.eval.enabled = true;
    sc.eval.random_init_baseline = true;
    sc.name = format!("{}-{}", base.name, task.name());
    sc.validate()
        .with_context(|| format!("pretext task `{}`", task.name()))?;
    Ok(sc)
}

/// `eval.view` of `sc` in words.
fn view_name(sc: &Scenario) -> String {
    match sc.pretext.eval_view(sc.eval.view) {
        Ok(fedssl_shared::pretext::EvalView::PatchGrid { .. }) => "patch grid".into(),
        _ => "whole".into(),
    }
}

/// Runs `simulate` for every task of `tasks` under `base`'s budget, one after the other, in
/// `<out>/<task>/`, then writes `compare.md`, `compare.csv` and `compare.png` into `out`.
/// The runs are made by the experiments' runner ([`crate::experiments::runner`]): with
/// `reuse`, a task whose folder already holds a finished run of the same scenario is not run
/// again.
/// A task whose run fails is reported (task and reason) and the others still run; the
/// function then errors after writing the table of those that finished.
pub async fn compare_pretexts(
    base: &Scenario,
    tasks: &[PretextKind],
    out: &Path,
    progress: bool,
    reuse: bool,
) -> Result<Vec<CompareRow>> {
    refuse_a_task_listed_twice(tasks)?;
    std::fs::create_dir_all(out)
        .with_context(|| format!("cannot create output folder {}", out.display()))?;
    let scenarios: Vec<(PretextKind, Scenario)> = tasks
        .iter()
        .map(|&t| Ok((t, scenario_for(base, t)?)))
        .collect::<Result<_>>()?;
    let planned = scenarios
        .iter()
        .map(|(task, sc)| PlannedRun {
            label: format!("pretext {} on {}", task.name(), sc.model.backbone.name()),
            scenario: sc.clone(),
            dir: out.join(task.name()),
        })
        .collect();
    let options = Options {
        reuse,
        progress,
        keep_going: true,
    };
    let outcomes = execute(planned, options).await;
    let mut rows = Vec::new();
    let mut failed = Vec::new();
    for (o, (task, sc)) in outcomes.into_iter().zip(&scenarios) {
        let row = match (o.status, o.summary) {
            (Status::Failed(e), _) => Err(e),
            (_, Some(summary)) => CompareRow::from_summary_json(&summary, o.dir.clone()),
            (_, None) => Err(anyhow::anyhow!("no summary.json in {}", o.dir.display())),
        };
        match row {
            Ok(mut row) => {
                row.view = view_name(sc);
                eprintln!(
                    "      {}: top-1 {:.1}% (random init {:.1}%, {:+.1} points) in {:.0} s",
                    task.name(),
                    100.0 * row.top1,
                    100.0 * row.random_init_top1,
                    row.gain_points(),
                    row.wall_seconds
                );
                rows.push(row);
            }
            Err(e) => failed.push(format!("{}: {e:#}", task.name())),
        }
    }
    if !rows.is_empty() {
        write_reports(&rows, out)?;
    }
    if !failed.is_empty() {
        anyhow::bail!(
            "{} of {} pretext runs failed ({}); the table in {} lists the others",
            failed.len(),
            tasks.len(),
            failed.join("; "),
            out.join("compare.md").display()
        );
    }
    Ok(rows)
}

/// Refuses a task that `tasks` lists twice: each task runs once, into `<out>/<task>/`.
fn refuse_a_task_listed_twice(tasks: &[PretextKind]) -> Result<()> {
    if let Some(t) = tasks
        .iter()
        .enumerate()
        .find_map(|(i, t)| tasks[..i].contains(t).then_some(t))
    {
        anyhow::bail!(
            "pretext task `{}` is listed twice: each task runs once, into <out>/{}/",
            t.name(),
            t.name()
        );
    }
    Ok(())
}

/// Writes `compare.md` (Markdown table), `compare.csv` and `compare.png` into `out`: the
/// chart has one group per task, its linear-probe top-1 beside the top-1 of its own
/// random-init baseline (same backbone, same eval view); tasks on a backbone other than the
/// most common one are labelled `task (backbone)`.
pub fn write_reports(rows: &[CompareRow], out: &Path) -> Result<()> {
    write_atomic(&out.join("compare.md"), markdown(rows).as_bytes())?;
    write_atomic(&out.join("compare.csv"), csv(rows).as_bytes())?;
    crate::experiments::plot::grouped_bar_chart(
        &out.join("compare.png"),
        "Linear probe top-1 per pretext task",
        "top-1 accuracy",
        &[
            "federated pretext training".to_string(),
            "random init (same backbone and view)".to_string(),
        ],
        &chart_groups(rows),
    )
}

/// The groups of `compare.png`: `(label, [top-1, random-init top-1])` per row.
fn chart_groups(rows: &[CompareRow]) -> Vec<(String, Vec<f64>)> {
    let count = |b: &str| rows.iter().filter(|r| r.backbone == b).count();
    let common = rows
        .iter()
        .map(|r| r.backbone.as_str())
        .max_by_key(|b| count(b))
        .unwrap_or("");
    rows.iter()
        .map(|r| {
            let label = if r.backbone == common {
                r.task.clone()
            } else {
                format!("{} ({})", r.task, r.backbone)
            };
            (label, vec![r.top1, r.random_init_top1])
        })
        .collect()
}

/// The comparison as a Markdown table, accuracies in percent (MLP columns show `–` where the
/// scenario ran no MLP probe).
pub fn markdown(rows: &[CompareRow]) -> String {
    let pct = |v: Option<f64>| v.map_or("–".to_string(), |v| format!("{:.1} %", 100.0 * v));
    let mut s = markdown_header(&[
        "pretext",
        "backbone",
        "eval view",
        "linear top-1",
        "top-5",
        "random init top-1",
        "gain (points)",
        "MLP top-1",
        "random init MLP",
        "wall s",
    ]);
    for r in rows {
        s += &markdown_row(&[
            r.task.clone(),
            r.backbone.clone(),
            r.view.clone(),
            pct(Some(r.top1)),
            pct(Some(r.top5)),
            pct(Some(r.random_init_top1)),
            format!("{:+.1}", r.gain_points()),
            pct(r.mlp_top1),
            pct(r.random_init_mlp_top1),
            format!("{:.0}", r.wall_seconds),
        ]);
    }
    s
}

/// The comparison as CSV, accuracies as fractions in [0, 1].
pub fn csv(rows: &[CompareRow]) -> String {
    let mut s = csv_row(&[
        "task",
        "backbone",
        "view",
        "top1",
        "top5",
        "random_init_top1",
        "random_init_top5",
        "gain_points",
        "mlp_top1",
        "random_init_mlp_top1",
        "rounds_completed",
        "wall_seconds",
    ]);
    let opt = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.6}"));
    for r in rows {
        s += &csv_row(&[
            r.task.clone(),
            r.backbone.clone(),
            r.view.clone(),
            format!("{:.6}", r.top1),
            format!("{:.6}", r.top5),
            format!("{:.6}", r.random_init_top1),
            format!("{:.6}", r.random_init_top5),
            format!("{:.3}", r.gain_points()),
            opt(r.mlp_top1),
            opt(r.random_init_mlp_top1),
            r.rounds_completed.to_string(),
            format!("{:.3}", r.wall_seconds),
        ]);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(task: &str, backbone: &str, top1: f64, base: f64) -> CompareRow {
        CompareRow {
            task: task.into(),
            backbone: backbone.into(),
            view: "whole".into(),
            top1,
            top5: 0.9,
            random_init_top1: base,
            random_init_top5: 0.8,
            mlp_top1: Some(0.45),
            random_init_mlp_top1: None,
            rounds_completed: 2,
            wall_seconds: 61.4,
            run_dir: PathBuf::from("x"),
        }
    }

    #[test]
    fn tables_hold_the_numbers_and_the_gain() {
        let rows = [row("rotation", "resnet", 0.421, 0.38)];
        let md = markdown(&rows);
        assert!(
            md.contains(
                "| rotation | resnet | whole | 42.1 % | 90.0 % | 38.0 % | +4.1 | 45.0 % | – | 61 |"
            ),
            "{md}"
        );
        let csv = csv(&rows);
        let line = csv.lines().nth(1).unwrap();
        assert_eq!(
            line,
            "rotation,resnet,whole,0.421000,0.900000,0.380000,0.800000,4.100,0.450000,,2,61.400"
        );
        assert_eq!(csv.lines().count(), 2);
    }

    #[test]
    fn only_the_task_changes_in_the_budget() {
        let base = Scenario::default();
        let sc = scenario_for(&base, PretextKind::Rotation).unwrap();
        assert_eq!(sc.federation, base.federation);
        assert_eq!(sc.train, base.train);
        assert_eq!(sc.data, base.data);
        assert_eq!(sc.pretext.task, PretextKind::Rotation);
        assert_eq!(sc.name, "unnamed-rotation");
        for &t in PretextKind::all() {
            let sc = scenario_for(&base, t).unwrap();
            assert_eq!(sc.pretext.task, t);
            assert_eq!(
                sc.model.backbone,
                t.required_backbone().unwrap_or(base.model.backbone)
            );
        }
    }

    #[tokio::test]
    async fn a_task_listed_twice_is_refused_before_anything_runs() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let tasks = [
            PretextKind::Jigsaw,
            PretextKind::Rotation,
            PretextKind::Jigsaw,
        ];
        let Err(e) = compare_pretexts(&Scenario::default(), &tasks, &out, false, false).await
        else {
            panic!("a duplicate task must be refused");
        };
        assert!(e.to_string().contains("`jigsaw` is listed twice"), "{e}");
        assert!(!out.exists(), "nothing may be written before the check");
    }
}
