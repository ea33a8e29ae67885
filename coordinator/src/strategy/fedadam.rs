//! FedAdam (Reddi et al. 2021, "Adaptive Federated Optimization", Algorithm 2 with the Adam
//! second moment): with the round's sample-weighted mean m̄_t and Δ_t = m̄_t − x_t,
//!
//! m_t = β₁·m_{t−1} + (1 − β₁)·Δ_t,
//! v_t = β₂·v_{t−1} + (1 − β₂)·Δ_t²,
//! x_{t+1} = x_t + η·m_t / (√v_t + τ),
//!
//! m_0 = v_0 = 0 (as Flower starts them; the paper asks v_{−1} ≥ τ², which only keeps the
//! denominator positive, and τ > 0 already does), no bias correction (the paper has none;
//! recent Flower versions add one). Defaults are Flower's: η = 0.1, β₁ = 0.9, β₂ = 0.99,
//! τ = 1e-9. State: `m.<tensor>`, `v.<tensor>`. BatchNorm running statistics take the
//! weighted mean ([`super::server_opt`]).

use fedssl_shared::config::{AdaptiveConfig, FedAdamConfig};

use crate::strategy::server_opt::{adaptive_step, ServerOptimizer, ServerRule};

/// The Adam server rule.
pub struct Adam(pub AdaptiveConfig);

impl ServerRule for Adam {
    fn name(&self) -> &'static str {
        "fedadam"
    }

    fn buffers(&self) -> &'static [&'static str] {
        &["m", "v"]
    }

    fn step(&self, x: f64, delta: f64, state: &mut [f64]) -> f64 {
        let b2 = self.0.beta2;
        adaptive_step(&self.0, x, delta, state, |v, d2| b2 * v + (1.0 - b2) * d2)
    }
}

/// FedAdam with `config`.
pub fn fedadam(config: &FedAdamConfig) -> ServerOptimizer<Adam> {
    ServerOptimizer::new(Adam(config.0.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::strategy::server_opt::testing::{order_does_not_matter, two_steps_by_hand};
    use crate::strategy::Strategy;

    fn cfg() -> FedAdamConfig {
        FedAdamConfig(AdaptiveConfig {
            server_lr: 0.1,
            beta1: 0.9,
            beta2: 0.99,
            tau: 1e-3,
        })
    }

    #[test]
    fn one_and_two_steps_match_the_formula_and_the_state_round_trips() {
        two_steps_by_hand(
            &|| Box::new(fedadam(&cfg())) as Box<dyn Strategy>,
            &|x, d, s| {
                s[0] = 0.9 * s[0] + 0.1 * d;
                s[1] = 0.99 * s[1] + 0.01 * d * d;
                x + 0.1 * s[0] / (s[1].sqrt() + 1e-3)
            },
            2,
        );
        order_does_not_matter(&|| Box::new(fedadam(&cfg())));
    }

    #[test]
    fn the_first_step_by_hand() {
        // x = 1, Δ = -0.5: m = 0.1·(-0.5) = -0.05, v = 0.01·0.25 = 0.0025, √v = 0.05,
        // x' = 1 + 0.1·(-0.05)/(0.05 + 0.001) = 1 - 0.005/0.051
        let mut s = [0.0, 0.0];
        let x = Adam(cfg().0).step(1.0, -0.5, &mut s);
        assert!((x - (1.0 - 0.005 / 0.051)).abs() < 1e-12, "{x}");
        assert!(
            (s[0] + 0.05).abs() < 1e-12 && (s[1] - 0.0025).abs() < 1e-12,
            "{s:?}"
        );
    }
}
