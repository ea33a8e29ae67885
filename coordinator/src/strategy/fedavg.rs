//! FedAvg (McMahan et al. 2017, Algorithm 1): the new global model is the sample-weighted
//! mean of the client models, w = Σ_k (n_k / n) w_k, n = Σ_k n_k; no server state.
//!
//! Its aggregator, [`WeightedMean`], is *streaming*: each update is folded into an `f64`
//! running sum as it arrives and then dropped, so memory holds one accumulator and the update
//! being added, whatever the number of clients. Summing in `f64` makes the result independent
//! of arrival order to within `f32` rounding (in practice bit-identical after the final cast).

use anyhow::{bail, Result};
use fedssl_shared::weights::{TensorData, WeightSet};
use fedssl_shared::weights_file::WeightsFile;

use crate::strategy::validate::{check_finite, Refusal, UpdateLayout};
use crate::strategy::{Buffering, RoundAggregator, Strategy};

/// FedAvg: the round's weighted mean is the next global model.
pub struct FedAvg;

impl Strategy for FedAvg {
    fn name(&self) -> &'static str {
        "fedavg"
    }

    fn buffering(&self) -> Buffering {
        Buffering::Streaming
    }

    fn begin_round(&self, global: &WeightSet) -> Box<dyn RoundAggregator> {
        Box::new(WeightedMean::new(global))
    }

    fn apply_reads_global(&self) -> bool {
        false
    }

    fn apply(&mut self, _global: &WeightSet, round: Box<dyn RoundAggregator>) -> Result<WeightSet> {
        round.finish()
    }
}

/// Streaming sample-weighted average of client weight sets.
pub struct WeightedMean {
    layout: UpdateLayout,
    sums: Vec<(String, Vec<usize>, Vec<f64>)>,
    total_samples: u64,
    contributions: usize,
}

impl WeightedMean {
    /// Starts an average whose updates must have the names and shapes of `global`
    /// (the weights the round started from).
    pub fn new(global: &WeightSet) -> Self {
        let sums = global
            .tensors
            .iter()
            .map(|(n, t)| (n.clone(), t.shape.clone(), Vec::new()))
            .collect();
        Self {
            layout: UpdateLayout::of(global),
            sums,
            total_samples: 0,
            contributions: 0,
        }
    }

    /// Validates `update` ([`UpdateLayout::check`]) and, only if it is valid, adds it with
    /// weight `num_samples`.
    pub fn add(&mut self, update: &WeightSet, num_samples: u64) -> Result<(), Refusal> {
        self.layout.check(update, num_samples)?;
        let w = num_samples as f64;
        for (name, _, sum) in &mut self.sums {
            fold(sum, 0, &update.tensors[name.as_str()].data, w);
        }
        self.total_samples += num_samples;
        self.contributions += 1;
        Ok(())
    }

    /// [`Self::add`] for an update held in `file` (spooled to disk as it arrived), reading one
    /// tensor of it at a time: the layout is checked, then every tensor's values are read and
    /// checked, and only if all pass are they read again, tensor by tensor, into the sum — the
    /// same sum [`Self::add`] makes, bit for bit. Returns the refusal of an invalid update,
    /// which changes nothing. Errors when the file cannot be read; if that happens while the
    /// values are being added, the sum holds part of the update and the round's aggregate
    /// must be discarded.
    pub fn add_file(
        &mut self,
        file: &WeightsFile,
        num_samples: u64,
    ) -> Result<Result<(), Refusal>> {
        let layout = self.layout.check_tensors(
            num_samples,
            |name| file.shape(name).map(|s| (s, s.iter().product())),
            file.shapes().map(|(n, _)| n),
        );
        if let Err(refusal) = layout {
            return Ok(Err(refusal));
        }
        for (name, _, _) in &self.sums {
            let finite =
                file.read_chunks(name, |start, values| check_finite(name, start, values))?;
            if let Err(refusal) = finite {
                return Ok(Err(refusal));
            }
        }
        let w = num_samples as f64;
        for (name, shape, sum) in &mut self.sums {
            if sum.is_empty() {
                sum.reserve_exact(shape.iter().product());
            }
            file.read_chunks(name, |start, values| {
                fold(sum, start, values, w);
                Ok::<(), ()>(())
            })?
            .ok();
        }
        self.total_samples += num_samples;
        self.contributions += 1;
        Ok(Ok(()))
    }

    /// Number of updates added so far.
    pub fn contributions(&self) -> usize {
        self.contributions
    }

    /// Σ n_k of the updates added so far.
    pub fn total_samples(&self) -> u64 {
        self.total_samples
    }

    /// The weighted mean. Errors if no update was added.
    pub fn finish(self) -> Result<WeightSet> {
        if self.contributions == 0 {
            bail!("no valid update to aggregate");
        }
        let n = self.total_samples as f64;
        let mut out = WeightSet::default();
        for (name, shape, sum) in self.sums {
            let data = sum.into_iter().map(|s| (s / n) as f32).collect();
            out.tensors.insert(name, TensorData { shape, data });
        }
        Ok(out)
    }
}

/// `sum[start..] += w · src`, element by element, in `f64`, for the values `src` of a tensor
/// from its value `start` on. Where the sum ends at `start` (the first update: the sums are
/// allocated by it, not when the round begins, so that a spooled round holds nothing of them
/// before the global weights have left memory; a file's update comes piece by piece), the
/// sum is extended by `0 + w · src`, what adding to zeros gives, bit for bit (a −0 becomes
/// +0).
fn fold(sum: &mut Vec<f64>, start: usize, src: &[f32], w: f64) {
    if sum.len() == start {
        sum.extend(src.iter().map(|&v| 0.0 + w * v as f64));
    } else {
        for (s, &v) in sum[start..start + src.len()].iter_mut().zip(src) {
            *s += w * v as f64;
        }
    }
}

impl RoundAggregator for WeightedMean {
    fn add(&mut self, update: &WeightSet, num_samples: u64) -> Result<(), Refusal> {
        WeightedMean::add(self, update, num_samples)
    }

    fn add_file(&mut self, update: &WeightsFile, num_samples: u64) -> Result<Result<(), Refusal>> {
        WeightedMean::add_file(self, update, num_samples)
    }

    fn contributions(&self) -> usize {
        self.contributions
    }

    fn total_samples(&self) -> u64 {
        self.total_samples
    }

    fn finish(self: Box<Self>) -> Result<WeightSet> {
        WeightedMean::finish(*self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ws(a: [f32; 2], b: f32) -> WeightSet {
        let mut w = WeightSet::default();
        w.tensors.insert(
            "layer.weight".into(),
            TensorData {
                shape: vec![2],
                data: a.to_vec(),
            },
        );
        w.tensors.insert(
            "bn.running_var".into(),
            TensorData {
                shape: vec![1],
                data: vec![b],
            },
        );
        w
    }

    #[test]
    fn weighted_mean_by_hand_with_unequal_samples() {
        // n = 1, 3, 4 → weights 1/8, 3/8, 4/8.
        let u = [
            (ws([1.0, 2.0], 8.0), 1u64),
            (ws([3.0, -2.0], 0.0), 3),
            (ws([5.0, 4.0], 2.0), 4),
        ];
        let mut agg = WeightedMean::new(&ws([0.0, 0.0], 0.0));
        for (w, n) in &u {
            agg.add(w, *n).unwrap();
        }
        assert_eq!(agg.total_samples(), 8);
        let out = agg.finish().unwrap();
        // (1*1 + 3*3 + 4*5)/8 = 30/8 = 3.75 ; (1*2 + 3*-2 + 4*4)/8 = 12/8 = 1.5 ; (8 + 0 + 8)/8 = 2
        assert_eq!(out.tensors["layer.weight"].data, vec![3.75, 1.5]);
        assert_eq!(out.tensors["bn.running_var"].data, vec![2.0]);
    }

    #[test]
    fn arrival_order_does_not_change_the_result() {
        let u = [
            (ws([0.1, 0.7], 1.3), 17u64),
            (ws([-0.3, 0.25], 0.9), 5),
            (ws([2.5, -1.1], 1.1), 123),
        ];
        let orders = [[0, 1, 2], [2, 1, 0], [1, 2, 0], [2, 0, 1]];
        let mut results = Vec::new();
        for o in orders {
            let mut agg = WeightedMean::new(&ws([0.0, 0.0], 0.0));
            for i in o {
                agg.add(&u[i].0, u[i].1).unwrap();
            }
            results.push(agg.finish().unwrap());
        }
        for r in &results[1..] {
            assert_eq!(r, &results[0]);
        }
        let expect0 = (17.0 * 0.1f32 as f64 + 5.0 * -0.3f32 as f64 + 123.0 * 2.5) / 145.0;
        assert!((results[0].tensors["layer.weight"].data[0] as f64 - expect0).abs() < 1e-6);
    }

    #[test]
    fn bad_updates_are_refused_and_never_aggregated() {
        let mut agg = WeightedMean::new(&ws([0.0, 0.0], 0.0));
        agg.add(&ws([2.0, 2.0], 1.0), 2).unwrap();
        let mut nan = ws([f32::NAN, 0.0], 1.0);
        assert!(agg.add(&nan, 5).is_err());
        nan.tensors.get_mut("layer.weight").unwrap().data[0] = f32::INFINITY;
        assert!(agg.add(&nan, 5).is_err());
        let mut shape = ws([1.0, 1.0], 1.0);
        shape.tensors.get_mut("layer.weight").unwrap().shape = vec![1, 2];
        let e = agg.add(&shape, 5).unwrap_err();
        assert!(format!("{e:#}").contains("layer.weight"));
        let mut renamed = ws([1.0, 1.0], 1.0);
        let t = renamed.tensors.remove("bn.running_var").unwrap();
        renamed.tensors.insert("bn.running_varr".into(), t);
        assert!(agg.add(&renamed, 5).is_err());
        assert!(agg.add(&ws([1.0, 1.0], 1.0), 0).is_err());
        assert_eq!(agg.contributions(), 1);
        // Only the one good update is in the mean.
        assert_eq!(agg.finish().unwrap(), ws([2.0, 2.0], 1.0));
    }

    #[test]
    fn under_partial_participation_only_the_sampled_accepted_clients_n_k_count() {
        // 6 parties with these n_k; the round samples {1, 3, 4} (participation 0.5) and client
        // 4's update is refused (NaN). FedAvg is (n_1 w_1 + n_3 w_3) / (n_1 + n_3), not
        // FedX's reference code, which divides by every party's n_k (Σ = 2100).
        let n = [100u64, 200, 300, 400, 500, 600];
        let w = |k: usize| ws([k as f32, 10.0 * k as f32], k as f32);
        let mut agg = WeightedMean::new(&ws([0.0, 0.0], 0.0));
        for k in [1usize, 3, 4] {
            let mut u = w(k);
            if k == 4 {
                u.tensors.get_mut("layer.weight").unwrap().data[1] = f32::NAN;
            }
            let _ = agg.add(&u, n[k]);
        }
        assert_eq!((agg.contributions(), agg.total_samples()), (1 + 1, 600));
        let out = agg.finish().unwrap();
        // (200·1 + 400·3) / 600 = 1400/600 = 7/3 ; (200·10 + 400·30) / 600 = 70/3
        let expect = [7.0f64 / 3.0, 70.0 / 3.0];
        for (got, want) in out.tensors["layer.weight"].data.iter().zip(expect) {
            assert_eq!(*got, want as f32);
        }
        assert_eq!(
            out.tensors["bn.running_var"].data,
            vec![(7.0f64 / 3.0) as f32]
        );
        // the bug's value, 1400/2100 = 2/3, is what it is not
        assert_ne!(out.tensors["layer.weight"].data[0], (2.0f64 / 3.0) as f32);
    }

    #[test]
    fn an_update_read_from_its_file_adds_what_it_adds_in_memory_and_a_bad_one_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, w: &WeightSet| {
            let p = dir.path().join(name);
            w.save(&p).unwrap();
            WeightsFile::open(&p).unwrap()
        };
        let u = [
            (ws([0.1, 0.7], 1.3), 17u64),
            (ws([-0.3, 0.25], 0.9), 5),
            (ws([2.5, -1.1], 1.1), 123),
        ];
        let mut memory = WeightedMean::new(&ws([0.0, 0.0], 0.0));
        let mut files = WeightedMean::new(&ws([0.0, 0.0], 0.0));
        for (k, (w, n)) in u.iter().enumerate() {
            memory.add(w, *n).unwrap();
            files
                .add_file(&file(&format!("u{k}"), w), *n)
                .unwrap()
                .unwrap();
        }
        // refused, each for the reason add gives, and the sum is untouched
        let mut nan = ws([0.0, 0.0], 1.0);
        nan.tensors.get_mut("layer.weight").unwrap().data[1] = f32::NAN;
        let mut shape = ws([1.0, 1.0], 1.0);
        shape.tensors.get_mut("layer.weight").unwrap().shape = vec![1, 2];
        let mut extra = ws([1.0, 1.0], 1.0);
        extra.tensors.insert(
            "head.bias".into(),
            TensorData {
                shape: vec![1],
                data: vec![0.0],
            },
        );
        for (k, (bad, n)) in [
            (nan, 5u64),
            (shape, 5),
            (extra, 5),
            (ws([1.0, 1.0], 1.0), 0),
        ]
        .iter()
        .enumerate()
        {
            let got = files.add_file(&file(&format!("bad{k}"), bad), *n).unwrap();
            // (as text: a NaN in the refusal is not equal to itself)
            let want = memory.layout.check(bad, *n).unwrap_err().to_string();
            assert_eq!(got.unwrap_err().to_string(), want);
        }
        assert_eq!((files.contributions(), files.total_samples()), (3, 145));
        assert_eq!(files.finish().unwrap(), memory.finish().unwrap());
    }

    #[test]
    fn a_non_finite_value_past_the_first_piece_of_a_file_is_named_at_its_index() {
        let n = fedssl_shared::weights_file::CHUNK_VALUES + 5;
        let one = |v: f32, at: usize| {
            let mut w = WeightSet::default();
            let mut data = vec![0.5f32; n];
            data[at] = v;
            w.tensors.insert(
                "t".into(),
                TensorData {
                    shape: vec![n],
                    data,
                },
            );
            w
        };
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("u");
        let bad = one(f32::INFINITY, n - 3);
        bad.save(&p).unwrap();
        let mut agg = WeightedMean::new(&one(0.0, 0));
        let got = agg.add_file(&WeightsFile::open(&p).unwrap(), 1).unwrap();
        assert_eq!(got.unwrap_err(), agg.layout.check(&bad, 1).unwrap_err());
        assert_eq!(agg.contributions(), 0);
        // a good one of two pieces is added whole
        one(2.0, n - 1).save(&p).unwrap();
        agg.add_file(&WeightsFile::open(&p).unwrap(), 1)
            .unwrap()
            .unwrap();
        let out = agg.finish().unwrap();
        assert_eq!(
            (out.tensors["t"].data[0], out.tensors["t"].data[n - 1]),
            (0.5, 2.0)
        );
    }

    #[test]
    fn a_negative_zero_gives_what_adding_to_zeros_gives() {
        // the sums start empty and the first update makes them: 0 + (−0) is +0, as before
        let mut agg = WeightedMean::new(&ws([0.0, 0.0], 0.0));
        agg.add(&ws([-0.0, 1.0], -0.0), 2).unwrap();
        let out = agg.finish().unwrap();
        assert_eq!(
            out.tensors["layer.weight"].data[0].to_bits(),
            0.0f32.to_bits()
        );
        assert_eq!(
            out.tensors["bn.running_var"].data[0].to_bits(),
            0.0f32.to_bits()
        );
    }

    #[test]
    fn empty_round_is_an_error() {
        assert!(WeightedMean::new(&ws([0.0, 0.0], 0.0)).finish().is_err());
    }
}
