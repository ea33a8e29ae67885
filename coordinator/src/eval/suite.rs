//! The evaluation suite of Kolesnikov, Zhai & Beyer, "Revisiting Self-Supervised Visual
//! Representation Learning" (CVPR 2019) on a frozen backbone, run at the end of `simulate` /
//! `serve` and by `fedssl-coordinator eval` on any checkpoint:
//!
//! * the backbone (eval mode: BatchNorm running statistics) is applied once to the labelled
//!   set and the test set; every layer's features are cached on the host and reused by every
//!   probe;
//! * a linear probe and an MLP probe on the pre-logits, each with its L2 weight decay chosen
//!   on a validation split of the labelled set ([`probe_with_selection`]);
//! * per layer (`eval.per_layer`): a linear probe on each stage's map, pooled to at most
//!   `eval.per_layer_max_dim` values ([`crate::eval::features::pool_grid`]) or globally
//!   averaged;
//! * few labels (`eval.labels_per_class`, `eval.label_fractions`): the linear probe on `k`
//!   images per class drawn with the seed ([`crate::eval::few_labels`]), `eval.label_seeds` draws,
//!   mean and standard deviation;
//! * the same (but per-layer) on the random-init backbone, the baseline;
//! * and, during training, a cheap k-NN monitor ([`crate::eval::knn`]).
//!
//! It writes `eval.json` ([`EvalFile`]); a run's `summary.json` holds the same
//! [`EvalSummary`] under `eval`.

use std::path::Path;
use std::time::Instant;

use anyhow::Result;
use fedssl_shared::config::{ProbeKind, Scenario};
use fedssl_shared::data::ImageDataset;
use fedssl_shared::model::Backbone;
use fedssl_shared::weights::WeightSet;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use crate::eval::features::{
    extract_layers, load_backbone, pre_logits, HostFeatures, LayerFeatures,
};
use crate::eval::few_labels::{few_label_curve, FewLabelResult};
use crate::eval::probe::linear::ProbeConfig;
use crate::eval::probe::mlp::MlpConfig;
use crate::eval::probe::scoring::ProbeResult;
use crate::eval::probe::selection::{probe_with_selection, ProbeSpec};

/// The `eval` block of `summary.json` and the body of `eval.json`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct EvalSummary {
    /// Linear probe on the final global backbone's pre-logits.
    pub linear: ProbeResult,
    /// MLP probe on the same features (`eval.probes` contains `"mlp"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mlp: Option<ProbeResult>,
    /// A linear probe per layer, first stage to pre-logits (`eval.per_layer`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub per_layer: Vec<LayerResult>,
    /// Linear probe with few labels (`eval.labels_per_class`, `eval.label_fractions`), then
    /// the whole labelled set (`"all"`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub few_labels: Vec<FewLabelResult>,
    /// The same probes (no per-layer ones) on the randomly initialised backbone (round 0's
    /// global model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub random_init: Option<RandomInit>,
    /// Wall seconds of the evaluation.
    pub seconds: f64,
}

/// Baseline block.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RandomInit {
    /// Linear probe on the random-init backbone.
    pub linear: ProbeResult,
    /// MLP probe on the random-init backbone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mlp: Option<ProbeResult>,
    /// Few-label linear probes on the random-init backbone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub few_labels: Vec<FewLabelResult>,
}

/// One layer's probe.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct LayerResult {
    /// `stage1`…`stageS` (ResNet), `block1`…`block5` (VGG-BN), then `pre_logits`.
    pub layer: String,
    /// The layer's output shape per image: `[C, H, W]`, or `[D]` for the pre-logits.
    pub shape: Vec<usize>,
    /// Feature size after pooling (`C·h·w`).
    pub dim: usize,
    /// The probe.
    #[serde(flatten)]
    pub probe: ProbeResult,
}

/// `eval.json`: which backbone, then the [`EvalSummary`].
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct EvalFile {
    /// Scenario name.
    pub scenario: String,
    /// Backbone family (`resnet`, `vgg_bn`).
    pub backbone: String,
    /// Scalar values of the backbone.
    pub backbone_values: usize,
    /// The results.
    #[serde(flatten)]
    pub eval: EvalSummary,
}

/// The labelled training subset of the probe: the first `n` images of a shuffle of the
/// train split seeded from the scenario seed (all of them when `n` is `None`).
fn probe_train_indices(len: usize, n: Option<usize>, seed: u64) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..len).collect();
    if let Some(n) = n.filter(|&n| n < len) {
        idx.shuffle(&mut fedssl_shared::seed::rng(
            seed,
            fedssl_shared::seed::PROBE_SUBSET,
            0,
        ));
        idx.truncate(n);
        idx.sort_unstable();
    }
    idx
}

/// Everything the suite reports for one backbone.
struct BackboneEval {
    linear: ProbeResult,
    mlp: Option<ProbeResult>,
    per_layer: Vec<LayerResult>,
    few_labels: Vec<FewLabelResult>,
}

/// The suite on the backbone in `weights`: features of `labelled` and `test`, the linear and
/// (`eval.probes`) MLP probes on the pre-logits, the probe of every layer (`per_layer`) and
/// the few-label curve.
fn evaluate_backbone(
    sc: &Scenario,
    weights: &WeightSet,
    labelled: &ImageDataset,
    test: &ImageDataset,
    per_layer: bool,
) -> Result<BackboneEval> {
    let e = &sc.eval;
    let backbone = load_backbone(weights, &sc.model)?;
    let (ftr, fte) = features(sc, &backbone, labelled, test, per_layer)?;
    let k = labelled.num_classes;
    let linear_spec = ProbeSpec::Linear(ProbeConfig {
        epochs: e.epochs,
        seed: fedssl_shared::seed::derive(sc.seed, fedssl_shared::seed::PROBE, 0),
        ..ProbeConfig::default()
    });
    let val_seed = fedssl_shared::seed::derive(sc.seed, fedssl_shared::seed::PROBE_VAL, 0);
    let probe = |spec: &ProbeSpec, tr: &HostFeatures, ty: &[u32], te: &HostFeatures| {
        probe_with_selection(
            spec,
            &e.weight_decays,
            e.val_fraction,
            val_seed,
            tr,
            ty,
            te,
            &test.labels,
            k,
        )
    };
    let (pl_tr, pl_te) = (pre_logits(&ftr)?, pre_logits(&fte)?);
    let linear = probe(&linear_spec, pl_tr, &labelled.labels, pl_te)?;
    let mlp = if e.probes.contains(&ProbeKind::Mlp) {
        let spec = ProbeSpec::Mlp(MlpConfig {
            hidden: e.mlp_hidden,
            dropout: e.mlp_dropout,
            epochs: e.mlp_epochs,
            seed: fedssl_shared::seed::derive(sc.seed, fedssl_shared::seed::MLP_PROBE, 0),
            ..MlpConfig::default()
        });
        Some(probe(&spec, pl_tr, &labelled.labels, pl_te)?)
    } else {
        None
    };
    let layers = if per_layer {
        per_layer_probes(&ftr, &fte, &linear, |tr, te| {
            probe(&linear_spec, tr, &labelled.labels, te)
        })?
    } else {
        Vec::new()
    };
    let few = few_label_curve(e, sc.seed, pl_tr, &labelled.labels, k, &linear, |tr, y| {
        probe(&linear_spec, tr, y, pl_te)
    })?;
    Ok(BackboneEval {
        linear,
        mlp,
        per_layer: layers,
        few_labels: few,
    })
}

/// Every layer's features (`per_layer`; else the pre-logits only) of `labelled` and of
/// `test`, as `[eval]` asks (view, batch, pooling).
fn features(
    sc: &Scenario,
    backbone: &Backbone,
    labelled: &ImageDataset,
    test: &ImageDataset,
    per_layer: bool,
) -> Result<(Vec<LayerFeatures>, Vec<LayerFeatures>)> {
    let e = &sc.eval;
    let t = Instant::now();
    let view = sc.pretext.eval_view(e.view)?;
    let of = |ds: &ImageDataset| {
        extract_layers(
            backbone,
            ds,
            &view,
            e.feature_batch_size,
            per_layer,
            e.pooling,
            e.per_layer_max_dim,
        )
    };
    let (ftr, fte) = (of(labelled)?, of(test)?);
    tracing::info!(
        seconds = t.elapsed().as_secs_f64(),
        layers = ftr.len(),
        "features extracted"
    );
    Ok((ftr, fte))
}

/// The linear probe of every layer, `fit(train, test)` on its features; the pre-logits
/// reuse `linear`, the probe already fitted on them.
fn per_layer_probes(
    ftr: &[LayerFeatures],
    fte: &[LayerFeatures],
    linear: &ProbeResult,
    fit: impl Fn(&HostFeatures, &HostFeatures) -> Result<ProbeResult>,
) -> Result<Vec<LayerResult>> {
    let mut layers = Vec::new();
    for (a, b) in ftr.iter().zip(fte) {
        let t = Instant::now();
        let r = if a.name == "pre_logits" {
            linear.clone()
        } else {
            fit(&a.features, &b.features)?
        };
        tracing::info!(layer = %a.name, dim = a.features.dim, top1 = r.top1, seconds = t.elapsed().as_secs_f64(), "per-layer probe");
        layers.push(LayerResult {
            layer: a.name.clone(),
            shape: a.shape.clone(),
            dim: a.features.dim,
            probe: r,
        });
    }
    Ok(layers)
}

/// The labelled probe set and the test set the scenario's `[eval]` asks for.
fn eval_sets(
    sc: &Scenario,
    train: &ImageDataset,
    test: &ImageDataset,
) -> (ImageDataset, ImageDataset) {
    let idx = probe_train_indices(train.len(), sc.eval.train_labels, sc.seed);
    let labelled = train.subset(&idx);
    let test = match sc.eval.test_images {
        Some(n) if n < test.len() => test.subset(&(0..n).collect::<Vec<_>>()),
        _ => test.clone(),
    };
    (labelled, test)
}

/// Runs the whole suite as the scenario's `[eval]` asks on the backbone in `global`, and
/// (with `eval.random_init_baseline`) on `initial`.
pub fn evaluate_run(
    sc: &Scenario,
    global: &WeightSet,
    initial: &WeightSet,
    train: &ImageDataset,
    test: &ImageDataset,
) -> Result<EvalSummary> {
    let t0 = Instant::now();
    let (labelled, test) = eval_sets(sc, train, test);
    let g = evaluate_backbone(sc, global, &labelled, &test, sc.eval.per_layer)?;
    let random_init = if sc.eval.random_init_baseline {
        let r = evaluate_backbone(sc, initial, &labelled, &test, false)?;
        Some(RandomInit {
            linear: r.linear,
            mlp: r.mlp,
            few_labels: r.few_labels,
        })
    } else {
        None
    };
    Ok(EvalSummary {
        linear: g.linear,
        mlp: g.mlp,
        per_layer: g.per_layer,
        few_labels: g.few_labels,
        random_init,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// Writes `eval.json` into `out` atomically.
pub fn write_eval_json(
    out: &Path,
    sc: &Scenario,
    backbone_values: usize,
    eval: &EvalSummary,
) -> Result<()> {
    let f = EvalFile {
        scenario: sc.name.clone(),
        backbone: sc.model.backbone.name().to_string(),
        backbone_values,
        eval: eval.clone(),
    };
    fedssl_shared::weights::write_atomic(
        &out.join("eval.json"),
        serde_json::to_string_pretty(&f)?.as_bytes(),
    )
}

/// The evaluation's one-line summary: linear (and MLP) probe top-1/top-5, random-init gap.
pub fn eval_line(e: &EvalSummary) -> String {
    let mut line = format!(
        "linear probe top-1 {:.1}% top-5 {:.1}%",
        100.0 * e.linear.top1,
        100.0 * e.linear.top5
    );
    if let Some(r) = &e.random_init {
        line += &format!(
            " (random init {:.1}%, {:+.1} points)",
            100.0 * r.linear.top1,
            100.0 * (e.linear.top1 - r.linear.top1)
        );
    }
    if let Some(m) = &e.mlp {
        line += &format!(" | MLP probe top-1 {:.1}%", 100.0 * m.top1);
    }
    line
}
