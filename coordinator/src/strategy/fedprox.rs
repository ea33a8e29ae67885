//! FedProx (Li, Sahu, Zaheer, Sanjabi, Talwalkar and Smith 2020, "Federated Optimization in
//! Heterogeneous Networks", Algorithm 2): client k approximately minimises
//!
//! h_k(w; w_t) = F_k(w) + (μ/2)·‖w − w_t‖²
//!
//! from the round's global weights w_t, F_k being its pretext loss and the norm taken over the
//! backbone's learnable weights (not the BatchNorm running statistics, which have no
//! gradient, nor the pretext heads); the coordinator aggregates with FedAvg's weighted mean.
//! μ (`mu`, default 0.01) travels in every round config
//! ([`fedssl_shared::protocol::RoundConfig::proximal_mu`]); with μ = 0 the clients train
//! exactly as under FedAvg, bit for bit. No server state.

use anyhow::Result;
use fedssl_shared::protocol::RoundConfig;
use fedssl_shared::weights::WeightSet;

use crate::strategy::fedavg::WeightedMean;
use crate::strategy::{Buffering, RoundAggregator, Strategy};

/// FedProx with proximal coefficient `mu`.
pub struct FedProx {
    /// μ ≥ 0.
    pub mu: f64,
}

impl Strategy for FedProx {
    fn name(&self) -> &'static str {
        "fedprox"
    }

    fn buffering(&self) -> Buffering {
        Buffering::Streaming
    }

    fn configure(&self, _round: usize, _client: u32, base: RoundConfig) -> RoundConfig {
        RoundConfig {
            proximal_mu: self.mu,
            ..base
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use fedssl_shared::train::LocalTrainConfig;

    #[test]
    fn mu_travels_in_every_round_config() {
        let base = RoundConfig {
            train: LocalTrainConfig::default(),
            seed: 5,
            proximal_mu: 0.0,
        };
        let c = FedProx { mu: 0.1 }.configure(3, 7, base.clone());
        assert_eq!(c.proximal_mu, 0.1);
        assert_eq!((c.train, c.seed), (base.train, base.seed));
    }
}
