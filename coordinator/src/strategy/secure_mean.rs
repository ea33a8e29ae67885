//! The round aggregate that secure aggregation computed (`server/secagg_round.rs`): the
//! sample-weighted mean of the round's updates, unmasked from their sum, handed to the
//! strategy's server step ([`crate::strategy::Strategy::apply`]) as any aggregator's
//! result. Only the strategies whose step needs nothing but that mean admit secure
//! aggregation (FedAvg, FedProx and the server optimisers; the scenario refuses the others).

use anyhow::Result;
use fedssl_shared::weights::WeightSet;

use crate::strategy::validate::Refusal;
use crate::strategy::RoundAggregator;

/// The weighted mean of `contributions` updates of total weight `total_samples`.
pub struct SecureMean {
    /// The mean weights w = Σ n_k w_k / Σ n_k (within the quantisation error c/R).
    pub mean: WeightSet,
    /// Updates in the sum.
    pub contributions: usize,
    /// Σ n_k.
    pub total_samples: u64,
}

impl RoundAggregator for SecureMean {
    /// Takes nothing more: every update went into the masked sum.
    fn add(&mut self, _update: &WeightSet, _num_samples: u64) -> Result<(), Refusal> {
        Err(Refusal::NoSamples)
    }

    fn contributions(&self) -> usize {
        self.contributions
    }

    fn total_samples(&self) -> u64 {
        self.total_samples
    }

    fn finish(self: Box<Self>) -> Result<WeightSet> {
        Ok(self.mean)
    }
}
