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

/// Rotates one `(H, W, C)` `u8` image by `k·90°` counter-clockwise (`k` taken mod 4).
///
/// The result is `(H, W, C)` for even `k` and `(W, H, C)` for odd `k` (identical shapes for
/// the square images this is meant for). For `k = 1`, `out[i][j] = img[j][W−1−i]`, so the
/// 2×2 pattern `[[1,2],[3,4]]` becomes `[[2,4],[1,3]]`. Panics if `img.len() != h*w*c`.
pub fn rotate_hwc(img: &[u8], h: usize, w: usize, c: usize, k: u8) -> Vec<u8> {
    assert_eq!(img.len(), h * w * c, "image is not {h}x{w}x{c}");
    let k = k % 4;
    if k == 0 {
        return img.to_vec();
    }
    let mut out = vec![0u8; img.len()];
    let (oh, ow) = if k % 2 == 1 { (w, h) } else { (h, w) };
    for i in 0..oh {
        for j in 0..ow {
            let (sy, sx) = match k {
                1 => (j, w - 1 - i),
                2 => (h - 1 - i, w - 1 - j),
                _ => (h - 1 - j, i),
            };
            let s = (sy * w + sx) * c;
            let d = (i * ow + j) * c;
            out[d..d + c].copy_from_slice(&img[s..s + c]);
        }
    }
    out
}

/// Mirrors one `(H, W, C)` image left–right.
pub fn hflip_hwc(img: &[u8], h: usize, w: usize, c: usize) -> Vec<u8> {
    let mut out = vec![0u8; img.len()];
    for y in 0..h {
        for x in 0..w {
            let s = (y * w + x) * c;
            let d = (y * w + (w - 1 - x)) * c;
            out[d..d + c].copy_from_slice(&img[s..s + c]);
        }
    }
    out
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
            flipped = hflip_hwc(src, h, w, c);
            &flipped
        } else {
            src
        };
        match mode {
            RotationMode::AllFour => {
                for k in 0..4u8 {
                    bytes.extend_from_slice(&rotate_hwc(img, h, w, c, k));
                    labels.push(k as u32);
                }
            }
            RotationMode::RandomOne => {
                let k: u8 = rng.random_range(0..4);
                bytes.extend_from_slice(&rotate_hwc(img, h, w, c, k));
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
    fn known_2x2_rotations() {
        let img = [1u8, 2, 3, 4];
        assert_eq!(rotate_hwc(&img, 2, 2, 1, 1), vec![2, 4, 1, 3]);
        assert_eq!(rotate_hwc(&img, 2, 2, 1, 2), vec![4, 3, 2, 1]);
        assert_eq!(rotate_hwc(&img, 2, 2, 1, 3), vec![3, 1, 4, 2]);
        assert_eq!(rotate_hwc(&img, 2, 2, 1, 4), img.to_vec());
        assert_eq!(hflip_hwc(&img, 2, 2, 1), vec![2, 1, 4, 3]);
    }

    #[test]
    fn non_square_and_multichannel() {
        // 2x3 RGB-ish with channel pairs (v, v+100): [[1,2,3],[4,5,6]] CCW -> [[3,6],[2,5],[1,4]]
        let img: Vec<u8> = (1..=6u8).flat_map(|v| [v, v + 100]).collect();
        let r = rotate_hwc(&img, 2, 3, 2, 1);
        let want: Vec<u8> = [3u8, 6, 2, 5, 1, 4]
            .iter()
            .flat_map(|&v| [v, v + 100])
            .collect();
        assert_eq!(r, want);
    }

    #[test]
    fn four_quarter_turns_are_identity() {
        let ds = crate::data::synthetic::generate(3, 0);
        let img = ds.image(1);
        let mut r = img.to_vec();
        for _ in 0..4 {
            r = rotate_hwc(&r, 32, 32, 3, 1);
        }
        assert_eq!(r, img);
        assert_ne!(rotate_hwc(img, 32, 32, 3, 1), img);
        // two single turns equal one half turn
        let twice = rotate_hwc(&rotate_hwc(img, 32, 32, 3, 1), 32, 32, 3, 1);
        assert_eq!(twice, rotate_hwc(img, 32, 32, 3, 2));
    }

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
            &rotate_hwc(ds.image(0), 32, 32, 3, 1),
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
