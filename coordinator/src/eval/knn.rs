//! The k-NN monitor: a cheap measure of the global backbone during training (`eval.knn_every`
//! rounds, written to `rounds.jsonl` as `knn_top1`), Wu et al. 2018's weighted k-nearest-
//! neighbour vote on the pre-logits of small fixed labelled and test subsets.

use anyhow::{ensure, Result};
use candle_core::{Device, Tensor};
use fedssl_shared::config::{Pooling, Scenario};
use fedssl_shared::data::ImageDataset;
use fedssl_shared::model::ModelConfig;
use fedssl_shared::pretext::EvalView;
use fedssl_shared::weights::WeightSet;
use rand::seq::SliceRandom;

use crate::eval::features::{extract_layers, load_backbone, pre_logits, HostFeatures};

/// k-nearest-neighbour top-1 (Wu et al. 2018's monitor): cosine similarity between
/// L2-normalised `test (M, D)` and `train (N, D)` features, the `k` most similar training
/// images vote for their label with weight `exp(sim / 0.07)`; the largest total wins (lowest
/// class on a tie). Returns the fraction of test images whose vote is their label.
pub fn knn_top1(
    train: &HostFeatures,
    train_y: &[u32],
    test: &HostFeatures,
    test_y: &[u32],
    num_classes: usize,
    k: usize,
) -> Result<f64> {
    ensure!(
        train.rows > 0 && test.rows > 0 && k > 0,
        "k-NN: empty set or k = 0"
    );
    let norm = |f: &HostFeatures| -> Result<Tensor> {
        let mut v = f.data.clone();
        for row in v.chunks_exact_mut(f.dim) {
            let n = row.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
            row.iter_mut().for_each(|x| *x /= n);
        }
        Ok(Tensor::from_vec(v, (f.rows, f.dim), &Device::Cpu)?)
    };
    let sim = norm(test)?.matmul(&norm(train)?.t()?)?;
    let sim = sim.flatten_all()?.to_vec1::<f32>()?;
    let mut hits = 0usize;
    let mut order: Vec<usize> = (0..train.rows).collect();
    for (row, &y) in sim.chunks_exact(train.rows).zip(test_y) {
        let kk = k.min(train.rows);
        order.select_nth_unstable_by(kk - 1, |&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
        let mut votes = vec![0f64; num_classes];
        for &i in &order[..kk] {
            votes[train_y[i] as usize] += (f64::from(row[i]) / 0.07).exp();
        }
        let best = votes
            .iter()
            .enumerate()
            .fold(0, |b, (c, &v)| if v > votes[b] { c } else { b });
        hits += usize::from(best == y as usize);
    }
    Ok(hits as f64 / test.rows as f64)
}

/// The k-NN monitor of `eval.knn_every`: fixed small labelled and test subsets, scored on
/// each round's global backbone.
pub struct KnnMonitor {
    model: ModelConfig,
    view: EvalView,
    train: ImageDataset,
    test: ImageDataset,
    k: usize,
    batch: usize,
    /// Every this many rounds (and after the last).
    pub every: usize,
}

impl KnnMonitor {
    /// The monitor of `sc` (`None` when `eval.knn_every = 0`): `eval.knn_train` images of a
    /// seeded shuffle of `train`, the first `eval.knn_test` of `test`.
    pub fn new(sc: &Scenario, train: &ImageDataset, test: &ImageDataset) -> Option<Self> {
        let e = &sc.eval;
        if e.knn_every == 0 {
            return None;
        }
        let mut idx: Vec<usize> = (0..train.len()).collect();
        idx.shuffle(&mut fedssl_shared::seed::rng(
            sc.seed,
            fedssl_shared::seed::KNN_SUBSET,
            0,
        ));
        idx.truncate(e.knn_train);
        idx.sort_unstable();
        let nt = e.knn_test.min(test.len());
        Some(Self {
            model: sc.model.clone(),
            // validated with the scenario, so this cannot fail
            view: sc.pretext.eval_view(e.view).unwrap_or(EvalView::Whole),
            train: train.subset(&idx),
            test: test.subset(&(0..nt).collect::<Vec<_>>()),
            k: e.knn_k,
            batch: e.feature_batch_size,
            every: e.knn_every,
        })
    }

    /// Whether round `round` (1-based) of `rounds` is monitored.
    pub fn due(&self, round: usize, rounds: usize) -> bool {
        round.is_multiple_of(self.every) || round == rounds
    }

    /// k-NN top-1 ([`knn_top1`]) of the backbone in `weights` on the pre-logits.
    pub fn score(&self, weights: &WeightSet) -> Result<f64> {
        let b = load_backbone(weights, &self.model)?;
        let features = |ds: &ImageDataset| {
            extract_layers(&b, ds, &self.view, self.batch, false, Pooling::Global, 1)
        };
        let (tr, te) = (features(&self.train)?, features(&self.test)?);
        knn_top1(
            pre_logits(&tr)?,
            &self.train.labels,
            pre_logits(&te)?,
            &self.test.labels,
            self.train.num_classes,
            self.k,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn knn_on_hand_made_features() {
        let tr =
            HostFeatures::new(4, 2, vec![1.0, 0.0, 0.9, 0.1, 0.0, 1.0, 0.1, 0.9], "tr").unwrap();
        let te = HostFeatures::new(2, 2, vec![2.0, 0.1, 0.2, 3.0], "te").unwrap();
        assert_eq!(
            knn_top1(&tr, &[0, 0, 1, 1], &te, &[0, 1], 2, 1).unwrap(),
            1.0
        );
        assert_eq!(
            knn_top1(&tr, &[0, 0, 1, 1], &te, &[1, 0], 2, 2).unwrap(),
            0.0
        );
        // k = all: the vote is weighted by similarity, so the nearer class still wins
        assert_eq!(
            knn_top1(&tr, &[0, 0, 1, 1], &te, &[0, 1], 2, 4).unwrap(),
            1.0
        );
    }
}
