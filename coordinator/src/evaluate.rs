//! The evaluation suite of Kolesnikov, Zhai & Beyer, "Revisiting Self-Supervised Visual
//! Representation Learning" (CVPR 2019) on a frozen backbone, run at the end of `simulate` /
//! `serve` and by `fedssl-coordinator eval` on any checkpoint:
//!
//! * the backbone (eval mode: BatchNorm running statistics) is applied once to the labelled
//!   set and the test set; every layer's features are cached on the host and reused by every
//!   probe;
//! * a linear probe and an MLP probe on the pre-logits, each with its L2 weight decay chosen
//!   on a validation split of the labelled set ([`crate::eval::probe_with_selection`]);
//! * per layer (`eval.per_layer`): a linear probe on each stage's map, pooled to at most
//!   `eval.per_layer_max_dim` values ([`pool_grid`]) or globally averaged;
//! * few labels (`eval.labels_per_class`, `eval.label_fractions`): the linear probe on `k`
//!   images per class drawn with the seed ([`few_label_subset`]), `eval.label_seeds` draws,
//!   mean and standard deviation;
//! * the same (but per-layer) on the random-init backbone, the baseline;
//! * and, during training, a cheap k-NN monitor ([`KnnMonitor`]).

use std::path::Path;
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use candle_core::{Device, Tensor};
use fedssl_shared::config::{EvalConfig, Pooling, ProbeKind, Scenario};
use fedssl_shared::data::ImageDataset;
use fedssl_shared::model::{build_backbone, Backbone, BackboneKind, ModelConfig};
use fedssl_shared::pretext::{view_batch, EvalView};
use fedssl_shared::weights::WeightSet;
use rand::seq::SliceRandom;
use rand::{rngs::StdRng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::eval::{
    probe_with_selection, HostFeatures, MlpConfig, ProbeConfig, ProbeResult, ProbeSpec,
};

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

/// One point of the few-label curve.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FewLabelResult {
    /// `"10/class"`, `"1%"` or `"all"`.
    pub label: String,
    /// `k` for a per-class count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels_per_class: Option<usize>,
    /// The fraction for a per-class fraction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fraction: Option<f64>,
    /// Labelled images of each draw (mean over the draws).
    pub train_labels: f64,
    /// Labelled images per class (`train_labels / num_classes`): the x of the few-label curve.
    pub per_class: f64,
    /// Draws averaged.
    pub seeds: usize,
    /// Mean top-1 over the draws.
    pub top1_mean: f64,
    /// Population standard deviation of top-1 over the draws.
    pub top1_std: f64,
    /// Mean top-5.
    pub top5_mean: f64,
    /// Standard deviation of top-5.
    pub top5_std: f64,
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
pub fn probe_train_indices(len: usize, n: Option<usize>, seed: u64) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..len).collect();
    if let Some(n) = n.filter(|&n| n < len) {
        idx.shuffle(&mut fedssl_shared::seed::rng(seed, "probe-subset", 0));
        idx.truncate(n);
        idx.sort_unstable();
    }
    idx
}

/// How many images per class a few-label subset takes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum PerClass {
    /// `k` per class (all of a class that has fewer).
    Count(usize),
    /// `max(1, round(f · n_c))` of class `c`'s `n_c` images.
    Fraction(f64),
}

/// A few-label subset of `labels`: for each class in `0..num_classes`, its indices shuffled
/// by one `StdRng::seed_from_u64(seed)` (classes in order) and the first `take` kept. Sorted.
/// The same seed gives the same subset, and for counts `k < k'` the `k` subset is contained
/// in the `k'` one.
pub fn few_label_subset(
    labels: &[u32],
    num_classes: usize,
    take: PerClass,
    seed: u64,
) -> Vec<usize> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = Vec::new();
    for c in 0..num_classes {
        let mut idx: Vec<usize> = (0..labels.len())
            .filter(|&i| labels[i] as usize == c)
            .collect();
        idx.shuffle(&mut rng);
        let n = match take {
            PerClass::Count(k) => k,
            PerClass::Fraction(f) => ((f * idx.len() as f64).round() as usize).max(1),
        };
        out.extend_from_slice(&idx[..n.min(idx.len())]);
    }
    out.sort_unstable();
    out
}

/// The output grid `(h, w)` a `(C, H, W)` map is average-pooled to. `Global`: `(1, 1)`.
/// `Adaptive` (Revisiting: "adaptive pooling to at most ~9k values"): the largest
/// `s = ⌊√(max_dim / C)⌋` (at least 1), capped by `H` and `W` separately, so
/// `C·h·w ≤ max_dim` unless `C > max_dim` (then `(1, 1)`).
pub fn pool_grid(c: usize, h: usize, w: usize, pooling: Pooling, max_dim: usize) -> (usize, usize) {
    match pooling {
        Pooling::Global => (1, 1),
        Pooling::Adaptive => {
            let s = ((max_dim / c.max(1)) as f64).sqrt().floor() as usize;
            let s = s.max(1);
            (s.min(h).max(1), s.min(w).max(1))
        }
    }
}

/// Adaptive average pooling (PyTorch's `AdaptiveAvgPool2d`) of one `(C, H, W)` map `x` to
/// `(C, oh, ow)`, appended to `out` channel-major: output cell `(i, j)` averages rows
/// `⌊iH/oh⌋ .. ⌈(i+1)H/oh⌉` and columns `⌊jW/ow⌋ .. ⌈(j+1)W/ow⌉`.
pub fn adaptive_avg_pool(
    x: &[f32],
    c: usize,
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
    out: &mut Vec<f32>,
) {
    for ch in 0..c {
        let plane = &x[ch * h * w..(ch + 1) * h * w];
        for i in 0..oh {
            let (y0, y1) = (i * h / oh, ((i + 1) * h).div_ceil(oh));
            for j in 0..ow {
                let (x0, x1) = (j * w / ow, ((j + 1) * w).div_ceil(ow));
                let mut s = 0f32;
                for y in y0..y1 {
                    s += plane[y * w + x0..y * w + x1].iter().sum::<f32>();
                }
                out.push(s / ((y1 - y0) * (x1 - x0)) as f32);
            }
        }
    }
}

/// Names of the layers [`extract_layers`] returns for a backbone with `stages` stages:
/// ResNet `stage1..S`, VGG-BN `block1..5`, ViT `block1..depth` (each transformer block's tokens
/// as a `(D, H/p, W/p)` map), then `pre_logits`.
pub fn layer_names(kind: BackboneKind, stages: usize) -> Vec<String> {
    let prefix = match kind {
        BackboneKind::Resnet => "stage",
        BackboneKind::VggBn => "block",
        BackboneKind::Vit => "block",
    };
    let mut v: Vec<String> = (1..=stages).map(|s| format!("{prefix}{s}")).collect();
    v.push("pre_logits".into());
    v
}

/// Cached features of one set of images: one entry per layer.
pub struct LayerFeatures {
    /// Layer name ([`layer_names`]).
    pub name: String,
    /// The layer's output shape per image.
    pub shape: Vec<usize>,
    /// Pooled features `(N, dim)`.
    pub features: HostFeatures,
}

/// Applies `backbone` in eval mode to all of `ds` (batches of `batch`) and returns the
/// pre-logits `(N, D)` as the last entry, preceded (when `per_layer`) by every stage's map
/// pooled per [`pool_grid`] and [`adaptive_avg_pool`].
///
/// Under a patch-grid `view` ([`EvalView::PatchGrid`]) the backbone sees each image's 9
/// patches and every layer's features are the mean of the 9 patches' (pooled) features.
#[allow(clippy::too_many_arguments)]
pub fn extract_layers(
    backbone: &Backbone,
    ds: &ImageDataset,
    view: &EvalView,
    batch: usize,
    per_layer: bool,
    pooling: Pooling,
    max_dim: usize,
) -> Result<Vec<LayerFeatures>> {
    ensure!(
        batch > 0 && !ds.is_empty(),
        "feature extraction: empty set or batch"
    );
    let device = Device::Cpu;
    let idx: Vec<usize> = (0..ds.len()).collect();
    // per layer: output shape per image, pooled grid, pooled values of every image so far
    type Acc = (Vec<usize>, (usize, usize), Vec<f32>);
    let mut layers: Vec<Acc> = Vec::new();
    for chunk in idx.chunks(batch) {
        let x = view_batch(ds, chunk, view, &device)?;
        let out = backbone.forward_t(&x, false)?;
        let mut maps: Vec<&Tensor> = if per_layer {
            out.stages.iter().collect()
        } else {
            vec![]
        };
        maps.push(&out.pre_logits);
        if layers.is_empty() {
            for m in &maps {
                let shape = m.dims()[1..].to_vec();
                let grid = match shape[..] {
                    [c, h, w] => pool_grid(c, h, w, pooling, max_dim),
                    _ => (1, 1),
                };
                layers.push((shape, grid, Vec::new()));
            }
        }
        let per = view.inputs_per_image();
        for (m, (shape, (oh, ow), acc)) in maps.iter().zip(layers.iter_mut()) {
            let v = m.flatten_all()?.to_vec1::<f32>()?;
            let pooled = match shape[..] {
                [c, h, w] => {
                    let mut p = Vec::with_capacity(v.len() / (h * w) * *oh * *ow);
                    for img in v.chunks_exact(c * h * w) {
                        adaptive_avg_pool(img, c, h, w, *oh, *ow, &mut p);
                    }
                    p
                }
                _ => v,
            };
            if per == 1 {
                acc.extend_from_slice(&pooled);
            } else {
                // mean over each image's `per` consecutive inputs (its patches)
                let dim = pooled.len() / (chunk.len() * per);
                for group in pooled.chunks_exact(dim * per) {
                    for d in 0..dim {
                        let sum: f32 = (0..per).map(|j| group[j * dim + d]).sum();
                        acc.push(sum / per as f32);
                    }
                }
            }
        }
    }
    let names = layer_names(backbone.kind(), layers.len() - 1);
    let names = if per_layer {
        names
    } else {
        vec!["pre_logits".to_string()]
    };
    layers
        .into_iter()
        .zip(names)
        .map(|((shape, (oh, ow), data), name)| {
            let dim = match shape[..] {
                [c, _, _] => c * oh * ow,
                _ => shape.iter().product(),
            };
            Ok(LayerFeatures {
                features: HostFeatures::new(ds.len(), dim, data, &name)?,
                name,
                shape,
            })
        })
        .collect()
}

/// Builds the scenario's backbone and loads `weights` into it (`head.*` pretext heads are
/// ignored). Errors when the weights do not fit the scenario's `[model]`.
pub fn load_backbone(weights: &WeightSet, model: &ModelConfig) -> Result<Backbone> {
    let (backbone, vars) = build_backbone(model, 0, &Device::Cpu)?;
    weights
        .split_prefix("head.")
        .1
        .load_into_varmap(&vars)
        .context("weights do not fit the scenario's backbone ([model] section)")?;
    Ok(backbone)
}

fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n;
    (
        m,
        (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / n).sqrt(),
    )
}

/// Everything the suite reports for one backbone.
struct BackboneEval {
    linear: ProbeResult,
    mlp: Option<ProbeResult>,
    per_layer: Vec<LayerResult>,
    few_labels: Vec<FewLabelResult>,
}

fn evaluate_backbone(
    sc: &Scenario,
    weights: &WeightSet,
    labelled: &ImageDataset,
    test: &ImageDataset,
    per_layer: bool,
) -> Result<BackboneEval> {
    let e: &EvalConfig = &sc.eval;
    let backbone = load_backbone(weights, &sc.model)?;
    let t = Instant::now();
    let view = sc.pretext.eval_view(e.view)?;
    let ftr = extract_layers(
        &backbone,
        labelled,
        &view,
        e.feature_batch_size,
        per_layer,
        e.pooling,
        e.per_layer_max_dim,
    )?;
    let fte = extract_layers(
        &backbone,
        test,
        &view,
        e.feature_batch_size,
        per_layer,
        e.pooling,
        e.per_layer_max_dim,
    )?;
    tracing::info!(
        seconds = t.elapsed().as_secs_f64(),
        layers = ftr.len(),
        "features extracted"
    );
    let k = labelled.num_classes;
    let linear_spec = ProbeSpec::Linear(ProbeConfig {
        epochs: e.epochs,
        seed: fedssl_shared::seed::derive(sc.seed, "probe", 0),
        ..ProbeConfig::default()
    });
    let val_seed = fedssl_shared::seed::derive(sc.seed, "probe-val", 0);
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
    let (pl_tr, pl_te) = (&ftr.last().unwrap().features, &fte.last().unwrap().features);
    let linear = probe(&linear_spec, pl_tr, &labelled.labels, pl_te)?;
    let mlp = if e.probes.contains(&ProbeKind::Mlp) {
        let spec = ProbeSpec::Mlp(MlpConfig {
            hidden: e.mlp_hidden,
            dropout: e.mlp_dropout,
            epochs: e.mlp_epochs,
            seed: fedssl_shared::seed::derive(sc.seed, "mlp-probe", 0),
            ..MlpConfig::default()
        });
        Some(probe(&spec, pl_tr, &labelled.labels, pl_te)?)
    } else {
        None
    };
    let mut layers = Vec::new();
    if per_layer {
        for (a, b) in ftr.iter().zip(&fte) {
            let t = Instant::now();
            let r = if a.name == "pre_logits" {
                linear.clone()
            } else {
                probe(&linear_spec, &a.features, &labelled.labels, &b.features)?
            };
            tracing::info!(layer = %a.name, dim = a.features.dim, top1 = r.top1, seconds = t.elapsed().as_secs_f64(), "per-layer probe");
            layers.push(LayerResult {
                layer: a.name.clone(),
                shape: a.shape.clone(),
                dim: a.features.dim,
                probe: r,
            });
        }
    }
    let mut few = Vec::new();
    let points = e
        .labels_per_class
        .iter()
        .map(|&k| (format!("{k}/class"), PerClass::Count(k)))
        .chain(
            e.label_fractions
                .iter()
                .map(|&f| (format!("{}%", 100.0 * f), PerClass::Fraction(f))),
        );
    for (label, take) in points {
        let (mut t1, mut t5, mut n) = (vec![], vec![], vec![]);
        for s in 0..e.label_seeds {
            let idx = few_label_subset(
                &labelled.labels,
                k,
                take,
                fedssl_shared::seed::derive(sc.seed, "few-labels", s as u64),
            );
            let y: Vec<u32> = idx.iter().map(|&i| labelled.labels[i]).collect();
            let r = probe(&linear_spec, &pl_tr.select(&idx), &y, pl_te)?;
            t1.push(r.top1);
            t5.push(r.top5);
            n.push(idx.len() as f64);
        }
        let ((m1, s1), (m5, s5)) = (mean_std(&t1), mean_std(&t5));
        let train_labels = mean_std(&n).0;
        let per_class = train_labels / k as f64;
        if let PerClass::Count(want) = take {
            if per_class < want as f64 {
                tracing::warn!(
                    "eval.labels_per_class {want}: some classes of the {} labelled images (eval.train_labels) hold fewer, so the point `{label}` used {per_class:.1} per class on average (its per_class in eval.json)",
                    labelled.labels.len()
                );
            }
        }
        tracing::info!(%label, top1 = m1, std = s1, "few-label probe");
        few.push(FewLabelResult {
            label,
            labels_per_class: match take {
                PerClass::Count(k) => Some(k),
                _ => None,
            },
            fraction: match take {
                PerClass::Fraction(f) => Some(f),
                _ => None,
            },
            train_labels,
            per_class,
            seeds: e.label_seeds,
            top1_mean: m1,
            top1_std: s1,
            top5_mean: m5,
            top5_std: s5,
        });
    }
    if !few.is_empty() {
        few.push(FewLabelResult {
            label: "all".into(),
            labels_per_class: None,
            fraction: Some(1.0),
            train_labels: linear.train_labels as f64,
            per_class: linear.train_labels as f64 / k as f64,
            seeds: 1,
            top1_mean: linear.top1,
            top1_std: 0.0,
            top5_mean: linear.top5,
            top5_std: 0.0,
        });
    }
    Ok(BackboneEval {
        linear,
        mlp,
        per_layer: layers,
        few_labels: few,
    })
}

/// The labelled probe set and the test set the scenario's `[eval]` asks for.
pub fn eval_sets(
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

/// The random-init backbone of a run of `sc` (what `simulate` starts from).
pub fn initial_backbone(sc: &Scenario) -> Result<WeightSet> {
    let init_seed = fedssl_shared::seed::derive(sc.seed, "init", 0);
    let (_, vars) = build_backbone(&sc.model, init_seed, &Device::Cpu)?;
    WeightSet::from_varmap(&vars)
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

/// The `scenario.json` of the run a checkpoint belongs to: next to it (`<run>/final.safetensors`)
/// or one folder up (`<run>/checkpoints/round-NNNN.safetensors`). Errors, naming the places
/// looked at, when neither exists.
pub fn run_scenario_of(checkpoint: &Path) -> Result<std::path::PathBuf> {
    let dir = checkpoint.parent().unwrap_or(Path::new("."));
    let candidates = [
        dir.join(crate::resume::SCENARIO_FILE),
        dir.join("..").join(crate::resume::SCENARIO_FILE),
    ];
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
    let train = fedssl_shared::data::load_train_set(
        sc.data.dataset,
        sc.data.path.as_deref(),
        sc.data.train_images,
        sc.seed,
    )?;
    let test = fedssl_shared::data::load_test_set(
        sc.data.dataset,
        sc.data.path.as_deref(),
        sc.data.test_images,
        sc.seed,
    )?;
    let initial = initial_backbone(sc)?;
    let eval = evaluate_run(sc, &weights, &initial, &train, &test)?;
    write_eval_json(out, sc, backbone.num_values(), &eval)?;
    Ok(eval)
}

/// k-nearest-neighbour top-1 (Wu et al. 2018's monitor): cosine similarity between
/// L2-normalised `test (M, D)` and `train (N, D)` features, the `k` most similar training
/// images vote for their label with weight `exp(sim / 0.07)`; the largest total wins (lowest
/// class on a tie). Returns the fraction of test images whose vote is their label.
pub fn knn_top1(
    train: &HostFeatures,
    train_y: &[u32],
    test: &HostFeatures,
    test_y: &[u32],
    num_classes: usize,
    k: usize,
) -> Result<f64> {
    ensure!(
        train.rows > 0 && test.rows > 0 && k > 0,
        "k-NN: empty set or k = 0"
    );
    let norm = |f: &HostFeatures| -> Result<Tensor> {
        let mut v = f.data.clone();
        for row in v.chunks_exact_mut(f.dim) {
            let n = row.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
            row.iter_mut().for_each(|x| *x /= n);
        }
        Ok(Tensor::from_vec(v, (f.rows, f.dim), &Device::Cpu)?)
    };
    let sim = norm(test)?.matmul(&norm(train)?.t()?)?;
    let sim = sim.flatten_all()?.to_vec1::<f32>()?;
    let mut hits = 0usize;
    let mut order: Vec<usize> = (0..train.rows).collect();
    for (row, &y) in sim.chunks_exact(train.rows).zip(test_y) {
        let kk = k.min(train.rows);
        order.select_nth_unstable_by(kk - 1, |&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
        let mut votes = vec![0f64; num_classes];
        for &i in &order[..kk] {
            votes[train_y[i] as usize] += (f64::from(row[i]) / 0.07).exp();
        }
        let best = votes
            .iter()
            .enumerate()
            .fold(0, |b, (c, &v)| if v > votes[b] { c } else { b });
        hits += usize::from(best == y as usize);
    }
    Ok(hits as f64 / test.rows as f64)
}

/// The k-NN monitor of `eval.knn_every`: fixed small labelled and test subsets, scored on
/// each round's global backbone.
pub struct KnnMonitor {
    model: ModelConfig,
    view: EvalView,
    train: ImageDataset,
    test: ImageDataset,
    k: usize,
    batch: usize,
    /// Every this many rounds (and after the last).
    pub every: usize,
}

impl KnnMonitor {
    /// The monitor of `sc` (`None` when `eval.knn_every = 0`): `eval.knn_train` images of a
    /// seeded shuffle of `train`, the first `eval.knn_test` of `test`.
    pub fn new(sc: &Scenario, train: &ImageDataset, test: &ImageDataset) -> Option<Self> {
        let e = &sc.eval;
        if e.knn_every == 0 {
            return None;
        }
        let mut idx: Vec<usize> = (0..train.len()).collect();
        idx.shuffle(&mut fedssl_shared::seed::rng(sc.seed, "knn-subset", 0));
        idx.truncate(e.knn_train);
        idx.sort_unstable();
        let nt = e.knn_test.min(test.len());
        Some(Self {
            model: sc.model.clone(),
            // validated with the scenario, so this cannot fail
            view: sc.pretext.eval_view(e.view).unwrap_or(EvalView::Whole),
            train: train.subset(&idx),
            test: test.subset(&(0..nt).collect::<Vec<_>>()),
            k: e.knn_k,
            batch: e.feature_batch_size,
            every: e.knn_every,
        })
    }

    /// Whether round `round` (1-based) of `rounds` is monitored.
    pub fn due(&self, round: usize, rounds: usize) -> bool {
        round.is_multiple_of(self.every) || round == rounds
    }

    /// k-NN top-1 ([`knn_top1`]) of the backbone in `weights` on the pre-logits.
    pub fn score(&self, weights: &WeightSet) -> Result<f64> {
        let b = load_backbone(weights, &self.model)?;
        let tr = extract_layers(
            &b,
            &self.train,
            &self.view,
            self.batch,
            false,
            Pooling::Global,
            1,
        )?
        .pop()
        .unwrap();
        let te = extract_layers(
            &b,
            &self.test,
            &self.view,
            self.batch,
            false,
            Pooling::Global,
            1,
        )?
        .pop()
        .unwrap();
        knn_top1(
            &tr.features,
            &self.train.labels,
            &te.features,
            &self.test.labels,
            self.train.num_classes,
            self.k,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fedssl_shared::model::VggConfig;

    #[test]
    fn few_label_subset_has_exactly_k_per_class_and_follows_the_seed() {
        let labels: Vec<u32> = (0..1000).map(|i| (i * 7 % 10) as u32).collect();
        let a = few_label_subset(&labels, 10, PerClass::Count(10), 1);
        assert_eq!(a.len(), 100);
        let mut counts = [0usize; 10];
        a.iter().for_each(|&i| counts[labels[i] as usize] += 1);
        assert_eq!(counts, [10; 10]);
        assert_eq!(a, few_label_subset(&labels, 10, PerClass::Count(10), 1));
        assert_ne!(a, few_label_subset(&labels, 10, PerClass::Count(10), 2));
        let big = few_label_subset(&labels, 10, PerClass::Count(30), 1);
        assert!(a.iter().all(|i| big.contains(i)), "nested for one seed");
        // more than a class has: all of it
        assert_eq!(
            few_label_subset(&labels, 10, PerClass::Count(1000), 1).len(),
            1000
        );
        let f = few_label_subset(&labels, 10, PerClass::Fraction(0.01), 3);
        assert_eq!(f.len(), 10, "1 % of 100 per class");
        let w = a.windows(2).all(|p| p[0] < p[1]);
        assert!(w, "sorted, no repeats");
    }

    #[test]
    fn pool_grid_and_adaptive_pool_known_values() {
        assert_eq!(pool_grid(16, 32, 32, Pooling::Adaptive, 9000), (23, 23));
        assert_eq!(pool_grid(64, 8, 8, Pooling::Adaptive, 9000), (8, 8));
        assert_eq!(pool_grid(20000, 4, 4, Pooling::Adaptive, 9000), (1, 1));
        assert_eq!(pool_grid(16, 32, 32, Pooling::Global, 9000), (1, 1));
        // 1 channel 3×3 → 2×2: bins rows/cols {0,1} and {1,2}
        let x: Vec<f32> = (1..=9).map(|v| v as f32).collect();
        let mut out = vec![];
        adaptive_avg_pool(&x, 1, 3, 3, 2, 2, &mut out);
        assert_eq!(out, vec![3.0, 4.0, 6.0, 7.0]);
        out.clear();
        adaptive_avg_pool(&x, 1, 3, 3, 1, 1, &mut out);
        assert_eq!(out, vec![5.0]);
    }

    fn synthetic(n: usize) -> ImageDataset {
        fedssl_shared::data::synthetic::generate(n, 5)
    }

    #[test]
    fn patch_grid_features_are_the_mean_over_each_images_nine_patches() {
        let ds = synthetic(3);
        let (b, _) = build_backbone(&ModelConfig::default(), 4, &Device::Cpu).unwrap();
        let view = EvalView::PatchGrid {
            grid: fedssl_shared::pretext::grid::Grid {
                patch: 8,
                gap: 2,
                jitter: 1,
            },
            per_patch_norm: false,
            upscale: 1,
        };
        let got = extract_layers(&b, &ds, &view, 2, true, Pooling::Global, 1).unwrap();
        // by hand: every patch through the backbone, then the mean of each image's nine
        let x = view_batch(&ds, &[0, 1, 2], &view, &Device::Cpu).unwrap();
        let out = b.forward_t(&x, false).unwrap();
        let want_pre = out
            .pre_logits
            .reshape((3, 9, 64))
            .unwrap()
            .mean(1)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let last = got.last().unwrap();
        assert_eq!((last.features.rows, last.features.dim), (3, 64));
        for (a, w) in last.features.data.iter().zip(&want_pre) {
            assert!((a - w).abs() < 1e-5, "{a} vs {w}");
        }
        let want_stage1 = out.stages[0]
            .mean((2, 3))
            .unwrap()
            .reshape((3, 9, 16))
            .unwrap()
            .mean(1)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        for (a, w) in got[0].features.data.iter().zip(&want_stage1) {
            assert!((a - w).abs() < 1e-5, "{a} vs {w}");
        }
    }

    #[test]
    fn per_layer_pooled_shapes_for_both_backbones() {
        let ds = synthetic(6);
        let resnet = ModelConfig::default();
        let vgg = ModelConfig {
            backbone: BackboneKind::VggBn,
            vgg: VggConfig {
                base_width: 8,
                ..VggConfig::default()
            },
            ..ModelConfig::default()
        };
        let dims = |cfg: &ModelConfig, pooling| -> Vec<(String, Vec<usize>, usize)> {
            let (b, _) = build_backbone(cfg, 0, &Device::Cpu).unwrap();
            extract_layers(&b, &ds, &EvalView::Whole, 4, true, pooling, 9000)
                .unwrap()
                .into_iter()
                .map(|l| {
                    assert_eq!(l.features.rows, 6);
                    (l.name, l.shape, l.features.dim)
                })
                .collect()
        };
        let s = |v: &str| v.to_string();
        assert_eq!(
            dims(&resnet, Pooling::Adaptive),
            vec![
                (s("stage1"), vec![16, 32, 32], 16 * 23 * 23),
                (s("stage2"), vec![32, 16, 16], 32 * 16 * 16),
                (s("stage3"), vec![64, 8, 8], 64 * 8 * 8),
                (s("pre_logits"), vec![64], 64),
            ]
        );
        assert_eq!(
            dims(&resnet, Pooling::Global)
                .iter()
                .map(|l| l.2)
                .collect::<Vec<_>>(),
            vec![16, 32, 64, 64]
        );
        assert_eq!(
            dims(&vgg, Pooling::Adaptive),
            vec![
                (s("block1"), vec![8, 16, 16], 8 * 16 * 16),
                (s("block2"), vec![16, 8, 8], 16 * 8 * 8),
                (s("block3"), vec![32, 4, 4], 32 * 4 * 4),
                (s("block4"), vec![64, 2, 2], 64 * 2 * 2),
                (s("block5"), vec![64, 1, 1], 64),
                (s("pre_logits"), vec![64], 64),
            ]
        );
        assert_eq!(
            dims(&vgg, Pooling::Global)
                .iter()
                .map(|l| l.2)
                .collect::<Vec<_>>(),
            vec![8, 16, 32, 64, 64, 64]
        );
        // a small cap forces a coarser grid: 16·s² ≤ 100 → s = 2
        let (b, _) = build_backbone(&resnet, 0, &Device::Cpu).unwrap();
        let l = extract_layers(&b, &ds, &EvalView::Whole, 4, true, Pooling::Adaptive, 100).unwrap();
        assert_eq!(l[0].features.dim, 16 * 2 * 2);
        // the global-pooled last stage is the pre-logits (ResNet's global average pool)
        let g = extract_layers(&b, &ds, &EvalView::Whole, 4, true, Pooling::Global, 1).unwrap();
        for (a, b) in g[2].features.data.iter().zip(&g[3].features.data) {
            assert!((a - b).abs() < 1e-5);
        }
    }

    #[test]
    fn knn_on_hand_made_features() {
        let tr =
            HostFeatures::new(4, 2, vec![1.0, 0.0, 0.9, 0.1, 0.0, 1.0, 0.1, 0.9], "tr").unwrap();
        let te = HostFeatures::new(2, 2, vec![2.0, 0.1, 0.2, 3.0], "te").unwrap();
        assert_eq!(
            knn_top1(&tr, &[0, 0, 1, 1], &te, &[0, 1], 2, 1).unwrap(),
            1.0
        );
        assert_eq!(
            knn_top1(&tr, &[0, 0, 1, 1], &te, &[1, 0], 2, 2).unwrap(),
            0.0
        );
        // k = all: the vote is weighted by similarity, so the nearer class still wins
        assert_eq!(
            knn_top1(&tr, &[0, 0, 1, 1], &te, &[0, 1], 2, 4).unwrap(),
            1.0
        );
    }
}
