//! The few-label curve of the evaluation suite (`eval.labels_per_class`,
//! `eval.label_fractions`): the linear probe refitted on `k` labelled images per class (or a
//! fraction of each class), drawn `eval.label_seeds` times with the seed, reported as mean
//! and standard deviation, then the whole labelled set (`"all"`).

use anyhow::Result;
use fedssl_shared::config::EvalConfig;
use rand::seq::SliceRandom;
use rand::{rngs::StdRng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::eval::features::HostFeatures;
use crate::eval::probe::scoring::ProbeResult;

/// One point of the few-label curve.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FewLabelResult {
    /// `"10/class"`, `"1%"` or `"all"`.
    pub label: String,
    /// `k` for a per-class count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels_per_class: Option<usize>,
    /// The fraction for a per-class fraction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fraction: Option<f64>,
    /// Labelled images of each draw (mean over the draws).
    pub train_labels: f64,
    /// Labelled images per class (`train_labels / num_classes`): the x of the few-label curve.
    pub per_class: f64,
    /// Draws averaged.
    pub seeds: usize,
    /// Mean top-1 over the draws.
    pub top1_mean: f64,
    /// Population standard deviation of top-1 over the draws.
    pub top1_std: f64,
    /// Mean top-5.
    pub top5_mean: f64,
    /// Standard deviation of top-5.
    pub top5_std: f64,
}

/// How many images per class a few-label subset takes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum PerClass {
    /// `k` per class (all of a class that has fewer).
    Count(usize),
    /// `max(1, round(f · n_c))` of class `c`'s `n_c` images.
    Fraction(f64),
}

/// A few-label subset of `labels`: for each class in `0..num_classes`, its indices shuffled
/// by one `StdRng::seed_from_u64(seed)` (classes in order) and the first `take` kept. Sorted.
/// The same seed gives the same subset, and for counts `k < k'` the `k` subset is contained
/// in the `k'` one.
pub fn few_label_subset(
    labels: &[u32],
    num_classes: usize,
    take: PerClass,
    seed: u64,
) -> Vec<usize> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = Vec::new();
    for c in 0..num_classes {
        let mut idx: Vec<usize> = (0..labels.len())
            .filter(|&i| labels[i] as usize == c)
            .collect();
        idx.shuffle(&mut rng);
        let n = match take {
            PerClass::Count(k) => k,
            PerClass::Fraction(f) => ((f * idx.len() as f64).round() as usize).max(1),
        };
        out.extend_from_slice(&idx[..n.min(idx.len())]);
    }
    out.sort_unstable();
    out
}

/// The curve for the labelled set's `features` (`labels.len()` rows, `num_classes` classes)
/// as `e` asks: one point per `eval.labels_per_class` count and per `eval.label_fractions`
/// fraction, each the mean and standard deviation over `eval.label_seeds` subsets
/// ([`few_label_subset`], seeded from `seed`'s `few-labels` stream) of `fit` (the linear probe
/// on the subset's features and labels); then, unless there is no point, `all`: `full`, the
/// probe on the whole labelled set. Errors when a probe fails.
pub fn few_label_curve(
    e: &EvalConfig,
    seed: u64,
    features: &HostFeatures,
    labels: &[u32],
    num_classes: usize,
    full: &ProbeResult,
    fit: impl Fn(&HostFeatures, &[u32]) -> Result<ProbeResult>,
) -> Result<Vec<FewLabelResult>> {
    let curve = Curve {
        e,
        seed,
        features,
        labels,
        num_classes,
        fit: &fit,
    };
    let points = e
        .labels_per_class
        .iter()
        .map(|&k| (format!("{k}/class"), PerClass::Count(k)))
        .chain(
            e.label_fractions
                .iter()
                .map(|&f| (format!("{}%", 100.0 * f), PerClass::Fraction(f))),
        );
    let mut few = points
        .map(|(label, take)| curve.point(label, take))
        .collect::<Result<Vec<_>>>()?;
    if !few.is_empty() {
        few.push(FewLabelResult {
            label: "all".into(),
            labels_per_class: None,
            fraction: Some(1.0),
            train_labels: full.train_labels as f64,
            per_class: full.train_labels as f64 / num_classes as f64,
            seeds: 1,
            top1_mean: full.top1,
            top1_std: 0.0,
            top5_mean: full.top5,
            top5_std: 0.0,
        });
    }
    Ok(few)
}

/// What every point of [`few_label_curve`] is drawn from and fitted with.
struct Curve<'a> {
    e: &'a EvalConfig,
    seed: u64,
    features: &'a HostFeatures,
    labels: &'a [u32],
    num_classes: usize,
    fit: &'a dyn Fn(&HostFeatures, &[u32]) -> Result<ProbeResult>,
}

impl Curve<'_> {
    /// The point `label`: `take` images per class, over `eval.label_seeds` draws.
    fn point(&self, label: String, take: PerClass) -> Result<FewLabelResult> {
        let (e, k, labels) = (self.e, self.num_classes, self.labels);
        let (mut t1, mut t5, mut n) = (vec![], vec![], vec![]);
        for s in 0..e.label_seeds {
            let idx = few_label_subset(
                labels,
                k,
                take,
                fedssl_shared::seed::derive(self.seed, fedssl_shared::seed::FEW_LABELS, s as u64),
            );
            let y: Vec<u32> = idx.iter().map(|&i| labels[i]).collect();
            let r = (self.fit)(&self.features.select(&idx), &y)?;
            t1.push(r.top1);
            t5.push(r.top5);
            n.push(idx.len() as f64);
        }
        let ((m1, s1), (m5, s5)) = (mean_std(&t1), mean_std(&t5));
        let train_labels = mean_std(&n).0;
        let per_class = train_labels / k as f64;
        if let PerClass::Count(want) = take {
            if per_class < want as f64 {
                tracing::warn!(
                    "eval.labels_per_class {want}: some classes of the {} labelled images (eval.train_labels) hold fewer, so the point `{label}` used {per_class:.1} per class on average (its per_class in eval.json)",
                    labels.len()
                );
            }
        }
        tracing::info!(%label, top1 = m1, std = s1, "few-label probe");
        Ok(FewLabelResult {
            label,
            labels_per_class: match take {
                PerClass::Count(k) => Some(k),
                _ => None,
            },
            fraction: match take {
                PerClass::Fraction(f) => Some(f),
                _ => None,
            },
            train_labels,
            per_class,
            seeds: e.label_seeds,
            top1_mean: m1,
            top1_std: s1,
            top5_mean: m5,
            top5_std: s5,
        })
    }
}

/// Mean and population standard deviation of `v`.
fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n;
    (
        m,
        (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / n).sqrt(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn few_label_subset_has_exactly_k_per_class_and_follows_the_seed() {
        let labels: Vec<u32> = (0..1000).map(|i| (i * 7 % 10) as u32).collect();
        let a = few_label_subset(&labels, 10, PerClass::Count(10), 1);
        assert_eq!(a.len(), 100);
        let mut counts = [0usize; 10];
        a.iter().for_each(|&i| counts[labels[i] as usize] += 1);
        assert_eq!(counts, [10; 10]);
        assert_eq!(a, few_label_subset(&labels, 10, PerClass::Count(10), 1));
        assert_ne!(a, few_label_subset(&labels, 10, PerClass::Count(10), 2));
        let big = few_label_subset(&labels, 10, PerClass::Count(30), 1);
        assert!(a.iter().all(|i| big.contains(i)), "nested for one seed");
        // more than a class has: all of it
        assert_eq!(
            few_label_subset(&labels, 10, PerClass::Count(1000), 1).len(),
            1000
        );
        let f = few_label_subset(&labels, 10, PerClass::Fraction(0.01), 3);
        assert_eq!(f.len(), 10, "1 % of 100 per class");
        let w = a.windows(2).all(|p| p[0] < p[1]);
        assert!(w, "sorted, no repeats");
    }
}
