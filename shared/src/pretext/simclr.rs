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

/// Rows of `z` `(M, E)` divided by their L2 norm (floored at 1e-12).
pub fn l2_normalize(z: &Tensor) -> Result<Tensor> {
    let norm = z.sqr()?.sum_keepdim(1)?.sqrt()?.maximum(1e-12)?;
    Ok(z.broadcast_div(&norm)?)
}

/// The NT-Xent logits and targets of SimCLR's eq. (1) for views `z1`, `z2` `(N, E)` (row `k`
/// of both is image `k`), temperature `tau`.
///
/// With `z = [z1; z2]` `(2N, E)` and `sim(u, v) = uᵀv / (‖u‖‖v‖)`, row `i` of the logits
/// `(2N, 2N)` is `sim(z_i, z_k) / τ` for `k ≠ i` and `−10⁹` on the diagonal (so the softmax
/// runs over the `2N − 1` other samples); the target of anchor `i` is its positive, `i + N`
/// for `i < N` and `i − N` otherwise (`(2N)` `u32`). Errors on mismatched shapes or `τ ≤ 0`.
pub fn nt_xent_logits(z1: &Tensor, z2: &Tensor, tau: f64) -> Result<(Tensor, Tensor)> {
    let (n, e) = z1.dims2()?;
    if z2.dims2()? != (n, e) {
        bail!(
            "NT-Xent views have different shapes: {:?} and {:?}",
            z1.dims(),
            z2.dims()
        );
    }
    if tau.is_nan() || tau <= 0.0 {
        bail!("NT-Xent temperature must be positive, got {tau}");
    }
    let z = l2_normalize(&Tensor::cat(&[z1, z2], 0)?)?;
    let sim = z.matmul(&z.t()?)?.affine(1.0 / tau, 0.0)?;
    let eye = Tensor::eye(2 * n, sim.dtype(), sim.device())?.affine(1e9, 0.0)?;
    let logits = (sim - eye)?;
    let targets: Vec<u32> = (0..2 * n)
        .map(|i| {
            if i < n {
                (i + n) as u32
            } else {
                (i - n) as u32
            }
        })
        .collect();
    let targets = Tensor::from_vec(targets, 2 * n, z1.device())?;
    Ok((logits, targets))
}

/// SimCLR's NT-Xent loss (Chen et al. 2020, eq. (1)), averaged over all `2N` anchors:
///
/// `L = 1/(2N) Σ_i −log( exp(sim(z_i, z_j(i))/τ) / Σ_{k≠i} exp(sim(z_i, z_k)/τ) )`
///
/// over `z = [z1; z2]`, `j(i)` the other view of the same image (see [`nt_xent_logits`]).
/// `z1`, `z2`: `(N, E)` views of the same `N` images in the same order; returns a 0-d
/// differentiable tensor (nats). Swapping `z1` and `z2` gives the same loss.
pub fn nt_xent(z1: &Tensor, z2: &Tensor, tau: f64) -> Result<Tensor> {
    let (logits, targets) = nt_xent_logits(z1, z2, tau)?;
    Ok(candle_nn::loss::cross_entropy(&logits, &targets)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;
    use rand::SeedableRng;

    fn t(v: &[f32], n: usize, e: usize) -> Tensor {
        Tensor::from_vec(v.to_vec(), (n, e), &Device::Cpu).unwrap()
    }

    /// Eq. (1) in plain f64 loops.
    fn reference(z1: &[f64], z2: &[f64], n: usize, e: usize, tau: f64) -> f64 {
        let z: Vec<Vec<f64>> = z1
            .chunks(e)
            .chain(z2.chunks(e))
            .map(|r| {
                let norm = r.iter().map(|v| v * v).sum::<f64>().sqrt();
                r.iter().map(|v| v / norm).collect()
            })
            .collect();
        let sim = |a: usize, b: usize| -> f64 {
            z[a].iter().zip(&z[b]).map(|(x, y)| x * y).sum::<f64>() / tau
        };
        let mut total = 0.0;
        for i in 0..2 * n {
            let j = if i < n { i + n } else { i - n };
            let denom: f64 = (0..2 * n)
                .filter(|&k| k != i)
                .map(|k| sim(i, k).exp())
                .sum();
            total += -(sim(i, j).exp() / denom).ln();
        }
        total / (2 * n) as f64
    }

    fn scalar(x: &Tensor) -> f64 {
        x.to_scalar::<f32>().unwrap() as f64
    }

    #[test]
    fn nt_xent_hand_computed_two_pairs() {
        // z1 = [e1, e2], z2 = [2·e1, 3·e2]: after normalisation every anchor has similarity 1
        // with its positive and 0 with the two others, so with τ = 0.5 each of the 4 terms is
        // −log(e² / (e² + e⁰ + e⁰)) = log(1 + 2e⁻²) = 0.2395448…
        let z1 = t(&[1.0, 0.0, 0.0, 1.0], 2, 2);
        let z2 = t(&[2.0, 0.0, 0.0, 3.0], 2, 2);
        let want = (1.0 + 2.0 * (-2.0f64).exp()).ln();
        assert!((want - 0.2395448).abs() < 1e-6);
        let got = scalar(&nt_xent(&z1, &z2, 0.5).unwrap());
        assert!((got - want).abs() < 1e-5, "{got} vs {want}");

        // a generic pair, against the f64 loops
        let a = [0.3, -1.2, 0.7, 0.5, 0.9, -0.4];
        let b = [1.1, 0.2, -0.3, -0.6, 0.8, 0.25];
        let want = reference(&a, &b, 2, 3, 0.2);
        let (af, bf): (Vec<f32>, Vec<f32>) = (
            a.iter().map(|&v| v as f32).collect(),
            b.iter().map(|&v| v as f32).collect(),
        );
        let got = scalar(&nt_xent(&t(&af, 2, 3), &t(&bf, 2, 3), 0.2).unwrap());
        assert!((got - want).abs() < 1e-5, "{got} vs {want}");
    }

    #[test]
    fn nt_xent_is_symmetric_and_has_finite_gradients() {
        let mut rng = StdRng::seed_from_u64(5);
        let v: Vec<f32> = (0..5 * 8).map(|_| rng.random_range(-1.0..1.0)).collect();
        let w: Vec<f32> = (0..5 * 8).map(|_| rng.random_range(-1.0..1.0)).collect();
        let (z1, z2) = (t(&v, 5, 8), t(&w, 5, 8));
        let l12 = scalar(&nt_xent(&z1, &z2, 0.5).unwrap());
        let l21 = scalar(&nt_xent(&z2, &z1, 0.5).unwrap());
        assert!((l12 - l21).abs() < 1e-6, "{l12} vs {l21}");
        let vd: Vec<f64> = v.iter().map(|&x| x as f64).collect();
        let wd: Vec<f64> = w.iter().map(|&x| x as f64).collect();
        assert!((l12 - reference(&vd, &wd, 5, 8, 0.5)).abs() < 1e-5);

        let var = Var::from_tensor(&z1).unwrap();
        let loss = nt_xent(var.as_tensor(), &z2, 0.5).unwrap();
        let g = loss
            .backward()
            .unwrap()
            .get(var.as_tensor())
            .unwrap()
            .clone();
        let g: Vec<f32> = g.flatten_all().unwrap().to_vec1().unwrap();
        assert!(g.iter().all(|x| x.is_finite()) && g.iter().any(|&x| x != 0.0));
        // identical views: the positive is the most similar sample and the loss is lower
        let same = scalar(&nt_xent(&z1, &z1, 0.5).unwrap());
        assert!(same < l12);
        assert!(nt_xent(&z1, &t(&v[..8], 1, 8), 0.5).is_err());
    }

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
        use crate::scenario::Scenario;
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
