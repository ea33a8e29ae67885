//! The one runner of the experiments (`sweep`, and its presets `compare` and
//! `compare-pretexts`): a list of planned runs, each a resolved scenario and its folder, run
//! one after the other as whole `simulate` runs ([`crate::run::job`]), a finished run of the
//! same scenario kept instead of run again.
//!
//! A run folder is **finished** when it holds a `summary.json` (written last, after
//! `eval.json`), with an evaluation when the scenario asks for one, and a `scenario.json`
//! equal to the scenario it would run now (a file written before a key existed reads that key
//! at its default). A folder whose scenario differs is **changed**; one with the same scenario
//! and no summary was **interrupted**. With `reuse`, finished runs are skipped; changed and
//! interrupted ones run again, from scratch, their previous outputs cleared
//! ([`crate::run::outputs::clear_previous_run`]). Each decision is said on stderr, above one
//! progress bar over the runs, under which every run draws its own bars.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use fedssl_shared::config::Scenario;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde_json::Value;

use crate::run::job::{run_job_in, Job, Mode};
use crate::run::outputs::{clear_previous_run, result_line};
use crate::run::resume::SCENARIO_FILE;

/// One run to make: its scenario (overrides applied, validated) and its folder.
#[derive(Clone, Debug)]
pub struct PlannedRun {
    /// How the run is named on stderr, e.g. `partition=iid__strategy=fedavg/seed-0`.
    pub label: String,
    /// The resolved scenario.
    pub scenario: Scenario,
    /// Its folder.
    pub dir: PathBuf,
}

/// What a run's folder holds, against the scenario it would run now.
#[derive(Clone, Debug, PartialEq)]
pub enum Found {
    /// No run (no folder, or no `scenario.json` and no `summary.json`).
    Nothing,
    /// A finished run of the same scenario; its `summary.json`.
    Finished(Value),
    /// A run of another scenario: the first difference, `key: before → now`.
    Changed(String),
    /// A run of the same scenario that did not finish: what is missing.
    Interrupted(String),
}

/// What happened to a planned run.
#[derive(Debug)]
pub enum Status {
    /// Finished before, same scenario: not run again.
    Skipped,
    /// Run now.
    Ran,
    /// Run now, and failed.
    Failed(anyhow::Error),
}

/// A planned run after [`execute`].
#[derive(Debug)]
pub struct Outcome {
    /// The run's label.
    pub label: String,
    /// Its folder.
    pub dir: PathBuf,
    /// Skipped, ran or failed.
    pub status: Status,
    /// Its `summary.json` as on disk (`None` when it failed).
    pub summary: Option<Value>,
}

/// How [`execute`] runs the list.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Skip finished runs of the same scenario (otherwise every run runs).
    pub reuse: bool,
    /// Draw the bar over the runs and each run's bars.
    pub progress: bool,
    /// After a failed run, go on with the next (otherwise stop there).
    pub keep_going: bool,
}

/// Inspects `dir` for a run of `sc` (see the module docs).
pub fn inspect(dir: &Path, sc: &Scenario) -> Found {
    let scenario_path = dir.join(SCENARIO_FILE);
    let summary_path = dir.join("summary.json");
    if !scenario_path.exists() && !summary_path.exists() {
        return Found::Nothing;
    }
    let before = std::fs::read_to_string(&scenario_path)
        .ok()
        .and_then(|t| serde_json::from_str::<Scenario>(&t).ok());
    let Some(before) = before else {
        return Found::Changed(format!("no readable {SCENARIO_FILE}"));
    };
    if &before != sc {
        return Found::Changed(first_difference(&before, sc));
    }
    let summary = std::fs::read_to_string(&summary_path)
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok());
    match summary {
        None => Found::Interrupted("no summary.json".into()),
        Some(s) if sc.eval.enabled && s.get("eval").is_none() => {
            Found::Interrupted("summary.json has no evaluation".into())
        }
        Some(s) => Found::Finished(s),
    }
}

/// The first key where `before` and `now` differ, as `key: before → now` (values shortened).
pub fn first_difference(before: &Scenario, now: &Scenario) -> String {
    let (a, b) = (
        serde_json::to_value(before).unwrap_or(Value::Null),
        serde_json::to_value(now).unwrap_or(Value::Null),
    );
    diff(&a, &b, "").unwrap_or_else(|| "the scenario".into())
}

fn diff(a: &Value, b: &Value, path: &str) -> Option<String> {
    let join = |k: &str| {
        if path.is_empty() {
            k.to_string()
        } else {
            format!("{path}.{k}")
        }
    };
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            keys.into_iter().find_map(|k| {
                diff(
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                    &join(k),
                )
            })
        }
        _ if a == b => None,
        _ => {
            let show = |v: &Value| {
                let s = v.to_string();
                if s.chars().count() > 60 {
                    s.chars().take(57).collect::<String>() + "…"
                } else {
                    s
                }
            };
            let key = if path.is_empty() { "scenario" } else { path };
            Some(format!("{key}: {} → {}", show(a), show(b)))
        }
    }
}

/// Reads `<dir>/summary.json`.
pub fn read_summary(dir: &Path) -> Result<Value> {
    let p = dir.join("summary.json");
    let text =
        std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not JSON", p.display()))
}

/// The bar over the runs.
fn overall_bar(mp: &MultiProgress, runs: usize) -> ProgressBar {
    let b = mp.add(ProgressBar::new(runs as u64));
    b.set_style(
        ProgressStyle::with_template("runs  [{bar:30}] {pos}/{len} {elapsed_precise} {wide_msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("##-"),
    );
    b
}

/// Runs `runs` one after the other (see the module docs) and returns what happened to each,
/// in order; without `keep_going` the list stops after the first failure.
pub async fn execute(runs: Vec<PlannedRun>, opts: Options) -> Vec<Outcome> {
    let n = runs.len();
    let mp = opts.progress.then(MultiProgress::new);
    let bar = mp.as_ref().map(|mp| overall_bar(mp, n));
    // stderr lines above the bars
    let say = |line: String| match &mp {
        Some(mp) => mp.suspend(|| eprintln!("{line}")),
        None => eprintln!("{line}"),
    };
    let mut outcomes = Vec::with_capacity(n);
    for (i, run) in runs.into_iter().enumerate() {
        let head = format!("[{}/{n}] {}", i + 1, run.label);
        if let Some(b) = &bar {
            b.set_message(run.label.clone());
        }
        let found = inspect(&run.dir, &run.scenario);
        let why = match (&found, opts.reuse) {
            (Found::Finished(s), true) => {
                say(format!(
                    "{head}: skipped, finished with the same scenario ({})",
                    run.dir.display()
                ));
                outcomes.push(Outcome {
                    label: run.label,
                    dir: run.dir,
                    status: Status::Skipped,
                    summary: Some(s.clone()),
                });
                if let Some(b) = &bar {
                    b.inc(1);
                }
                continue;
            }
            (Found::Nothing, _) => "running".to_string(),
            (Found::Changed(d), true) => format!("rerun, its scenario changed ({d})"),
            (Found::Interrupted(w), true) => format!("rerun, interrupted ({w})"),
            (_, false) => "running again".to_string(),
        };
        say(format!("{head}: {why} → {}", run.dir.display()));
        let result = run_one(&run, mp.clone(), &say).await;
        if let Some(b) = &bar {
            b.inc(1);
        }
        let failed = result.is_err();
        outcomes.push(match result {
            Ok(summary) => Outcome {
                label: run.label,
                dir: run.dir,
                status: Status::Ran,
                summary: Some(summary),
            },
            Err(e) => {
                say(format!("{head}: failed: {e:#}"));
                Outcome {
                    label: run.label,
                    dir: run.dir,
                    status: Status::Failed(e),
                    summary: None,
                }
            }
        });
        if failed && !opts.keep_going {
            break;
        }
    }
    if let (Some(b), Some(mp)) = (bar, &mp) {
        b.finish_and_clear();
        let _ = mp.clear();
    }
    outcomes
}

/// One run: its previous outputs cleared (said above the bars), then `simulate`; its
/// `summary.json` as written.
async fn run_one(
    run: &PlannedRun,
    mp: Option<MultiProgress>,
    say: &impl Fn(String),
) -> Result<Value> {
    if run.dir.is_dir() {
        let cleared = match &mp {
            Some(mp) => mp.suspend(|| clear_previous_run(&run.dir)),
            None => clear_previous_run(&run.dir),
        };
        cleared?;
    }
    let job = Job {
        scenario: run.scenario.clone(),
        out: run.dir.clone(),
        mode: Mode::Simulate,
        progress: mp.is_some(),
        resume: false,
    };
    let summary = run_job_in(job, mp.clone()).await?;
    // the finished run's own bars leave the screen; its result line stays above
    if let Some(mp) = &mp {
        let _ = mp.clear();
    }
    say(format!("      {}", result_line(&summary, &run.dir)));
    read_summary(&run.dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_is_nothing_finished_changed_or_interrupted() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let sc = Scenario::default();
        assert_eq!(inspect(&d.join("none"), &sc), Found::Nothing);
        assert_eq!(inspect(d, &sc), Found::Nothing);
        crate::run::resume::write_scenario(d, &sc).unwrap();
        assert_eq!(
            inspect(d, &sc),
            Found::Interrupted("no summary.json".into())
        );
        std::fs::write(d.join("summary.json"), r#"{"rounds_completed": 2}"#).unwrap();
        assert_eq!(
            inspect(d, &sc),
            Found::Interrupted("summary.json has no evaluation".into())
        );
        let s = r#"{"rounds_completed": 2, "eval": {"linear": {"top1": 0.5}}}"#;
        std::fs::write(d.join("summary.json"), s).unwrap();
        assert_eq!(
            inspect(d, &sc),
            Found::Finished(serde_json::from_str(s).unwrap())
        );
        let mut other = sc.clone();
        other.federation.rounds = 7;
        assert_eq!(
            inspect(d, &other),
            Found::Changed("federation.rounds: 2 → 7".into())
        );
        std::fs::write(d.join(SCENARIO_FILE), "{").unwrap();
        assert!(matches!(inspect(d, &sc), Found::Changed(_)));
    }
}
