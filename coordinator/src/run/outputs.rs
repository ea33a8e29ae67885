//! The files of a run's folder that are not the rounds' (DESIGN.md's contract):
//! `summary.json` ([`Summary`]), `partition.json` and `partition.png` of a simulation, `scenario.json` (written
//! with [`crate::run::resume`]), clearing what a previous run left, and the one-line result
//! printed at the end.

use std::path::Path;

use anyhow::{Context, Result};
use fedssl_shared::config::Scenario;
use fedssl_shared::data::ImageDataset;
use fedssl_shared::partition::report::{report, HeterogeneityReport, DEFINITIONS};
use fedssl_shared::weights::write_atomic;
use serde::Serialize;

use crate::eval::suite::{eval_line, EvalSummary};
use crate::run::resume;

/// `summary.json`.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// Scenario name.
    pub scenario: String,
    /// Scenario seed.
    pub seed: u64,
    /// Rounds completed.
    pub rounds_completed: usize,
    /// Clients in the scenario.
    pub clients: usize,
    /// Distinct clients whose updates were aggregated at least once.
    pub clients_contributed: usize,
    /// Pretext task.
    pub pretext: String,
    /// Backbone family.
    pub backbone: String,
    /// Aggregation strategy.
    pub strategy: String,
    /// Dataset.
    pub dataset: String,
    /// Training images in the run (all shards).
    pub train_images: usize,
    /// Scalar values of the backbone (parameters and BatchNorm statistics).
    pub backbone_values: usize,
    /// Wall seconds of the whole run, data loading and evaluation included.
    pub wall_seconds: f64,
    /// Wall seconds of the federated rounds alone.
    pub train_seconds: f64,
    /// Application bytes the coordinator sent (messages and weights).
    pub bytes_sent: u64,
    /// Application bytes the coordinator received.
    pub bytes_received: u64,
    /// Rounds the run had completed before this process resumed it (`--resume`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resumed_after_round: Option<usize>,
    /// Central evaluation; absent when `eval.enabled = false`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval: Option<EvalSummary>,
    /// (ε, δ) the whole run spent under `federation.dp` (both bounds); absent without DP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub privacy: Option<crate::privacy::accountant::PrivacySpent>,
    /// The certified site name of every client id that joined with one (`serve --kit`,
    /// `simulate`); absent when no client was authenticated.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub sites: std::collections::BTreeMap<u32, String>,
    /// Whether the rounds ran with secure aggregation (`federation.secure_aggregation`):
    /// the coordinator saw only each round's sum, never one client's update.
    pub secure_aggregation: bool,
}

/// Refuses an output folder whose place a file takes. Nothing is created: the folder is made
/// only once the run can start ([`start_run`]), so that a run refused early (no data, port in
/// use) leaves no empty folder behind.
pub fn refuse_a_file_in_place(out: &Path) -> Result<()> {
    if out.exists() && !out.is_dir() {
        anyhow::bail!("output folder {} is a file", out.display());
    }
    let spool = out.join("spool");
    if spool.exists() && !spool.is_dir() {
        anyhow::bail!(
            "{} is a file, where a run keeps its spool folder (federation.spool_above_bytes); move it away",
            spool.display()
        );
    }
    Ok(())
}

/// Creates the output folder `out` (and its parents) if missing.
pub fn create_out_dir(out: &Path) -> Result<()> {
    std::fs::create_dir_all(out)
        .with_context(|| format!("cannot create output folder {}", out.display()))
}

/// Readies `out` for a run that can start: creates it; for a fresh run (not `resuming`)
/// clears a previous run's files and writes `scenario.json`; for a simulation writes the
/// clients' `shards` of `train` into `partition.json` and `partition.png`.
pub fn start_run(
    out: &Path,
    sc: &Scenario,
    resuming: bool,
    shards: Option<&[Vec<usize>]>,
    train: &ImageDataset,
) -> Result<()> {
    create_out_dir(out)?;
    if !resuming {
        clear_previous_run(out)?;
        resume::write_scenario(out, sc)?;
    }
    if let Some(parts) = shards {
        write_partition_files(out, train, parts)?;
    }
    Ok(())
}

/// Removes the files a previous run left in `out` (summary, rounds, checkpoints, final
/// weights), so a folder never mixes two runs; says so on stderr.
pub fn clear_previous_run(out: &Path) -> Result<()> {
    let mut removed = false;
    for f in [
        "summary.json",
        "rounds.jsonl",
        "final.safetensors",
        PARTITION_FILE,
        PARTITION_PNG,
        resume::SCENARIO_FILE,
        "eval.json",
    ] {
        let p = out.join(f);
        if p.exists() {
            std::fs::remove_file(&p).with_context(|| format!("cannot remove {}", p.display()))?;
            removed = true;
        }
    }
    let ck = out.join("checkpoints");
    if ck.is_dir() {
        std::fs::remove_dir_all(&ck).with_context(|| format!("cannot remove {}", ck.display()))?;
        removed = true;
    }
    if removed {
        eprintln!(
            "note: {} held a previous run; its results were replaced",
            out.display()
        );
    }
    Ok(())
}

/// The file of a simulated run's shards, per client: images, images per class and the
/// heterogeneity figures ([`fedssl_shared::partition::report`]).
pub const PARTITION_FILE: &str = "partition.json";

/// The heat map of a simulated run's shards, clients × classes
/// ([`crate::experiments::heatmap`]).
pub const PARTITION_PNG: &str = "partition.png";

/// Writes `<out>/partition.json` atomically: for every simulated client `k` (the shards of
/// `parts`, indices into `labels`), its number of images, its images per class (a
/// `num_classes`-long list), its EMD and Jensen–Shannon divergence to the population; then
/// `num_classes`, the population's `class_counts`, the `summary` (sizes, mean / max EMD,
/// mean JS) and `definitions` (what the distances are). With `domains` (the mixed dataset's
/// per-image domains and their names; empty slices otherwise), every client also has its
/// `domain_counts` (images per domain name, the domains it draws from) and, when it draws from
/// one, its `domain`; and the file lists the `domains`. Returns the report.
pub fn write_partition_json(
    out: &Path,
    labels: &[u32],
    num_classes: usize,
    parts: &[Vec<usize>],
    domains: (&[u32], &[String]),
) -> Result<HeterogeneityReport> {
    let r = report(labels, num_classes, parts);
    let mut clients = serde_json::to_value(&r.clients)?;
    let (of_image, names) = domains;
    if !of_image.is_empty() {
        if let Some(list) = clients.as_array_mut() {
            for (c, idx) in list.iter_mut().zip(parts) {
                let mut counts = vec![0usize; names.len()];
                for &i in idx {
                    counts[of_image[i] as usize] += 1;
                }
                let drawn: serde_json::Map<String, serde_json::Value> = names
                    .iter()
                    .zip(&counts)
                    .filter(|(_, &n)| n > 0)
                    .map(|(name, &n)| (name.clone(), n.into()))
                    .collect();
                if let Some(obj) = c.as_object_mut() {
                    if drawn.len() == 1 {
                        let only = drawn.keys().next().cloned().unwrap_or_default();
                        obj.insert("domain".into(), only.into());
                    }
                    obj.insert("domain_counts".into(), drawn.into());
                }
            }
        }
    }
    let mut v = serde_json::json!({
        "clients": clients,
        "num_classes": r.num_classes,
        "population": { "class_counts": r.population },
        "summary": r.summary,
        "definitions": DEFINITIONS,
    });
    if !of_image.is_empty() {
        v["domains"] = serde_json::json!(names);
    }
    let text = serde_json::to_string_pretty(&v)?;
    write_atomic(&out.join(PARTITION_FILE), text.as_bytes())?;
    Ok(r)
}

/// Writes `partition.json` and the heat map `partition.png` of the split `parts` of `train`
/// (by its labels; its domains too, for the mixed dataset) into `out`; returns the report.
pub fn write_partition_files(
    out: &Path,
    train: &ImageDataset,
    parts: &[Vec<usize>],
) -> Result<HeterogeneityReport> {
    let r = write_partition_json(
        out,
        &train.labels,
        train.num_classes,
        parts,
        (&train.domains, &train.domain_names),
    )?;
    crate::experiments::heatmap::partition_heatmap(&out.join(PARTITION_PNG), &r)?;
    Ok(r)
}

/// Writes `summary.json` atomically.
pub fn write_summary(out: &Path, summary: &Summary) -> Result<()> {
    let text = serde_json::to_string_pretty(summary)?;
    write_atomic(&out.join("summary.json"), text.as_bytes())
}

/// `n` with the singular or plural noun: `1 round`, `3 rounds`.
pub(crate) fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// The one-line result printed at the end of a run: `quickstart: 3 rounds, 3 clients, 48.3 s
/// | …` when every client contributed, `… 3 rounds, 7 of 10 clients contributed, …` when some
/// never did (never sampled, dropped, or never joined).
pub fn result_line(s: &Summary, out: &Path) -> String {
    let clients = if s.clients_contributed == s.clients {
        plural(s.clients, "client", "clients")
    } else {
        format!(
            "{} of {} clients contributed",
            s.clients_contributed, s.clients
        )
    };
    let mut line = format!(
        "{}: {}, {clients}, {:.1} s",
        s.scenario,
        plural(s.rounds_completed, "round", "rounds"),
        s.wall_seconds
    );
    if let Some(e) = &s.eval {
        line += &format!(" | {}", eval_line(e));
    }
    line + &format!(" | {}", out.join("summary.json").display())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_previous_run_is_cleared_and_other_files_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path();
        for f in [
            "summary.json",
            "rounds.jsonl",
            "final.safetensors",
            PARTITION_FILE,
            "notes.txt",
        ] {
            std::fs::write(out.join(f), "x").unwrap();
        }
        std::fs::create_dir_all(out.join("checkpoints")).unwrap();
        std::fs::write(out.join("checkpoints/round-0001.safetensors"), "x").unwrap();
        clear_previous_run(out).unwrap();
        for f in [
            "summary.json",
            "rounds.jsonl",
            "final.safetensors",
            PARTITION_FILE,
            "checkpoints",
        ] {
            assert!(!out.join(f).exists(), "{f} survived");
        }
        assert!(
            out.join("notes.txt").exists(),
            "a file that is not a run output was removed"
        );
    }

    #[test]
    fn partition_json_counts_each_clients_images_per_class() {
        let dir = tempfile::tempdir().unwrap();
        let labels = [0u32, 2, 2, 1, 0, 2];
        write_partition_json(
            dir.path(),
            &labels,
            3,
            &[vec![0, 1, 2], vec![3, 4, 5], vec![]],
            (&[], &[]),
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join(PARTITION_FILE)).unwrap(),
        )
        .unwrap();
        let clients: Vec<serde_json::Value> = v["clients"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                serde_json::json!({ "client": c["client"], "images": c["images"],
                    "class_counts": c["class_counts"] })
            })
            .collect();
        assert_eq!(
            clients,
            vec![
                serde_json::json!({ "client": 0, "images": 3, "class_counts": [1, 0, 2] }),
                serde_json::json!({ "client": 1, "images": 3, "class_counts": [1, 1, 1] }),
                serde_json::json!({ "client": 2, "images": 0, "class_counts": [0, 0, 0] }),
            ]
        );
        // population (2, 1, 3)/6; client 0 (1/3, 0, 2/3): EMD = 0 + 1/6 + 1/6 = 1/3; client 1
        // (1/3, 1/3, 1/3): 0 + 1/6 + 1/6 = 1/3; the empty client has none
        assert_eq!(
            v["population"]["class_counts"],
            serde_json::json!([2, 1, 3])
        );
        for k in 0..2 {
            let e = v["clients"][k]["emd"].as_f64().unwrap();
            assert!((e - 1.0 / 3.0).abs() < 1e-12, "client {k}: {e}");
        }
        assert!(v["clients"][2]["emd"].is_null());
        assert_eq!(v["summary"]["min_images"], 0);
        assert_eq!(v["summary"]["max_images"], 3);
        assert!((v["summary"]["mean_emd"].as_f64().unwrap() - 1.0 / 3.0).abs() < 1e-12);
        assert!(v["definitions"].as_str().unwrap().contains("nats"));
    }

    #[test]
    fn the_result_line_says_how_many_clients_contributed_when_not_all_did() {
        let mut s = Summary {
            scenario: "quickstart".into(),
            seed: 0,
            rounds_completed: 3,
            clients: 3,
            clients_contributed: 3,
            pretext: "rotation".into(),
            backbone: "resnet".into(),
            strategy: "fedavg".into(),
            dataset: "synthetic".into(),
            train_images: 0,
            backbone_values: 0,
            wall_seconds: 48.31,
            train_seconds: 0.0,
            bytes_sent: 0,
            bytes_received: 0,
            resumed_after_round: None,
            eval: None,
            privacy: None,
            sites: Default::default(),
            secure_aggregation: false,
        };
        let out = Path::new("runs/q");
        let file = out.join("summary.json").display().to_string();
        assert_eq!(
            result_line(&s, out),
            format!("quickstart: 3 rounds, 3 clients, 48.3 s | {file}")
        );
        s.clients = 10;
        s.clients_contributed = 7;
        assert_eq!(
            result_line(&s, out),
            format!("quickstart: 3 rounds, 7 of 10 clients contributed, 48.3 s | {file}")
        );
    }

    #[test]
    fn plural_agrees_with_the_count() {
        assert_eq!(plural(1, "round", "rounds"), "1 round");
        assert_eq!(plural(0, "round", "rounds"), "0 rounds");
        assert_eq!(plural(3, "client", "clients"), "3 clients");
    }
}
