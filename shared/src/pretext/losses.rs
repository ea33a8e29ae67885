//! The losses of the embedding-based pretext tasks, on `f32` tensors: row-wise L2
//! normalisation, SimCLR's NT-Xent (Chen et al. 2020, [`nt_xent_logits`]) and the semi-hard triplet
//! loss of FaceNet as Revisiting used it for Exemplar (Schroff et al. 2015; Kolesnikov et al.
//! 2019, [`semihard_triplet_loss`]).

use anyhow::{bail, Result};
use candle_core::Tensor;

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
///
/// The cross-entropy of these logits and targets is SimCLR's NT-Xent loss (eq. (1)),
/// averaged over all `2N` anchors (nats; swapping `z1` and `z2` gives the same loss):
///
/// `L = 1/(2N) Σ_i −log( exp(sim(z_i, z_j(i))/τ) / Σ_{k≠i} exp(sim(z_i, z_k)/τ) )`
///
/// over `z = [z1; z2]`, `j(i)` the other view of the same image.
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

/// Squared Euclidean distances `(N, N)` between the rows of `e` `(N, E)`:
/// `‖e_i‖² + ‖e_j‖² − 2 e_iᵀe_j`, clamped at 0, diagonal exactly 0 (as TensorFlow's
/// `pairwise_distance(squared=True)`).
pub fn pairwise_sq_dist(e: &Tensor) -> Result<Tensor> {
    let n = e.dim(0)?;
    let sq = e.sqr()?.sum_keepdim(1)?;
    let gram = e.matmul(&e.t()?)?;
    let d = sq
        .broadcast_add(&sq.t()?)?
        .sub(&gram.affine(2.0, 0.0)?)?
        .maximum(0.0)?;
    let off = Tensor::eye(n, e.dtype(), e.device())?.affine(-1.0, 1.0)?;
    Ok(d.mul(&off)?)
}

/// Triplet loss with semi-hard negative mining, exactly as TensorFlow's
/// `tf.contrib.losses.metric_learning.triplet_semihard_loss` (the one Revisiting used),
/// which works on squared Euclidean distances `d` ([`pairwise_sq_dist`]):
///
/// for every ordered positive pair `(a, p)`, `a ≠ p`, `labels[a] = labels[p]`, the negative
/// distance is
/// * the smallest `d(a, n)` over negatives (`labels[n] ≠ labels[a]`) with
///   `d(a, n) > d(a, p)` (semi-hard: the closest negative still farther than the positive);
/// * if there is none, the largest `d(a, n)` over all negatives (the easiest one);
/// * if `a` has no negative at all, 0 (TensorFlow's masked maximum of an empty row is the
///   row minimum, the zero diagonal);
///
/// and the loss is `Σ_(a,p) max(margin + d(a, p) − d(a, n*), 0) / #positive pairs`
/// (pairs with zero loss count in the denominator).
///
/// `embeddings`: `(N, E)` (normalise them first for a margin on unit vectors); `labels`: `N`
/// class ids. Returns a 0-d tensor, differentiable in `embeddings` (the choice of negative
/// is not). Errors if `labels.len() != N` or no two rows share a label.
pub fn semihard_triplet_loss(embeddings: &Tensor, labels: &[u32], margin: f64) -> Result<Tensor> {
    let n = embeddings.dim(0)?;
    if labels.len() != n {
        bail!("triplet loss: {} labels for {n} embeddings", labels.len());
    }
    let d = pairwise_sq_dist(embeddings)?;
    let dv: Vec<f32> = d.detach().flatten_all()?.to_vec1()?;
    let (mut ap, mut an) = (Vec::new(), Vec::new());
    for a in 0..n {
        let row = &dv[a * n..(a + 1) * n];
        let negs: Vec<usize> = (0..n).filter(|&j| labels[j] != labels[a]).collect();
        for p in (0..n).filter(|&p| p != a && labels[p] == labels[a]) {
            let dap = row[p];
            let semi = negs
                .iter()
                .copied()
                .filter(|&j| row[j] > dap)
                .min_by(|&i, &j| row[i].total_cmp(&row[j]));
            let easiest = || {
                negs.iter()
                    .copied()
                    .max_by(|&i, &j| row[i].total_cmp(&row[j]))
            };
            // no negative at all: the diagonal, whose distance is 0
            let neg = semi.or_else(easiest).unwrap_or(a);
            ap.push((a * n + p) as u32);
            an.push((a * n + neg) as u32);
        }
    }
    if ap.is_empty() {
        bail!("triplet loss: no two embeddings share a label, so there is no positive pair");
    }
    let m = ap.len();
    let dev = embeddings.device();
    let flat = d.flatten_all()?;
    let dap = flat.index_select(&Tensor::from_vec(ap, m, dev)?, 0)?;
    let dan = flat.index_select(&Tensor::from_vec(an, m, dev)?, 0)?;
    let l = (dap - dan)?.affine(1.0, margin)?.relu()?;
    Ok(l.sum_all()?.affine(1.0 / m as f64, 0.0)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

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

    /// NT-Xent as [`SimclrTask`](super::super::SimclrTask) computes it: the cross-entropy
    /// of [`nt_xent_logits`].
    fn nt_xent(z1: &Tensor, z2: &Tensor, tau: f64) -> Result<Tensor> {
        let (logits, targets) = nt_xent_logits(z1, z2, tau)?;
        Ok(candle_nn::loss::cross_entropy(&logits, &targets)?)
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
    fn semihard_hand_computed() {
        // 1-D embeddings x = [0, 1, 0.75, 2.5], labels [0, 0, 1, 1], margin 1.5 (all values
        // dyadic, exact in f32). Squared distances: d01 = 1, d02 = 0.5625, d03 = 6.25,
        // d12 = 0.0625, d13 = 2.25, d23 = 3.0625.
        // (0,1): d_ap = 1, negatives of 0: {2: 0.5625, 3: 6.25}; farther than 1: {6.25}
        //        → semi-hard 6.25 (the hardest negative is 0.5625): max(1.5 + 1 − 6.25, 0) = 0
        // (1,0): d_ap = 1, negatives {2: 0.0625, 3: 2.25} → semi-hard 2.25 (hardest 0.0625):
        //        max(1.5 + 1 − 2.25, 0) = 0.25
        // (2,3): d_ap = 3.0625, negatives {0: 0.5625, 1: 0.0625}, none farther → the easiest,
        //        0.5625: max(1.5 + 3.0625 − 0.5625, 0) = 4
        // (3,2): d_ap = 3.0625, negatives {0: 6.25, 1: 2.25} → semi-hard 6.25 (hardest 2.25):
        //        max(1.5 + 3.0625 − 6.25, 0) = 0
        // loss = (0 + 0.25 + 4 + 0) / 4 = 1.0625.
        // Hardest-negative mining would give (1.9375 + 2.4375 + 4.5 + 2.3125) / 4 = 2.796875.
        let e = t(&[0.0, 1.0, 0.75, 2.5], 4, 1);
        let labels = [0, 0, 1, 1];
        let l = semihard_triplet_loss(&e, &labels, 1.5).unwrap();
        assert!((scalar(&l) - 1.0625).abs() < 1e-6, "{}", scalar(&l));
        // margin 0.5: only (2,3) is active, 0.5 + 3.0625 − 0.5625 = 3 → 3 / 4
        let l = semihard_triplet_loss(&e, &labels, 0.5).unwrap();
        assert!((scalar(&l) - 0.75).abs() < 1e-6, "{}", scalar(&l));
        // the same points in 2-D (second coordinate 0) give the same loss
        let e2 = t(&[0.0, 0.0, 1.0, 0.0, 0.75, 0.0, 2.5, 0.0], 4, 2);
        let l2 = semihard_triplet_loss(&e2, &labels, 1.5).unwrap();
        assert!((scalar(&l2) - 1.0625).abs() < 1e-6);

        // gradient at margin 1.5: loss = (d10 − d13 + d23 − d20 + const) / 4, so
        // ∂/∂x0 = (−2(x1−x0) + 2(x2−x0)) / 4 = (−2 + 1.5) / 4 = −0.125
        // ∂/∂x1 = (2(x1−x0) − 2(x1−x3)) / 4 = (2 + 3) / 4 = 1.25
        // ∂/∂x2 = (2(x2−x3) − 2(x2−x0)) / 4 = (−3.5 − 1.5) / 4 = −1.25
        // ∂/∂x3 = (2(x1−x3) − 2(x2−x3)) / 4 = (−3 + 3.5) / 4 = 0.125
        let v = Var::from_tensor(&e).unwrap();
        let l = semihard_triplet_loss(v.as_tensor(), &labels, 1.5).unwrap();
        let g = l.backward().unwrap().get(v.as_tensor()).unwrap().clone();
        let g: Vec<f32> = g.flatten_all().unwrap().to_vec1().unwrap();
        for (got, want) in g.iter().zip([-0.125f32, 1.25, -1.25, 0.125]) {
            assert!((got - want).abs() < 1e-5, "{g:?}");
        }
    }

    #[test]
    fn semihard_zero_when_classes_are_far_apart() {
        // two tight classes 10 apart: d_ap ≤ 0.02, every negative ≈ 100 > margin + d_ap
        let e = t(
            &[
                0.0, 0.0, 0.1, 0.0, 0.0, 0.1, 10.0, 0.0, 10.1, 0.0, 10.0, 0.1,
            ],
            6,
            2,
        );
        let labels = [0, 0, 0, 1, 1, 1];
        assert_eq!(
            scalar(&semihard_triplet_loss(&e, &labels, 0.5).unwrap()),
            0.0
        );
        // a huge margin makes it positive again: margin + d_ap − d_an*
        assert!(scalar(&semihard_triplet_loss(&e, &labels, 200.0).unwrap()) > 90.0);
        // a single class: no negatives, loss = margin + mean d_ap
        let one = semihard_triplet_loss(&t(&[0.0, 1.0], 2, 1), &[3, 3], 0.5).unwrap();
        assert!((scalar(&one) - 1.5).abs() < 1e-6);
        assert!(semihard_triplet_loss(&e, &[0, 1, 2, 3, 4, 5], 0.5).is_err());
        assert!(semihard_triplet_loss(&e, &[0, 1], 0.5).is_err());
    }
}
