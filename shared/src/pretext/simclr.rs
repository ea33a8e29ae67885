//! SimCLR (Chen, Kornblith, Norouzi & Hinton, "A Simple Framework for Contrastive Learning of
//! Visual Representations", ICML 2020): two random augmentations of every image are pulled
//! together and pushed away from the other `2(N−1)` views of the batch by the NT-Xent loss on
//! a projection MLP's output.
//!
//! Views: random resized crop (scale `crop_scale`, ratio `crop_ratio`, resized back to the
//! image size), horizontal flip, colour jitter of strength `s` with probability 0.8 and
//! grayscale with probability 0.2 (the paper's CIFAR-10 recipe, appendix B.9, without blur;
//! the default temperature and crop scale are tuned for short federated budgets, see
//! [`SimclrConfig::temperature`]).
//! The projection head `g` (`head.fc1` `D → hidden_dim`, ReLU, `head.fc2`
//! `hidden_dim → out_dim`) is a pretext head: it stays on the client and is discarded after
//! training (the probe reads the pre-logits `h`, as in the paper), unless `pretext.share_heads`.

use anyhow::{bail, Result};
use candle_core::{Device, Tensor};
use candle_nn::{Linear, Module, VarBuilder};
use rand::rngs::StdRng;
use rand::Rng;

use super::losses::nt_xent_logits;
use super::{classification_step, PreparedBatch, PretextKind, PretextTask, StepOutput};
use crate::augment::{validate_ranges, Pipeline};
use crate::data::{hwc_u8_to_tensor, ImageDataset};
use crate::model::Backbone;

/// `[pretext.simclr]`: views, projection head and loss of SimCLR.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SimclrConfig {
    /// NT-Xent temperature τ (default 0.1). The paper's best for CIFAR-10 is 0.5 (appendix
    /// B.9, batch ≥ 256, hundreds of epochs); under `scenarios/compare-pretexts.toml` (batch
    /// 32, two rounds of one local epoch) the linear probe reached 39.0 % at τ = 0.5 (crop
    /// scale 0.08), 39.6 % at 0.2 and 40.2 % at 0.1 (crop scale 0.2), against 38.5 % for the
    /// random-init backbone.
    pub temperature: f64,
    /// Width of the projection MLP's hidden layer (default 512).
    pub hidden_dim: usize,
    /// Output width of the projection MLP, the space of the loss (default 128, as the paper).
    pub out_dim: usize,
    /// Area fraction range `[lo, hi]` of the random resized crop (default `[0.2, 1.0]`, the
    /// usual CIFAR choice; torchvision's and the paper's ImageNet value is `[0.08, 1.0]`).
    pub crop_scale: [f64; 2],
    /// Aspect-ratio range `[lo, hi]` (width / height) of the crop (default `[0.75, 1.3333]`).
    pub crop_ratio: [f64; 2],
    /// Random horizontal flip with probability ½ (default `true`).
    pub flip: bool,
    /// Colour-jitter strength `s` of `get_color_distortion(s)` (default 0.5, the paper's
    /// CIFAR-10 value); 0 disables the jitter.
    pub jitter_strength: f64,
    /// Probability the colour jitter is applied (default 0.8).
    pub jitter_prob: f64,
    /// Probability a view is converted to grey (default 0.2).
    pub grayscale_prob: f64,
}

impl Default for SimclrConfig {
    fn default() -> Self {
        Self {
            temperature: 0.1,
            hidden_dim: 512,
            out_dim: 128,
            crop_scale: [0.2, 1.0],
            crop_ratio: [0.75, 4.0 / 3.0],
            flip: true,
            jitter_strength: 0.5,
            jitter_prob: 0.8,
            grayscale_prob: 0.2,
        }
    }
}

impl SimclrConfig {
    /// Checks every parameter; the message names the `pretext.simclr.*` key.
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature > 0.0 && self.temperature.is_finite()) {
            bail!(
                "pretext.simclr.temperature must be positive, got {}",
                self.temperature
            );
        }
        if self.hidden_dim == 0 || self.out_dim == 0 {
            bail!("pretext.simclr.hidden_dim and pretext.simclr.out_dim must be positive");
        }
        validate_ranges(
            "pretext.simclr",
            (self.crop_scale[0], self.crop_scale[1]),
            (self.crop_ratio[0], self.crop_ratio[1]),
            self.jitter_strength,
            &[
                ("jitter_prob", self.jitter_prob),
                ("grayscale_prob", self.grayscale_prob),
            ],
        )
    }

    /// The augmentation pipeline of one view.
    pub fn pipeline(&self) -> Pipeline {
        Pipeline {
            crop_scale: (self.crop_scale[0], self.crop_scale[1]),
            crop_ratio: (self.crop_ratio[0], self.crop_ratio[1]),
            flip: self.flip,
            max_rotation_degrees: 0.0,
            jitter_strength: self.jitter_strength as f32,
            jitter_prob: self.jitter_prob,
            grayscale_prob: self.grayscale_prob,
        }
    }
}

/// SimCLR with its projection MLP (`head.fc1.{weight,bias}` `(hidden, D)`, `head.fc2.*`
/// `(out, hidden)`).
pub struct SimclrTask {
    cfg: SimclrConfig,
    fc1: Linear,
    fc2: Linear,
}

impl SimclrTask {
    /// Creates the projection head under `vb` for `feature_dim`-wide pre-logits. Errors on an
    /// invalid config.
    pub fn new(cfg: &SimclrConfig, feature_dim: usize, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        Ok(Self {
            cfg: cfg.clone(),
            fc1: candle_nn::linear(feature_dim, cfg.hidden_dim, vb.pp("fc1"))?,
            fc2: candle_nn::linear(cfg.hidden_dim, cfg.out_dim, vb.pp("fc2"))?,
        })
    }

    /// Projections `z = g(h)` `(B, out_dim)` of normalised images `x` `(B, 3, H, W)`.
    pub fn project(&self, backbone: &Backbone, x: &Tensor, train: bool) -> Result<Tensor> {
        let h = backbone.forward_t(x, train)?.pre_logits;
        Ok(self.fc2.forward(&self.fc1.forward(&h)?.relu()?)?)
    }
}

impl PretextTask for SimclrTask {
    fn kind(&self) -> PretextKind {
        PretextKind::Simclr
    }

    /// NT-Xent over the [`simclr_batch`] of `idx`; `count` = `2N` anchors, `correct` = anchors
    /// whose most similar other view is their positive.
    fn prepare(
        &self,
        shard: &ImageDataset,
        idx: &[usize],
        rng: &mut StdRng,
        device: &Device,
    ) -> Result<PreparedBatch> {
        let x = simclr_batch(shard, idx, &self.cfg.pipeline(), rng, device)?;
        Ok(PreparedBatch::new(x))
    }

    fn step(&self, backbone: &Backbone, batch: PreparedBatch) -> Result<StepOutput> {
        let x: Tensor = batch.take(self.kind())?;
        let n = x.dim(0)? / 2;
        let z = self.project(backbone, &x, true)?;
        let (logits, targets) = nt_xent_logits(
            &z.narrow(0, 0, n)?,
            &z.narrow(0, n, n)?,
            self.cfg.temperature,
        )?;
        // NT-Xent is a cross-entropy over the 2N anchors with the positive as the class
        classification_step(&logits, &targets)
    }
}

/// Builds the two views of images `idx` of `ds`: `(2N, C, H, W)` `f32` normalised with the
/// dataset's mean/std, rows `0..N` the first views and rows `N..2N` the second views, in the
/// order of `idx`. For each image in order, view 1 then view 2 are drawn from `rng` by
/// [`Pipeline::apply`]. Errors on an index out of range.
pub fn simclr_batch(
    ds: &ImageDataset,
    idx: &[usize],
    pipe: &Pipeline,
    rng: &mut impl Rng,
    device: &Device,
) -> Result<Tensor> {
    let (h, w, c) = (ds.height, ds.width, ds.channels);
    let size = h * w * c;
    let n = idx.len();
    let mut bytes = vec![0u8; 2 * n * size];
    for (k, &i) in idx.iter().enumerate() {
        let img = ds.try_image(i)?;
        for v in 0..2 {
            let view = pipe.apply(img, h, w, c, rng);
            let row = v * n + k;
            bytes[row * size..(row + 1) * size].copy_from_slice(&view);
        }
    }
    hwc_u8_to_tensor(&bytes, 2 * n, h, w, c, ds.mean, ds.std, device)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn batch_layout_task_and_config() {
        let ds = crate::data::synthetic::generate(6, 2);
        let dev = Device::Cpu;
        let cfg = SimclrConfig::default();
        let mut rng = StdRng::seed_from_u64(1);
        let x = simclr_batch(&ds, &[4, 1, 2], &cfg.pipeline(), &mut rng, &dev).unwrap();
        assert_eq!(x.dims(), &[6, 3, 32, 32]);
        let mut rng = StdRng::seed_from_u64(1);
        let y = simclr_batch(&ds, &[4, 1, 2], &cfg.pipeline(), &mut rng, &dev).unwrap();
        let d = (x - y).unwrap().abs().unwrap().max_all().unwrap();
        assert_eq!(d.to_scalar::<f32>().unwrap(), 0.0);
        assert!(simclr_batch(&ds, &[6], &cfg.pipeline(), &mut rng, &dev).is_err());

        let bad = SimclrConfig {
            temperature: 0.0,
            ..SimclrConfig::default()
        };
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("pretext.simclr.temperature"));
        let bad = SimclrConfig {
            crop_scale: [0.5, 0.2],
            ..SimclrConfig::default()
        };
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("pretext.simclr.crop_scale"));
    }

    #[test]
    fn scenario_table_parses_and_is_checked() {
        use crate::config::Scenario;
        let text = "[pretext]\ntask = \"simclr\"\n[pretext.simclr]\ntemperature = 0.2\n";
        let sc = Scenario::from_toml_str(text, &[]).unwrap();
        assert_eq!(sc.pretext.task, PretextKind::Simclr);
        assert_eq!(sc.pretext.task.name(), "simclr");
        assert_eq!(sc.pretext.simclr.temperature, 0.2);
        let e = Scenario::from_toml_str(&format!("{text}typo = 1\n"), &[]).unwrap_err();
        assert!(format!("{e:#}").contains("typo"), "{e:#}");
        let e = Scenario::from_toml_str(text, &["pretext.simclr.temperature=-1".to_string()])
            .unwrap_err();
        assert!(
            format!("{e:#}").contains("pretext.simclr.temperature"),
            "{e:#}"
        );
    }
}
