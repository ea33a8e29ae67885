//! FedYogi (Reddi et al. 2021, "Adaptive Federated Optimization", Algorithm 2 with the Yogi
//! second moment): with the round's sample-weighted mean m̄_t and Δ_t = m̄_t − x_t,
//!
//! m_t = β₁·m_{t−1} + (1 − β₁)·Δ_t,
//! v_t = v_{t−1} − (1 − β₂)·Δ_t²·sign(v_{t−1} − Δ_t²),
//! x_{t+1} = x_t + η·m_t / (√v_t + τ),
//!
//! m_0 = v_0 = 0 (see [`super::fedadam`]). Defaults are Flower's: η = 0.01, β₁ = 0.9,
//! β₂ = 0.99, τ = 1e-3. State: `m.<tensor>`, `v.<tensor>`. BatchNorm running statistics
//! take the weighted mean.

use fedssl_shared::config::{AdaptiveConfig, FedYogiConfig};

use crate::strategy::server_opt::{adaptive_step, ServerOptimizer, ServerRule};

/// The Yogi server rule.
pub struct Yogi(pub AdaptiveConfig);

/// sign(x) with sign(0) = 0, as `numpy.sign` (Flower) and the paper's definition.
fn sign(x: f64) -> f64 {
    if x > 0.0 {
        1.0
    } else if x < 0.0 {
        -1.0
    } else {
        0.0
    }
}

impl ServerRule for Yogi {
    fn name(&self) -> &'static str {
        "fedyogi"
    }

    fn buffers(&self) -> &'static [&'static str] {
        &["m", "v"]
    }

    fn step(&self, x: f64, delta: f64, state: &mut [f64]) -> f64 {
        let b2 = self.0.beta2;
        adaptive_step(&self.0, x, delta, state, |v, d2| {
            v - (1.0 - b2) * d2 * sign(v - d2)
        })
    }
}

/// FedYogi with `config`.
pub fn fedyogi(config: &FedYogiConfig) -> ServerOptimizer<Yogi> {
    ServerOptimizer::new(Yogi(config.0.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::strategy::server_opt::testing::{order_does_not_matter, two_steps_by_hand};
    use crate::strategy::Strategy;

    fn cfg() -> FedYogiConfig {
        FedYogiConfig(AdaptiveConfig {
            server_lr: 0.05,
            beta1: 0.9,
            beta2: 0.99,
            tau: 1e-3,
        })
    }

    #[test]
    fn one_and_two_steps_match_the_formula_and_the_state_round_trips() {
        two_steps_by_hand(
            &|| Box::new(fedyogi(&cfg())) as Box<dyn Strategy>,
            &|x, d, s| {
                s[0] = 0.9 * s[0] + 0.1 * d;
                let d2 = d * d;
                s[1] -= 0.01 * d2 * (s[1] - d2).signum();
                x + 0.05 * s[0] / (s[1].sqrt() + 1e-3)
            },
            2,
        );
        order_does_not_matter(&|| Box::new(fedyogi(&cfg())));
    }

    #[test]
    fn the_second_moment_moves_towards_the_squared_gradient() {
        // v = 0 < Δ² = 4: v grows by (1 − β₂)·Δ² = 0.04; then v = 1 > Δ² = 0.25 shrinks by
        // 0.0025
        let mut s = [0.0, 0.0];
        Yogi(cfg().0).step(0.0, 2.0, &mut s);
        assert!((s[1] - 0.04).abs() < 1e-12);
        let mut s = [0.0, 1.0];
        Yogi(cfg().0).step(0.0, 0.5, &mut s);
        assert!((s[1] - 0.9975).abs() < 1e-12);
    }
}
