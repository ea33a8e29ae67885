//! Scenario files: one TOML file describes one run (data, partition, model, pretext task,
//! local training, federation, evaluation). Every key has a default; unknown keys are an
//! error that names the key and the file. `--set key.path=value` overrides any key.
//!
//! ```toml
//! name = "quickstart"
//! seed = 0
//! [data]
//! dataset = "synthetic"
//! [federation]
//! clients = 3
//! rounds = 2
//! ```

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

pub use crate::model::ModelConfig;
use crate::optim::LrSchedule;
use crate::partition::PartitionScheme;
pub use crate::pretext::PretextConfig;

/// A whole run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Scenario {
    /// Name written into `summary.json`; also the run's folder name (`runs/<name>`, and
    /// `<out>/<name>` under `compare`), so it must be a plain folder name: not empty, not `.`
    /// or `..`, at most 100 characters, no path separators (`/`, `\\`), no control characters
    /// and none of `<>:"|?*`, no leading or trailing spaces ([`check_name`]).
    pub name: String,
    /// Master seed: every RNG of the run (data, partition, init, sampling, augmentation) derives from it.
    pub seed: u64,
    /// Which images and how many.
    pub data: DataConfig,
    /// How the training images are split across clients.
    pub partition: PartitionScheme,
    /// The backbone that is federated.
    pub model: ModelConfig,
    /// The self-supervised pretext task.
    pub pretext: PretextConfig,
    /// Local training on each client per round.
    pub train: TrainConfig,
    /// Rounds, clients, deadlines, aggregation.
    pub federation: FederationConfig,
    /// Central evaluation after the last round.
    pub eval: EvalConfig,
    /// Settings that only matter for `simulate` (all clients in one process).
    pub simulation: SimulationConfig,
}

impl Default for Scenario {
    fn default() -> Self {
        Self {
            name: "unnamed".into(),
            seed: 0,
            data: DataConfig::default(),
            partition: PartitionScheme::Iid,
            model: ModelConfig::default(),
            pretext: PretextConfig::default(),
            train: TrainConfig::default(),
            federation: FederationConfig::default(),
            eval: EvalConfig::default(),
            simulation: SimulationConfig::default(),
        }
    }
}

/// Which dataset a run uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DatasetKind {
    /// The built-in procedural 32×32 dataset (no download; see `data::synthetic`).
    Synthetic,
    /// CIFAR-10, binary version (`cifar-10-batches-bin`).
    Cifar10,
}

/// Data section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// `"synthetic"` (default) or `"cifar10"`.
    pub dataset: DatasetKind,
    /// CIFAR-10 folder (relative to the scenario file, or overridden by `--data-dir`).
    pub path: Option<PathBuf>,
    /// Use only the first N training images (CIFAR-10), or generate N (synthetic). `None`: all (CIFAR-10) / 10,000 (synthetic).
    pub train_images: Option<usize>,
    /// Use only the first N test images (CIFAR-10), or generate N (synthetic). `None`: all / 2,000.
    pub test_images: Option<usize>,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            dataset: DatasetKind::Synthetic,
            path: None,
            train_images: None,
            test_images: None,
        }
    }
}

/// Local training section (sent to clients in every round's config).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Local epochs over the client's shard per round.
    pub local_epochs: usize,
    /// Images per batch (before the pretext task multiplies them, e.g. ×4 rotations).
    pub batch_size: usize,
    /// Base learning rate.
    pub lr: f64,
    /// SGD momentum.
    pub momentum: f64,
    /// L2 weight decay (not applied to BatchNorm parameters and biases).
    pub weight_decay: f64,
    /// `"cosine"` decays the round's learning rate over the rounds; `"constant"` keeps it.
    pub schedule: LrSchedule,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            local_epochs: 1,
            batch_size: 64,
            lr: 0.05,
            momentum: 0.9,
            weight_decay: 5e-4,
            schedule: LrSchedule::Cosine,
        }
    }
}

/// Federation section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FederationConfig {
    /// Number of clients (shards) in the run.
    pub clients: usize,
    /// A round starts only with this many connected clients, and the run fails if fewer survive a round.
    pub min_clients: usize,
    /// Number of rounds.
    pub rounds: usize,
    /// Fraction of connected clients sampled each round (at least `min_clients`).
    pub participation: f64,
    /// Aggregation strategy; only `"fedavg"` (McMahan et al. 2017) for now.
    pub strategy: String,
    /// A client that has not returned its update this many seconds after the round started is dropped from the round.
    pub round_deadline_seconds: f64,
    /// Seconds `serve` waits for `min_clients` to connect before it gives up.
    pub join_timeout_seconds: f64,
    /// Largest accepted weights payload, in bytes.
    pub max_weights_bytes: u64,
    /// A connection silent for this many seconds is considered dead (QUIC idle timeout;
    /// keep-alives are sent at a quarter of it).
    pub idle_timeout_seconds: f64,
}

impl Default for FederationConfig {
    fn default() -> Self {
        Self {
            clients: 3,
            min_clients: 2,
            rounds: 2,
            participation: 1.0,
            strategy: "fedavg".into(),
            round_deadline_seconds: 1800.0,
            join_timeout_seconds: 600.0,
            max_weights_bytes: 1 << 30,
            idle_timeout_seconds: 20.0,
        }
    }
}

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
    pub view: crate::pretext::EvalViewChoice,
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
            view: crate::pretext::EvalViewChoice::Auto,
            per_layer_max_dim: 9000,
            labels_per_class: vec![],
            label_fractions: vec![],
            label_seeds: 3,
            knn_every: 0,
            knn_k: 20,
            knn_train: 2000,
            knn_test: 1000,
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

/// Simulation section.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SimulationConfig {
    /// How many in-process clients may train at once; `0` picks one per 2 CPU cores
    /// (so the cores are split, never oversubscribed).
    pub concurrent_training: usize,
    /// Injected client failures, to study dropouts: `[[simulation.faults]]` with `client`,
    /// `round` (1-based) and `kind`.
    pub faults: Vec<Fault>,
}

/// A simulated client failure.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    /// Client id (its shard index).
    pub client: u32,
    /// 1-based round at whose start the client fails.
    pub round: u32,
    /// What happens.
    pub kind: FaultKind,
}

/// How a simulated client fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// The client's connection goes away mid-round and it never comes back (a killed process).
    Disconnect,
    /// The client stops answering but keeps its connection (a hung process): only the round
    /// deadline frees the round.
    Stall,
}

impl Scenario {
    /// Reads and validates a scenario file, applying `overrides` (`key.path=value`, value
    /// parsed as TOML, falling back to a string). Errors name the file and the key.
    ///
    /// A file whose name ends in `.json` is read as JSON: the `scenario.json` a run writes
    /// into its output folder (the resolved scenario), so that a run's backbone can be
    /// evaluated or a run repeated with exactly its scenario. Its `data.path` was already
    /// resolved when the run started and is taken as it is; a relative `data.path` of a TOML
    /// file is resolved against the file's folder.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read scenario {}", path.display()))?;
        let json = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("json"));
        let parse = |overrides: &[String]| {
            if json {
                Self::from_json_str(&text, overrides)
            } else {
                Self::from_toml_str(&text, overrides)
            }
        };
        let mut sc = match parse(overrides) {
            Ok(sc) => sc,
            // Blame the file only if the file alone is wrong; otherwise the --set overrides.
            Err(e) if overrides.is_empty() || parse(&[]).is_err() => {
                return Err(e.context(format!("in scenario {}", path.display())))
            }
            Err(e) => {
                let full = format!("{e:#}");
                // An error about the override's own syntax already names it.
                if full.starts_with("--set `") {
                    return Err(e);
                }
                // Name the one override that breaks it when there is one: the first whose
                // prefix of the overrides fails with the same error.
                let culprit = (0..overrides.len()).find_map(|i| match parse(&overrides[..=i]) {
                    Err(p) if format!("{p:#}") == full => Some(&overrides[i]),
                    _ => None,
                });
                let context = match culprit {
                    Some(o) => format!("in --set {o}"),
                    None => format!("in --set {}", overrides.join(" --set ")),
                };
                return Err(e.context(context));
            }
        };
        if let Some(p) = &sc.data.path {
            if p.is_relative() && !json {
                let base = path.parent().unwrap_or(Path::new("."));
                sc.data.path = Some(base.join(p));
            }
        }
        Ok(sc)
    }

    /// Parses scenario TOML text with overrides and validates it.
    pub fn from_toml_str(text: &str, overrides: &[String]) -> Result<Self> {
        Self::from_value(toml::from_str(text)?, overrides)
    }

    /// Parses a scenario in JSON (a run's `scenario.json`) with overrides and validates it.
    /// `null` values (options left unset) count as absent keys.
    pub fn from_json_str(text: &str, overrides: &[String]) -> Result<Self> {
        let json: serde_json::Value = serde_json::from_str(text)?;
        if !json.is_object() {
            bail!("a scenario in JSON must be an object");
        }
        let value = json_to_toml(json).context("a scenario in JSON cannot hold null in a list")?;
        Self::from_value(value, overrides)
    }

    fn from_value(mut value: toml::Value, overrides: &[String]) -> Result<Self> {
        for o in overrides {
            apply_override(&mut value, o)?;
        }
        let sc: Scenario = value
            .try_into()
            .map_err(|e: toml::de::Error| anyhow::anyhow!("{e}"))?;
        sc.validate()?;
        Ok(sc)
    }

    /// Checks value ranges and cross-field constraints; the message names the key.
    pub fn validate(&self) -> Result<()> {
        check_name(&self.name)?;
        let f = &self.federation;
        if f.clients == 0 {
            bail!("federation.clients must be at least 1");
        }
        if f.min_clients == 0 || f.min_clients > f.clients {
            bail!(
                "federation.min_clients must be in 1..={} (federation.clients), got {}",
                f.clients,
                f.min_clients
            );
        }
        if f.rounds == 0 {
            bail!("federation.rounds must be at least 1");
        }
        if !(f.participation > 0.0 && f.participation <= 1.0) {
            bail!(
                "federation.participation must be in (0, 1], got {}",
                f.participation
            );
        }
        if f.strategy != "fedavg" {
            bail!(
                "federation.strategy `{}` is not known (known: fedavg)",
                f.strategy
            );
        }
        if f.round_deadline_seconds.is_nan() || f.round_deadline_seconds <= 0.0 {
            bail!("federation.round_deadline_seconds must be positive");
        }
        if !(f.idle_timeout_seconds >= 1.0 && f.idle_timeout_seconds <= 3600.0) {
            bail!("federation.idle_timeout_seconds must be in [1, 3600]");
        }
        for (i, fault) in self.simulation.faults.iter().enumerate() {
            if fault.client as usize >= f.clients
                || fault.round == 0
                || fault.round as usize > f.rounds
            {
                bail!("simulation.faults[{i}]: client must be < federation.clients and round in 1..=federation.rounds");
            }
        }
        self.model.validate()?;
        self.pretext.validate(self.model.backbone)?;
        self.pretext.eval_view(self.eval.view)?;
        // every dataset fedssl reads has 32×32 images: refuse layouts that cannot fit them
        // now rather than in every client's first step
        self.pretext
            .check_image_size(IMAGE_SIDE, self.model.vit.patch_size)?;
        if self.model.backbone == crate::model::BackboneKind::Vit
            && !IMAGE_SIDE.is_multiple_of(self.model.vit.patch_size)
        {
            bail!(
                "model.vit.patch_size ({}) must divide the {IMAGE_SIDE}-pixel side of the images",
                self.model.vit.patch_size
            );
        }
        if self.data.train_images == Some(0) || self.data.test_images == Some(0) {
            bail!("data.train_images and data.test_images must be at least 1 (or left out)");
        }
        let t = &self.train;
        if t.local_epochs == 0 || t.batch_size == 0 {
            bail!("train.local_epochs and train.batch_size must be at least 1");
        }
        if !t.lr.is_finite() || t.lr <= 0.0 {
            bail!("train.lr must be a positive number, got {}", t.lr);
        }
        if !(0.0..1.0).contains(&t.momentum) {
            bail!("train.momentum must be in [0, 1), got {}", t.momentum);
        }
        if !t.weight_decay.is_finite() || t.weight_decay < 0.0 {
            bail!("train.weight_decay must be ≥ 0, got {}", t.weight_decay);
        }
        if let PartitionScheme::Dirichlet { alpha } = self.partition {
            if !(alpha > 0.0 && alpha.is_finite()) {
                bail!("partition.alpha must be a positive number, got {alpha}");
            }
        }
        self.eval.validate()?;
        Ok(())
    }

    /// The learning rate of round `round` (0-based): the schedule runs over rounds.
    pub fn round_lr(&self, round: usize) -> f64 {
        crate::optim::lr_at(
            self.train.lr,
            &self.train.schedule,
            round,
            self.federation.rounds,
        )
    }
}

/// Side in pixels of the images of every dataset fedssl reads (CIFAR-10 and the synthetic set).
pub const IMAGE_SIDE: usize = 32;

/// Default number of synthetic training images when `data.train_images` is unset.
pub const SYNTHETIC_TRAIN_DEFAULT: usize = 10_000;
/// Default number of synthetic test images when `data.test_images` is unset.
pub const SYNTHETIC_TEST_DEFAULT: usize = 2_000;

/// Loads the training split of a run's dataset: synthetic images are generated from the
/// run's seed (so every client and the coordinator get the same images); CIFAR-10 is read
/// from `dir` (errors say which file is missing or broken, and that `--data-dir` sets it).
pub fn load_train_set(
    dataset: DatasetKind,
    dir: Option<&Path>,
    limit: Option<usize>,
    seed: u64,
) -> Result<crate::data::ImageDataset> {
    load_split(dataset, dir, limit, seed, true)
}

/// Loads the test split of a run's dataset (see [`load_train_set`]).
pub fn load_test_set(
    dataset: DatasetKind,
    dir: Option<&Path>,
    limit: Option<usize>,
    seed: u64,
) -> Result<crate::data::ImageDataset> {
    load_split(dataset, dir, limit, seed, false)
}

fn load_split(
    dataset: DatasetKind,
    dir: Option<&Path>,
    limit: Option<usize>,
    seed: u64,
    train: bool,
) -> Result<crate::data::ImageDataset> {
    let (default_n, stream) = if train {
        (SYNTHETIC_TRAIN_DEFAULT, "synthetic-train")
    } else {
        (SYNTHETIC_TEST_DEFAULT, "synthetic-test")
    };
    match dataset {
        DatasetKind::Synthetic => Ok(crate::data::synthetic::generate(
            limit.unwrap_or(default_n),
            crate::seed::derive(seed, stream, 0),
        )),
        DatasetKind::Cifar10 => {
            let dir = dir.context(
                "the CIFAR-10 dataset needs a folder: data.path or --data-dir for the coordinator, --data for a client",
            )?;
            if train {
                crate::data::cifar10::load_train(dir, limit)
            } else {
                crate::data::cifar10::load_test(dir, limit)
            }
        }
    }
}

/// Longest scenario name accepted, in characters.
pub const MAX_NAME_CHARS: usize = 100;

/// Checks that `name` can be the scenario's `name`, which is also a folder name: not empty,
/// not `.` or `..`, at most [`MAX_NAME_CHARS`] characters, no `/` or `\\`, no control
/// characters, none of `<>:"|?*` (refused by Windows), no leading or trailing whitespace.
/// The error names the `name` key and the offending value.
pub fn check_name(name: &str) -> Result<()> {
    let why = if name.is_empty() {
        Some("it is empty")
    } else if name == "." || name == ".." {
        Some("`.` and `..` are not folder names")
    } else if name.chars().count() > MAX_NAME_CHARS {
        Some("it is longer than 100 characters")
    } else if name.contains(['/', '\\']) {
        Some("it contains a path separator (`/` or `\\`)")
    } else if name.chars().any(char::is_control) {
        Some("it contains a control character")
    } else if name.contains(['<', '>', ':', '"', '|', '?', '*']) {
        Some("it contains one of <>:\"|?*")
    } else if name.trim() != name {
        Some("it starts or ends with whitespace")
    } else {
        None
    };
    match why {
        Some(why) => bail!("name {name:?} cannot be used (it names the run's folder): {why}"),
        None => Ok(()),
    }
}

/// A JSON value as TOML: objects become tables, `null` entries of objects are dropped (TOML
/// has no null; an unset option is an absent key); `None` for a top-level or array-element
/// `null`.
fn json_to_toml(v: serde_json::Value) -> Option<toml::Value> {
    use serde_json::Value as J;
    Some(match v {
        J::Null => return None,
        J::Bool(b) => toml::Value::Boolean(b),
        J::Number(n) => match n.as_i64() {
            Some(i) => toml::Value::Integer(i),
            None => toml::Value::Float(n.as_f64()?),
        },
        J::String(s) => toml::Value::String(s),
        J::Array(a) => toml::Value::Array(a.into_iter().map(json_to_toml).collect::<Option<_>>()?),
        J::Object(o) => toml::Value::Table(
            o.into_iter()
                .filter_map(|(k, v)| json_to_toml(v).map(|v| (k, v)))
                .collect(),
        ),
    })
}

/// Applies one `a.b.c=value` override to a TOML tree, creating tables as needed.
pub fn apply_override(root: &mut toml::Value, spec: &str) -> Result<()> {
    let (key, raw) = spec
        .split_once('=')
        .with_context(|| format!("--set `{spec}`: expected key.path=value"))?;
    let key = key.trim();
    if key.is_empty() {
        bail!("--set `{spec}`: empty key");
    }
    let value: toml::Value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()));
    let parts: Vec<&str> = key.split('.').collect();
    let mut cur = root;
    for p in &parts[..parts.len() - 1] {
        let table = cur
            .as_table_mut()
            .with_context(|| format!("--set `{key}`: `{p}` is not inside a table"))?;
        cur = table
            .entry(p.to_string())
            .or_insert_with(|| toml::Value::Table(Default::default()));
    }
    let table = cur
        .as_table_mut()
        .with_context(|| format!("--set `{key}`: parent is not a table"))?;
    table.insert(parts[parts.len() - 1].to_string(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_defaults() {
        let s = Scenario::from_toml_str("", &[]).unwrap();
        assert_eq!(s, Scenario::default());
    }

    #[test]
    fn unknown_key_is_named() {
        let e = Scenario::from_toml_str("[federation]\nrounds = 2\nroundz = 3\n", &[]).unwrap_err();
        assert!(format!("{e:#}").contains("roundz"), "{e:#}");
    }

    #[test]
    fn overrides_apply_with_types() {
        let s = Scenario::from_toml_str(
            "[federation]\nrounds = 2\n",
            &[
                "federation.rounds=7".into(),
                "name=abc".into(),
                "partition.kind=dirichlet".into(),
                "partition.alpha=0.5".into(),
            ],
        )
        .unwrap();
        assert_eq!(s.federation.rounds, 7);
        assert_eq!(s.name, "abc");
        assert_eq!(s.partition, PartitionScheme::Dirichlet { alpha: 0.5 });
    }

    #[test]
    fn invalid_values_are_refused_with_the_key() {
        let e = Scenario::from_toml_str("[federation]\nclients = 2\nmin_clients = 3\n", &[])
            .unwrap_err();
        assert!(e.to_string().contains("federation.min_clients"), "{e}");
        let e = Scenario::from_toml_str("[partition]\nkind = \"dirichlet\"\nalpha = -1.0\n", &[])
            .unwrap_err();
        assert!(e.to_string().contains("alpha"), "{e}");
    }

    #[test]
    fn a_bad_override_is_blamed_on_set_not_on_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("good.toml");
        std::fs::write(&p, "[federation]\nrounds = 2\n").unwrap();
        let e = format!(
            "{:#}",
            Scenario::load(&p, &["federation.roundz=3".into()]).unwrap_err()
        );
        assert!(
            e.contains("--set federation.roundz=3") && e.contains("roundz"),
            "{e}"
        );
        assert!(!e.contains("good.toml"), "{e}");
        // among several overrides, the one that breaks it is named, not all of them
        let sets: Vec<String> = ["seed=4", "federation.roundz=3", "eval.epochs=2"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let e = format!("{:#}", Scenario::load(&p, &sets).unwrap_err());
        assert!(e.starts_with("in --set federation.roundz=3:"), "{e}");
        assert!(!e.contains("seed=4") && !e.contains("eval.epochs"), "{e}");
        // a malformed override is named once, by its own error
        let e = format!(
            "{:#}",
            Scenario::load(&p, &["federation.rounds".into()]).unwrap_err()
        );
        assert!(e.starts_with("--set `federation.rounds`: expected"), "{e}");
        assert_eq!(e.matches("--set").count(), 1, "{e}");
        // overrides that are only wrong together: the later one, which made it invalid
        let sets: Vec<String> = ["federation.clients=2", "federation.min_clients=3"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let e = format!("{:#}", Scenario::load(&p, &sets).unwrap_err());
        assert!(e.starts_with("in --set federation.min_clients=3:"), "{e}");
        std::fs::write(&p, "[federation]\nroundz = 2\n").unwrap();
        let e = format!("{:#}", Scenario::load(&p, &["name=x".into()]).unwrap_err());
        assert!(e.contains("good.toml"), "{e}");
    }

    #[test]
    fn relative_data_path_is_resolved_against_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.toml");
        std::fs::write(&p, "[data]\ndataset = \"cifar10\"\npath = \"c10\"\n").unwrap();
        let s = Scenario::load(&p, &[]).unwrap();
        assert_eq!(s.data.path.unwrap(), dir.path().join("c10"));
    }

    #[test]
    fn layouts_that_cannot_fit_32x32_images_are_refused_up_front() {
        for (set, key) in [
            (
                vec![
                    "pretext.task=\"relative_patch\"",
                    "pretext.relative_patch.patch_size=12",
                ],
                "pretext.relative_patch",
            ),
            (
                vec!["pretext.task=\"jigsaw\"", "pretext.jigsaw.tile_size=10"],
                "pretext.jigsaw",
            ),
            (
                vec!["model.backbone=\"vit\"", "model.vit.patch_size=5"],
                "model.vit.patch_size",
            ),
            (
                vec![
                    "model.backbone=\"vit\"",
                    "pretext.task=\"mae\"",
                    "pretext.mae.mask_ratio=0.999",
                ],
                "pretext.mae.mask_ratio",
            ),
            (vec!["eval.train_labels=0"], "eval.train_labels"),
            (vec!["data.test_images=0"], "data.test_images"),
        ] {
            let set: Vec<String> = set.iter().map(|s| s.to_string()).collect();
            let e = format!("{:#}", Scenario::from_toml_str("", &set).unwrap_err());
            assert!(e.contains(key), "{set:?}: {e}");
        }
        // the defaults of every task fit
        for t in ["relative_patch", "jigsaw"] {
            Scenario::from_toml_str("", &[format!("pretext.task=\"{t}\"")]).unwrap();
        }
        Scenario::from_toml_str(
            "",
            &[
                "model.backbone=\"vit\"".into(),
                "pretext.task=\"mae\"".into(),
            ],
        )
        .unwrap();
    }

    #[test]
    fn names_that_are_not_plain_folder_names_are_refused() {
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "../up",
            "/abs",
            "a\\b",
            "tab\tname",
            "line\nbreak",
            "c:drive",
            "what?",
            "star*",
            " lead",
            "trail ",
        ] {
            let e = format!(
                "{:#}",
                Scenario::from_toml_str("", &[format!("name={}", toml::Value::from(bad))])
                    .unwrap_err()
            );
            assert!(e.contains("name") && e.contains("folder"), "{bad:?}: {e}");
        }
        let long = "x".repeat(MAX_NAME_CHARS + 1);
        assert!(check_name(&long).is_err());
        for good in [
            "quickstart",
            "compare-pretexts-relative_patch",
            "run.v2",
            "Versuch ä",
            &"x".repeat(100),
        ] {
            check_name(good).unwrap();
        }
        // the file is blamed, and the message names the key
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.toml");
        std::fs::write(&p, "name = \"../escape\"\n").unwrap();
        let e = format!("{:#}", Scenario::load(&p, &[]).unwrap_err());
        assert!(
            e.contains("s.toml") && e.contains("name \"../escape\""),
            "{e}"
        );
    }

    #[test]
    fn a_runs_scenario_json_loads_back_to_the_same_scenario() {
        let dir = tempfile::tempdir().unwrap();
        let mut sc = Scenario::from_toml_str(
            "name = \"j\"\n[data]\ndataset = \"cifar10\"\npath = \"rel/c10\"\ntrain_images = 300\n[partition]\nkind = \"dirichlet\"\nalpha = 0.5\n[pretext]\ntask = \"jigsaw\"\n[eval]\nweight_decays = [0.0, 1e-3]\n",
            &[],
        )
        .unwrap();
        sc.simulation.faults = vec![Fault {
            client: 1,
            round: 1,
            kind: FaultKind::Stall,
        }];
        assert_eq!(sc.eval.test_images, None);
        let p = dir.path().join("scenario.json");
        std::fs::write(&p, serde_json::to_string_pretty(&sc).unwrap()).unwrap();
        // data.path is taken as the run resolved it, not against the file's folder
        assert_eq!(Scenario::load(&p, &[]).unwrap(), sc);
        let s = Scenario::load(&p, &["eval.epochs=3".into()]).unwrap();
        assert_eq!(s.eval.epochs, 3);
        let e = format!(
            "{:#}",
            Scenario::load(&p, &["eval.epochz=3".into()]).unwrap_err()
        );
        assert!(e.contains("--set") && e.contains("epochz"), "{e}");
        std::fs::write(&p, "[1, 2]").unwrap();
        let e = format!("{:#}", Scenario::load(&p, &[]).unwrap_err());
        assert!(e.contains("scenario.json") && e.contains("object"), "{e}");
    }
}
