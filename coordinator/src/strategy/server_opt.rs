//! Server optimisers (FedOpt, Reddi et al. 2021): the round's sample-weighted mean m_t (the
//! streaming [`WeightedMean`] of FedAvg) gives the pseudo-gradient Δ_t = m_t − x_t, and a
//! per-coordinate rule ([`ServerRule`]: momentum, Adam, Yogi, Adagrad) with its own state
//! turns x_t and Δ_t into x_{t+1}.
//!
//! The rule applies to the learnable weights only; BatchNorm running statistics
//! ([`super::is_running_stat`]) take the round's sample-weighted mean, as FedAvg does.
//!
//! Arithmetic: Δ and the step are computed in `f64` from the `f32` weights; the state is kept
//! in `f32` (as it is checkpointed), so a resumed run continues from exactly the state an
//! uninterrupted run holds. The state is a [`WeightSet`] named `<buffer>.<tensor>` (e.g.
//! `m.stem.conv.weight`), absent (all zeros) before the first round.

use anyhow::{bail, Context, Result};
use fedssl_shared::config::AdaptiveConfig;
use fedssl_shared::weights::{TensorData, WeightSet};

use crate::strategy::fedavg::WeightedMean;
use crate::strategy::{is_running_stat, Buffering, RoundAggregator, Strategy};

/// A per-coordinate server update rule with `BUFFERS.len()` state values per coordinate.
pub trait ServerRule: Send {
    /// The strategy's name (`"fedadam"`).
    fn name(&self) -> &'static str;

    /// The names of the state buffers, e.g. `["m", "v"]`; each holds one value per
    /// learnable coordinate, 0 before the first round.
    fn buffers(&self) -> &'static [&'static str];

    /// One coordinate's step: the global value `x`, the pseudo-gradient `delta` = mean − x,
    /// and its state (`state.len() == buffers().len()`), updated in place. Returns the next
    /// global value.
    fn step(&self, x: f64, delta: f64, state: &mut [f64]) -> f64;
}

/// The adaptive step of Reddi et al. 2021, Algorithm 2, shared by FedAdam, FedYogi and
/// FedAdagrad: m ← β₁·m + (1 − β₁)·Δ; v ← `second(v, Δ²)`; x ← x + η·m / (√v + τ).
/// `state` is `[m, v]`.
pub fn adaptive_step(
    c: &AdaptiveConfig,
    x: f64,
    delta: f64,
    state: &mut [f64],
    second: impl Fn(f64, f64) -> f64,
) -> f64 {
    let m = c.beta1 * state[0] + (1.0 - c.beta1) * delta;
    let v = second(state[1], delta * delta);
    state[0] = m;
    state[1] = v;
    x + c.server_lr * m / (v.sqrt() + c.tau)
}

/// A streaming strategy that takes the server step of `R` on the round's weighted mean.
pub struct ServerOptimizer<R> {
    rule: R,
    state: Option<WeightSet>,
}

impl<R: ServerRule> ServerOptimizer<R> {
    /// The optimiser with zero state.
    pub fn new(rule: R) -> Self {
        Self { rule, state: None }
    }

    /// The next global weights from `global` (x_t) and the round's `mean`; updates the state.
    /// Errors when a restored state does not fit the model's learnable tensors.
    pub fn step(&mut self, global: &WeightSet, mean: WeightSet) -> Result<WeightSet> {
        let buffers = self.rule.buffers();
        let mut next = WeightSet::default();
        let mut state = WeightSet::default();
        let mut used = 0usize;
        for (name, m) in mean.tensors {
            if is_running_stat(&name) {
                next.tensors.insert(name, m);
                continue;
            }
            let x = &global.tensors[name.as_str()].data;
            let mut bufs: Vec<Vec<f32>> = Vec::with_capacity(buffers.len());
            for b in buffers {
                bufs.push(self.buffer(b, &name, x.len())?);
                used += usize::from(self.state.is_some());
            }
            let mut s = vec![0.0f64; buffers.len()];
            let mut out = Vec::with_capacity(x.len());
            for (i, (&xi, &mi)) in x.iter().zip(&m.data).enumerate() {
                for (k, b) in bufs.iter().enumerate() {
                    s[k] = b[i] as f64;
                }
                let xi = xi as f64;
                out.push(self.rule.step(xi, mi as f64 - xi, &mut s) as f32);
                for (k, b) in bufs.iter_mut().enumerate() {
                    b[i] = s[k] as f32;
                }
            }
            for (b, data) in buffers.iter().zip(bufs) {
                let shape = m.shape.clone();
                state
                    .tensors
                    .insert(format!("{b}.{name}"), TensorData { shape, data });
            }
            next.tensors.insert(
                name,
                TensorData {
                    shape: m.shape,
                    data: out,
                },
            );
        }
        if let Some(old) = &self.state {
            if used != old.tensors.len() {
                bail!(
                    "the server state of `{}` holds {} tensors, the model needs {used}",
                    self.rule.name(),
                    old.tensors.len()
                );
            }
        }
        self.state = Some(state);
        Ok(next)
    }

    /// State buffer `buffer` of tensor `name` (`len` values): zeros without a state.
    fn buffer(&self, buffer: &str, name: &str, len: usize) -> Result<Vec<f32>> {
        let Some(state) = &self.state else {
            return Ok(vec![0.0; len]);
        };
        let key = format!("{buffer}.{name}");
        let t = state.tensors.get(&key).with_context(|| {
            format!(
                "the server state of `{}` lacks `{key}`: it was not written for this model",
                self.rule.name()
            )
        })?;
        if t.data.len() != len {
            bail!(
                "the server state `{key}` holds {} values, the model's `{name}` {len}",
                t.data.len()
            );
        }
        Ok(t.data.clone())
    }
}

impl<R: ServerRule> Strategy for ServerOptimizer<R> {
    fn name(&self) -> &'static str {
        self.rule.name()
    }

    fn buffering(&self) -> Buffering {
        Buffering::Streaming
    }

    fn begin_round(&self, global: &WeightSet) -> Box<dyn RoundAggregator> {
        Box::new(WeightedMean::new(global))
    }

    fn apply(&mut self, global: &WeightSet, round: Box<dyn RoundAggregator>) -> Result<WeightSet> {
        let mean = round.finish()?;
        self.step(global, mean)
    }

    fn state(&self) -> Option<WeightSet> {
        self.state.clone()
    }

    /// Takes the checkpoint's state as it is; the first step checks it fits the model.
    fn load_state(&mut self, state: Option<WeightSet>) -> Result<()> {
        self.state = state;
        Ok(())
    }
}

/// Helpers of the server optimisers' tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// A weight set of one learnable tensor `w` (values `w`) and one running statistic
    /// `bn.running_mean` (value `bn`).
    pub fn ws(w: &[f32], bn: f32) -> WeightSet {
        let mut s = WeightSet::default();
        s.tensors.insert(
            "w".into(),
            TensorData {
                shape: vec![w.len()],
                data: w.to_vec(),
            },
        );
        s.tensors.insert(
            "bn.running_mean".into(),
            TensorData {
                shape: vec![1],
                data: vec![bn],
            },
        );
        s
    }

    /// One round of `s` from `global` on `updates` (weights, samples).
    pub fn round(
        s: &mut dyn Strategy,
        global: &WeightSet,
        updates: &[(WeightSet, u64)],
    ) -> WeightSet {
        let mut agg = s.begin_round(global);
        for (u, n) in updates {
            agg.add(u, *n).unwrap();
        }
        s.apply(global, agg).unwrap()
    }

    /// Asserts `a` and `b` agree to 1e-6 relative.
    pub fn close(a: f32, b: f64) {
        assert!(
            (a as f64 - b).abs() <= 1e-6 * b.abs().max(1e-3),
            "{a} vs {b}"
        );
    }

    /// Two rounds from `ws([1, -2], 0)` with two clients each (n = 1 and 3): checks the
    /// steps against `expect(x, delta, state) -> x'` computed here by hand in f64, the
    /// running statistic taking the weighted mean, and that the state round-trips:
    /// `state → load_state` into a fresh strategy gives the same second step.
    pub fn two_steps_by_hand(
        make: &dyn Fn() -> Box<dyn Strategy>,
        expect: &dyn Fn(f64, f64, &mut Vec<f64>) -> f64,
        buffers: usize,
    ) {
        let g0 = ws(&[1.0, -2.0], 0.0);
        let r1 = [(ws(&[2.0, -1.0], 4.0), 1u64), (ws(&[0.0, 0.0], 0.0), 3)];
        let r2 = [(ws(&[0.5, 1.0], 2.0), 1u64), (ws(&[1.5, -3.0], 2.0), 1)];
        let mean1 = [0.5f64, -0.25];
        let mut s = make();
        let g1 = round(s.as_mut(), &g0, &r1);
        assert_eq!(g1.tensors["bn.running_mean"].data, vec![1.0]);
        let mut hand = vec![vec![0.0f64; buffers]; 2];
        let mut x1 = [0.0f64; 2];
        for i in 0..2 {
            let x = g0.tensors["w"].data[i] as f64;
            x1[i] = expect(x, mean1[i] - x, &mut hand[i]);
            close(g1.tensors["w"].data[i], x1[i]);
            // the state is kept in f32
            for v in hand[i].iter_mut() {
                *v = *v as f32 as f64;
            }
        }
        let saved = s.state().unwrap();
        let g2 = round(s.as_mut(), &g1, &r2);
        let mean2 = [1.0f64, -1.0];
        for i in 0..2 {
            let x = g1.tensors["w"].data[i] as f64;
            close(
                g2.tensors["w"].data[i],
                expect(x, mean2[i] - x, &mut hand[i]),
            );
        }
        assert_eq!(g2.tensors["bn.running_mean"].data, vec![2.0]);
        // state → load_state → the same next step, bit for bit
        let mut fresh = make();
        fresh.load_state(Some(saved)).unwrap();
        assert_eq!(round(fresh.as_mut(), &g1, &r2), g2);
        assert_eq!(fresh.state(), s.state());
        // a state of another model is refused
        let mut other = make();
        let mut wrong = s.state().unwrap();
        let k = wrong.tensors.keys().next().unwrap().clone();
        wrong.tensors.get_mut(&k).unwrap().data.push(0.0);
        other.load_state(Some(wrong)).unwrap();
        let mut agg = other.begin_round(&g1);
        agg.add(&r2[0].0, 1).unwrap();
        assert!(other.apply(&g1, agg).is_err());
    }

    /// Arrival order does not change a server optimiser's step.
    pub fn order_does_not_matter(make: &dyn Fn() -> Box<dyn Strategy>) {
        let g = ws(&[0.3, -0.7], 1.0);
        let u = [
            (ws(&[0.1, 0.7], 1.3), 17u64),
            (ws(&[-0.3, 0.25], 0.9), 5),
            (ws(&[2.5, -1.1], 1.1), 123),
        ];
        let a = round(make().as_mut(), &g, &u);
        let b = round(
            make().as_mut(),
            &g,
            &[u[2].clone(), u[0].clone(), u[1].clone()],
        );
        assert_eq!(a, b);
    }
}
