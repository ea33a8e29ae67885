//! Optimiser and learning-rate schedules.

use anyhow::Result;
use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

/// Learning-rate schedule over a run of `total_steps` steps.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LrSchedule {
    /// `lr = base` at every step.
    Constant,
    /// Cosine annealing to 0 without restarts (Loshchilov & Hutter, "SGDR", ICLR 2017):
    /// `lr = ½·base·(1 + cos(π·step/total_steps))`.
    Cosine,
}

/// Learning rate at `step` (0-based) of `total_steps`. Steps past the end are clamped to `total_steps` (cosine gives 0 there);
/// `total_steps == 0` gives `base`.
pub fn lr_at(base: f64, schedule: &LrSchedule, step: usize, total_steps: usize) -> f64 {
    match schedule {
        LrSchedule::Constant => base,
        LrSchedule::Cosine => {
            if total_steps == 0 {
                return base;
            }
            let t = step.min(total_steps) as f64 / total_steps as f64;
            0.5 * base * (1.0 + (std::f64::consts::PI * t).cos())
        }
    }
}

/// Stochastic gradient descent with heavy-ball momentum and L2 weight decay, as PyTorch's
/// `torch.optim.SGD` (dampening 0):
///
/// `g' = g + wd·w;  v = μ·v + g'  (v = g' at the first step);  w ← w − lr·v`.
///
/// Only variables that received a gradient in the `GradStore` are stepped: BatchNorm running
/// statistics are `Var`s too but never get gradients, and must not be touched. Weight decay
/// is not applied to 1-D variables (BatchNorm γ/β, biases); 0-D scalars and ≥2-D weights are
/// decayed.
#[derive(Debug)]
pub struct SgdMomentum {
    vars: Vec<(String, Var)>,
    velocity: Vec<Option<Tensor>>,
    lr: f64,
    momentum: f64,
    weight_decay: f64,
}

impl SgdMomentum {
    /// An optimiser over the named `vars` with learning rate `lr`, momentum `μ = momentum`
    /// and L2 coefficient `weight_decay`.
    pub fn new(vars: Vec<(String, Var)>, lr: f64, momentum: f64, weight_decay: f64) -> Self {
        let velocity = vec![None; vars.len()];
        Self {
            vars,
            velocity,
            lr,
            momentum,
            weight_decay,
        }
    }

    /// Sets the learning rate used by the next [`SgdMomentum::step`].
    pub fn set_lr(&mut self, lr: f64) {
        self.lr = lr;
    }

    /// The current learning rate.
    pub fn lr(&self) -> f64 {
        self.lr
    }

    /// One update of every variable that has a gradient in `grads`; others (and their
    /// momentum buffers) are left unchanged. Errors only on a tensor operation failure.
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        for ((_, var), vel) in self.vars.iter().zip(self.velocity.iter_mut()) {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            // detached so that no autograd graph accumulates across steps
            let w = var.as_detached_tensor();
            let mut g = g.detach();
            let decay = self.weight_decay != 0.0 && w.rank() != 1;
            if decay {
                g = (g + (&w * self.weight_decay)?)?;
            }
            let update = if self.momentum != 0.0 {
                let v = match vel.take() {
                    Some(v) => ((v * self.momentum)? + &g)?,
                    None => g.clone(),
                };
                *vel = Some(v.clone());
                v
            } else {
                g
            };
            var.set(&(w - (update * self.lr)?)?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn two_hand_computed_steps_on_a_scalar() {
        // loss = 2w, so g = 2 at every step; w0 = 1, lr 0.1, mu 0.9, wd 0.1
        // step 1: g' = 2 + 0.1*1 = 2.1; v = 2.1; w = 1 - 0.21 = 0.79
        // step 2: g' = 2 + 0.079 = 2.079; v = 1.89 + 2.079 = 3.969; w = 0.79 - 0.3969 = 0.3931
        let w = Var::new(1.0f32, &Device::Cpu).unwrap();
        let frozen = Var::new(&[5.0f32, 6.0], &Device::Cpu).unwrap();
        let mut opt = SgdMomentum::new(
            vec![("w".into(), w.clone()), ("frozen".into(), frozen.clone())],
            0.1,
            0.9,
            0.1,
        );
        let mut got = vec![];
        for _ in 0..2 {
            let loss = (w.as_tensor() * 2.0).unwrap();
            let grads = loss.backward().unwrap();
            opt.step(&grads).unwrap();
            got.push(w.as_tensor().to_scalar::<f32>().unwrap());
        }
        assert!((got[0] - 0.79).abs() < 1e-6, "{got:?}");
        assert!((got[1] - 0.3931).abs() < 1e-6, "{got:?}");
        // no gradient -> untouched (no decay, no momentum)
        assert_eq!(frozen.as_tensor().to_vec1::<f32>().unwrap(), vec![5.0, 6.0]);
    }

    #[test]
    fn one_d_variables_are_not_decayed() {
        // 1-D var, wd ignored: g = 1 (loss = sum w), v = 1, w = 1 − 0.1·1
        let w = Var::new(&[1.0f32], &Device::Cpu).unwrap();
        let mut opt = SgdMomentum::new(vec![("b".into(), w.clone())], 0.1, 0.9, 0.5);
        let grads = w.as_tensor().sum_all().unwrap().backward().unwrap();
        opt.step(&grads).unwrap();
        let v = w.as_tensor().to_vec1::<f32>().unwrap()[0];
        assert!((v - (1.0 - 0.1)).abs() < 1e-6, "{v}");
    }

    #[test]
    fn cosine_schedule_points() {
        assert_eq!(lr_at(0.1, &LrSchedule::Constant, 7, 10), 0.1);
        assert!((lr_at(0.1, &LrSchedule::Cosine, 0, 100) - 0.1).abs() < 1e-12);
        assert!((lr_at(0.1, &LrSchedule::Cosine, 50, 100) - 0.05).abs() < 1e-12);
        assert!(lr_at(0.1, &LrSchedule::Cosine, 100, 100).abs() < 1e-12);
        assert!(lr_at(0.1, &LrSchedule::Cosine, 150, 100).abs() < 1e-12);
        // quarter: 0.5*(1+cos(pi/4)) = 0.853553...
        assert!((lr_at(1.0, &LrSchedule::Cosine, 25, 100) - 0.853_553_390_593_273_7).abs() < 1e-12);
    }
}
