//! The MLP probe of Revisiting (Kolesnikov, Zhai & Beyer 2019, "MLP" rows): one hidden
//! ReLU layer with dropout on the same standardised features as the linear probe, trained
//! with candle's autograd.

use anyhow::{ensure, Result};
use candle_core::{backprop::GradStore, DType, Device, Tensor, Var};
use rand::{rngs::StdRng, seq::SliceRandom, Rng, SeedableRng};
use rand_distr::{Distribution, StandardNormal};

use crate::eval::features::HostFeatures;
use crate::eval::probe::linear::{standardise, MOMENTUM};
use crate::eval::probe::scoring::{check_labels, top_k_accuracy, ProbeResult};

/// Hyper-parameters of [`mlp_probe`].
#[derive(Clone, Debug, PartialEq)]
pub struct MlpConfig {
    /// Hidden units (Revisiting: 1000).
    pub hidden: usize,
    /// Dropout probability on the hidden layer during training.
    pub dropout: f64,
    /// Passes over the training features.
    pub epochs: usize,
    /// Minibatch size.
    pub batch_size: usize,
    /// Peak learning rate of the cosine schedule.
    pub lr: f64,
    /// L2 penalty `weight_decay / 2 · (‖W₁‖² + ‖W₂‖²)` (not on biases).
    pub weight_decay: f64,
    /// Seeds the initialisation, the shuffle and the dropout masks.
    pub seed: u64,
}

impl Default for MlpConfig {
    fn default() -> Self {
        Self {
            hidden: 1000,
            dropout: 0.5,
            epochs: 30,
            batch_size: 256,
            lr: 0.05,
            weight_decay: 5e-4,
            seed: 0,
        }
    }
}

/// MLP probe (Kolesnikov et al. 2019, "MLP" rows): standardised features (as the linear
/// probe) → `Linear(D, H)` → ReLU → dropout → `Linear(H, K)`, softmax cross-entropy, trained
/// by minibatch SGD with momentum 0.9 and a cosine schedule. `W₁ (D, H)` is He-normal,
/// `W₂ (H, K)` is `U(±1/√H)`, biases start at zero, all drawn from `cfg.seed` (as the shuffle
/// and the dropout masks; candle's RNG is not used). Scored by top-1 / top-5 on `test`.
///
/// Errors on mismatched shapes, an empty set or a meaningless configuration.
pub fn mlp_probe(
    train: &HostFeatures,
    train_y: &[u32],
    test: &HostFeatures,
    test_y: &[u32],
    num_classes: usize,
    cfg: &MlpConfig,
) -> Result<ProbeResult> {
    ensure!(
        cfg.hidden > 0 && cfg.epochs > 0 && cfg.batch_size > 0,
        "mlp probe: hidden, epochs and batch_size must be at least 1"
    );
    ensure!(
        (0.0..1.0).contains(&cfg.dropout),
        "mlp probe: dropout must be in [0, 1)"
    );
    ensure!(
        train.dim == test.dim && train.rows == train_y.len() && test.rows == test_y.len(),
        "mlp probe: shapes do not match"
    );
    ensure!(train.rows > 0 && test.rows > 0, "mlp probe: empty set");
    check_labels(train_y, num_classes, "train_y")?;
    check_labels(test_y, num_classes, "test_y")?;
    let (d, k) = (train.dim, num_classes);
    let (mut xtr, mut xte) = (train.data.clone(), test.data.clone());
    standardise(&mut xtr, &mut xte, d);
    // one stream, in this order: initialisation, then per epoch the shuffle and the masks
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let mlp = Mlp::init(d, cfg.hidden, k, &mut rng)?;
    mlp.train(&xtr, train_y, cfg, &mut rng)?;
    let logits = mlp.logits(&xte)?;
    Ok(ProbeResult {
        top1: top_k_accuracy(&logits, k, test_y, 1)?,
        top5: top_k_accuracy(&logits, k, test_y, 5)?,
        train_labels: train.rows,
        test_images: test.rows,
        weight_decay: cfg.weight_decay,
        val_top1: vec![],
    })
}

/// The probe's parameters: `W₁ (D, H)`, `b₁ (H)`, `W₂ (H, K)`, `b₂ (K)`.
struct Mlp {
    d: usize,
    h: usize,
    w1: Var,
    b1: Var,
    w2: Var,
    b2: Var,
}

impl Mlp {
    /// He-normal `W₁`, `U(±1/√H)` `W₂` (drawn from `rng` in that order), zero biases.
    fn init(d: usize, h: usize, k: usize, rng: &mut StdRng) -> Result<Self> {
        let dev = Device::Cpu;
        let std1 = (2.0 / d as f64).sqrt();
        let w1: Vec<f32> = (0..d * h)
            .map(|_| {
                let z: f64 = StandardNormal.sample(&mut *rng);
                (z * std1) as f32
            })
            .collect();
        let bound = 1.0 / (h as f64).sqrt();
        let w2: Vec<f32> = (0..h * k)
            .map(|_| rng.random_range(-bound..bound) as f32)
            .collect();
        Ok(Self {
            d,
            h,
            w1: Var::from_tensor(&Tensor::from_vec(w1, (d, h), &dev)?)?,
            b1: Var::from_tensor(&Tensor::zeros(h, DType::F32, &dev)?)?,
            w2: Var::from_tensor(&Tensor::from_vec(w2, (h, k), &dev)?)?,
            b2: Var::from_tensor(&Tensor::zeros(k, DType::F32, &dev)?)?,
        })
    }

    /// The parameters, each with whether weight decay applies to it (weights, not biases).
    fn params(&self) -> [(&Var, bool); 4] {
        [
            (&self.w1, true),
            (&self.b1, false),
            (&self.w2, true),
            (&self.b2, false),
        ]
    }

    /// Logits `(B, K)` of `x (B, D)`; `mask (B, H)` (scaled dropout) multiplies the hidden
    /// layer during training.
    fn forward(&self, x: &Tensor, mask: Option<&Tensor>) -> candle_core::Result<Tensor> {
        let hid = x
            .matmul(self.w1.as_tensor())?
            .broadcast_add(self.b1.as_tensor())?
            .relu()?;
        let hid = match mask {
            Some(m) => (hid * m)?,
            None => hid,
        };
        hid.matmul(self.w2.as_tensor())?
            .broadcast_add(self.b2.as_tensor())
    }

    /// Minibatch SGD with momentum on the row-major standardised features `x (N, D)`, a
    /// cosine schedule peaking at `cfg.lr`; the shuffle and the dropout masks come from `rng`.
    fn train(&self, x: &[f32], y: &[u32], cfg: &MlpConfig, rng: &mut StdRng) -> Result<()> {
        let (dev, d, n) = (Device::Cpu, self.d, y.len());
        let mut vel: Vec<Tensor> = self
            .params()
            .iter()
            .map(|(v, _)| v.as_tensor().zeros_like())
            .collect::<candle_core::Result<_>>()?;
        let batch = cfg.batch_size.min(n);
        let total_steps = (cfg.epochs * n.div_ceil(batch)) as f64;
        let mut order: Vec<usize> = (0..n).collect();
        let mut step = 0usize;
        for _ in 0..cfg.epochs {
            order.shuffle(&mut *rng);
            for idx in order.chunks(batch) {
                let b = idx.len();
                let mut xb = Vec::with_capacity(b * d);
                for &i in idx {
                    xb.extend_from_slice(&x[i * d..(i + 1) * d]);
                }
                let yb: Vec<u32> = idx.iter().map(|&i| y[i]).collect();
                let xb = Tensor::from_vec(xb, (b, d), &dev)?;
                let yb = Tensor::from_vec(yb, b, &dev)?;
                let mask = if cfg.dropout > 0.0 {
                    Some(self.dropout_mask(b, 1.0 - cfg.dropout, rng)?)
                } else {
                    None
                };
                let logits = self.forward(&xb, mask.as_ref())?;
                let loss = candle_nn::loss::cross_entropy(&logits, &yb)?;
                let grads: GradStore = loss.backward()?;
                let lr =
                    cfg.lr * 0.5 * (1.0 + (std::f64::consts::PI * step as f64 / total_steps).cos());
                self.step(&grads, &mut vel, lr, cfg.weight_decay)?;
                step += 1;
            }
        }
        Ok(())
    }

    /// A `(b, H)` dropout mask: each unit kept with probability `keep` (one uniform draw of
    /// `rng` per unit, row-major) and then scaled by `1 / keep`, else 0.
    fn dropout_mask(&self, b: usize, keep: f64, rng: &mut StdRng) -> Result<Tensor> {
        let m: Vec<f32> = (0..b * self.h)
            .map(|_| {
                if rng.random::<f64>() < keep {
                    (1.0 / keep) as f32
                } else {
                    0.0
                }
            })
            .collect();
        Ok(Tensor::from_vec(m, (b, self.h), &Device::Cpu)?)
    }

    /// One SGD step with momentum (`v = 0.9 v + g + wd · w` on weights, `w -= lr v`) on every
    /// parameter that received a gradient.
    fn step(&self, grads: &GradStore, vel: &mut [Tensor], lr: f64, wd: f64) -> Result<()> {
        for ((var, decay), v) in self.params().iter().zip(vel.iter_mut()) {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            let mut g = g.clone();
            if *decay && wd > 0.0 {
                g = (g + (var.as_tensor() * wd)?)?;
            }
            *v = ((&*v * f64::from(MOMENTUM))? + g)?;
            var.set(&(var.as_tensor() - (&*v * lr)?)?)?;
        }
        Ok(())
    }

    /// Row-major `(M, K)` logits of the row-major standardised features `x (M, D)`, in
    /// chunks of 1024 rows.
    fn logits(&self, x: &[f32]) -> Result<Vec<f32>> {
        let (d, rows) = (self.d, x.len() / self.d);
        let mut logits = Vec::new();
        for chunk in (0..rows).collect::<Vec<_>>().chunks(1024) {
            let mut xb = Vec::with_capacity(chunk.len() * d);
            for &i in chunk {
                xb.extend_from_slice(&x[i * d..(i + 1) * d]);
            }
            let z = self.forward(&Tensor::from_vec(xb, (chunk.len(), d), &Device::Cpu)?, None)?;
            logits.extend(z.flatten_all()?.to_vec1::<f32>()?);
        }
        Ok(logits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::probe::fixtures::{clusters, gaussian, host, noise};
    use crate::eval::probe::linear::{linear_probe, ProbeConfig};

    #[test]
    fn mlp_probe_separates_clusters_and_stays_at_chance_on_random_labels() {
        let (train_x, train_y) = clusters(1000, 8, 5, 6.0, 61);
        let (test_x, test_y) = clusters(1000, 8, 5, 6.0, 62);
        let cfg = MlpConfig {
            hidden: 64,
            epochs: 10,
            ..MlpConfig::default()
        };
        let r = mlp_probe(&host(&train_x), &train_y, &host(&test_x), &test_y, 5, &cfg).unwrap();
        assert!(r.top1 >= 0.98, "{r:?}");
        assert_eq!(r.top5, 1.0);
        let again = mlp_probe(&host(&train_x), &train_y, &host(&test_x), &test_y, 5, &cfg).unwrap();
        assert_eq!(r, again, "same seed, same result");

        let (train_x, train_y) = noise(1000, 16, 10, 63);
        let (test_x, test_y) = noise(1000, 16, 10, 64);
        let r = mlp_probe(&host(&train_x), &train_y, &host(&test_x), &test_y, 10, &cfg).unwrap();
        assert!(r.top1 <= 0.16, "{r:?}");
        assert!(r.top5 >= r.top1);
    }

    #[test]
    fn mlp_probe_solves_xor_which_the_linear_probe_cannot() {
        // Label = sign(x0) XOR sign(x1): not linearly separable.
        let make = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut data = Vec::new();
            let mut labels = Vec::new();
            for _ in 0..1000 {
                let (a, b) = (gaussian(&mut rng), gaussian(&mut rng));
                data.extend([a, b]);
                labels.push(u32::from((a > 0.0) != (b > 0.0)));
            }
            (HostFeatures::new(1000, 2, data, "xor").unwrap(), labels)
        };
        let ((tx, ty), (vx, vy)) = (make(71), make(72));
        let mlp = MlpConfig {
            hidden: 32,
            dropout: 0.0,
            epochs: 40,
            batch_size: 64,
            ..MlpConfig::default()
        };
        let m = mlp_probe(&tx, &ty, &vx, &vy, 2, &mlp).unwrap();
        let l = linear_probe(&tx, &ty, &vx, &vy, 2, &ProbeConfig::default()).unwrap();
        assert!(m.top1 > 0.9, "mlp {m:?}");
        assert!(l.top1 < 0.65, "linear {l:?}");
    }
}
