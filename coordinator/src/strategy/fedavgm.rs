//! FedAvgM (Hsu, Qi and Brown 2019, "Measuring the Effects of Non-Identical Data
//! Distribution for Federated Visual Classification", §3): FedAvg with server momentum.
//! With the round's sample-weighted mean m_t and the pseudo-gradient Δ_t = m_t − x_t,
//!
//! v_t = β·v_{t−1} + Δ_t,  x_{t+1} = x_t + η·v_t,  v_0 = 0,
//!
//! where β is `momentum` (default 0.9) and η is `server_lr` (default 1.0); β = 0 and η = 1
//! give FedAvg's mean. (Hsu et al. write the gradient as x_t − m_t and subtract; the same
//! step.) The state is the momentum v, checkpointed as `momentum.<tensor>`. BatchNorm
//! running statistics take the weighted mean ([`super::server_opt`]).

use fedssl_shared::config::FedAvgMConfig;

use crate::strategy::server_opt::{ServerOptimizer, ServerRule};

/// The server-momentum rule.
pub struct Momentum(pub FedAvgMConfig);

impl ServerRule for Momentum {
    fn name(&self) -> &'static str {
        "fedavgm"
    }

    fn buffers(&self) -> &'static [&'static str] {
        &["momentum"]
    }

    fn step(&self, x: f64, delta: f64, state: &mut [f64]) -> f64 {
        let v = self.0.momentum * state[0] + delta;
        state[0] = v;
        x + self.0.server_lr * v
    }
}

/// FedAvgM with `config`.
pub fn fedavgm(config: &FedAvgMConfig) -> ServerOptimizer<Momentum> {
    ServerOptimizer::new(Momentum(config.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::strategy::server_opt::testing::{order_does_not_matter, two_steps_by_hand};
    use crate::strategy::Strategy;

    fn cfg() -> FedAvgMConfig {
        FedAvgMConfig {
            server_lr: 0.7,
            momentum: 0.9,
        }
    }

    #[test]
    fn two_steps_match_the_formula_and_the_state_round_trips() {
        two_steps_by_hand(
            &|| Box::new(fedavgm(&cfg())) as Box<dyn Strategy>,
            &|x, d, s| {
                s[0] = 0.9 * s[0] + d;
                x + 0.7 * s[0]
            },
            1,
        );
        order_does_not_matter(&|| Box::new(fedavgm(&cfg())));
    }

    #[test]
    fn without_momentum_and_at_lr_one_it_is_fedavg() {
        use crate::strategy::fedavg::FedAvg;
        use crate::strategy::server_opt::testing::{round, ws};
        let plain = FedAvgMConfig {
            server_lr: 1.0,
            momentum: 0.0,
        };
        let g = ws(&[0.25, -0.5], 0.0);
        let u = [(ws(&[1.0, 2.0], 1.0), 2u64), (ws(&[-1.0, 0.5], 3.0), 1)];
        assert_eq!(
            round(&mut fedavgm(&plain), &g, &u),
            round(&mut FedAvg, &g, &u)
        );
    }
}
