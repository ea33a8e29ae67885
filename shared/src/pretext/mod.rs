//! Self-supervised pretext tasks: each turns a batch of unlabelled images into its own
//! targets and a loss on the backbone's output.
//!
//! A task is chosen by the scenario's `pretext.task` and configured by its own table
//! (`[pretext.rotation]`, …). [`build_task`] creates the task with its heads (prediction or
//! projection heads); the heads' variables live in their own `VarMap`, all named `head.*` so
//! they can never collide with backbone names. Only the backbone travels to the coordinator,
//! unless `pretext.share_heads = true`, in which case the `head.*` variables are federated
//! (aggregated with FedAvg) too. Evaluation always reads the backbone alone, applied to the
//! whole image.

pub mod exemplar;
pub mod grid;
pub mod jigsaw;
pub mod mae;
pub mod relative_patch;
pub mod rotation;
pub mod simclr;

pub use exemplar::{semihard_triplet_loss, ExemplarConfig, ExemplarTask};
pub use jigsaw::{JigsawConfig, JigsawTask};
pub use mae::{MaeConfig, MaeTask};
pub use relative_patch::{RelativePatchConfig, RelativePatchTask};
pub use rotation::{rotate_hwc, rotation_batch, RotationConfig, RotationMode, RotationTask};
pub use simclr::{nt_xent, SimclrConfig, SimclrTask};

use anyhow::Result;
use candle_core::{Device, Tensor};
use candle_nn::VarBuilder;
use rand::rngs::StdRng;

use crate::data::ImageDataset;
use crate::model::{Backbone, BackboneKind};

/// Which pretext task, the scenario's `pretext.task`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PretextKind {
    /// Rotation prediction (Gidaris et al. 2018).
    Rotation,
    /// Relative patch position (Doersch et al. 2015).
    RelativePatch,
    /// Jigsaw puzzles (Noroozi & Favaro 2016).
    Jigsaw,
    /// Exemplar with a semi-hard triplet loss (Dosovitskiy et al. 2014; Kolesnikov et al. 2019).
    Exemplar,
    /// SimCLR contrastive learning with NT-Xent (Chen et al. 2020).
    Simclr,
    /// Masked autoencoders (He et al. 2022); needs the ViT backbone.
    Mae,
}

impl PretextKind {
    /// The name used in scenario files and `summary.json`.
    pub fn name(self) -> &'static str {
        match self {
            PretextKind::Rotation => "rotation",
            PretextKind::RelativePatch => "relative_patch",
            PretextKind::Jigsaw => "jigsaw",
            PretextKind::Exemplar => "exemplar",
            PretextKind::Simclr => "simclr",
            PretextKind::Mae => "mae",
        }
    }

    /// The backbone family the task needs, if it cannot run on every backbone (masked image
    /// modelling needs a ViT's tokens). `compare-pretexts` switches to it.
    pub fn required_backbone(self) -> Option<BackboneKind> {
        match self {
            PretextKind::Rotation
            | PretextKind::RelativePatch
            | PretextKind::Jigsaw
            | PretextKind::Exemplar
            | PretextKind::Simclr => None,
            PretextKind::Mae => Some(BackboneKind::Vit),
        }
    }

    /// The task named `name` (as in scenario files). Errors list the known names.
    pub fn from_name(name: &str) -> Result<Self> {
        Self::all()
            .iter()
            .copied()
            .find(|k| k.name() == name)
            .ok_or_else(|| {
                let known: Vec<&str> = Self::all().iter().map(|k| k.name()).collect();
                anyhow::anyhow!(
                    "unknown pretext task `{name}` (known: {})",
                    known.join(", ")
                )
            })
    }

    /// Every task, in the order reports list them.
    pub fn all() -> &'static [PretextKind] {
        &[
            PretextKind::Rotation,
            PretextKind::RelativePatch,
            PretextKind::Jigsaw,
            PretextKind::Exemplar,
            PretextKind::Simclr,
            PretextKind::Mae,
        ]
    }
}

/// The scenario's `[pretext]` section: the task, whether its heads are federated, and one
/// table of parameters per task (only the chosen task's table is used).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PretextConfig {
    /// The task: `"rotation"` (default), `"relative_patch"`, `"jigsaw"`, `"exemplar"`, `"simclr"`
    /// or `"mae"` (needs `model.backbone = "vit"`).
    pub task: PretextKind,
    /// Also federate the task's heads (`head.*` variables): clients send them with the
    /// backbone and the coordinator aggregates them. Default `false`: heads stay local.
    pub share_heads: bool,
    /// `[pretext.rotation]`.
    pub rotation: RotationConfig,
    /// `[pretext.relative_patch]`.
    pub relative_patch: RelativePatchConfig,
    /// `[pretext.jigsaw]`.
    pub jigsaw: JigsawConfig,
    /// `[pretext.exemplar]`.
    pub exemplar: ExemplarConfig,
    /// `[pretext.simclr]`.
    pub simclr: SimclrConfig,
    /// `[pretext.mae]`.
    pub mae: MaeConfig,
}

impl Default for PretextConfig {
    fn default() -> Self {
        Self {
            task: PretextKind::Rotation,
            share_heads: false,
            rotation: RotationConfig::default(),
            relative_patch: RelativePatchConfig::default(),
            jigsaw: JigsawConfig::default(),
            exemplar: ExemplarConfig::default(),
            simclr: SimclrConfig::default(),
            mae: MaeConfig::default(),
        }
    }
}

impl PretextConfig {
    /// Checks the chosen task's parameters and that it fits `backbone`; the message names the
    /// `pretext.*` key.
    pub fn validate(&self, backbone: BackboneKind) -> Result<()> {
        match self.task {
            PretextKind::Rotation => Ok(()),
            PretextKind::RelativePatch => self.relative_patch.validate(),
            PretextKind::Jigsaw => self.jigsaw.validate(),
            PretextKind::Exemplar => self.exemplar.validate(),
            PretextKind::Simclr => self.simclr.validate(),
            PretextKind::Mae => {
                if backbone != BackboneKind::Vit {
                    anyhow::bail!(
                        "pretext.task = \"mae\" needs model.backbone = \"vit\", got \"{}\"",
                        backbone.name()
                    );
                }
                self.mae.validate()
            }
        }
    }
}

/// What one batch of a pretext task gives the training loop.
pub struct StepOutput {
    /// The scalar loss to minimise (a 0-d tensor).
    pub loss: Tensor,
    /// How many of `count` predictions were right, for tasks that classify; `None` for
    /// tasks without a notion of accuracy (reconstruction).
    pub correct: Option<usize>,
    /// How many samples (predictions, pairs, patches…) the loss averages over; the training
    /// loop weights the batch loss by it.
    pub count: usize,
}

/// A pretext task with its heads.
pub trait PretextTask: Send + Sync {
    /// The task.
    fn kind(&self) -> PretextKind;

    /// Builds the task's batch from images `idx` of `shard` (augmentations drawn from `rng`,
    /// the client's seeded stream), runs `backbone` on it in training mode (BatchNorm batch
    /// statistics) and returns the loss. Errors on an index out of range, images the task
    /// cannot use, or a backbone the task does not support.
    fn batch_loss(
        &self,
        backbone: &Backbone,
        shard: &ImageDataset,
        idx: &[usize],
        rng: &mut StdRng,
        device: &Device,
    ) -> Result<StepOutput>;
}

/// Creates the task `cfg.task` for a backbone with `feature_dim`-wide pre-logits, its heads'
/// variables created under `vb` (the caller initialises them, e.g. with
/// [`crate::model::seeded_init`]). Errors on invalid parameters.
pub fn build_task(
    cfg: &PretextConfig,
    backbone: &Backbone,
    vb: VarBuilder,
) -> Result<Box<dyn PretextTask>> {
    cfg.validate(backbone.kind())?;
    Ok(match cfg.task {
        PretextKind::Rotation => Box::new(RotationTask::new(
            &cfg.rotation,
            backbone.feature_dim(),
            vb.pp("head"),
        )?),
        PretextKind::Exemplar => Box::new(ExemplarTask::new(
            &cfg.exemplar,
            backbone.feature_dim(),
            vb.pp("head"),
        )?),
        PretextKind::Simclr => Box::new(SimclrTask::new(
            &cfg.simclr,
            backbone.feature_dim(),
            vb.pp("head"),
        )?),
        PretextKind::RelativePatch => Box::new(RelativePatchTask::new(
            &cfg.relative_patch,
            backbone.feature_dim(),
            vb.pp("head"),
        )?),
        PretextKind::Jigsaw => Box::new(JigsawTask::new(
            &cfg.jigsaw,
            backbone.feature_dim(),
            vb.pp("head"),
        )?),
        PretextKind::Mae => match backbone {
            Backbone::Vit(vit) => Box::new(MaeTask::new(&cfg.mae, vit, vb.pp("head"))?),
            _ => anyhow::bail!("pretext.task = \"mae\" needs model.backbone = \"vit\""),
        },
    })
}
