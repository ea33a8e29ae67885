//! The `eval` run mode (`fedssl-coordinator eval`): the evaluation suite on a backbone saved by
//! a run — its `final.safetensors` or a `checkpoints/round-*.safetensors` — with the data and
//! `[eval]` of the scenario the run was made with, found next to the checkpoint by default.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::Device;
use fedssl_shared::config::Scenario;
use fedssl_shared::model::build_backbone;
use fedssl_shared::weights::WeightSet;

use crate::eval::features::load_backbone;
use crate::eval::suite::{evaluate_run, write_eval_json, EvalSummary};
use crate::run::data::load_sets;
use crate::run::resume::SCENARIO_FILE;

/// The `scenario.json` of the run a checkpoint belongs to: next to it (`<run>/final.safetensors`)
/// or one folder up (`<run>/checkpoints/round-NNNN.safetensors`). Errors, naming the places
/// looked at, when neither exists.
pub fn run_scenario_of(checkpoint: &Path) -> Result<PathBuf> {
    let dir = checkpoint.parent().unwrap_or(Path::new("."));
    let candidates = [dir.join(SCENARIO_FILE), dir.join("..").join(SCENARIO_FILE)];
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .with_context(|| {
            format!(
                "no --scenario given and no run scenario at {} or {}",
                candidates[0].display(),
                candidates[1].display()
            )
        })
}

/// `fedssl-coordinator eval`: the suite on the backbone saved in `checkpoint` (a
/// `final.safetensors` or `checkpoints/round-*.safetensors`; `head.*` ignored), with the
/// scenario's data and `[eval]`; writes `<out>/eval.json`. Errors name the file: one that
/// cannot be read, does not hold the scenario's backbone, or holds a NaN or infinite backbone
/// weight (refused as a run refuses such an update: its probe numbers would mean nothing);
/// `out` is created before the evaluation starts.
pub fn eval_checkpoint(sc: &Scenario, checkpoint: &Path, out: &Path) -> Result<EvalSummary> {
    let weights = WeightSet::load(checkpoint)
        .with_context(|| format!("cannot read checkpoint {}", checkpoint.display()))?;
    load_backbone(&weights, &sc.model)
        .with_context(|| format!("checkpoint {}", checkpoint.display()))?;
    let backbone = weights.split_prefix("head.").1;
    backbone
        .check_finite()
        .with_context(|| format!("checkpoint {}", checkpoint.display()))?;
    std::fs::create_dir_all(out)
        .with_context(|| format!("cannot create output folder {}", out.display()))?;
    let (train, test) = load_sets(sc)?;
    let initial = initial_backbone(sc)?;
    let eval = evaluate_run(sc, &weights, &initial, &train, &test)?;
    write_eval_json(out, sc, backbone.num_values(), &eval)?;
    Ok(eval)
}

/// The random-init backbone of a run of `sc` (what `simulate` starts from).
fn initial_backbone(sc: &Scenario) -> Result<WeightSet> {
    let init_seed = fedssl_shared::seed::derive(sc.seed, fedssl_shared::seed::INIT, 0);
    let (_, vars) = build_backbone(&sc.model, init_seed, &Device::Cpu)?;
    WeightSet::from_varmap(&vars)
}
