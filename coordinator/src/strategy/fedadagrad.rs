//! FedAdagrad (Reddi et al. 2021, "Adaptive Federated Optimization", Algorithm 2 with the
//! Adagrad second moment): with the round's sample-weighted mean m̄_t and Δ_t = m̄_t − x_t,
//!
//! m_t = β₁·m_{t−1} + (1 − β₁)·Δ_t,
//! v_t = v_{t−1} + Δ_t²,
//! x_{t+1} = x_t + η·m_t / (√v_t + τ),
//!
//! m_0 = v_0 = 0 (see [`super::fedadam`]); β₂ is unused. Defaults are Flower's: η = 0.1,
//! β₁ = 0, τ = 1e-9. State: `m.<tensor>`, `v.<tensor>`. BatchNorm running statistics take
//! the weighted mean.

use fedssl_shared::config::{AdaptiveConfig, FedAdagradConfig};

use crate::strategy::server_opt::{adaptive_step, ServerOptimizer, ServerRule};

/// The Adagrad server rule.
pub struct Adagrad(pub AdaptiveConfig);

impl ServerRule for Adagrad {
    fn name(&self) -> &'static str {
        "fedadagrad"
    }

    fn buffers(&self) -> &'static [&'static str] {
        &["m", "v"]
    }

    fn step(&self, x: f64, delta: f64, state: &mut [f64]) -> f64 {
        adaptive_step(&self.0, x, delta, state, |v, d2| v + d2)
    }
}

/// FedAdagrad with `config`.
pub fn fedadagrad(config: &FedAdagradConfig) -> ServerOptimizer<Adagrad> {
    ServerOptimizer::new(Adagrad(config.0.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::strategy::server_opt::testing::{order_does_not_matter, two_steps_by_hand};
    use crate::strategy::Strategy;

    fn cfg(beta1: f64) -> FedAdagradConfig {
        FedAdagradConfig(AdaptiveConfig {
            server_lr: 0.1,
            beta1,
            beta2: 0.0,
            tau: 1e-9,
        })
    }

    #[test]
    fn one_and_two_steps_match_the_formula_and_the_state_round_trips() {
        for b1 in [0.0, 0.5] {
            two_steps_by_hand(
                &|| Box::new(fedadagrad(&cfg(b1))) as Box<dyn Strategy>,
                &|x, d, s| {
                    s[0] = b1 * s[0] + (1.0 - b1) * d;
                    s[1] += d * d;
                    x + 0.1 * s[0] / (s[1].sqrt() + 1e-9)
                },
                2,
            );
        }
        order_does_not_matter(&|| Box::new(fedadagrad(&cfg(0.0))));
    }

    #[test]
    fn the_first_step_is_a_signed_step_of_size_eta() {
        // β₁ = 0: m = Δ, v = Δ², x' = x + η·Δ/|Δ| (τ negligible)
        let mut s = [0.0, 0.0];
        let x = Adagrad(cfg(0.0).0).step(1.0, -3.0, &mut s);
        assert!((x - 0.9).abs() < 1e-9, "{x}");
    }
}
