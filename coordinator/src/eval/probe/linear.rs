//! The linear probe on a frozen backbone's features.
//!
//! The protocol follows Kolesnikov, Zhai and Beyer, *Revisiting Self-Supervised
//! Visual Representation Learning* (CVPR 2019): the backbone is frozen, its
//! pre-logits vectors `(N, D)` are extracted for a labelled training set and a
//! held-out test set, and a multinomial logistic regression (a single linear
//! layer with softmax cross-entropy and L2 regularisation) is trained on the
//! training features and scored on the test features by top-1 and top-5
//! accuracy. The schedule is long (100 epochs by default) so that the probe is
//! close to converged and measures the representation, not the optimiser. Here:
//!
//! * features are standardised with the **training** set's per-dimension mean
//!   and standard deviation (`(x - mean) / (std + 1e-6)`); the test set uses
//!   the same statistics;
//! * `W (D, K)` and `b (K)` start at zero, so the result depends on the data
//!   and the seed only (the seed drives the per-epoch shuffle);
//! * minibatch SGD with momentum 0.9 (PyTorch convention `v = 0.9 v + g`,
//!   `w -= lr v`), coupled L2 weight decay on `W` (not on `b`), and a cosine
//!   learning-rate decay from `lr` to 0 over `epochs`;
//! * no step-size cap from the curvature: softmax cross-entropy has bounded
//!   gradients, so SGD does not diverge on strongly correlated features (those
//!   of a random-init backbone); capping `lr` at `1 / L` with Böhning's bound
//!   `L = λ_max(XᵀX / N) / 2` was tried and measured to converge more slowly
//!   and to lower test accuracy on such features.
//!
//! The optimisation runs in plain Rust `f32` loops rather than candle ops:
//! with `K = 10` every matrix product is skinny and a candle op per minibatch
//! costs more in dispatch than the arithmetic. One probe on `N = M = 10 000`,
//! `D = 64`, `K = 10`, 100 epochs takes well under a second (see
//! `probe_runtime_n10k_d64`). The arithmetic is single-threaded and its
//! summation order is fixed, so the result is bit-for-bit reproducible for a
//! given seed regardless of the number of cores.

use anyhow::{ensure, Context, Result};
use candle_core::{Device, Tensor};
use rand::{rngs::StdRng, seq::SliceRandom, SeedableRng};

use crate::eval::features::HostFeatures;
use crate::eval::probe::scoring::{check_labels, top_k_accuracy, ProbeResult};

/// Added to the per-dimension standard deviation before dividing.
const STD_EPS: f64 = 1e-6;
/// Heavy-ball momentum of the probe's SGD.
pub(crate) const MOMENTUM: f32 = 0.9;
/// From this feature dimension on (per-layer probes of ~9,000 values) the linear probe's
/// minibatch products run as two GEMMs (candle's CPU matmul) instead of per-row loops,
/// whose re-reading of `W` per row makes them memory-bound.
const GEMM_MIN_DIM: usize = 1024;

/// Hyper-parameters of [`linear_probe`].
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ProbeConfig {
    /// Passes over the training features (default 100).
    pub epochs: usize,
    /// Minibatch size (default 256); the last, smaller batch of an epoch is kept.
    pub batch_size: usize,
    /// Peak learning rate of the cosine schedule (default 0.1), for the mean
    /// cross-entropy over a minibatch of standardised features.
    pub lr: f64,
    /// L2 penalty `weight_decay / 2 · ‖W‖²` on the weights, not the bias (default 5e-4).
    pub weight_decay: f64,
    /// Seeds the per-epoch shuffle, the only randomness of the probe (default 0).
    pub seed: u64,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        Self {
            epochs: 100,
            batch_size: 256,
            lr: 0.1,
            weight_decay: 5e-4,
            seed: 0,
        }
    }
}

/// Linear probe (Kolesnikov et al., 2019): multinomial logistic regression on
/// frozen features, scored by top-1 / top-5 accuracy on a test set.
///
/// * `train`: `(N, D)` features of the labelled training set, `train_y`: `N` labels in
///   `0..num_classes`;
/// * `test`: `(M, D)`, `test_y`: `M` labels in `0..num_classes`.
///
/// Features are standardised with the training set's per-dimension mean and
/// std (eps 1e-6); `W (D, K)` and `b (K)` start at zero and are trained with
/// softmax cross-entropy plus L2 on `W` by minibatch SGD with momentum 0.9 and a
/// cosine schedule.
/// Deterministic for a given `cfg.seed`.
///
/// Errors on an empty set, a feature-dimension or label-count mismatch, a label
/// `>= num_classes`, or a meaningless configuration (a non-finite feature is refused when
/// the [`HostFeatures`] are made).
pub fn linear_probe(
    train: &HostFeatures,
    train_y: &[u32],
    test: &HostFeatures,
    test_y: &[u32],
    num_classes: usize,
    cfg: &ProbeConfig,
) -> Result<ProbeResult> {
    check_config(cfg, num_classes)?;
    let (n, d, m, d_test) = (train.rows, train.dim, test.rows, test.dim);
    ensure!(n > 0, "linear probe: the training set is empty (N = 0)");
    ensure!(m > 0, "linear probe: the test set is empty (M = 0)");
    ensure!(d > 0, "linear probe: the features have dimension D = 0");
    ensure!(
        d == d_test,
        "linear probe: feature-dimension mismatch: the training features are ({n}, {d}) but the test features are ({m}, {d_test})"
    );
    ensure!(
        train_y.len() == n,
        "linear probe: the training features have {n} rows but train_y has {} labels",
        train_y.len()
    );
    ensure!(
        test_y.len() == m,
        "linear probe: the test features have {m} rows but test_y has {} labels",
        test_y.len()
    );
    check_labels(train_y, num_classes, "train_y")?;
    check_labels(test_y, num_classes, "test_y")?;
    let (mut train, mut test) = (train.data.clone(), test.data.clone());
    let started = std::time::Instant::now();
    standardise(&mut train, &mut test, d);
    let mut probe = Probe::new(d, num_classes);
    let loss = probe.fit(&train, train_y, cfg)?;
    let logits = probe.logits(&test);
    let top1 = top_k_accuracy(&logits, num_classes, test_y, 1)?;
    let top5 = top_k_accuracy(&logits, num_classes, test_y, 5)?;
    tracing::debug!(
        n = train_y.len(),
        m = test_y.len(),
        d,
        k = num_classes,
        final_train_loss = loss,
        top1,
        top5,
        seconds = started.elapsed().as_secs_f64(),
        "linear probe done"
    );
    Ok(ProbeResult {
        top1,
        top5,
        train_labels: train_y.len(),
        test_images: test_y.len(),
        weight_decay: cfg.weight_decay,
        val_top1: vec![],
    })
}

/// Refuses a configuration the probe cannot run: no epochs, an empty batch, a non-positive
/// or non-finite learning rate, a negative or non-finite weight decay, no classes.
fn check_config(cfg: &ProbeConfig, num_classes: usize) -> Result<()> {
    ensure!(cfg.epochs > 0, "linear probe: epochs must be at least 1");
    ensure!(
        cfg.batch_size > 0,
        "linear probe: batch_size must be at least 1"
    );
    ensure!(
        cfg.lr.is_finite() && cfg.lr > 0.0,
        "linear probe: lr must be a positive finite number, got {}",
        cfg.lr
    );
    ensure!(
        cfg.weight_decay.is_finite() && cfg.weight_decay >= 0.0,
        "linear probe: weight_decay must be a non-negative finite number, got {}",
        cfg.weight_decay
    );
    ensure!(
        num_classes > 0,
        "linear probe: num_classes must be at least 1"
    );
    Ok(())
}

/// Standardises both sets in place with the training set's per-dimension
/// mean and std (population variance, accumulated in f64).
pub(crate) fn standardise(train: &mut [f32], test: &mut [f32], d: usize) {
    let n = (train.len() / d) as f64;
    let mut mean = vec![0f64; d];
    for row in train.chunks_exact(d) {
        for (acc, &v) in mean.iter_mut().zip(row) {
            *acc += f64::from(v);
        }
    }
    mean.iter_mut().for_each(|v| *v /= n);
    let mut var = vec![0f64; d];
    for row in train.chunks_exact(d) {
        for ((acc, &v), mu) in var.iter_mut().zip(row).zip(&mean) {
            let c = f64::from(v) - mu;
            *acc += c * c;
        }
    }
    let shift: Vec<f32> = mean.iter().map(|&v| v as f32).collect();
    let scale: Vec<f32> = var
        .iter()
        .map(|&v| (1.0 / ((v / n).sqrt() + STD_EPS)) as f32)
        .collect();
    for row in train.chunks_exact_mut(d).chain(test.chunks_exact_mut(d)) {
        for ((v, mu), s) in row.iter_mut().zip(&shift).zip(&scale) {
            *v = (*v - mu) * s;
        }
    }
}

/// `Σ a_i b_i` with eight independent accumulators so that LLVM vectorises it.
#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (a8, a_rest) = a.split_at(a.len() - a.len() % 8);
    let (b8, b_rest) = b.split_at(a8.len());
    for (x, y) in a8.chunks_exact(8).zip(b8.chunks_exact(8)) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s = (acc[0] + acc[4]) + (acc[1] + acc[5]) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (x, y) in a_rest.iter().zip(b_rest) {
        s += x * y;
    }
    s
}

/// The probe's parameters, stored class-major: `w[k * d + j]` is `W[j, k]` of
/// the `(D, K)` matrix in the public description.
struct Probe {
    d: usize,
    k: usize,
    w: Vec<f32>,
    b: Vec<f32>,
}

impl Probe {
    fn new(d: usize, k: usize) -> Self {
        Self {
            d,
            k,
            w: vec![0.0; d * k],
            b: vec![0.0; k],
        }
    }

    /// `z = W_kᵀ x + b` for one row, into `z (K)`.
    fn row_logits(&self, x: &[f32], z: &mut [f32]) {
        for ((zk, wk), bk) in z.iter_mut().zip(self.w.chunks_exact(self.d)).zip(&self.b) {
            *zk = dot(wk, x) + bk;
        }
    }

    /// Row-major `(rows, K)` logits of row-major `x (rows, D)`.
    fn logits(&self, x: &[f32]) -> Vec<f32> {
        let mut out = vec![0f32; x.len() / self.d * self.k];
        for (row, z) in x.chunks_exact(self.d).zip(out.chunks_exact_mut(self.k)) {
            self.row_logits(row, z);
        }
        out
    }

    /// The summed gradient of the cross-entropy of rows `idx` into `grad_w (K, D)` and
    /// `grad_b`, as two GEMMs: `Z = X_b Wᵀ`, `G = softmax(Z) − onehot(y)`, `∇W = Gᵀ X_b`.
    /// Returns the summed loss.
    fn batch_grad_gemm(
        &self,
        x: &[f32],
        y: &[u32],
        idx: &[usize],
        grad_w: &mut [f32],
        grad_b: &mut [f32],
    ) -> Result<f64> {
        let (d, k, b) = (self.d, self.k, idx.len());
        let mut xb = Vec::with_capacity(b * d);
        for &i in idx {
            xb.extend_from_slice(&x[i * d..(i + 1) * d]);
        }
        let dev = Device::Cpu;
        let run = || -> candle_core::Result<(f64, Vec<f32>)> {
            let xb = Tensor::from_vec(xb, (b, d), &dev)?;
            let w = Tensor::from_slice(&self.w, (k, d), &dev)?;
            let mut z = xb.matmul(&w.t()?)?.flatten_all()?.to_vec1::<f32>()?;
            let mut loss = 0f64;
            for (row, &i) in z.chunks_exact_mut(k).zip(idx) {
                let label = y[i] as usize;
                for (v, bias) in row.iter_mut().zip(&self.b) {
                    *v += bias;
                }
                let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0f32;
                for v in row.iter_mut() {
                    *v = (*v - max).exp();
                    sum += *v;
                }
                let inv = 1.0 / sum;
                row.iter_mut().for_each(|v| *v *= inv);
                loss -= f64::from(row[label].max(f32::MIN_POSITIVE)).ln();
                row[label] -= 1.0;
            }
            for row in z.chunks_exact(k) {
                for (gb, &g) in grad_b.iter_mut().zip(row) {
                    *gb += g;
                }
            }
            let g = Tensor::from_vec(z, (b, k), &dev)?;
            let gw = g.t()?.matmul(&xb)?.flatten_all()?.to_vec1::<f32>()?;
            Ok((loss, gw))
        };
        let (loss, gw) = run().context("linear probe: CPU matmul")?;
        grad_w.copy_from_slice(&gw);
        Ok(loss)
    }

    /// Minibatch SGD with momentum and a cosine schedule peaking at `cfg.lr`.
    /// Returns the mean cross-entropy of the last epoch (before the L2 term).
    fn fit(&mut self, x: &[f32], y: &[u32], cfg: &ProbeConfig) -> Result<f64> {
        let (d, k) = (self.d, self.k);
        let n = y.len();
        let batch = cfg.batch_size.min(n);
        let steps_per_epoch = n.div_ceil(batch);
        let total_steps = (cfg.epochs * steps_per_epoch) as f64;
        let wd = cfg.weight_decay as f32;

        let mut rng = StdRng::seed_from_u64(cfg.seed);
        let mut order: Vec<usize> = (0..n).collect();
        let mut grad_w = vec![0f32; d * k];
        let mut grad_b = vec![0f32; k];
        let mut vel_w = vec![0f32; d * k];
        let mut vel_b = vec![0f32; k];
        let mut z = vec![0f32; k];
        let mut step = 0usize;
        let mut epoch_loss = 0f64;

        for _ in 0..cfg.epochs {
            order.shuffle(&mut rng);
            epoch_loss = 0.0;
            for idx in order.chunks(batch) {
                grad_w.iter_mut().for_each(|g| *g = 0.0);
                grad_b.iter_mut().for_each(|g| *g = 0.0);
                if d >= GEMM_MIN_DIM {
                    epoch_loss += self.batch_grad_gemm(x, y, idx, &mut grad_w, &mut grad_b)?;
                }
                for &i in idx.iter().filter(|_| d < GEMM_MIN_DIM) {
                    let row = &x[i * d..(i + 1) * d];
                    let label = y[i] as usize;
                    self.row_logits(row, &mut z);
                    // Softmax in place; z becomes dL/dz = p - onehot(y).
                    let max = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let mut sum = 0f32;
                    for v in z.iter_mut() {
                        *v = (*v - max).exp();
                        sum += *v;
                    }
                    let inv = 1.0 / sum;
                    z.iter_mut().for_each(|v| *v *= inv);
                    epoch_loss -= f64::from(z[label].max(f32::MIN_POSITIVE)).ln();
                    z[label] -= 1.0;
                    for ((gw, gb), &g) in grad_w.chunks_exact_mut(d).zip(&mut grad_b).zip(&z) {
                        *gb += g;
                        for (a, &xj) in gw.iter_mut().zip(row) {
                            *a += g * xj;
                        }
                    }
                }
                let progress = step as f64 / total_steps;
                let lr_t = (cfg.lr * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())) as f32;
                let inv_b = 1.0 / idx.len() as f32;
                for ((w, v), &g) in self.w.iter_mut().zip(&mut vel_w).zip(&grad_w) {
                    *v = MOMENTUM * *v + g * inv_b + wd * *w;
                    *w -= lr_t * *v;
                }
                for ((b, v), &g) in self.b.iter_mut().zip(&mut vel_b).zip(&grad_b) {
                    *v = MOMENTUM * *v + g * inv_b;
                    *b -= lr_t * *v;
                }
                step += 1;
            }
        }
        Ok(epoch_loss / n as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::probe::fixtures::{clusters, features, gaussian, host, noise};
    use candle_core::DType;

    #[test]
    fn probe_separates_gaussian_clusters() {
        // Pairwise centre distance 6·√2 ≈ 8.5σ: the Bayes error is ~1e-5.
        let (train_x, train_y) = clusters(1000, 8, 5, 6.0, 1);
        let (test_x, test_y) = clusters(1000, 8, 5, 6.0, 2);
        let r = linear_probe(
            &host(&train_x),
            &train_y,
            &host(&test_x),
            &test_y,
            5,
            &ProbeConfig::default(),
        )
        .unwrap();
        assert!(r.top1 >= 0.98, "{r:?}");
        assert_eq!(r.top5, 1.0, "5 classes: top-5 is trivially 1");
        assert_eq!((r.train_labels, r.test_images), (1000, 1000));
    }

    #[test]
    fn probe_beats_chance_on_overlapping_clusters_and_top5_dominates_top1() {
        // 10 clusters close enough to overlap: top-1 well above chance but < 1,
        // top-5 strictly informative.
        let (train_x, train_y) = clusters(2000, 16, 10, 1.5, 5);
        let (test_x, test_y) = clusters(2000, 16, 10, 1.5, 6);
        let cfg = ProbeConfig {
            epochs: 30,
            ..ProbeConfig::default()
        };
        let r = linear_probe(&host(&train_x), &train_y, &host(&test_x), &test_y, 10, &cfg).unwrap();
        assert!(r.top1 > 0.3 && r.top1 < 0.95, "{r:?}");
        assert!(r.top5 >= r.top1 && r.top5 < 1.0, "{r:?}");
    }

    #[test]
    fn probe_stays_at_chance_on_random_labels() {
        let (train_x, train_y) = noise(2000, 32, 10, 7);
        let (test_x, test_y) = noise(2000, 32, 10, 8);
        let cfg = ProbeConfig {
            epochs: 30,
            ..ProbeConfig::default()
        };
        let r = linear_probe(&host(&train_x), &train_y, &host(&test_x), &test_y, 10, &cfg).unwrap();
        // Chance is 0.1 (σ ≈ 0.007 over 2000 test rows) and 0.5 for top-5.
        assert!(r.top1 <= 0.15, "{r:?}");
        assert!((r.top5 - 0.5).abs() <= 0.06, "{r:?}");
    }

    #[test]
    fn probe_handles_strongly_correlated_features() {
        // Every dimension carries the same large shared factor; the classes
        // differ only along a small per-class offset. After standardisation the
        // top eigenvalue of the covariance is ≈ D (the regime of a random-init
        // backbone's features), yet plain SGD at lr 0.1 must still converge.
        let (n, d, k) = (1000, 128, 4);
        let make = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            let labels: Vec<u32> = (0..n).map(|i| (i % k) as u32).collect();
            let mut data = Vec::with_capacity(n * d);
            for &y in &labels {
                let shared = 10.0 * gaussian(&mut rng);
                for j in 0..d {
                    let signal = if j % k == y as usize { 1.0 } else { 0.0 };
                    data.push(shared + signal + 0.5 * gaussian(&mut rng));
                }
            }
            (
                Tensor::from_vec(data, (n, d), &Device::Cpu).unwrap(),
                labels,
            )
        };
        let (train_x, train_y) = make(11);
        let (test_x, test_y) = make(12);
        let cfg = ProbeConfig {
            epochs: 20,
            ..ProbeConfig::default()
        };
        let r = linear_probe(&host(&train_x), &train_y, &host(&test_x), &test_y, k, &cfg).unwrap();
        assert!(r.top1 >= 0.98, "{r:?}");
    }

    #[test]
    fn probe_is_deterministic_for_a_seed() {
        let (train_x, train_y) = clusters(600, 12, 10, 1.5, 21);
        let (test_x, test_y) = clusters(600, 12, 10, 1.5, 22);
        let cfg = ProbeConfig {
            epochs: 10,
            batch_size: 64,
            seed: 42,
            ..ProbeConfig::default()
        };
        let a = linear_probe(&host(&train_x), &train_y, &host(&test_x), &test_y, 10, &cfg).unwrap();
        let b = linear_probe(&host(&train_x), &train_y, &host(&test_x), &test_y, 10, &cfg).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn probe_rejects_bad_input() {
        let cfg = ProbeConfig::default();
        let (t8, y8) = clusters(20, 8, 5, 6.0, 41);
        let (t4, y4) = clusters(20, 4, 4, 6.0, 42);
        let (x8, x4) = (host(&t8), host(&t4));
        let msg = |r: Result<ProbeResult>| r.unwrap_err().to_string();

        let e = msg(linear_probe(&x8, &y8, &x4, &y4, 5, &cfg));
        assert!(e.contains("feature-dimension mismatch"), "{e}");

        let empty = host(&Tensor::zeros((0, 8), DType::F32, &Device::Cpu).unwrap());
        let e = msg(linear_probe(&empty, &[], &x8, &y8, 5, &cfg));
        assert!(e.contains("training set is empty"), "{e}");
        let e = msg(linear_probe(&x8, &y8, &empty, &[], 5, &cfg));
        assert!(e.contains("test set is empty"), "{e}");

        let e = msg(linear_probe(&x8, &y8[..19], &x8, &y8, 5, &cfg));
        assert!(e.contains("20 rows") && e.contains("19 labels"), "{e}");

        let mut bad = y8.clone();
        bad[7] = 5;
        let e = msg(linear_probe(&x8, &y8, &x8, &bad, 5, &cfg));
        assert!(
            e.contains("test_y[7] = 5") && e.contains("num_classes = 5"),
            "{e}"
        );

        let mut data = t8.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        data[3 * 8 + 2] = f32::NAN;
        let nan = Tensor::from_vec(data, (20, 8), &Device::Cpu).unwrap();
        let e =
            msg(features(&nan, "train_x")
                .and_then(|nan| linear_probe(&nan, &y8, &x8, &y8, 5, &cfg)));
        assert!(
            e.contains("train_x") && e.contains("row 3, column 2"),
            "{e}"
        );

        let zero_epochs = ProbeConfig {
            epochs: 0,
            ..cfg.clone()
        };
        assert!(linear_probe(&x8, &y8, &x8, &y8, 5, &zero_epochs).is_err());
        let bad_lr = ProbeConfig {
            lr: f64::NAN,
            ..cfg.clone()
        };
        assert!(linear_probe(&x8, &y8, &x8, &y8, 5, &bad_lr).is_err());
    }

    #[test]
    fn probe_config_serde_defaults() {
        let cfg: ProbeConfig = serde_json::from_str(r#"{"epochs": 7}"#).unwrap();
        assert_eq!(
            cfg,
            ProbeConfig {
                epochs: 7,
                ..ProbeConfig::default()
            }
        );
        assert!(serde_json::from_str::<ProbeConfig>(r#"{"epoch": 7}"#).is_err());
    }

    #[test]
    fn wide_features_take_the_gemm_path_and_still_separate_clusters() {
        // D = 1100 ≥ GEMM_MIN_DIM: the GEMM minibatch gradient. 1095 noise dimensions and
        // N = 1000 keep the test error a few per cent (statistics, not the optimiser).
        let (train_x, train_y) = clusters(1000, 1100, 5, 20.0, 91);
        let (test_x, test_y) = clusters(1000, 1100, 5, 20.0, 92);
        let cfg = ProbeConfig {
            epochs: 20,
            ..ProbeConfig::default()
        };
        let r = linear_probe(&host(&train_x), &train_y, &host(&test_x), &test_y, 5, &cfg).unwrap();
        // the GEMM gradient equals the per-row loop's
        let (tx, _) = clusters(64, 1100, 5, 1.0, 93);
        let x = tx.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let y: Vec<u32> = (0..64).map(|i| (i % 5) as u32).collect();
        let mut p = Probe::new(1100, 5);
        let mut rng = StdRng::seed_from_u64(1);
        p.w.iter_mut().for_each(|w| *w = 0.01 * gaussian(&mut rng));
        let idx: Vec<usize> = (0..64).collect();
        let (mut gw, mut gb) = (vec![0f32; 5500], vec![0f32; 5]);
        let loss = p.batch_grad_gemm(&x, &y, &idx, &mut gw, &mut gb).unwrap();
        let (mut rw, mut rb, mut rl) = (vec![0f32; 5500], vec![0f32; 5], 0f64);
        let mut z = vec![0f32; 5];
        for &i in &idx {
            let row = &x[i * 1100..(i + 1) * 1100];
            p.row_logits(row, &mut z);
            let m = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let s: f32 = z.iter().map(|v| (v - m).exp()).sum();
            let pr: Vec<f32> = z.iter().map(|v| (v - m).exp() / s).collect();
            rl -= f64::from(pr[y[i] as usize]).ln();
            for c in 0..5 {
                let g = pr[c] - f32::from(c == y[i] as usize);
                rb[c] += g;
                for j in 0..1100 {
                    rw[c * 1100 + j] += g * row[j];
                }
            }
        }
        assert!((loss - rl).abs() < 1e-3 * rl, "{loss} vs {rl}");
        for (a, b) in gw.iter().zip(&rw).chain(gb.iter().zip(&rb)) {
            assert!((a - b).abs() < 1e-3, "{a} vs {b}");
        }
        assert!(r.top1 >= 0.9, "{r:?}");
    }

    /// Runtime of the typical call. Run with
    /// `cargo test --release -p fedssl-coordinator probe_runtime -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn probe_runtime_n10k_d64() {
        for d in [64, 512] {
            let (train_x, train_y) = clusters(10_000, d, 10, 1.0, 51);
            let (test_x, test_y) = clusters(10_000, d, 10, 1.0, 52);
            let started = std::time::Instant::now();
            let r = linear_probe(
                &host(&train_x),
                &train_y,
                &host(&test_x),
                &test_y,
                10,
                &ProbeConfig::default(),
            )
            .unwrap();
            println!(
                "N = M = 10000, D = {d}, K = 10, 100 epochs: {:.2} s, {r:?}",
                started.elapsed().as_secs_f64()
            );
        }
    }
}
