//! `[eval]`: the central evaluation after the last round (probes on the frozen backbone) and
//! the optional k-NN monitor during training.

use std::path::PathBuf;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use crate::data::DatasetKind;

use crate::pretext::EvalViewChoice;

/// Evaluation section: the protocol of Kolesnikov, Zhai & Beyer, "Revisiting Self-Supervised
/// Visual Representation Learning" (CVPR 2019) on the frozen backbone — linear and MLP probes
/// with L2 chosen on a validation split, per-layer probes, few-label probes — plus an optional
/// k-NN monitor during training.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalConfig {
    /// Run the evaluation after the last round (default true).
    pub enabled: bool,
    /// Labelled training images for the probes (first N of a seeded shuffle of the train split); `None` (default): all.
    pub train_labels: Option<usize>,
    /// Test images (first N of the test split); `None` (default): all.
    pub test_images: Option<usize>,
    /// Linear-probe epochs (default 100).
    pub epochs: usize,
    /// Also probe a randomly initialised backbone of the same architecture and seed (default true).
    pub random_init_baseline: bool,
    /// Images per batch when extracting features (default 256).
    pub feature_batch_size: usize,
    /// Probes on the pre-logits: `"linear"` (always run; it is `summary.json`'s `eval.linear`)
    /// and `"mlp"` (default `["linear", "mlp"]`).
    pub probes: Vec<ProbeKind>,
    /// Hidden width of the MLP probe (default 1000, as Revisiting).
    pub mlp_hidden: usize,
    /// Dropout probability before the MLP probe's output layer (default 0.5).
    pub mlp_dropout: f64,
    /// MLP-probe epochs (default 30).
    pub mlp_epochs: usize,
    /// L2 grid: each probe's weight decay is the value with the best top-1 on a held-out
    /// validation split of the labelled set, then the probe is refitted on the whole labelled
    /// set with it (default `[0, 1e-4, 1e-3, 1e-2]`; one value: no selection).
    pub weight_decays: Vec<f64>,
    /// Fraction of the labelled set held out to choose the weight decay (default 0.2).
    pub val_fraction: f64,
    /// Probe every stage of the backbone as well as the pre-logits (default false).
    pub per_layer: bool,
    /// How a stage's `(C, H, W)` map becomes a vector: `"adaptive"` (default; average pooling
    /// to the largest `s×s` grid with `C·s·s ≤ per_layer_max_dim`) or `"global"` (average over
    /// `H, W`).
    pub pooling: Pooling,
    /// How the backbone sees an image at evaluation: `"auto"` (default: `"patch_grid"` for
    /// the patch-based tasks relative_patch and jigsaw, `"whole"` otherwise), `"whole"` (the
    /// whole image) or `"patch_grid"` (the task's 3×3 grid of patches, features averaged over
    /// the 9 patches, as Kolesnikov et al. 2019 evaluate patch-based models). The random-init
    /// baseline is evaluated the same way.
    pub view: EvalViewChoice,
    /// Largest per-layer feature size for adaptive pooling (default 9000, Revisiting's ~9k).
    pub per_layer_max_dim: usize,
    /// Few labels: probe the pre-logits on `k` labelled images per class for each `k` (drawn
    /// from the labelled set, `label_seeds` draws each, mean and std reported; default `[]`: off).
    pub labels_per_class: Vec<usize>,
    /// Few labels as fractions of the labelled set, per class (e.g. `[0.01, 0.1]`; default `[]`).
    pub label_fractions: Vec<f64>,
    /// Seeds (subset draws) per few-label point (default 3).
    pub label_seeds: usize,
    /// k-NN monitor: every this many rounds (and after the last), the global backbone's
    /// k-NN top-1 is written to `rounds.jsonl` as `knn_top1` (default 0: off).
    pub knn_every: usize,
    /// Neighbours of the k-NN monitor (default 20; cosine similarity, similarity-weighted vote).
    pub knn_k: usize,
    /// Labelled training images of the k-NN monitor (default 2000).
    pub knn_train: usize,
    /// Test images of the k-NN monitor (default 1000).
    pub knn_test: usize,
    /// The labelled dataset the probes and the k-NN monitor use (`"synthetic"`, `"cifar10"`,
    /// `"cifar100"` (with `data.cifar100_labels`), `"stl10"` (its labelled training split and
    /// test split, at `data.image_size`) or `"folder"`, read with `data.labels`,
    /// `data.image_size`, `data.skip_bad_images`; a folder needs `train/` and `test/` class
    /// folders); default: the training dataset `data.dataset` (required when that is
    /// `"mixed"`, whose sources' label spaces differ; never `"mixed"`). Pretrain on the sites'
    /// own images, probe on CIFAR-10 or a labelled folder.
    pub dataset: Option<DatasetKind>,
    /// Folder of `eval.dataset` (relative to the scenario file; `--data-dir` does not
    /// change it); default `data.path` when `eval.dataset` is `data.dataset`'s kind, or, for
    /// the mixed dataset (which needs `eval.dataset`), the folder of its first source of that
    /// kind.
    pub path: Option<PathBuf>,
}

/// A probe on frozen features.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeKind {
    /// Multinomial logistic regression.
    Linear,
    /// One hidden layer, ReLU, dropout.
    Mlp,
}

/// Pooling of a stage's map for the per-layer probes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pooling {
    /// Adaptive average pooling to at most `eval.per_layer_max_dim` values.
    Adaptive,
    /// Global average pooling.
    Global,
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            train_labels: None,
            test_images: None,
            epochs: 100,
            random_init_baseline: true,
            feature_batch_size: 256,
            probes: vec![ProbeKind::Linear, ProbeKind::Mlp],
            mlp_hidden: 1000,
            mlp_dropout: 0.5,
            mlp_epochs: 30,
            weight_decays: vec![0.0, 1e-4, 1e-3, 1e-2],
            val_fraction: 0.2,
            per_layer: false,
            pooling: Pooling::Adaptive,
            view: EvalViewChoice::Auto,
            per_layer_max_dim: 9000,
            labels_per_class: vec![],
            label_fractions: vec![],
            label_seeds: 3,
            knn_every: 0,
            knn_k: 20,
            knn_train: 2000,
            knn_test: 1000,
            dataset: None,
            path: None,
        }
    }
}

impl EvalConfig {
    /// Checks ranges; the message names the `eval.*` key.
    pub fn validate(&self) -> Result<()> {
        if self.epochs == 0 || self.feature_batch_size == 0 {
            bail!("eval.epochs and eval.feature_batch_size must be at least 1");
        }
        if self.train_labels == Some(0) || self.test_images == Some(0) {
            bail!("eval.train_labels and eval.test_images must be at least 1 (or left out: all)");
        }
        if !self.probes.contains(&ProbeKind::Linear) {
            bail!("eval.probes must include \"linear\" (summary.json's eval.linear)");
        }
        if self.probes.contains(&ProbeKind::Mlp) && (self.mlp_hidden == 0 || self.mlp_epochs == 0) {
            bail!("eval.mlp_hidden and eval.mlp_epochs must be at least 1");
        }
        if !(0.0..1.0).contains(&self.mlp_dropout) {
            bail!(
                "eval.mlp_dropout must be in [0, 1), got {}",
                self.mlp_dropout
            );
        }
        if self.weight_decays.is_empty()
            || self
                .weight_decays
                .iter()
                .any(|w| !w.is_finite() || *w < 0.0)
        {
            bail!("eval.weight_decays must list at least one non-negative number");
        }
        if !(self.val_fraction > 0.0 && self.val_fraction < 1.0) {
            bail!(
                "eval.val_fraction must be in (0, 1), got {}",
                self.val_fraction
            );
        }
        if self.per_layer_max_dim == 0 {
            bail!("eval.per_layer_max_dim must be at least 1");
        }
        if self.labels_per_class.contains(&0) {
            bail!("eval.labels_per_class entries must be at least 1");
        }
        if self
            .label_fractions
            .iter()
            .any(|f| !(*f > 0.0 && *f <= 1.0))
        {
            bail!("eval.label_fractions entries must be in (0, 1]");
        }
        if self.label_seeds == 0 {
            bail!("eval.label_seeds must be at least 1");
        }
        if self.knn_every > 0 && (self.knn_k == 0 || self.knn_train == 0 || self.knn_test == 0) {
            bail!("eval.knn_k, eval.knn_train and eval.knn_test must be at least 1");
        }
        Ok(())
    }
}
