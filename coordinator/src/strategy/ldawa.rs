//! L-DAWA, layer-wise divergence-aware weight aggregation (Rehman, Gao, de Gusmão, Alibeigi,
//! Shen and Lane, ICCV 2023, "L-DAWA: Layer-wise Divergence Aware Weight Aggregation in
//! Federated Self-Supervised Visual Representation Learning"): each client's layer is weighted
//! by its angular agreement with the global layer the round started from.
//!
//! A *layer* l is the group of tensors whose names share everything before the last `.`
//! (`stage1.0.conv1.weight`; `stem.bn.weight` with `stem.bn.bias`), BatchNorm running
//! statistics left out. With w_g^l the global layer and w_k^l client k's (its tensors
//! concatenated in name order), n_k its samples:
//!
//! δ_k^l = max(0, cos(w_k^l, w_g^l)) = max(0, ⟨w_k^l, w_g^l⟩ / (‖w_k^l‖ ‖w_g^l‖)),
//!
//! w^l = Σ_k δ_k^l n_k w_k^l / Σ_k δ_k^l n_k.
//!
//! What is implemented, exactly: the paper's abstract states the rule (layer-wise aggregation
//! "according to the measure of angular divergence between the clients' model and the global
//! model", δ the cosine similarity); its full equation could not be read here, so this file
//! takes the normalised form above, which is FedAvg when every δ is equal (an unnormalised
//! Σ_k δ_k^l (n_k/N) w_k^l would also shrink each layer by the average δ every round). Three
//! choices of ours, stated: a negative cosine (a client layer pointing away from the global
//! one) counts 0, not a negative weight; when ‖w_k^l‖ or ‖w_g^l‖ is 0 (a zero-initialised
//! bias group in the first round) the cosine is undefined and δ = 1; when every δ_k^l of a
//! layer is 0 the layer keeps its global weights. BatchNorm running statistics take FedAvg's
//! sample-weighted mean, as under every strategy. No settings, no server state.
//!
//! Streaming: δ_k^l depends on client k's update and the global weights only, so each update
//! is folded into per-layer `f64` sums of δ·n·w and δ·n as it arrives and dropped (memory: the
//! global weights and one accumulator).

use std::collections::BTreeMap;

use anyhow::{bail, Result};
use fedssl_shared::weights::{TensorData, WeightSet};

use crate::strategy::validate::{Refusal, UpdateLayout};
use crate::strategy::{is_running_stat, Buffering, RoundAggregator, Strategy};

/// L-DAWA: the next global model is the round's layer-wise cosine-weighted mean.
pub struct LDawa;

impl Strategy for LDawa {
    fn name(&self) -> &'static str {
        "ldawa"
    }

    fn buffering(&self) -> Buffering {
        Buffering::Streaming
    }

    fn begin_round(&self, global: &WeightSet) -> Box<dyn RoundAggregator> {
        Box::new(LDawaRound::new(global))
    }

    fn apply(&mut self, _global: &WeightSet, round: Box<dyn RoundAggregator>) -> Result<WeightSet> {
        round.finish()
    }
}

/// The layer of tensor `name`: everything before its last `.` (the whole name if none).
pub fn layer_of(name: &str) -> &str {
    name.rsplit_once('.').map_or(name, |(layer, _)| layer)
}

/// One layer's running sums.
struct Layer {
    /// Its learnable tensors, in name order.
    tensors: Vec<String>,
    /// ‖w_g^l‖ in f64.
    global_norm: f64,
    /// Σ_k δ_k^l n_k.
    weight: f64,
}

/// One round of L-DAWA (streaming).
pub struct LDawaRound {
    layout: UpdateLayout,
    global: WeightSet,
    layers: Vec<Layer>,
    /// Σ δ n w per learnable tensor, Σ n w per running statistic.
    sums: BTreeMap<String, Vec<f64>>,
    total_samples: u64,
    contributions: usize,
}

/// ⟨a, b⟩ and ‖a‖² over the tensors `names` of `a` and `b`, in f64.
fn dot_and_norm2(names: &[String], a: &WeightSet, b: &WeightSet) -> (f64, f64) {
    let (mut dot, mut norm2) = (0.0f64, 0.0f64);
    for name in names {
        let x = &a.tensors[name.as_str()].data;
        let y = &b.tensors[name.as_str()].data;
        for (&u, &v) in x.iter().zip(y) {
            dot += u as f64 * v as f64;
            norm2 += u as f64 * u as f64;
        }
    }
    (dot, norm2)
}

impl LDawaRound {
    /// A round whose updates must have the layout of `global`, the weights it started from.
    pub fn new(global: &WeightSet) -> Self {
        let mut groups: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for name in global.tensors.keys().filter(|n| !is_running_stat(n)) {
            groups.entry(layer_of(name)).or_default().push(name.clone());
        }
        let layers = groups
            .into_values()
            .map(|tensors| {
                let (_, norm2) = dot_and_norm2(&tensors, global, global);
                Layer {
                    tensors,
                    global_norm: norm2.sqrt(),
                    weight: 0.0,
                }
            })
            .collect();
        Self {
            layout: UpdateLayout::of(global),
            global: global.clone(),
            layers,
            sums: global
                .tensors
                .iter()
                .map(|(n, t)| (n.clone(), vec![0.0f64; t.data.len()]))
                .collect(),
            total_samples: 0,
            contributions: 0,
        }
    }

    /// δ_k^l of `update` for `layer` (see the module docs).
    fn delta(&self, layer: &Layer, update: &WeightSet) -> f64 {
        let (dot, norm2) = dot_and_norm2(&layer.tensors, update, &self.global);
        let norms = norm2.sqrt() * layer.global_norm;
        if norms == 0.0 {
            1.0
        } else {
            (dot / norms).max(0.0)
        }
    }

    /// Adds `n·scale·values` of tensor `name` of `update` to its sum.
    fn fold(&mut self, name: &str, update: &WeightSet, scale: f64) {
        if let Some(sum) = self.sums.get_mut(name) {
            for (s, &v) in sum.iter_mut().zip(&update.tensors[name].data) {
                *s += scale * v as f64;
            }
        }
    }
}

impl RoundAggregator for LDawaRound {
    fn add(&mut self, update: &WeightSet, num_samples: u64) -> Result<(), Refusal> {
        self.layout.check(update, num_samples)?;
        let n = num_samples as f64;
        let deltas: Vec<f64> = self.layers.iter().map(|l| self.delta(l, update)).collect();
        for (i, delta) in deltas.into_iter().enumerate() {
            self.layers[i].weight += delta * n;
            for t in self.layers[i].tensors.clone() {
                self.fold(&t, update, delta * n);
            }
        }
        let stats: Vec<String> = self
            .sums
            .keys()
            .filter(|k| is_running_stat(k))
            .cloned()
            .collect();
        for name in stats {
            self.fold(&name, update, n);
        }
        self.total_samples += num_samples;
        self.contributions += 1;
        Ok(())
    }

    fn contributions(&self) -> usize {
        self.contributions
    }

    fn total_samples(&self) -> u64 {
        self.total_samples
    }

    fn finish(self: Box<Self>) -> Result<WeightSet> {
        if self.contributions == 0 {
            bail!("no valid update to aggregate");
        }
        let LDawaRound {
            global,
            layers,
            mut sums,
            total_samples,
            ..
        } = *self;
        let mut out = WeightSet::default();
        let mut put = |name: &str, shape: &[usize], data: Vec<f32>| {
            let shape = shape.to_vec();
            out.tensors
                .insert(name.to_string(), TensorData { shape, data });
        };
        for layer in &layers {
            for name in &layer.tensors {
                let g = &global.tensors[name.as_str()];
                let data = if layer.weight > 0.0 {
                    let sum = sums.remove(name).unwrap_or_default();
                    sum.into_iter().map(|s| (s / layer.weight) as f32).collect()
                } else {
                    g.data.clone()
                };
                put(name, &g.shape, data);
            }
        }
        let n = total_samples as f64;
        for (name, sum) in sums.into_iter().filter(|(k, _)| is_running_stat(k)) {
            let shape = global.tensors[name.as_str()].shape.clone();
            put(
                &name,
                &shape,
                sum.into_iter().map(|s| (s / n) as f32).collect(),
            );
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ws(tensors: &[(&str, &[f32])]) -> WeightSet {
        let mut s = WeightSet::default();
        for (name, data) in tensors {
            let shape = vec![data.len()];
            let data = data.to_vec();
            s.tensors
                .insert(name.to_string(), TensorData { shape, data });
        }
        s
    }

    /// Layer `l` (weight, bias), layer `m` (weight) and a running statistic of `m`.
    fn model(lw: [f32; 2], lb: f32, mw: [f32; 2], var: f32) -> WeightSet {
        ws(&[
            ("l.weight", &lw),
            ("l.bias", &[lb]),
            ("m.weight", &mw),
            ("m.running_var", &[var]),
        ])
    }

    fn round(global: &WeightSet, updates: &[(WeightSet, u64)]) -> WeightSet {
        let mut s = LDawa;
        let mut agg = s.begin_round(global);
        for (u, n) in updates {
            agg.add(u, *n).unwrap();
        }
        s.apply(global, agg).unwrap()
    }

    #[test]
    fn layers_are_weighted_by_their_cosine_to_the_global_layer_by_hand() {
        // global: layer l = (weight [1, 0], bias [0]) → w_g^l = (1, 0, 0); layer m = (0, 0)
        let global = model([1.0, 0.0], 0.0, [0.0, 0.0], 1.0);
        let updates = [
            // l: (3, 4, 0) → cos = 3/5; m: [1, 1]; n = 1
            (model([3.0, 4.0], 0.0, [1.0, 1.0], 1.0), 1u64),
            // l: (−1, 2, 2) → cos = −1/3 → δ = 0; n = 1
            (model([-1.0, 2.0], 2.0, [3.0, 3.0], 2.0), 1),
            // l: (4, 0, 3) → cos = 4/5; n = 2
            (model([4.0, 0.0], 3.0, [0.0, 6.0], 4.0), 2),
        ];
        let r = round(&global, &updates);
        // Σ δ n = 0.6·1 + 0·1 + 0.8·2 = 2.2
        // l.weight = (0.6·[3, 4] + 1.6·[4, 0]) / 2.2 = [8.2, 2.4] / 2.2 = [41/11, 12/11]
        // l.bias = (0.6·0 + 1.6·3) / 2.2 = 24/11
        let close = |got: &[f32], want: &[f64]| {
            for (g, w) in got.iter().zip(want) {
                assert!((*g as f64 - w).abs() < 1e-6, "{got:?} vs {want:?}");
            }
        };
        close(&r.tensors["l.weight"].data, &[41.0 / 11.0, 12.0 / 11.0]);
        close(&r.tensors["l.bias"].data, &[24.0 / 11.0]);
        // m: the global layer is zero, so δ = 1: the sample-weighted mean
        // (1·[1, 1] + 1·[3, 3] + 2·[0, 6]) / 4 = [1, 4]
        assert_eq!(r.tensors["m.weight"].data, vec![1.0, 4.0]);
        // the running statistic: (1 + 2 + 2·4) / 4 = 2.75
        assert_eq!(r.tensors["m.running_var"].data, vec![2.75]);
        // arrival order does not change the result
        let mut rev = updates.to_vec();
        rev.reverse();
        assert_eq!(round(&global, &rev), r);
    }

    #[test]
    fn equal_cosines_give_fedavg_and_an_opposed_layer_keeps_the_global_one() {
        // every update parallel to the global layers: δ = 1 everywhere → FedAvg exactly
        let global = model([1.0, 1.0], 1.0, [2.0, 0.0], 1.0);
        let updates = [
            (model([2.0, 2.0], 2.0, [1.0, 0.0], 3.0), 3u64),
            (model([0.5, 0.5], 0.5, [4.0, 0.0], 1.0), 1),
        ];
        let r = round(&global, &updates);
        let mut fedavg = crate::strategy::fedavg::WeightedMean::new(&global);
        for (u, n) in &updates {
            fedavg.add(u, *n).unwrap();
        }
        assert_eq!(r, fedavg.finish().unwrap());
        // every client's layer l points away from the global one: l keeps its global weights
        let away = [(model([-1.0, -1.0], -1.0, [1.0, 0.0], 1.0), 2u64)];
        let r = round(&global, &away);
        assert_eq!(r.tensors["l.weight"].data, vec![1.0, 1.0]);
        assert_eq!(r.tensors["m.weight"].data, vec![1.0, 0.0]);
        assert_eq!(layer_of("stage1.0.conv1.weight"), "stage1.0.conv1");
        assert_eq!(layer_of("w"), "w");
    }

    #[test]
    fn bad_updates_are_refused_and_an_empty_round_is_an_error() {
        let global = model([1.0, 0.0], 0.0, [0.0, 0.0], 1.0);
        let mut agg = LDawa.begin_round(&global);
        let bad = model([f32::NAN, 0.0], 0.0, [0.0, 0.0], 1.0);
        assert!(agg.add(&bad, 1).is_err());
        assert_eq!(agg.contributions(), 0);
        assert!(agg.finish().is_err());
    }
}
