//! Central evaluation after the last round: a linear probe on the frozen global backbone's
//! pre-logits, next to the same probe on the random-init backbone (Kolesnikov et al. 2019).

use anyhow::{Context, Result};
use candle_core::Device;
use fedssl_shared::data::ImageDataset;
use fedssl_shared::model::ModelConfig;
use fedssl_shared::scenario::Scenario;
use fedssl_shared::weights::WeightSet;
use rand::seq::SliceRandom;
use std::time::Instant;

use crate::eval::{linear_probe, ProbeConfig, ProbeResult};
use crate::job::{EvalSummary, RandomInit};

/// The labelled training subset of the probe: the first `n` images of a shuffle of the
/// train split seeded from the scenario seed (all of them when `n` is `None`).
pub fn probe_train_indices(len: usize, n: Option<usize>, seed: u64) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..len).collect();
    if let Some(n) = n.filter(|&n| n < len) {
        idx.shuffle(&mut fedssl_shared::seed::rng(seed, "probe-subset", 0));
        idx.truncate(n);
        idx.sort_unstable();
    }
    idx
}

/// Linear probe of the backbone in `weights` (any `head.*` pretext heads are ignored) on
/// the labelled `train`, tested on `test`.
pub fn probe_backbone(
    weights: &WeightSet,
    model: &ModelConfig,
    train: &ImageDataset,
    test: &ImageDataset,
    probe: &ProbeConfig,
    feature_batch: usize,
) -> Result<ProbeResult> {
    let device = Device::Cpu;
    let (backbone, vars) = fedssl_shared::model::build_backbone(model, 0, &device)?;
    weights
        .split_prefix("head.")
        .1
        .load_into_varmap(&vars)
        .context("weights do not fit the scenario's backbone")?;
    let ftr = fedssl_shared::train::extract_features(&backbone, train, feature_batch, &device)?;
    let fte = fedssl_shared::train::extract_features(&backbone, test, feature_batch, &device)?;
    linear_probe(
        &ftr,
        &train.labels,
        &fte,
        &test.labels,
        train.num_classes,
        probe,
    )
}

/// Evaluates the final backbone and the random-init baseline as the scenario asks.
pub fn evaluate_run(
    sc: &Scenario,
    global: &WeightSet,
    initial: &WeightSet,
    train: &ImageDataset,
    test: &ImageDataset,
) -> Result<EvalSummary> {
    let t0 = Instant::now();
    let idx = probe_train_indices(train.len(), sc.eval.train_labels, sc.seed);
    let labelled = train.subset(&idx);
    let test = match sc.eval.test_images {
        Some(n) if n < test.len() => test.subset(&(0..n).collect::<Vec<_>>()),
        _ => test.clone(),
    };
    let probe = ProbeConfig {
        epochs: sc.eval.epochs,
        seed: fedssl_shared::seed::derive(sc.seed, "probe", 0),
        ..ProbeConfig::default()
    };
    let linear = probe_backbone(
        global,
        &sc.model,
        &labelled,
        &test,
        &probe,
        sc.eval.feature_batch_size,
    )?;
    let random_init = if sc.eval.random_init_baseline {
        Some(RandomInit {
            linear: probe_backbone(
                initial,
                &sc.model,
                &labelled,
                &test,
                &probe,
                sc.eval.feature_batch_size,
            )?,
        })
    } else {
        None
    };
    Ok(EvalSummary {
        linear,
        random_init,
        seconds: t0.elapsed().as_secs_f64(),
    })
}
