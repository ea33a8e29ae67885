//! Rotation prediction (Gidaris, Singh & Komodakis, "Unsupervised Representation Learning by
//! Predicting Image Rotations", ICLR 2018): the network classifies which of 0°, 90°, 180°,
//! 270° an image was rotated by; the label of a rotation by `k·90°` counter-clockwise is `k`.

use anyhow::{bail, Result};
use candle_core::{Device, Tensor};
use candle_nn::{Linear, Module, VarBuilder};
use rand::rngs::StdRng;
use rand::Rng;

use super::{classification_step, PreparedBatch, PretextKind, PretextTask, StepOutput};
use crate::data::{hwc_u8_to_tensor, ImageDataset};
use crate::image::{hflip, rotate90};
use crate::model::Backbone;

/// `[pretext.rotation]`: how rotation batches are built.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RotationConfig {
    /// `"all_four"` (default): every image at 0/90/180/270° in the same batch (RotNet);
    /// `"random_one"`: one random angle per image.
    pub mode: RotationMode,
    /// Random horizontal flip before rotating (default `true`).
    pub flip: bool,
}

impl Default for RotationConfig {
    fn default() -> Self {
        Self {
            mode: RotationMode::AllFour,
            flip: true,
        }
    }
}

/// Rotation prediction with a linear head `D → 4` on the pre-logits (`head.weight` `(4, D)`,
/// `head.bias` `(4)`), trained with cross-entropy.
pub struct RotationTask {
    cfg: RotationConfig,
    head: Linear,
}

impl RotationTask {
    /// Creates the head under `vb` for `feature_dim`-wide pre-logits.
    pub fn new(cfg: &RotationConfig, feature_dim: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            cfg: cfg.clone(),
            head: candle_nn::linear(feature_dim, 4, vb)?,
        })
    }

    /// Rotation logits `(B, 4)` of normalised images `x` `(B, 3, H, W)`.
    pub fn logits(&self, backbone: &Backbone, x: &Tensor, train: bool) -> Result<Tensor> {
        let f = backbone.forward_t(x, train)?.pre_logits;
        Ok(self.head.forward(&f)?)
    }
}

impl PretextTask for RotationTask {
    fn kind(&self) -> PretextKind {
        PretextKind::Rotation
    }

    /// Cross-entropy over [`rotation_batch`] (`count` = images × rotations).
    fn prepare(
        &self,
        shard: &ImageDataset,
        idx: &[usize],
        rng: &mut StdRng,
        device: &Device,
    ) -> Result<PreparedBatch> {
        let batch = rotation_batch(shard, idx, self.cfg.mode, self.cfg.flip, rng, device)?;
        Ok(PreparedBatch::new(batch))
    }

    fn step(&self, backbone: &Backbone, batch: PreparedBatch) -> Result<StepOutput> {
        let (x, y): (Tensor, Tensor) = batch.take(self.kind())?;
        let logits = self.logits(backbone, &x, true)?;
        classification_step(&logits, &y)
    }
}

/// Which rotations a batch holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RotationMode {
    /// Every image four times (0°, 90°, 180°, 270°): batch `4B` (Gidaris et al.'s default).
    AllFour,
    /// Every image once, by an angle drawn uniformly: batch `B`.
    RandomOne,
}

/// Builds a rotation-prediction batch from images `idx` of `ds`.
///
/// For each image in order: if `flip`, it is mirrored left–right with probability ½ (one
/// `rng.random_bool(0.5)` draw per image, before rotation); then
/// * `AllFour`: rows `4i, 4i+1, 4i+2, 4i+3` are image `i` rotated by 0°, 90°, 180°, 270°
///   CCW, labels `0, 1, 2, 3`;
/// * `RandomOne`: row `i` is image `i` rotated by `k·90°`, `k = rng.random_range(0..4)`
///   (drawn after the flip), label `k`.
///
/// Returns `x`: `(B', C, H, W)` `f32` normalised with the dataset's mean/std, and `y`:
/// `(B')` `u32`, both on `device`. Errors on non-square images or an index out of range.
pub fn rotation_batch(
    ds: &ImageDataset,
    idx: &[usize],
    mode: RotationMode,
    flip: bool,
    rng: &mut impl Rng,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let (h, w, c) = (ds.height, ds.width, ds.channels);
    if h != w {
        bail!("rotation prediction needs square images, got {h}x{w}");
    }
    let per = match mode {
        RotationMode::AllFour => 4,
        RotationMode::RandomOne => 1,
    };
    let mut bytes = Vec::with_capacity(idx.len() * per * h * w * c);
    let mut labels = Vec::with_capacity(idx.len() * per);
    for &i in idx {
        let src = ds.try_image(i)?;
        let flipped;
        let img: &[u8] = if flip && rng.random_bool(0.5) {
            flipped = hflip(src, h, w, c);
            &flipped
        } else {
            src
        };
        match mode {
            RotationMode::AllFour => {
                for k in 0..4u8 {
                    bytes.extend_from_slice(&rotate90(img, h, w, c, k));
                    labels.push(k as u32);
                }
            }
            RotationMode::RandomOne => {
                let k: u8 = rng.random_range(0..4);
                bytes.extend_from_slice(&rotate90(img, h, w, c, k));
                labels.push(k as u32);
            }
        }
    }
    let n = labels.len();
    let x = hwc_u8_to_tensor(&bytes, n, h, w, c, ds.mean, ds.std, device)?;
    let y = Tensor::from_vec(labels, n, device)?;
    Ok((x, y))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn all_four_batch_layout_and_labels() {
        let ds = crate::data::synthetic::generate(4, 1);
        let mut rng = StdRng::seed_from_u64(0);
        let dev = Device::Cpu;
        let (x, y) =
            rotation_batch(&ds, &[2, 0], RotationMode::AllFour, false, &mut rng, &dev).unwrap();
        assert_eq!(x.dims(), &[8, 3, 32, 32]);
        assert_eq!(y.to_vec1::<u32>().unwrap(), vec![0, 1, 2, 3, 0, 1, 2, 3]);
        // row 5 is image 0 rotated by 90°
        let want = hwc_u8_to_tensor(
            &rotate90(ds.image(0), 32, 32, 3, 1),
            1,
            32,
            32,
            3,
            ds.mean,
            ds.std,
            &dev,
        )
        .unwrap();
        let diff = (x.narrow(0, 5, 1).unwrap() - want).unwrap().abs().unwrap();
        assert_eq!(diff.max_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
    }

    #[test]
    fn random_one_batch_is_seeded() {
        let ds = crate::data::synthetic::generate(20, 1);
        let idx: Vec<usize> = (0..20).collect();
        let dev = Device::Cpu;
        let run = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            let (x, y) =
                rotation_batch(&ds, &idx, RotationMode::RandomOne, true, &mut rng, &dev).unwrap();
            assert_eq!(x.dims(), &[20, 3, 32, 32]);
            (
                x.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                y.to_vec1::<u32>().unwrap(),
            )
        };
        let (xa, ya) = run(3);
        assert_eq!((xa.clone(), ya.clone()), run(3));
        assert!(ya.iter().all(|&k| k < 4));
        let mut seen = [false; 4];
        ya.iter().for_each(|&k| seen[k as usize] = true);
        assert!(seen.iter().all(|&s| s), "{ya:?}");
        assert_ne!(xa, run(4).0);
    }
}
