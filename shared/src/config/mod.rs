//! The scenario schema: one TOML file describes one run (data, partition, model, pretext task,
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
//!
//! [`Scenario`] holds one section per file here ([`data`], [`train`], [`federation`] with
//! its [`strategy`], [`eval`], [`simulation`]); the sections of the parts that own their
//! settings live with them: `[partition]` ([`crate::partition::PartitionConfig`]), `[model]`
//! ([`crate::model::ModelConfig`]), `[pretext]` ([`crate::pretext::PretextConfig`]) and
//! `[feature_skew]` ([`crate::feature_skew::FeatureSkewConfig`]).
//! [`load`] reads a file and validates it, [`overrides`] applies `--set`, [`name`] checks the
//! run's name; every pluggable part's `kind = "…"` table is read by [`crate::tagged`].

pub mod client_state;
pub mod compression;
pub mod data;
pub mod eval;
pub mod federation;
pub mod limits;
pub mod load;
pub mod logging;
pub mod name;
pub mod overrides;
pub mod privacy;
pub mod secure_aggregation;
pub mod simulation;
pub mod strategy;
pub mod train;

pub use client_state::{BatchNormPolicy, FedEmaConfig, FedUConfig, LocalUpdateConfig, PlainConfig};
pub use compression::CompressionConfig;
pub use data::DataConfig;
pub use eval::{EvalConfig, Pooling, ProbeKind};
pub use federation::FederationConfig;
pub use logging::LoggingConfig;
pub use name::{check_name, check_site_name, MAX_NAME_CHARS};
pub use privacy::{AdaptiveClipConfig, DpConfig};
pub use secure_aggregation::{MaskGraph, SecureAggregationConfig};
pub use simulation::{AttackConfig, ByzantineConfig, Fault, FaultKind, SimulationConfig};
pub use strategy::{
    AdaptiveConfig, BulyanConfig, FedAdagradConfig, FedAdamConfig, FedAvgConfig, FedAvgMConfig,
    FedProxConfig, FedYogiConfig, KrumConfig, LDawaConfig, MedianConfig, MultiKrumConfig,
    StrategyConfig, TrimmedMeanConfig,
};
pub use train::TrainConfig;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::feature_skew::FeatureSkewConfig;
use crate::model::ModelConfig;
use crate::partition::PartitionConfig;
use crate::pretext::PretextConfig;

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
    /// How the training images are split across clients (a `kind = "…"` table).
    pub partition: PartitionConfig,
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
    /// Optional logs besides `rounds.jsonl` (TensorBoard event files).
    pub logging: LoggingConfig,
    /// Fixed per-client transforms of the clients' training images, on top of any
    /// `[partition]` ([`crate::feature_skew`]); off by default, and then not written.
    #[serde(skip_serializing_if = "FeatureSkewConfig::is_off")]
    pub feature_skew: FeatureSkewConfig,
}

impl Default for Scenario {
    fn default() -> Self {
        Self {
            name: "unnamed".into(),
            seed: 0,
            data: DataConfig::default(),
            partition: PartitionConfig::default(),
            model: ModelConfig::default(),
            pretext: PretextConfig::default(),
            train: TrainConfig::default(),
            federation: FederationConfig::default(),
            eval: EvalConfig::default(),
            simulation: SimulationConfig::default(),
            logging: LoggingConfig::default(),
            feature_skew: FeatureSkewConfig::default(),
        }
    }
}

impl Scenario {
    /// Applies `--data-dir DIR`: the training data's folder (`data.path`) becomes `dir` —
    /// unless the data is generated (`data.dataset = "synthetic"`), which reads no files:
    /// then the scenario stays as it is (so that `scenario.json`, and a sweep's or compare's
    /// test of whether a run is the same, do not change) and `false` is returned for the
    /// caller to say so.
    pub fn set_data_dir(&mut self, dir: &std::path::Path) -> bool {
        if matches!(self.data.dataset, crate::data::DatasetKind::Synthetic) {
            return false;
        }
        self.data.path = Some(dir.to_path_buf());
        true
    }

    /// Checks value ranges and cross-field constraints; the message names the key.
    pub fn validate(&self) -> Result<()> {
        check_name(&self.name)?;
        limits::check_counts(&self.federation)?;
        self.federation.validate()?;
        self.simulation
            .validate(self.federation.clients, self.federation.rounds)?;
        self.simulation
            .check_secure_aggregation(self.federation.secure_aggregation.enabled)?;
        self.model.validate()?;
        self.pretext.validate(self.model.backbone)?;
        self.pretext.eval_view(self.eval.view)?;
        self.data.validate()?;
        self.data
            .check_dataset_keys(self.eval.dataset, &self.partition)?;
        self.check_mixed_eval()?;
        self.train.validate()?;
        self.partition.validate()?;
        self.eval.validate()?;
        self.feature_skew.validate()?;
        self.logging.validate()?;
        // the images' side against the layouts (now rather than in every client's first
        // step), and the model's payload against federation.max_weights_bytes
        limits::check(self)
    }

    /// The probes of a mixed run need one labelled dataset: `eval.dataset` is required with
    /// `data.dataset = "mixed"` (unless `eval.enabled = false`), and is never `"mixed"`.
    fn check_mixed_eval(&self) -> Result<()> {
        use crate::data::DatasetKind::Mixed;
        if self.eval.dataset == Some(Mixed) {
            anyhow::bail!(
                "eval.dataset = \"mixed\": the probes use one labelled dataset (cifar10, cifar100, stl10, folder or synthetic)"
            );
        }
        if self.data.dataset == Mixed && self.eval.enabled && self.eval.dataset.is_none() {
            anyhow::bail!(
                "data.dataset = \"mixed\": its sources have different label spaces, so the probes need one labelled dataset: set eval.dataset (e.g. \"cifar10\"; its folder is eval.path, by default the folder of the first source of that dataset), or eval.enabled = false"
            );
        }
        Ok(())
    }

    /// The learning rate of round `round` (0-based): `train.lr` on `train.schedule` over the
    /// run's `federation.rounds`.
    pub fn round_lr(&self, round: usize) -> f64 {
        crate::optim::lr_at(
            self.train.local.lr,
            &self.train.schedule,
            round,
            self.federation.rounds,
        )
    }
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
        assert_eq!(
            s.partition,
            PartitionConfig::Dirichlet(crate::partition::DirichletConfig {
                alpha: 0.5,
                min_size: None,
                balanced: false
            })
        );
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
