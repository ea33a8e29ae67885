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

pub mod byol;
pub mod exemplar;
pub mod grid;
pub mod jigsaw;
pub mod losses;
pub mod mae;
pub mod relative_patch;
pub mod rotation;
pub mod simclr;

pub use byol::{ByolConfig, ByolTask, ByolTravel};
pub use exemplar::{ExemplarConfig, ExemplarTask};
pub use jigsaw::{JigsawConfig, JigsawTask, PermutationDraw};
pub use mae::{MaeConfig, MaeTask};
pub use relative_patch::{RelativePatchConfig, RelativePatchTask};
pub use rotation::{rotation_batch, RotationConfig, RotationMode, RotationTask};
pub use simclr::{SimclrConfig, SimclrTask};

use anyhow::Result;
use candle_core::{Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
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
    /// BYOL (Grill et al. 2020): online network predicts an EMA target network's projection.
    Byol,
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
            PretextKind::Byol => "byol",
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
            | PretextKind::Simclr
            | PretextKind::Byol => None,
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
            PretextKind::Byol,
        ]
    }
}

/// The scenario's `[pretext]` section: the task, whether its heads are federated, and one
/// table of parameters per task (only the chosen task's table is used).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PretextConfig {
    /// The task: `"rotation"` (default), `"relative_patch"`, `"jigsaw"`, `"exemplar"`, `"simclr"`
    /// `"mae"` (needs `model.backbone = "vit"`) or `"byol"`.
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
    /// `[pretext.byol]`.
    pub byol: ByolConfig,
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
            byol: ByolConfig::default(),
        }
    }
}

impl PretextConfig {
    /// Checks that the chosen task's layout fits `side × side` images (`vit_patch`: the ViT's
    /// patch size, for MAE's mask). Errors name the `pretext.*` key.
    pub fn check_image_size(&self, side: usize, vit_patch: usize) -> Result<()> {
        match self.task {
            PretextKind::RelativePatch => self.relative_patch.grid().check_fits(
                side,
                side,
                "pretext.relative_patch",
                "patch_size",
            ),
            PretextKind::Jigsaw => {
                self.jigsaw
                    .grid()
                    .check_fits(side, side, "pretext.jigsaw", "tile_size")
            }
            PretextKind::Mae if vit_patch > 0 && side.is_multiple_of(vit_patch) => {
                let l = (side / vit_patch) * (side / vit_patch);
                self.mae.len_keep(l).map(|_| ())
            }
            _ => Ok(()),
        }
    }

    /// The evaluation view `choice` resolves to for this task ([`EvalViewChoice::Auto`]: the
    /// patch grid for relative_patch and jigsaw, the whole image otherwise). Errors when
    /// `patch_grid` is asked for with a task that has no patch grid.
    pub fn eval_view(&self, choice: EvalViewChoice) -> Result<EvalView> {
        let grid = match self.task {
            PretextKind::RelativePatch => Some(EvalView::PatchGrid {
                grid: self.relative_patch.grid(),
                per_patch_norm: false,
                upscale: self.relative_patch.upscale,
            }),
            PretextKind::Jigsaw => Some(EvalView::PatchGrid {
                grid: self.jigsaw.grid(),
                per_patch_norm: self.jigsaw.per_tile_norm,
                upscale: self.jigsaw.upscale,
            }),
            _ => None,
        };
        match (choice, grid) {
            (EvalViewChoice::Whole, _) | (EvalViewChoice::Auto, None) => Ok(EvalView::Whole),
            (_, Some(g)) => Ok(g),
            (EvalViewChoice::PatchGrid, None) => anyhow::bail!(
                "eval.view = \"patch_grid\" needs a patch-based pretext task (relative_patch or jigsaw), not `{}`",
                self.task.name()
            ),
        }
    }

    /// Checks the chosen task's parameters and that it fits `backbone`; the message names the
    /// `pretext.*` key.
    pub fn validate(&self, backbone: BackboneKind) -> Result<()> {
        match self.task {
            PretextKind::Rotation => Ok(()),
            PretextKind::RelativePatch => self.relative_patch.validate(),
            PretextKind::Jigsaw => self.jigsaw.validate(),
            PretextKind::Exemplar => self.exemplar.validate(),
            PretextKind::Simclr => self.simclr.validate(),
            PretextKind::Byol => self.byol.validate(),
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

/// The scenario's `eval.view`: how evaluation applies the backbone to an image.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EvalViewChoice {
    /// `patch_grid` for the patch-based tasks (relative_patch, jigsaw), `whole` otherwise.
    #[default]
    Auto,
    /// The whole image.
    Whole,
    /// The task's 3×3 grid of patches, features averaged over the patches.
    PatchGrid,
}

/// How evaluation applies the backbone to an image ([`view_batch`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum EvalView {
    /// The whole image, as trained by the image-level tasks.
    Whole,
    /// The 9 patches of a 3×3 grid at their nominal (unjittered) positions, prepared as the
    /// task prepares them in training (per-patch standardisation for jigsaw when
    /// `per_tile_norm`, bilinear `upscale`); each image's features are the mean over its 9
    /// patches (Kolesnikov, Zhai & Beyer 2019, §4: patch-based models are evaluated on a 3×3
    /// grid of patches whose representations are averaged).
    PatchGrid {
        /// Patch size, gap and jitter margin of the grid.
        grid: grid::Grid,
        /// Standardise each patch by its own mean and variance (jigsaw's `per_tile_norm`).
        per_patch_norm: bool,
        /// Bilinear upscaling factor of each patch.
        upscale: usize,
    },
}

impl EvalView {
    /// Backbone inputs per image: 1 for the whole image, 9 for the patch grid.
    pub fn inputs_per_image(&self) -> usize {
        match self {
            EvalView::Whole => 1,
            EvalView::PatchGrid { .. } => 9,
        }
    }
}

/// The backbone inputs of images `idx` of `ds` under `view`: `(B·k, C, h, w)` `f32` with
/// `k = view.inputs_per_image()` consecutive rows per image (the patches in raster order of
/// the grid). Whole images are normalised with the dataset's mean and std, as in training.
/// Errors when the grid does not fit the images or an index is out of range.
pub fn view_batch(
    ds: &ImageDataset,
    idx: &[usize],
    view: &EvalView,
    device: &Device,
) -> Result<Tensor> {
    match view {
        EvalView::Whole => Ok(ds.batch_tensor(idx, device)?),
        EvalView::PatchGrid {
            grid,
            per_patch_norm,
            upscale,
        } => {
            let (h, w, c, p) = (ds.height, ds.width, ds.channels, grid.patch);
            grid.check_fits(h, w, "eval.view = \"patch_grid\"", "patch")?;
            let mut bytes = Vec::with_capacity(idx.len() * 9 * p * p * c);
            for &i in idx {
                let img = ds.try_image(i)?;
                for r in 0..3 {
                    for col in 0..3 {
                        let (y, x) = (grid.nominal(h, r), grid.nominal(w, col));
                        grid::crop_hwc(img, w, c, y, x, p, &mut bytes);
                    }
                }
            }
            let n = idx.len() * 9;
            let x = if *per_patch_norm {
                Tensor::from_vec(
                    jigsaw::standardise_tiles(&bytes, n, p, c),
                    (n, c, p, p),
                    device,
                )?
            } else {
                crate::data::hwc_u8_to_tensor(&bytes, n, p, p, c, ds.mean, ds.std, device)?
            };
            grid::upscale(&x, *upscale)
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

/// The [`StepOutput`] of a classification pretext task: the mean cross-entropy of `logits`
/// `(N, K)` against `labels` `(N)` `u32`, how many rows' arg-max equals the label, `count = N`.
pub fn classification_step(logits: &Tensor, labels: &Tensor) -> Result<StepOutput> {
    let loss = candle_nn::loss::cross_entropy(logits, labels)?;
    let correct = logits
        .detach()
        .argmax(candle_core::D::Minus1)?
        .eq(labels)?
        .to_dtype(candle_core::DType::F32)?
        .sum_all()?
        .to_scalar::<f32>()? as usize;
    Ok(StepOutput {
        loss,
        correct: Some(correct),
        count: labels.dim(0)?,
    })
}

/// A batch a task built from its shard ([`PretextTask::prepare`]) for [`PretextTask::step`]:
/// its tensors and labels, whatever the task needs. `Send`, so that the training loop can
/// build the next batch on another thread while the current step runs.
pub struct PreparedBatch(Box<dyn std::any::Any + Send>);

impl PreparedBatch {
    /// Wraps a task's own batch type.
    pub fn new<T: std::any::Any + Send>(batch: T) -> Self {
        Self(Box::new(batch))
    }

    /// The task's own batch type back. Errors when the batch was prepared by another task.
    pub fn take<T: std::any::Any>(self, task: PretextKind) -> Result<T> {
        self.0.downcast::<T>().map(|b| *b).map_err(|_| {
            anyhow::anyhow!(
                "pretext task \"{}\" was given a batch another task prepared",
                task.name()
            )
        })
    }
}

/// A pretext task with its heads.
pub trait PretextTask: Send + Sync {
    /// The task.
    fn kind(&self) -> PretextKind;

    /// Builds the task's batch from images `idx` of `shard`: crops, patches, views, labels
    /// and masks, every random choice drawn from `rng` (the client's seeded stream). Touches
    /// no variable, so it can run ahead on another thread. Errors on an index out of range
    /// or images the task cannot use.
    fn prepare(
        &self,
        shard: &ImageDataset,
        idx: &[usize],
        rng: &mut StdRng,
        device: &Device,
    ) -> Result<PreparedBatch>;

    /// Runs `backbone` (and the task's heads) on a batch from [`PretextTask::prepare`] in
    /// training mode (BatchNorm batch statistics) and returns the loss. Errors on a backbone
    /// the task does not support or a batch another task prepared.
    fn step(&self, backbone: &Backbone, batch: PreparedBatch) -> Result<StepOutput>;

    /// The `head.*` name prefixes that travel with the backbone, when the task decides it
    /// itself (BYOL's `pretext.byol.travel`); `None` (the default): `pretext.share_heads`
    /// decides, all heads or none.
    fn travelling_heads(&self) -> Option<Vec<&'static str>> {
        None
    }

    /// Called once per round after the round's global weights are loaded and before the
    /// first step, with the backbone's and the heads' variables; `first_round`: the client
    /// has no state from an earlier round. The default does nothing (BYOL copies the online
    /// network into its target in the client's first round).
    fn begin_round(
        &self,
        backbone_vars: &VarMap,
        head_vars: &VarMap,
        first_round: bool,
    ) -> Result<()> {
        let _ = (backbone_vars, head_vars, first_round);
        Ok(())
    }

    /// Called after optimiser step `step` (from 1) of the round's `total`. The default does
    /// nothing (BYOL moves its target network towards the online one).
    fn after_step(
        &self,
        backbone_vars: &VarMap,
        head_vars: &VarMap,
        step: usize,
        total: usize,
    ) -> Result<()> {
        let _ = (backbone_vars, head_vars, step, total);
        Ok(())
    }

    /// [`PretextTask::prepare`] then [`PretextTask::step`] on the calling thread.
    fn batch_loss(
        &self,
        backbone: &Backbone,
        shard: &ImageDataset,
        idx: &[usize],
        rng: &mut StdRng,
        device: &Device,
    ) -> Result<StepOutput> {
        let batch = self.prepare(shard, idx, rng, device)?;
        self.step(backbone, batch)
    }
}

/// Creates the task `cfg.task` for `backbone` (built from `model`, which BYOL needs for its
/// target network), its heads' variables created under `vb` (the caller initialises them,
/// e.g. with [`crate::model::seeded_init`]). Errors on invalid parameters.
pub fn build_task(
    cfg: &PretextConfig,
    model: &crate::model::ModelConfig,
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
        PretextKind::Byol => {
            if cfg.share_heads {
                anyhow::bail!(
                    "pretext.share_heads does not apply to pretext.task = \"byol\": say which heads travel with pretext.byol.travel"
                );
            }
            Box::new(ByolTask::new(
                &cfg.byol,
                model,
                backbone.feature_dim(),
                vb.pp("head"),
            )?)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One 32×32 RGB image whose red channel holds the row and green the column (blue 0).
    fn coordinate_image() -> ImageDataset {
        let mut images = Vec::with_capacity(32 * 32 * 3);
        for y in 0..32u8 {
            for x in 0..32u8 {
                images.extend_from_slice(&[y, x, 0]);
            }
        }
        ImageDataset {
            images,
            labels: vec![0],
            height: 32,
            width: 32,
            channels: 3,
            num_classes: 1,
            class_names: vec!["a".into()],
            mean: [0.0; 3],
            std: [1.0 / 255.0; 3],
            domains: Vec::new(),
            domain_names: Vec::new(),
        }
    }

    #[test]
    fn eval_view_resolves_per_task_and_refuses_a_grid_without_patches() {
        let mut p = PretextConfig::default();
        assert_eq!(p.eval_view(EvalViewChoice::Auto).unwrap(), EvalView::Whole);
        let e = p
            .eval_view(EvalViewChoice::PatchGrid)
            .unwrap_err()
            .to_string();
        assert!(e.contains("eval.view") && e.contains("rotation"), "{e}");
        p.task = PretextKind::Jigsaw;
        let EvalView::PatchGrid {
            grid,
            per_patch_norm,
            upscale,
        } = p.eval_view(EvalViewChoice::Auto).unwrap()
        else {
            panic!("jigsaw evaluates on its grid")
        };
        assert_eq!((grid.patch, per_patch_norm, upscale), (8, true, 1));
        assert_eq!(p.eval_view(EvalViewChoice::Whole).unwrap(), EvalView::Whole);
        p.task = PretextKind::RelativePatch;
        assert!(matches!(
            p.eval_view(EvalViewChoice::Auto).unwrap(),
            EvalView::PatchGrid {
                per_patch_norm: false,
                ..
            }
        ));
    }

    #[test]
    fn patch_grid_view_cuts_the_nine_nominal_patches_in_raster_order() {
        let ds = coordinate_image();
        // patch 8, gap 2, jitter 1: footprint 30, nominal corners 2, 12, 22 on both axes
        let view = EvalView::PatchGrid {
            grid: grid::Grid {
                patch: 8,
                gap: 2,
                jitter: 1,
            },
            per_patch_norm: false,
            upscale: 1,
        };
        let x = view_batch(&ds, &[0], &view, &Device::Cpu).unwrap();
        assert_eq!(x.dims(), &[9, 3, 8, 8]);
        // mean 0, std 1/255: the tensor holds the raw byte values
        let flat = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let at = |patch: usize, ch: usize, y: usize, xx: usize| {
            flat[((patch * 3 + ch) * 8 + y) * 8 + xx]
        };
        let corners = [2.0f32, 12.0, 22.0];
        for r in 0..3 {
            for c in 0..3 {
                let k = 3 * r + c;
                assert_eq!(at(k, 0, 0, 0), corners[r], "patch {k} row");
                assert_eq!(at(k, 1, 0, 0), corners[c], "patch {k} column");
                assert_eq!(at(k, 0, 7, 5), corners[r] + 7.0);
                assert_eq!(at(k, 1, 7, 5), corners[c] + 5.0);
            }
        }
        let whole = view_batch(&ds, &[0], &EvalView::Whole, &Device::Cpu).unwrap();
        assert_eq!(whole.dims(), &[1, 3, 32, 32]);
        assert_eq!(EvalView::Whole.inputs_per_image(), 1);
        assert_eq!(view.inputs_per_image(), 9);
    }
}
