//! Exemplar (Dosovitskiy, Springenberg, Riedmiller & Brox, "Discriminative Unsupervised
//! Feature Learning with Convolutional Neural Networks", NIPS 2014) in the triplet form of
//! Kolesnikov, Zhai & Beyer ("Revisiting Self-Supervised Visual Representation Learning",
//! CVPR 2019, §3): every image of a batch is its own class ("exemplar"); `K` heavily
//! augmented views of it (crop and scale, flip, rotation, colour and contrast shifts) must
//! embed closer to each other than to the views of other images, by a triplet loss with
//! semi-hard negative mining (Schroff, Kalenichenko & Philbin, "FaceNet", CVPR 2015).
//!
//! The embedding is a linear head `head` `D → embed_dim` on the pre-logits, L2-normalised
//! per row (Revisiting's network output `embed_dim` wide, there 1000 on ImageNet; their code
//! normalises along the batch axis, which we take to be unintended). The head is discarded
//! after training unless `pretext.share_heads`.

use anyhow::{bail, Result};
use candle_core::{Device, Tensor};
use candle_nn::{Linear, Module, VarBuilder};
use rand::rngs::StdRng;
use rand::Rng;

use super::losses::{l2_normalize, pairwise_sq_dist, semihard_triplet_loss};
use super::{PreparedBatch, PretextKind, PretextTask, StepOutput};
use crate::augment::{validate_ranges, Pipeline};
use crate::data::{hwc_u8_to_tensor, ImageDataset};
use crate::model::Backbone;

/// `[pretext.exemplar]`: views, embedding and triplet loss of Exemplar.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExemplarConfig {
    /// Augmented views `K` per image (default 4; at least 2). A step runs the backbone on
    /// `K × batch_size` images, so 4 matches rotation's per-step cost. Revisiting used 8
    /// (`num_of_inception_patches`): under `scenarios/compare-pretexts.toml` K = 8 reached
    /// 42.1 % linear-probe top-1 in 961 s and K = 4 40.9 % in 407 s (random init 38.5 %).
    pub views: usize,
    /// Width of the embedding head (default 128).
    pub embed_dim: usize,
    /// Triplet margin `α` on squared distances of unit vectors (default 0.5, Revisiting's).
    pub margin: f64,
    /// Area fraction range `[lo, hi]` of the random resized crop (default `[0.2, 1.0]`).
    pub crop_scale: [f64; 2],
    /// Aspect-ratio range `[lo, hi]` (width / height) of the crop (default `[0.75, 1.3333]`).
    pub crop_ratio: [f64; 2],
    /// Random horizontal flip with probability ½ (default `true`).
    pub flip: bool,
    /// Rotation by an angle `~ U(−r, r)` degrees (default 20, Dosovitskiy et al.'s range);
    /// 0 disables it.
    pub max_rotation_degrees: f64,
    /// Colour (brightness, contrast, saturation, hue) jitter strength `s` (default 0.5);
    /// 0 disables it.
    pub jitter_strength: f64,
    /// Probability the colour jitter is applied (default 0.8).
    pub jitter_prob: f64,
    /// Probability a view is converted to grey (default 0.2; Revisiting used 0.66).
    pub grayscale_prob: f64,
}

impl Default for ExemplarConfig {
    fn default() -> Self {
        Self {
            views: 4,
            embed_dim: 128,
            margin: 0.5,
            crop_scale: [0.2, 1.0],
            crop_ratio: [0.75, 4.0 / 3.0],
            flip: true,
            max_rotation_degrees: 20.0,
            jitter_strength: 0.5,
            jitter_prob: 0.8,
            grayscale_prob: 0.2,
        }
    }
}

impl ExemplarConfig {
    /// Checks every parameter; the message names the `pretext.exemplar.*` key.
    pub fn validate(&self) -> Result<()> {
        if self.views < 2 {
            bail!(
                "pretext.exemplar.views must be at least 2, got {}",
                self.views
            );
        }
        if self.embed_dim == 0 {
            bail!("pretext.exemplar.embed_dim must be positive");
        }
        if !(self.margin >= 0.0 && self.margin.is_finite()) {
            bail!(
                "pretext.exemplar.margin must be non-negative, got {}",
                self.margin
            );
        }
        if !(0.0..=180.0).contains(&self.max_rotation_degrees) {
            bail!(
                "pretext.exemplar.max_rotation_degrees must be in [0, 180], got {}",
                self.max_rotation_degrees
            );
        }
        validate_ranges(
            "pretext.exemplar",
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
            max_rotation_degrees: self.max_rotation_degrees,
            jitter_strength: self.jitter_strength as f32,
            jitter_prob: self.jitter_prob,
            grayscale_prob: self.grayscale_prob,
        }
    }
}

/// Exemplar with its embedding head (`head.weight` `(embed_dim, D)`, `head.bias`).
pub struct ExemplarTask {
    cfg: ExemplarConfig,
    head: Linear,
}

impl ExemplarTask {
    /// Creates the head under `vb` for `feature_dim`-wide pre-logits. Errors on an invalid
    /// config.
    pub fn new(cfg: &ExemplarConfig, feature_dim: usize, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        Ok(Self {
            cfg: cfg.clone(),
            head: candle_nn::linear(feature_dim, cfg.embed_dim, vb)?,
        })
    }

    /// Unit-norm embeddings `(B, embed_dim)` of normalised images `x` `(B, 3, H, W)`.
    pub fn embed(&self, backbone: &Backbone, x: &Tensor, train: bool) -> Result<Tensor> {
        let h = backbone.forward_t(x, train)?.pre_logits;
        l2_normalize(&self.head.forward(&h)?)
    }
}

impl PretextTask for ExemplarTask {
    fn kind(&self) -> PretextKind {
        PretextKind::Exemplar
    }

    /// [`semihard_triplet_loss`] over the [`exemplar_batch`] of `idx` with labels = image
    /// position in the batch; `count` = `K·N` views; `correct` = views whose nearest other
    /// view (squared Euclidean distance of the embeddings) is a view of the same image.
    fn prepare(
        &self,
        shard: &ImageDataset,
        idx: &[usize],
        rng: &mut StdRng,
        device: &Device,
    ) -> Result<PreparedBatch> {
        let k = self.cfg.views;
        let batch = exemplar_batch(shard, idx, k, &self.cfg.pipeline(), rng, device)?;
        Ok(PreparedBatch::new(batch))
    }

    fn step(&self, backbone: &Backbone, batch: PreparedBatch) -> Result<StepOutput> {
        let (x, labels): (Tensor, Vec<u32>) = batch.take(self.kind())?;
        let e = self.embed(backbone, &x, true)?;
        let loss = semihard_triplet_loss(&e, &labels, self.cfg.margin)?;
        let d = pairwise_sq_dist(&e.detach())?;
        let n = labels.len();
        let d: Vec<f32> = d.flatten_all()?.to_vec1()?;
        let correct = (0..n)
            .filter(|&a| {
                let nearest = (0..n)
                    .filter(|&j| j != a)
                    .min_by(|&i, &j| d[a * n + i].total_cmp(&d[a * n + j]));
                nearest.is_some_and(|j| labels[j] == labels[a])
            })
            .count();
        Ok(StepOutput {
            loss,
            correct: Some(correct),
            count: n,
        })
    }
}

/// Builds `views` augmented views of each image `idx` of `ds`: `(views·N, C, H, W)` `f32`
/// normalised with the dataset's mean/std, rows `views·k .. views·(k+1)` the views of
/// `idx[k]` (drawn from `rng` in that order by [`Pipeline::apply`]), and the labels
/// `(views·N)`: `k` for every view of `idx[k]`. Errors on an index out of range.
pub fn exemplar_batch(
    ds: &ImageDataset,
    idx: &[usize],
    views: usize,
    pipe: &Pipeline,
    rng: &mut impl Rng,
    device: &Device,
) -> Result<(Tensor, Vec<u32>)> {
    let (h, w, c) = (ds.height, ds.width, ds.channels);
    let mut bytes = Vec::with_capacity(idx.len() * views * h * w * c);
    let mut labels = Vec::with_capacity(idx.len() * views);
    for (k, &i) in idx.iter().enumerate() {
        let img = ds.try_image(i)?;
        for _ in 0..views {
            bytes.extend_from_slice(&pipe.apply(img, h, w, c, rng));
            labels.push(k as u32);
        }
    }
    let n = labels.len();
    let x = hwc_u8_to_tensor(&bytes, n, h, w, c, ds.mean, ds.std, device)?;
    Ok((x, labels))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn batch_layout_and_config() {
        let ds = crate::data::synthetic::generate(5, 2);
        let dev = Device::Cpu;
        let cfg = ExemplarConfig {
            views: 3,
            ..ExemplarConfig::default()
        };
        let run = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            let (x, y) = exemplar_batch(&ds, &[4, 0], 3, &cfg.pipeline(), &mut rng, &dev).unwrap();
            (
                x.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                y,
                x.dims().to_vec(),
            )
        };
        let (xa, ya, dims) = run(1);
        assert_eq!(dims, vec![6, 3, 32, 32]);
        assert_eq!(ya, vec![0, 0, 0, 1, 1, 1]);
        assert_eq!(xa, run(1).0);
        assert_ne!(xa, run(2).0);

        let bad = ExemplarConfig {
            views: 1,
            ..ExemplarConfig::default()
        };
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("pretext.exemplar.views"));
        let bad = ExemplarConfig {
            grayscale_prob: 1.5,
            ..ExemplarConfig::default()
        };
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("pretext.exemplar.grayscale_prob"));
    }

    #[test]
    fn scenario_table_parses_and_is_checked() {
        use crate::config::Scenario;
        let text = "[pretext]\ntask = \"exemplar\"\n[pretext.exemplar]\nviews = 4\n";
        let sc = Scenario::from_toml_str(text, &[]).unwrap();
        assert_eq!(sc.pretext.task, PretextKind::Exemplar);
        assert_eq!(sc.pretext.task.name(), "exemplar");
        assert_eq!(sc.pretext.exemplar.views, 4);
        let e = Scenario::from_toml_str(&format!("{text}typo = 1\n"), &[]).unwrap_err();
        assert!(format!("{e:#}").contains("typo"), "{e:#}");
        let e =
            Scenario::from_toml_str(text, &["pretext.exemplar.views=1".to_string()]).unwrap_err();
        assert!(format!("{e:#}").contains("pretext.exemplar.views"), "{e:#}");
    }
}
