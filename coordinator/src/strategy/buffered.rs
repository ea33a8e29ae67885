//! The aggregator of the strategies that need every update of a round (coordinate-wise
//! median, trimmed mean, Krum): [`BufferedRound`] keeps each accepted update's learnable
//! weights, flattened in name order, until the round ends, and hands them to a
//! [`RobustRule`]. BatchNorm running statistics ([`super::is_running_stat`]) are not
//! buffered: they stream into FedAvg's sample-weighted mean, which is what the next global
//! model gets for them.
//!
//! Memory: one `f32` copy of the learnable weights per accepted update, i.e. at most the
//! round's sampled clients × the model's bytes; `federation.max_buffered_bytes` bounds it
//! before the first round ([`super::check_buffer_bound`]).
//!
//! Order: before the rule sees them the updates are sorted into a canonical order (by
//! samples, then by their values), so the result does not depend on arrival order, ties
//! included.

use std::cmp::Ordering;

use anyhow::Result;
use fedssl_shared::weights::WeightSet;

use crate::strategy::fedavg::WeightedMean;
use crate::strategy::validate::Refusal;
use crate::strategy::{is_running_stat, Buffering, RoundAggregator, Strategy};

/// One buffered update: its learnable weights flattened in name order, and its n_k.
#[derive(Clone, Debug, PartialEq)]
pub struct Buffered {
    /// The learnable values, tensors in name order, each row-major.
    pub values: Vec<f32>,
    /// Training samples the client reported.
    pub samples: u64,
}

/// A rule that combines a round's buffered updates into the next learnable weights.
pub trait RobustRule: Send + Sync + Clone + 'static {
    /// The strategy's name (`"median"`).
    fn name(&self) -> &'static str;

    /// The next learnable values (as long as each update's) from the round's updates, in
    /// canonical order; `updates` is not empty. Errors when the rule cannot apply to this
    /// many updates (Krum's n > 2f + 2).
    fn combine(&self, updates: &[Buffered]) -> Result<Vec<f32>>;
}

/// A buffered strategy: the rule `R` on every round's updates.
pub struct Robust<R>(pub R);

impl<R: RobustRule> Strategy for Robust<R> {
    fn name(&self) -> &'static str {
        self.0.name()
    }

    fn buffering(&self) -> Buffering {
        Buffering::AllUpdates
    }

    fn begin_round(&self, global: &WeightSet) -> Box<dyn RoundAggregator> {
        Box::new(BufferedRound::new(global, self.0.clone()))
    }

    fn apply(&mut self, _global: &WeightSet, round: Box<dyn RoundAggregator>) -> Result<WeightSet> {
        round.finish()
    }
}

/// One round of a buffered strategy.
pub struct BufferedRound<R> {
    rule: R,
    mean: WeightedMean,
    learnable: Vec<String>,
    updates: Vec<Buffered>,
}

impl<R: RobustRule> BufferedRound<R> {
    /// A round whose updates must have the layout of `global`.
    pub fn new(global: &WeightSet, rule: R) -> Self {
        Self {
            rule,
            mean: WeightedMean::new(global),
            learnable: global
                .tensors
                .keys()
                .filter(|n| !is_running_stat(n))
                .cloned()
                .collect(),
            updates: Vec::new(),
        }
    }
}

/// The canonical order of buffered updates: by samples, then by values (`total_cmp`).
fn canonical(a: &Buffered, b: &Buffered) -> Ordering {
    a.samples.cmp(&b.samples).then_with(|| {
        a.values
            .iter()
            .zip(&b.values)
            .map(|(x, y)| x.total_cmp(y))
            .find(|o| o.is_ne())
            .unwrap_or(Ordering::Equal)
    })
}

impl<R: RobustRule> RoundAggregator for BufferedRound<R> {
    fn add(&mut self, update: &WeightSet, num_samples: u64) -> Result<(), Refusal> {
        self.mean.add(update, num_samples)?;
        let mut values = Vec::new();
        for name in &self.learnable {
            values.extend_from_slice(&update.tensors[name.as_str()].data);
        }
        self.updates.push(Buffered {
            values,
            samples: num_samples,
        });
        Ok(())
    }

    fn contributions(&self) -> usize {
        self.mean.contributions()
    }

    fn total_samples(&self) -> u64 {
        self.mean.total_samples()
    }

    fn finish(self: Box<Self>) -> Result<WeightSet> {
        let BufferedRound {
            rule,
            mean,
            learnable,
            mut updates,
        } = *self;
        let mut out = mean.finish()?;
        updates.sort_by(canonical);
        let combined = rule.combine(&updates)?;
        let mut at = 0;
        for name in &learnable {
            if let Some(t) = out.tensors.get_mut(name) {
                let n = t.data.len();
                t.data.copy_from_slice(&combined[at..at + n]);
                at += n;
            }
        }
        Ok(out)
    }
}

/// Coordinate `j` of every update, sorted (`total_cmp`), into `col`.
pub fn sorted_column(updates: &[Buffered], j: usize, col: &mut Vec<f32>) {
    col.clear();
    col.extend(updates.iter().map(|u| u.values[j]));
    col.sort_by(f32::total_cmp);
}

/// Helpers of the robust rules' tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use fedssl_shared::weights::TensorData;

    /// A weight set of one learnable tensor `w` and one running statistic `bn.running_var`.
    pub fn ws(w: &[f32], bn: f32) -> WeightSet {
        let mut s = WeightSet::default();
        for (name, data) in [("w", w.to_vec()), ("bn.running_var", vec![bn])] {
            let shape = vec![data.len()];
            s.tensors.insert(name.into(), TensorData { shape, data });
        }
        s
    }

    /// The round's result of `s` on `updates` (weights, samples), from a zero global.
    pub fn aggregate(s: &mut dyn Strategy, updates: &[(WeightSet, u64)]) -> WeightSet {
        let d = updates[0].0.tensors["w"].data.len();
        let g = ws(&vec![0.0; d], 1.0);
        crate::strategy::server_opt::testing::round(s, &g, updates)
    }

    /// Learnable values of a result.
    pub fn w(r: &WeightSet) -> Vec<f32> {
        r.tensors["w"].data.clone()
    }

    /// Honest clients near (1, 2, 3), one sending 100× the weights: the robust rule's result
    /// stays within 0.5 of the honest values, FedAvg's does not; the running statistic takes
    /// the weighted mean either way; the result does not depend on arrival order.
    pub fn ignores_a_scaled_client(make: &dyn Fn() -> Box<dyn Strategy>) {
        let honest = [
            [1.0, 2.0, 3.0],
            [1.1, 1.9, 3.2],
            [0.9, 2.1, 2.9],
            [1.05, 2.05, 3.05],
            [0.95, 1.95, 2.95],
            [1.02, 1.98, 3.01],
        ];
        let mut u: Vec<(WeightSet, u64)> = honest
            .iter()
            .enumerate()
            .map(|(i, h)| (ws(h, 1.0), 10 + i as u64))
            .collect();
        u.push((ws(&[100.0, 200.0, 300.0], 1.0), 10));
        let robust = aggregate(make().as_mut(), &u);
        for (v, h) in w(&robust).iter().zip([1.0, 2.0, 3.0]) {
            assert!((v - h).abs() < 0.5, "{:?}", w(&robust));
        }
        assert_eq!(robust.tensors["bn.running_var"].data, vec![1.0]);
        let fedavg = aggregate(&mut crate::strategy::fedavg::FedAvg, &u);
        assert!(w(&fedavg)[0] > 10.0, "{:?}", w(&fedavg));
        let mut rev = u.clone();
        rev.reverse();
        rev.swap(1, 4);
        assert_eq!(aggregate(make().as_mut(), &rev), robust);
    }
}
