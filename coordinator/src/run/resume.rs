//! Resuming an interrupted run from its last checkpoint (`simulate --resume`, `serve --resume`).
//!
//! A fresh run writes the resolved scenario to `<out>/scenario.json`. `--resume` reads it back
//! and refuses to continue under a scenario that differs in anything but `federation.rounds`
//! (which may grow), `federation.spool_above_bytes`, `eval`, `simulation` and `logging`,
//! naming the first differing key. It then takes the
//! newest checkpoint `checkpoints/round-NNNN.safetensors` that loads, has the backbone's
//! layout and holds only finite values (with the strategy's server state saved next to it,
//! if any), keeps the lines of `rounds.jsonl` up to round `N` (dropping those of a round
//! that failed after it), and continues with round `N + 1`.
//!
//! The backbone, the round schedule, the sampling and every client's per-round seed are the
//! same as in an uninterrupted run. The clients' local state (pretext heads, FedBN's
//! BatchNorm, FedEMA/FedU scalars) is theirs: `serve`'s clients keep it in memory by round
//! across their reconnections, `simulate`'s in `<out>/clients/` by round (kept by a resumed
//! run), so that the run they resume is bit-identical to the uninterrupted one; a client
//! restarted by hand begins its state afresh.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{bail, Context, Result};
use fedssl_shared::config::Scenario;
use fedssl_shared::weights::{write_atomic, WeightSet};

use crate::server::records::{round_of_weights_file, state_file};

/// Name of the resolved scenario a run writes into its output folder.
pub const SCENARIO_FILE: &str = "scenario.json";

/// Where a resumed run starts.
#[derive(Debug)]
pub struct ResumePoint {
    /// Rounds already completed (`N`); the run continues with round `N + 1` (1-based).
    pub rounds_done: usize,
    /// The global weights after round `N`.
    pub global: WeightSet,
    /// Application bytes sent in rounds `1..=N` (from `rounds.jsonl`).
    pub bytes_sent: u64,
    /// Application bytes received in rounds `1..=N`.
    pub bytes_received: u64,
    /// Clients that contributed in rounds `1..=N`.
    pub clients_seen: BTreeSet<u32>,
    /// The strategy's server state after round `N`, when the checkpoint holds one
    /// (`checkpoints/round-NNNN.state.safetensors`).
    pub strategy_state: Option<WeightSet>,
}

/// Writes `sc` as `<out>/scenario.json` (atomically).
pub fn write_scenario(out: &Path, sc: &Scenario) -> Result<()> {
    let text = serde_json::to_string_pretty(sc)?;
    write_atomic(&out.join(SCENARIO_FILE), text.as_bytes())
}

/// Finds the point to resume `sc` from in `out`, checking it against `layout` (the global
/// weights' names and shapes). Errors, naming the file or key, when `out` holds no resumable
/// run, the scenario differs, or no checkpoint is usable; truncates `rounds.jsonl` to the
/// rounds it keeps.
pub fn prepare(out: &Path, sc: &Scenario, layout: &WeightSet) -> Result<ResumePoint> {
    check_same_scenario(out, sc)?;
    let ckpt_dir = out.join("checkpoints");
    let (rounds_done, global) = newest_usable_checkpoint(&ckpt_dir, layout)?;
    if rounds_done > sc.federation.rounds {
        bail!(
            "cannot resume: the run already completed {rounds_done} rounds, more than federation.rounds = {}",
            sc.federation.rounds
        );
    }
    let state = ckpt_dir.join(state_file(rounds_done));
    let strategy_state = if state.exists() {
        Some(
            WeightSet::load(&state)
                .with_context(|| format!("cannot resume: cannot read {}", state.display()))?,
        )
    } else {
        None
    };
    let mut point = ResumePoint {
        rounds_done,
        global,
        bytes_sent: 0,
        bytes_received: 0,
        clients_seen: BTreeSet::new(),
        strategy_state,
    };
    keep_completed_rounds(&out.join("rounds.jsonl"), &mut point)?;
    Ok(point)
}

/// Refuses to resume under a scenario that differs from `<out>/scenario.json` in anything a
/// resumed run may not change, naming the first differing key.
fn check_same_scenario(out: &Path, sc: &Scenario) -> Result<()> {
    if !out.is_dir() {
        bail!(
            "cannot resume: there is no run in {} (the folder does not exist: no {SCENARIO_FILE})",
            out.display()
        );
    }
    let path = out.join(SCENARIO_FILE);
    if !path.exists() {
        bail!(
            "cannot resume: {} holds no run of this version ({SCENARIO_FILE} is missing)",
            out.display()
        );
    }
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot resume: cannot read {}", path.display()))?;
    let raw: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("cannot parse {}", path.display()))?;
    // Read through the schema where it can be, so that an equivalent earlier spelling (an IID
    // partition written `{"kind": "iid", "alpha": null}` before the tagged configs) is the
    // same scenario; a file the schema no longer reads is compared as it stands.
    let before = match Scenario::from_json_str(&text, &[]) {
        Ok(old) => serde_json::to_value(&old)?,
        Err(_) => raw,
    };
    if let Some(key) = first_difference(&before, &serde_json::to_value(sc)?, "") {
        bail!(
            "cannot resume: the scenario differs from the one that started the run in {} at `{key}` (only federation.rounds, federation.spool_above_bytes, eval.*, simulation.* and logging.* may change)",
            out.display()
        );
    }
    Ok(())
}

/// The newest checkpoint in `ckpt_dir` that loads, has `layout`'s names and shapes and holds
/// only finite values, with its round; a checkpoint that fails is skipped with a note.
fn newest_usable_checkpoint(ckpt_dir: &Path, layout: &WeightSet) -> Result<(usize, WeightSet)> {
    let mut found: Vec<(usize, std::path::PathBuf)> = std::fs::read_dir(ckpt_dir)
        .with_context(|| format!("cannot resume: cannot read {}", ckpt_dir.display()))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let n = round_of_weights_file(&e.file_name().to_string_lossy())?;
            Some((n, e.path()))
        })
        .collect();
    found.sort();
    for (n, p) in found.into_iter().rev() {
        let ok = WeightSet::load(&p).and_then(|w| {
            w.check_same_layout(layout)?;
            w.check_finite()?;
            Ok(w)
        });
        match ok {
            Ok(w) => return Ok((n, w)),
            Err(e) => eprintln!("note: skipping checkpoint {}: {e:#}", p.display()),
        }
    }
    bail!(
        "cannot resume: {} holds no usable checkpoint",
        ckpt_dir.display()
    )
}

/// Keeps the lines of `rounds.jsonl` up to round `point.rounds_done` (dropping those of a
/// round that failed after it) and adds their bytes and clients to `point`.
fn keep_completed_rounds(rounds_path: &Path, point: &mut ResumePoint) -> Result<()> {
    let text = std::fs::read_to_string(rounds_path)
        .with_context(|| format!("cannot resume: cannot read {}", rounds_path.display()))?;
    let mut kept = String::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("{} line {}: not JSON", rounds_path.display(), i + 1))?;
        let round = v["round"]
            .as_u64()
            .with_context(|| format!("{} line {}: no `round`", rounds_path.display(), i + 1))?
            as usize;
        if round > point.rounds_done {
            continue;
        }
        point.bytes_sent += v["bytes_sent"].as_u64().unwrap_or(0);
        point.bytes_received += v["bytes_received"].as_u64().unwrap_or(0);
        if let Some(ids) = v["clients"].as_array() {
            point
                .clients_seen
                .extend(ids.iter().filter_map(|x| x.as_u64()).map(|x| x as u32));
        }
        kept += line;
        kept.push('\n');
    }
    write_atomic(rounds_path, kept.as_bytes())
}

/// The dotted path of the first difference between two scenario trees, ignoring the keys a
/// resumed run may change; `None` when they agree.
fn first_difference(a: &serde_json::Value, b: &serde_json::Value, path: &str) -> Option<String> {
    // `federation.spool_above_bytes` changes where a round's weights wait, not its result
    const MAY_CHANGE: [&str; 5] = [
        "federation.rounds",
        "federation.spool_above_bytes",
        "eval",
        "simulation",
        "logging",
    ];
    if MAY_CHANGE.contains(&path) {
        return None;
    }
    match (a, b) {
        (serde_json::Value::Object(x), serde_json::Value::Object(y)) => {
            let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            keys.into_iter().find_map(|k| {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match (x.get(k), y.get(k)) {
                    (Some(va), Some(vb)) => first_difference(va, vb, &p),
                    _ => Some(p),
                }
            })
        }
        _ if a == b => None,
        _ => Some(path.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_earlier_spelling_of_the_same_scenario_resumes() {
        let dir = tempfile::tempdir().unwrap();
        let sc = Scenario::default();
        let mut old = serde_json::to_value(&sc).unwrap();
        // the IID partition as runs wrote it before the tagged configs
        old["partition"] = serde_json::json!({ "kind": "iid", "alpha": null });
        std::fs::write(dir.path().join(SCENARIO_FILE), old.to_string()).unwrap();
        check_same_scenario(dir.path(), &sc).unwrap();
        // a real difference is still refused, naming the key
        let mut other = sc.clone();
        other.seed = 1;
        let e = check_same_scenario(dir.path(), &other).unwrap_err();
        assert!(e.to_string().contains("`seed`"), "{e}");
        // no run there at all: said once, plainly
        let e = check_same_scenario(&dir.path().join("none"), &sc).unwrap_err();
        assert!(
            e.to_string().contains("there is no run in")
                && e.to_string().contains("does not exist"),
            "{e}"
        );
    }

    #[test]
    fn differences_are_named_and_allowed_keys_ignored() {
        let a = Scenario::default();
        let mut b = a.clone();
        b.federation.rounds += 3;
        b.federation.spool_above_bytes = 0;
        b.eval.epochs = 7;
        let (va, vb) = (
            serde_json::to_value(&a).unwrap(),
            serde_json::to_value(&b).unwrap(),
        );
        assert_eq!(first_difference(&va, &vb, ""), None);
        b.train.local.lr = 0.5;
        b.pretext.rotation.flip = false;
        let vb = serde_json::to_value(&b).unwrap();
        assert_eq!(
            first_difference(&va, &vb, "").as_deref(),
            Some("pretext.rotation.flip")
        );
    }
}

#[cfg(test)]
mod state_tests {
    use super::*;
    use crate::server::records::{weights_file, Checkpoints};
    use fedssl_shared::weights::TensorData;

    fn ws(v: f32) -> WeightSet {
        let mut w = WeightSet::default();
        w.tensors.insert(
            "layer.weight".into(),
            TensorData {
                shape: vec![2],
                data: vec![v, v],
            },
        );
        w
    }

    #[test]
    fn the_newest_checkpoint_comes_back_with_its_strategy_state_and_rounds() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path();
        let mut sc = Scenario::default();
        sc.federation.rounds = 3;
        write_scenario(out, &sc).unwrap();
        let ck = Checkpoints::create(out).unwrap();
        ck.save(1, &ws(1.0), None).unwrap();
        ck.save(2, &ws(2.0), Some(&ws(-2.0))).unwrap();
        // a checkpoint that does not load is skipped
        std::fs::write(out.join("checkpoints").join(weights_file(3)), "x").unwrap();
        let line = |r: usize| {
            format!("{{\"round\":{r},\"clients\":[{r}],\"bytes_sent\":10,\"bytes_received\":5}}\n")
        };
        std::fs::write(out.join("rounds.jsonl"), line(1) + &line(2) + &line(3)).unwrap();
        let p = prepare(out, &sc, &ws(0.0)).unwrap();
        assert_eq!(p.rounds_done, 2);
        assert_eq!(p.global, ws(2.0));
        assert_eq!(p.strategy_state, Some(ws(-2.0)));
        assert_eq!((p.bytes_sent, p.bytes_received), (20, 10));
        assert_eq!(p.clients_seen, BTreeSet::from([1, 2]));
        assert_eq!(
            std::fs::read_to_string(out.join("rounds.jsonl")).unwrap(),
            line(1) + &line(2)
        );
        // without a state file there is no state
        std::fs::remove_file(out.join("checkpoints").join(state_file(2))).unwrap();
        assert_eq!(prepare(out, &sc, &ws(0.0)).unwrap().strategy_state, None);
    }
}
