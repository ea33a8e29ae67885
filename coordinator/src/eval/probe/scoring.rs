//! What every probe reports and how it is scored: [`ProbeResult`], top-k accuracy with ties
//! broken at random in expectation, and the label check all probes share.

use anyhow::{bail, ensure, Result};

/// Outcome of a probe ([`super::linear::linear_probe`], [`super::mlp::mlp_probe`]); accuracies are fractions in `[0, 1]`.
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
    /// given, see [`super::selection::probe_with_selection`]).
    #[serde(default)]
    pub weight_decay: f64,
    /// Validation top-1 of each weight decay of the grid, in grid order (empty without selection).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub val_top1: Vec<f64>,
}

/// Top-k accuracy: the fraction of the rows of row-major `logits (N, K)` (`N =
/// labels.len()`, `K = num_classes`) whose true label is among the `k` largest logits.
///
/// Ties are broken at random, in expectation: with `g` classes whose logit is larger than the
/// true class's and `e` others equal to it, the true class lands uniformly among positions
/// `g + 1 ..= g + e + 1`, so the row scores `min(1, (k − g) / (e + 1))` when `g < k`, else 0
/// (a backbone whose features are constant scores chance, `k / K`, not 1). Without ties this
/// is the usual hit or miss, and `k >= K` always gives 1.0. Errors on an empty
/// `logits`, a row/label count mismatch, a label `>= K`, `k = 0`, or a NaN logit.
pub fn top_k_accuracy(logits: &[f32], num_classes: usize, labels: &[u32], k: usize) -> Result<f64> {
    ensure!(k > 0, "top-k accuracy: k must be at least 1");
    ensure!(
        !labels.is_empty(),
        "top-k accuracy: there are no rows to score"
    );
    ensure!(
        num_classes > 0,
        "top-k accuracy: logits have no classes (K = 0)"
    );
    ensure!(
        logits.len() == labels.len() * num_classes,
        "top-k accuracy: logits have {} rows but there are {} labels",
        logits.len() / num_classes,
        labels.len()
    );
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

/// Refuses a label `>= num_classes`, naming `what[i]`.
pub(crate) fn check_labels(labels: &[u32], num_classes: usize, what: &str) -> Result<()> {
    if let Some((i, &y)) = labels
        .iter()
        .enumerate()
        .find(|(_, &y)| y as usize >= num_classes)
    {
        bail!("{what}[{i}] = {y} is out of range for num_classes = {num_classes}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::probe::fixtures::noise;
    use candle_core::{DType, Device, Tensor};

    /// [`top_k_accuracy`] of a `(N, K)` logits tensor.
    fn top_k(logits: &Tensor, labels: &[u32], k: usize) -> Result<f64> {
        let (_, num_classes) = logits.dims2()?;
        let values = logits.flatten_all()?.to_vec1::<f32>()?;
        top_k_accuracy(&values, num_classes, labels, k)
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
        assert_eq!(top_k(&logits, &labels, 1).unwrap(), 1.0 / 3.0);
        assert_eq!(top_k(&logits, &labels, 2).unwrap(), 2.0 / 3.0);
        assert_eq!(top_k(&logits, &labels, 3).unwrap(), 2.5 / 3.0);
        assert_eq!(top_k(&logits, &labels, 4).unwrap(), 1.0);
        // k >= K: every row is a hit, as for top-5 with 4 classes.
        assert_eq!(top_k(&logits, &labels, 5).unwrap(), 1.0);
        // Other labels: row 0 label 3 has three larger → miss even at k = 3.
        assert_eq!(top_k(&logits, &[3, 2, 2], 1).unwrap(), 2.0 / 3.0);
        assert_eq!(top_k(&logits, &[3, 2, 2], 3).unwrap(), 2.0 / 3.0);
    }

    #[test]
    fn top_k_ties_are_broken_at_random_in_expectation() {
        let logits =
            Tensor::from_vec(vec![1f32, 1.0, 0.0, 1.0, 1.0, 1.0], (2, 3), &Device::Cpu).unwrap();
        // Row 0: classes 0 and 1 tie at the top: a top-1 hit half the time, a top-2 hit always.
        // Row 1: all three tie: top-1 a third of the time, top-2 two thirds, top-3 always.
        assert_eq!(top_k(&logits, &[0, 2], 1).unwrap(), (0.5 + 1.0 / 3.0) / 2.0);
        assert_eq!(top_k(&logits, &[1, 0], 2).unwrap(), (1.0 + 2.0 / 3.0) / 2.0);
        // Class 2 of row 0 has two larger logits: a miss at k = 2, a hit at k = 3.
        assert_eq!(top_k(&logits, &[2, 0], 2).unwrap(), 1.0 / 3.0);
        assert_eq!(top_k(&logits, &[2, 0], 3).unwrap(), 1.0);
        // Constant logits score chance, k / K, not 1.
        let flat = Tensor::zeros((4, 10), DType::F32, &Device::Cpu).unwrap();
        assert!((top_k(&flat, &[0, 3, 7, 9], 5).unwrap() - 0.5).abs() < 1e-12);
    }

    #[test]
    fn top_k_is_monotone_in_k() {
        let (logits, labels) = noise(500, 10, 10, 3);
        let mut last = 0.0;
        for k in 1..=10 {
            let acc = top_k(&logits, &labels, k).unwrap();
            assert!(acc >= last, "top-{k} = {acc} < top-{} = {last}", k - 1);
            last = acc;
        }
        assert_eq!(last, 1.0);
    }

    #[test]
    fn top_k_rejects_bad_input() {
        let logits = logits_3x4();
        let err = top_k(&logits, &[1, 0], 1).unwrap_err().to_string();
        assert!(err.contains("3 rows") && err.contains("2 labels"), "{err}");
        let err = top_k(&logits, &[1, 4, 0], 1).unwrap_err().to_string();
        assert!(
            err.contains("labels[1] = 4") && err.contains("num_classes = 4"),
            "{err}"
        );
        assert!(top_k(&logits, &[1, 0, 1], 0).is_err());
        let empty = Tensor::zeros((0, 4), DType::F32, &Device::Cpu).unwrap();
        assert!(top_k(&empty, &[], 1).is_err());
        let nan = Tensor::from_vec(vec![0f32, f32::NAN], (1, 2), &Device::Cpu).unwrap();
        let err = top_k(&nan, &[0], 1).unwrap_err().to_string();
        assert!(err.contains("NaN"), "{err}");
    }
}
