//! Central evaluation of a frozen backbone: the linear probe.
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

use anyhow::{bail, ensure, Context, Result};
use candle_core::{DType, Device, Tensor};
use rand::{rngs::StdRng, seq::SliceRandom, SeedableRng};

/// Added to the per-dimension standard deviation before dividing.
const STD_EPS: f64 = 1e-6;
/// Heavy-ball momentum of the probe's SGD.
const MOMENTUM: f32 = 0.9;
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

/// Outcome of [`linear_probe`]; accuracies are fractions in `[0, 1]`.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct ProbeResult {
    /// Top-1 accuracy on the test features.
    pub top1: f64,
    /// Top-5 accuracy on the test features (1.0 when there are fewer than 5 classes).
    pub top5: f64,
    /// Number of labelled training examples the probe was fitted on (`N`).
    pub train_labels: usize,
    /// Number of test examples it was scored on (`M`).
    pub test_images: usize,
    /// The L2 weight decay of the final fit (chosen on the validation split when a grid was
    /// given, see [`probe_with_selection`]).
    #[serde(default)]
    pub weight_decay: f64,
    /// Validation top-1 of each weight decay of the grid, in grid order (empty without selection).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub val_top1: Vec<f64>,
}

/// Linear probe (Kolesnikov et al., 2019): multinomial logistic regression on
/// frozen features, scored by top-1 / top-5 accuracy on a test set.
///
/// * `train_x`: `(N, D)` features of the labelled training set (any float dtype,
///   any device; copied to host `f32`), `train_y`: `N` labels in `0..num_classes`;
/// * `test_x`: `(M, D)`, `test_y`: `M` labels in `0..num_classes`.
///
/// Features are standardised with the training set's per-dimension mean and
/// std (eps 1e-6); `W (D, K)` and `b (K)` start at zero and are trained with
/// softmax cross-entropy plus L2 on `W` by minibatch SGD with momentum 0.9 and a
/// cosine schedule.
/// Deterministic for a given `cfg.seed`.
///
/// Errors on an empty set, a feature-dimension or label-count mismatch, a label
/// `>= num_classes`, a non-finite feature, or a meaningless configuration.
pub fn linear_probe(
    train_x: &Tensor,
    train_y: &[u32],
    test_x: &Tensor,
    test_y: &[u32],
    num_classes: usize,
    cfg: &ProbeConfig,
) -> Result<ProbeResult> {
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

    let (n, d) = train_x
        .dims2()
        .context("linear probe: train_x must be a (N, D) matrix")?;
    let (m, d_test) = test_x
        .dims2()
        .context("linear probe: test_x must be a (M, D) matrix")?;
    ensure!(n > 0, "linear probe: the training set is empty (N = 0)");
    ensure!(m > 0, "linear probe: the test set is empty (M = 0)");
    ensure!(d > 0, "linear probe: the features have dimension D = 0");
    ensure!(
        d == d_test,
        "linear probe: feature-dimension mismatch: train_x is ({n}, {d}) but test_x is ({m}, {d_test})"
    );
    ensure!(
        train_y.len() == n,
        "linear probe: train_x has {n} rows but train_y has {} labels",
        train_y.len()
    );
    ensure!(
        test_y.len() == m,
        "linear probe: test_x has {m} rows but test_y has {} labels",
        test_y.len()
    );
    check_labels(train_y, num_classes, "train_y")?;
    check_labels(test_y, num_classes, "test_y")?;

    let (train, test) = Device::Cpu.with_context(|| -> Result<_> {
        Ok((
            HostFeatures::from_tensor(train_x, "train_x")?,
            HostFeatures::from_tensor(test_x, "test_x")?,
        ))
    })?;
    linear_probe_host(&train, train_y, &test, test_y, num_classes, cfg)
}

/// [`linear_probe`] on host features (already checked: finite, `N, M ≥ 1`, labels in range).
pub fn linear_probe_host(
    train: &HostFeatures,
    train_y: &[u32],
    test: &HostFeatures,
    test_y: &[u32],
    num_classes: usize,
    cfg: &ProbeConfig,
) -> Result<ProbeResult> {
    let d = train.dim;
    ensure!(
        d == test.dim && train.rows == train_y.len() && test.rows == test_y.len(),
        "linear probe: shapes do not match: train ({}, {d}) with {} labels, test ({}, {}) with {} labels",
        train.rows,
        train_y.len(),
        test.rows,
        test.dim,
        test_y.len()
    );
    ensure!(train.rows > 0 && test.rows > 0, "linear probe: empty set");
    let (mut train, mut test) = (train.data.clone(), test.data.clone());
    let started = std::time::Instant::now();
    standardise(&mut train, &mut test, d);
    let mut probe = Probe::new(d, num_classes);
    let loss = probe.fit(&train, train_y, cfg);
    let logits = probe.logits(&test);
    let top1 = top_k_from_slice(&logits, num_classes, test_y, 1)?;
    let top5 = top_k_from_slice(&logits, num_classes, test_y, 5)?;
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

/// Top-k accuracy: the fraction of rows of `logits (N, K)` whose true label is
/// among the `k` largest logits.
///
/// Ties are broken at random, in expectation: with `g` classes whose logit is larger than the
/// true class's and `e` others equal to it, the true class lands uniformly among positions
/// `g + 1 ..= g + e + 1`, so the row scores `min(1, (k − g) / (e + 1))` when `g < k`, else 0
/// (a backbone whose features are constant scores chance, `k / K`, not 1). Without ties this
/// is the usual hit or miss, and `k >= K` always gives 1.0. Errors on an empty or non-2-D
/// `logits`, a row/label count mismatch, a label `>= K`, `k = 0`, or a NaN logit.
pub fn top_k_accuracy(logits: &Tensor, labels: &[u32], k: usize) -> Result<f64> {
    let (n, num_classes) = logits
        .dims2()
        .context("top-k accuracy: logits must be a (N, K) matrix")?;
    ensure!(
        labels.len() == n,
        "top-k accuracy: logits have {n} rows but there are {} labels",
        labels.len()
    );
    let values = logits
        .to_dtype(DType::F32)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1::<f32>())
        .context("top-k accuracy: cannot read the logits as f32")?;
    top_k_from_slice(&values, num_classes, labels, k)
}

/// [`top_k_accuracy`] on a row-major `(labels.len(), num_classes)` slice.
fn top_k_from_slice(logits: &[f32], num_classes: usize, labels: &[u32], k: usize) -> Result<f64> {
    ensure!(k > 0, "top-k accuracy: k must be at least 1");
    ensure!(
        !labels.is_empty(),
        "top-k accuracy: there are no rows to score"
    );
    ensure!(
        num_classes > 0,
        "top-k accuracy: logits have no classes (K = 0)"
    );
    debug_assert_eq!(logits.len(), labels.len() * num_classes);
    check_labels(labels, num_classes, "labels")?;
    let mut hits = 0.0f64;
    for (row, (z, &y)) in logits.chunks_exact(num_classes).zip(labels).enumerate() {
        if let Some(c) = z.iter().position(|v| v.is_nan()) {
            bail!("top-k accuracy: logit ({row}, {c}) is NaN");
        }
        let target = z[y as usize];
        let larger = z.iter().filter(|&&v| v > target).count();
        if larger < k {
            let others_equal = z.iter().filter(|&&v| v == target).count() - 1;
            hits += ((k - larger) as f64 / (others_equal + 1) as f64).min(1.0);
        }
    }
    Ok(hits / labels.len() as f64)
}

fn check_labels(labels: &[u32], num_classes: usize, what: &str) -> Result<()> {
    if let Some((i, &y)) = labels
        .iter()
        .enumerate()
        .find(|(_, &y)| y as usize >= num_classes)
    {
        bail!("{what}[{i}] = {y} is out of range for num_classes = {num_classes}");
    }
    Ok(())
}

/// A row-major `(rows, dim)` matrix of `f32` features on the host: the cached features of
/// a set of images that every probe reuses.
#[derive(Clone, Debug, PartialEq)]
pub struct HostFeatures {
    /// Number of rows (images).
    pub rows: usize,
    /// Features per row.
    pub dim: usize,
    /// `rows · dim` values, row-major.
    pub data: Vec<f32>,
}

impl HostFeatures {
    /// Copies a `(rows, D)` tensor (any float dtype) to the host, rejecting NaN and ±inf
    /// (the error names `what`, the row and the column).
    pub fn from_tensor(x: &Tensor, what: &str) -> Result<Self> {
        let (rows, dim) = x
            .dims2()
            .with_context(|| format!("{what} must be a (N, D) matrix"))?;
        let data = x
            .to_dtype(DType::F32)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f32>())
            .with_context(|| format!("linear probe: cannot read {what} as f32"))?;
        Self::new(rows, dim, data, what)
    }

    /// Wraps `data` `(rows, dim)`; errors on a size mismatch or a non-finite value.
    pub fn new(rows: usize, dim: usize, data: Vec<f32>, what: &str) -> Result<Self> {
        ensure!(
            data.len() == rows * dim,
            "{what}: {} values do not make a ({rows}, {dim}) matrix",
            data.len()
        );
        if let Some(i) = data.iter().position(|v| !v.is_finite()) {
            bail!(
                "linear probe: {what} has a non-finite feature ({}) at row {}, column {}",
                data[i],
                i / dim.max(1),
                i % dim.max(1)
            );
        }
        Ok(Self { rows, dim, data })
    }

    /// Row `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }

    /// The listed rows, in order.
    pub fn select(&self, idx: &[usize]) -> Self {
        let mut data = Vec::with_capacity(idx.len() * self.dim);
        for &i in idx {
            data.extend_from_slice(self.row(i));
        }
        Self {
            rows: idx.len(),
            dim: self.dim,
            data,
        }
    }
}

/// Standardises both sets in place with the training set's per-dimension
/// mean and std (population variance, accumulated in f64).
fn standardise(train: &mut [f32], test: &mut [f32], d: usize) {
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
    ) -> f64 {
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
        let (loss, gw) = run().expect("linear probe: CPU matmul of checked shapes failed");
        grad_w.copy_from_slice(&gw);
        loss
    }

    /// Minibatch SGD with momentum and a cosine schedule peaking at `cfg.lr`.
    /// Returns the mean cross-entropy of the last epoch (before the L2 term).
    fn fit(&mut self, x: &[f32], y: &[u32], cfg: &ProbeConfig) -> f64 {
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
                    epoch_loss += self.batch_grad_gemm(x, y, idx, &mut grad_w, &mut grad_b);
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
        epoch_loss / n as f64
    }
}

/// Hyper-parameters of [`mlp_probe_host`].
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
pub fn mlp_probe_host(
    train: &HostFeatures,
    train_y: &[u32],
    test: &HostFeatures,
    test_y: &[u32],
    num_classes: usize,
    cfg: &MlpConfig,
) -> Result<ProbeResult> {
    use candle_core::{backprop::GradStore, Var};
    use rand::Rng;
    use rand_distr::{Distribution, StandardNormal};
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
    let dev = Device::Cpu;
    let (d, h, k, n) = (train.dim, cfg.hidden, num_classes, train.rows);
    let (mut xtr, mut xte) = (train.data.clone(), test.data.clone());
    standardise(&mut xtr, &mut xte, d);

    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let std1 = (2.0 / d as f64).sqrt();
    let w1: Vec<f32> = (0..d * h)
        .map(|_| {
            let z: f64 = StandardNormal.sample(&mut rng);
            (z * std1) as f32
        })
        .collect();
    let bound = 1.0 / (h as f64).sqrt();
    let w2: Vec<f32> = (0..h * k)
        .map(|_| rng.random_range(-bound..bound) as f32)
        .collect();
    let w1 = Var::from_tensor(&Tensor::from_vec(w1, (d, h), &dev)?)?;
    let b1 = Var::from_tensor(&Tensor::zeros(h, DType::F32, &dev)?)?;
    let w2 = Var::from_tensor(&Tensor::from_vec(w2, (h, k), &dev)?)?;
    let b2 = Var::from_tensor(&Tensor::zeros(k, DType::F32, &dev)?)?;
    let params: [(&Var, bool); 4] = [(&w1, true), (&b1, false), (&w2, true), (&b2, false)];
    let mut vel: Vec<Tensor> = params
        .iter()
        .map(|(v, _)| v.as_tensor().zeros_like())
        .collect::<candle_core::Result<_>>()?;

    let forward = |x: &Tensor, mask: Option<&Tensor>| -> candle_core::Result<Tensor> {
        let hid = x
            .matmul(w1.as_tensor())?
            .broadcast_add(b1.as_tensor())?
            .relu()?;
        let hid = match mask {
            Some(m) => (hid * m)?,
            None => hid,
        };
        hid.matmul(w2.as_tensor())?.broadcast_add(b2.as_tensor())
    };

    let batch = cfg.batch_size.min(n);
    let total_steps = (cfg.epochs * n.div_ceil(batch)) as f64;
    let keep = 1.0 - cfg.dropout;
    let mut order: Vec<usize> = (0..n).collect();
    let mut step = 0usize;
    for _ in 0..cfg.epochs {
        order.shuffle(&mut rng);
        for idx in order.chunks(batch) {
            let b = idx.len();
            let mut xb = Vec::with_capacity(b * d);
            for &i in idx {
                xb.extend_from_slice(&xtr[i * d..(i + 1) * d]);
            }
            let yb: Vec<u32> = idx.iter().map(|&i| train_y[i]).collect();
            let xb = Tensor::from_vec(xb, (b, d), &dev)?;
            let yb = Tensor::from_vec(yb, b, &dev)?;
            let mask = if cfg.dropout > 0.0 {
                let m: Vec<f32> = (0..b * h)
                    .map(|_| {
                        if rng.random::<f64>() < keep {
                            (1.0 / keep) as f32
                        } else {
                            0.0
                        }
                    })
                    .collect();
                Some(Tensor::from_vec(m, (b, h), &dev)?)
            } else {
                None
            };
            let logits = forward(&xb, mask.as_ref())?;
            let loss = candle_nn::loss::cross_entropy(&logits, &yb)?;
            let grads: GradStore = loss.backward()?;
            let lr =
                cfg.lr * 0.5 * (1.0 + (std::f64::consts::PI * step as f64 / total_steps).cos());
            for ((var, decay), v) in params.iter().zip(vel.iter_mut()) {
                let Some(g) = grads.get(var.as_tensor()) else {
                    continue;
                };
                let mut g = g.clone();
                if *decay && cfg.weight_decay > 0.0 {
                    g = (g + (var.as_tensor() * cfg.weight_decay)?)?;
                }
                *v = ((&*v * f64::from(MOMENTUM))? + g)?;
                var.set(&(var.as_tensor() - (&*v * lr)?)?)?;
            }
            step += 1;
        }
    }
    let mut logits = Vec::with_capacity(test.rows * k);
    for chunk in (0..test.rows).collect::<Vec<_>>().chunks(1024) {
        let mut xb = Vec::with_capacity(chunk.len() * d);
        for &i in chunk {
            xb.extend_from_slice(&xte[i * d..(i + 1) * d]);
        }
        let z = forward(&Tensor::from_vec(xb, (chunk.len(), d), &dev)?, None)?;
        logits.extend(z.flatten_all()?.to_vec1::<f32>()?);
    }
    Ok(ProbeResult {
        top1: top_k_from_slice(&logits, k, test_y, 1)?,
        top5: top_k_from_slice(&logits, k, test_y, 5)?,
        train_labels: n,
        test_images: test.rows,
        weight_decay: cfg.weight_decay,
        val_top1: vec![],
    })
}

/// Which probe [`probe_with_selection`] fits, with its hyper-parameters (the weight decay in
/// them is replaced by the grid's values).
#[derive(Clone, Debug)]
pub enum ProbeSpec {
    /// [`linear_probe_host`].
    Linear(ProbeConfig),
    /// [`mlp_probe_host`].
    Mlp(MlpConfig),
}

impl ProbeSpec {
    fn fit(
        &self,
        wd: f64,
        train: &HostFeatures,
        train_y: &[u32],
        test: &HostFeatures,
        test_y: &[u32],
        k: usize,
    ) -> Result<ProbeResult> {
        match self {
            ProbeSpec::Linear(c) => {
                let c = ProbeConfig {
                    weight_decay: wd,
                    ..c.clone()
                };
                linear_probe_host(train, train_y, test, test_y, k, &c)
            }
            ProbeSpec::Mlp(c) => {
                let c = MlpConfig {
                    weight_decay: wd,
                    ..c.clone()
                };
                mlp_probe_host(train, train_y, test, test_y, k, &c)
            }
        }
    }
}

/// The held-out split of [`probe_with_selection`]: a seeded shuffle of `0..n`, the first
/// `round(n · val_fraction)` (at least 1, at most `n − 1`) are validation. Returns
/// `(fit, validation)` index lists, each sorted. Needs `n ≥ 2`.
pub fn validation_split(n: usize, val_fraction: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let mut idx: Vec<usize> = (0..n).collect();
    idx.shuffle(&mut StdRng::seed_from_u64(seed));
    let nv = ((n as f64 * val_fraction).round() as usize).clamp(1, n.saturating_sub(1).max(1));
    let mut val = idx[..nv].to_vec();
    let mut fit = idx[nv..].to_vec();
    val.sort_unstable();
    fit.sort_unstable();
    (fit, val)
}

/// A probe whose L2 weight decay is chosen as Revisiting does: each value of `grid` is fitted
/// on the labelled set minus a held-out validation split ([`validation_split`] with
/// `val_fraction`, `seed`) and scored by validation top-1; the best (the first on a tie) is
/// refitted on the whole labelled set and scored on `test`. The result records the chosen
/// value and every validation top-1. With one grid value (or fewer than 2 labelled
/// examples) there is no selection.
#[allow(clippy::too_many_arguments)]
pub fn probe_with_selection(
    spec: &ProbeSpec,
    grid: &[f64],
    val_fraction: f64,
    seed: u64,
    train: &HostFeatures,
    train_y: &[u32],
    test: &HostFeatures,
    test_y: &[u32],
    num_classes: usize,
) -> Result<ProbeResult> {
    ensure!(!grid.is_empty(), "probe: the weight-decay grid is empty");
    if grid.len() == 1 || train.rows < 2 {
        return spec.fit(grid[0], train, train_y, test, test_y, num_classes);
    }
    let (fit_idx, val_idx) = validation_split(train.rows, val_fraction, seed);
    let (fx, vx) = (train.select(&fit_idx), train.select(&val_idx));
    let fy: Vec<u32> = fit_idx.iter().map(|&i| train_y[i]).collect();
    let vy: Vec<u32> = val_idx.iter().map(|&i| train_y[i]).collect();
    let mut val_top1 = Vec::with_capacity(grid.len());
    for &wd in grid {
        val_top1.push(spec.fit(wd, &fx, &fy, &vx, &vy, num_classes)?.top1);
    }
    let best = val_top1
        .iter()
        .enumerate()
        .fold(0, |b, (i, &v)| if v > val_top1[b] { i } else { b });
    let mut r = spec.fit(grid[best], train, train_y, test, test_y, num_classes)?;
    r.val_top1 = val_top1;
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    fn gaussian(rng: &mut StdRng) -> f32 {
        // Box–Muller; 1 - u keeps the logarithm's argument in (0, 1].
        let u: f64 = 1.0 - rng.random::<f64>();
        let v: f64 = rng.random::<f64>();
        ((-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()) as f32
    }

    /// `n` points of `k` isotropic unit-variance Gaussian clusters in `d`
    /// dimensions whose centres lie at distance `radius` from the origin along
    /// the first `k` axes (pairwise distance `radius * sqrt 2`), labels cycling.
    fn clusters(n: usize, d: usize, k: usize, radius: f32, seed: u64) -> (Tensor, Vec<u32>) {
        assert!(k <= d);
        let mut rng = StdRng::seed_from_u64(seed);
        let mut data = Vec::with_capacity(n * d);
        let labels: Vec<u32> = (0..n).map(|i| (i % k) as u32).collect();
        for &y in &labels {
            for j in 0..d {
                let centre = if j == y as usize { radius } else { 0.0 };
                data.push(centre + gaussian(&mut rng));
            }
        }
        (
            Tensor::from_vec(data, (n, d), &Device::Cpu).unwrap(),
            labels,
        )
    }

    fn noise(n: usize, d: usize, k: usize, seed: u64) -> (Tensor, Vec<u32>) {
        let mut rng = StdRng::seed_from_u64(seed);
        let data: Vec<f32> = (0..n * d).map(|_| gaussian(&mut rng)).collect();
        let labels: Vec<u32> = (0..n).map(|_| rng.random_range(0..k as u32)).collect();
        (
            Tensor::from_vec(data, (n, d), &Device::Cpu).unwrap(),
            labels,
        )
    }

    fn logits_3x4() -> Tensor {
        Tensor::from_vec(
            vec![
                0.1f32, 2.0, 0.3, -1.0, // label 1: largest → top-1 hit
                1.0, 0.5, 3.0, 0.0, // label 0: one larger (class 2) → top-2 hit only
                // label 1: two larger (2, 3), one equal (0) → miss at k = 1, 2, half at k = 3
                0.0, 0.0, 5.0, 1.0,
            ],
            (3, 4),
            &Device::Cpu,
        )
        .unwrap()
    }

    #[test]
    fn top_k_hand_computed() {
        let logits = logits_3x4();
        let labels = [1, 0, 1];
        assert_eq!(top_k_accuracy(&logits, &labels, 1).unwrap(), 1.0 / 3.0);
        assert_eq!(top_k_accuracy(&logits, &labels, 2).unwrap(), 2.0 / 3.0);
        assert_eq!(top_k_accuracy(&logits, &labels, 3).unwrap(), 2.5 / 3.0);
        assert_eq!(top_k_accuracy(&logits, &labels, 4).unwrap(), 1.0);
        // k >= K: every row is a hit, as for top-5 with 4 classes.
        assert_eq!(top_k_accuracy(&logits, &labels, 5).unwrap(), 1.0);
        // Other labels: row 0 label 3 has three larger → miss even at k = 3.
        assert_eq!(top_k_accuracy(&logits, &[3, 2, 2], 1).unwrap(), 2.0 / 3.0);
        assert_eq!(top_k_accuracy(&logits, &[3, 2, 2], 3).unwrap(), 2.0 / 3.0);
    }

    #[test]
    fn top_k_ties_are_broken_at_random_in_expectation() {
        let logits =
            Tensor::from_vec(vec![1f32, 1.0, 0.0, 1.0, 1.0, 1.0], (2, 3), &Device::Cpu).unwrap();
        // Row 0: classes 0 and 1 tie at the top: a top-1 hit half the time, a top-2 hit always.
        // Row 1: all three tie: top-1 a third of the time, top-2 two thirds, top-3 always.
        assert_eq!(
            top_k_accuracy(&logits, &[0, 2], 1).unwrap(),
            (0.5 + 1.0 / 3.0) / 2.0
        );
        assert_eq!(
            top_k_accuracy(&logits, &[1, 0], 2).unwrap(),
            (1.0 + 2.0 / 3.0) / 2.0
        );
        // Class 2 of row 0 has two larger logits: a miss at k = 2, a hit at k = 3.
        assert_eq!(top_k_accuracy(&logits, &[2, 0], 2).unwrap(), 1.0 / 3.0);
        assert_eq!(top_k_accuracy(&logits, &[2, 0], 3).unwrap(), 1.0);
        // Constant logits score chance, k / K, not 1.
        let flat = Tensor::zeros((4, 10), DType::F32, &Device::Cpu).unwrap();
        assert!((top_k_accuracy(&flat, &[0, 3, 7, 9], 5).unwrap() - 0.5).abs() < 1e-12);
    }

    #[test]
    fn top_k_is_monotone_in_k() {
        let (logits, labels) = noise(500, 10, 10, 3);
        let mut last = 0.0;
        for k in 1..=10 {
            let acc = top_k_accuracy(&logits, &labels, k).unwrap();
            assert!(acc >= last, "top-{k} = {acc} < top-{} = {last}", k - 1);
            last = acc;
        }
        assert_eq!(last, 1.0);
    }

    #[test]
    fn top_k_rejects_bad_input() {
        let logits = logits_3x4();
        let err = top_k_accuracy(&logits, &[1, 0], 1).unwrap_err().to_string();
        assert!(err.contains("3 rows") && err.contains("2 labels"), "{err}");
        let err = top_k_accuracy(&logits, &[1, 4, 0], 1)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("labels[1] = 4") && err.contains("num_classes = 4"),
            "{err}"
        );
        assert!(top_k_accuracy(&logits, &[1, 0, 1], 0).is_err());
        let empty = Tensor::zeros((0, 4), DType::F32, &Device::Cpu).unwrap();
        assert!(top_k_accuracy(&empty, &[], 1).is_err());
        let nan = Tensor::from_vec(vec![0f32, f32::NAN], (1, 2), &Device::Cpu).unwrap();
        let err = top_k_accuracy(&nan, &[0], 1).unwrap_err().to_string();
        assert!(err.contains("NaN"), "{err}");
        let flat = Tensor::zeros(4, DType::F32, &Device::Cpu).unwrap();
        assert!(top_k_accuracy(&flat, &[0], 1).is_err());
    }

    #[test]
    fn probe_separates_gaussian_clusters() {
        // Pairwise centre distance 6·√2 ≈ 8.5σ: the Bayes error is ~1e-5.
        let (train_x, train_y) = clusters(1000, 8, 5, 6.0, 1);
        let (test_x, test_y) = clusters(1000, 8, 5, 6.0, 2);
        let r = linear_probe(
            &train_x,
            &train_y,
            &test_x,
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
        let r = linear_probe(&train_x, &train_y, &test_x, &test_y, 10, &cfg).unwrap();
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
        let r = linear_probe(&train_x, &train_y, &test_x, &test_y, 10, &cfg).unwrap();
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
        let r = linear_probe(&train_x, &train_y, &test_x, &test_y, k, &cfg).unwrap();
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
        let a = linear_probe(&train_x, &train_y, &test_x, &test_y, 10, &cfg).unwrap();
        let b = linear_probe(&train_x, &train_y, &test_x, &test_y, 10, &cfg).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn probe_accepts_other_dtypes() {
        let (train_x, train_y) = clusters(300, 8, 5, 6.0, 31);
        let (test_x, test_y) = clusters(300, 8, 5, 6.0, 32);
        let cfg = ProbeConfig {
            epochs: 10,
            ..ProbeConfig::default()
        };
        let f32_result = linear_probe(&train_x, &train_y, &test_x, &test_y, 5, &cfg).unwrap();
        let train64 = train_x.to_dtype(DType::F64).unwrap();
        let test64 = test_x.to_dtype(DType::F64).unwrap();
        let f64_result = linear_probe(&train64, &train_y, &test64, &test_y, 5, &cfg).unwrap();
        assert_eq!(f32_result, f64_result);
    }

    #[test]
    fn probe_rejects_bad_input() {
        let cfg = ProbeConfig::default();
        let (x8, y8) = clusters(20, 8, 5, 6.0, 41);
        let (x4, y4) = clusters(20, 4, 4, 6.0, 42);
        let msg = |r: Result<ProbeResult>| r.unwrap_err().to_string();

        let e = msg(linear_probe(&x8, &y8, &x4, &y4, 5, &cfg));
        assert!(e.contains("feature-dimension mismatch"), "{e}");

        let empty = Tensor::zeros((0, 8), DType::F32, &Device::Cpu).unwrap();
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

        let mut data = x8.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        data[3 * 8 + 2] = f32::NAN;
        let nan = Tensor::from_vec(data, (20, 8), &Device::Cpu).unwrap();
        let e = msg(linear_probe(&nan, &y8, &x8, &y8, 5, &cfg));
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

    fn host(t: &Tensor) -> HostFeatures {
        HostFeatures::from_tensor(t, "x").unwrap()
    }

    #[test]
    fn mlp_probe_separates_clusters_and_stays_at_chance_on_random_labels() {
        let (train_x, train_y) = clusters(1000, 8, 5, 6.0, 61);
        let (test_x, test_y) = clusters(1000, 8, 5, 6.0, 62);
        let cfg = MlpConfig {
            hidden: 64,
            epochs: 10,
            ..MlpConfig::default()
        };
        let r =
            mlp_probe_host(&host(&train_x), &train_y, &host(&test_x), &test_y, 5, &cfg).unwrap();
        assert!(r.top1 >= 0.98, "{r:?}");
        assert_eq!(r.top5, 1.0);
        let again =
            mlp_probe_host(&host(&train_x), &train_y, &host(&test_x), &test_y, 5, &cfg).unwrap();
        assert_eq!(r, again, "same seed, same result");

        let (train_x, train_y) = noise(1000, 16, 10, 63);
        let (test_x, test_y) = noise(1000, 16, 10, 64);
        let r =
            mlp_probe_host(&host(&train_x), &train_y, &host(&test_x), &test_y, 10, &cfg).unwrap();
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
        let m = mlp_probe_host(&tx, &ty, &vx, &vy, 2, &mlp).unwrap();
        let l = linear_probe_host(&tx, &ty, &vx, &vy, 2, &ProbeConfig::default()).unwrap();
        assert!(m.top1 > 0.9, "mlp {m:?}");
        assert!(l.top1 < 0.65, "linear {l:?}");
    }

    #[test]
    fn validation_split_is_disjoint_seeded_and_sized() {
        let (fit, val) = validation_split(100, 0.2, 5);
        assert_eq!((fit.len(), val.len()), (80, 20));
        let mut all: Vec<usize> = fit.iter().chain(&val).copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..100).collect::<Vec<_>>());
        assert_eq!(validation_split(100, 0.2, 5), (fit, val.clone()));
        assert_ne!(validation_split(100, 0.2, 6).1, val);
        assert_eq!(validation_split(3, 0.01, 0).1.len(), 1);
        assert_eq!(validation_split(3, 0.99, 0).1.len(), 2);
    }

    #[test]
    fn selection_reports_the_grid_and_refits_with_the_best_value() {
        let (train_x, train_y) = clusters(600, 12, 10, 1.5, 81);
        let (test_x, test_y) = clusters(600, 12, 10, 1.5, 82);
        let spec = ProbeSpec::Linear(ProbeConfig {
            epochs: 10,
            ..ProbeConfig::default()
        });
        // A huge decay shrinks W to ~0: never the best on validation.
        let grid = [10.0, 1e-3, 0.0];
        let (tx, vx) = (host(&train_x), host(&test_x));
        let r =
            probe_with_selection(&spec, &grid, 0.2, 1, &tx, &train_y, &vx, &test_y, 10).unwrap();
        assert_eq!(r.val_top1.len(), 3);
        let best = r.val_top1.iter().cloned().fold(f64::MIN, f64::max);
        let chosen = grid.iter().position(|&w| w == r.weight_decay).unwrap();
        assert_eq!(r.val_top1[chosen], best);
        assert_ne!(r.weight_decay, 10.0);
        assert_eq!(r.train_labels, 600, "refitted on the whole labelled set");
        let direct = spec
            .fit(r.weight_decay, &tx, &train_y, &vx, &test_y, 10)
            .unwrap();
        assert_eq!((direct.top1, direct.top5), (r.top1, r.top5));
        let single =
            probe_with_selection(&spec, &[1e-3], 0.2, 1, &tx, &train_y, &vx, &test_y, 10).unwrap();
        assert!(single.val_top1.is_empty());
        assert_eq!(single.weight_decay, 1e-3);
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
        let r = linear_probe(&train_x, &train_y, &test_x, &test_y, 5, &cfg).unwrap();
        // the GEMM gradient equals the per-row loop's
        let (tx, _) = clusters(64, 1100, 5, 1.0, 93);
        let x = tx.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let y: Vec<u32> = (0..64).map(|i| (i % 5) as u32).collect();
        let mut p = Probe::new(1100, 5);
        let mut rng = StdRng::seed_from_u64(1);
        p.w.iter_mut().for_each(|w| *w = 0.01 * gaussian(&mut rng));
        let idx: Vec<usize> = (0..64).collect();
        let (mut gw, mut gb) = (vec![0f32; 5500], vec![0f32; 5]);
        let loss = p.batch_grad_gemm(&x, &y, &idx, &mut gw, &mut gb);
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
                &train_x,
                &train_y,
                &test_x,
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
