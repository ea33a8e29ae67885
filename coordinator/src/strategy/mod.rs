//! Aggregation strategies: how the coordinator turns a round's client updates into the next
//! global model. One trait, [`Strategy`]; a new strategy is one new file implementing it and
//! one arm of [`from_scenario`].
//!
//! The round loop ([`crate::server::rounds`]) drives a strategy through each round:
//! 1. [`Strategy::configure`] gives every sampled client its round config (the scenario's
//!    local training; a strategy may change or extend it, e.g. a proximal term);
//! 2. [`Strategy::begin_round`] starts the round's [`RoundAggregator`] from the global
//!    weights; each update that arrives goes to [`RoundAggregator::add`], which validates it
//!    ([`validate::UpdateLayout`]) and folds it in, or refuses it with a typed
//!    [`validate::Refusal`] that `rounds.jsonl` records;
//! 3. [`Strategy::apply`] takes the round's aggregate and makes the server step: the next
//!    global weights. A strategy with server state (momentum, adaptive moments, control
//!    variates) keeps it between rounds and hands it out through [`Strategy::state`]; it is
//!    checkpointed with the weights and given back by [`Strategy::load_state`] on resume.
//!
//! [`Strategy::buffering`] says how an aggregator holds the updates: [`Buffering::Streaming`]
//! folds each into a running sum as it arrives and drops it (memory: one accumulator whatever
//! the number of clients, with at most [`crate::server::rounds::DECODE_SLOTS`] updates decoded
//! and waiting); [`Buffering::AllUpdates`] keeps every accepted update until the round ends
//! (a coordinate-wise median, Krum), so its memory grows with the sampled clients.

pub mod fedavg;
pub mod validate;

use anyhow::{bail, Result};
use fedssl_shared::config::{FedAvgConfig, Scenario, StrategyConfig};
use fedssl_shared::protocol::RoundConfig;
use fedssl_shared::weights::WeightSet;

use crate::strategy::validate::Refusal;

/// How a strategy's [`RoundAggregator`] holds the round's updates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Buffering {
    /// Each update is folded in as it arrives and then dropped.
    Streaming,
    /// Every accepted update is kept until [`RoundAggregator::finish`].
    AllUpdates,
}

/// An aggregation strategy (see the module docs for the round it drives).
pub trait Strategy: Send {
    /// The strategy's name, as `federation.strategy` and `summary.json` spell it.
    fn name(&self) -> &'static str;

    /// Whether the round's aggregator streams or needs every update.
    fn buffering(&self) -> Buffering;

    /// The round config of sampled client `client` in round `round` (0-based), from `base`:
    /// the scenario's local training with the round's learning rate and the client's seed.
    /// The default sends `base` unchanged.
    fn configure(&self, round: usize, client: u32, base: RoundConfig) -> RoundConfig {
        let _ = (round, client);
        base
    }

    /// Starts aggregating a round whose clients trained from `global`.
    fn begin_round(&self, global: &WeightSet) -> Box<dyn RoundAggregator>;

    /// The server step: the next global weights from the round's aggregate and `global`,
    /// the weights the round started from. Errors when the aggregate holds no update.
    fn apply(&mut self, global: &WeightSet, round: Box<dyn RoundAggregator>) -> Result<WeightSet>;

    /// Server state to checkpoint with the weights after a round (`None`: the strategy keeps
    /// none).
    fn state(&self) -> Option<WeightSet> {
        None
    }

    /// Restores the state a checkpoint holds (`None`: it holds none) before a resumed run's
    /// first round. The default, for a strategy without state, refuses a state.
    fn load_state(&mut self, state: Option<WeightSet>) -> Result<()> {
        match state {
            None => Ok(()),
            Some(_) => bail!(
                "the checkpoint holds server state, but strategy `{}` keeps none",
                self.name()
            ),
        }
    }
}

/// One round's aggregation, started by [`Strategy::begin_round`].
pub trait RoundAggregator: Send {
    /// Validates `update` (trained on `num_samples` images) and, only if it is valid, folds
    /// it in; a refused update changes nothing.
    fn add(&mut self, update: &WeightSet, num_samples: u64) -> Result<(), Refusal>;

    /// Updates accepted so far.
    fn contributions(&self) -> usize;

    /// Σ n_k of the updates accepted so far.
    fn total_samples(&self) -> u64;

    /// The aggregate of the accepted updates. Errors if there is none.
    fn finish(self: Box<Self>) -> Result<WeightSet>;
}

/// The strategy `sc.federation.strategy` names — the one place that reads that key.
pub fn from_scenario(sc: &Scenario) -> Result<Box<dyn Strategy>> {
    match &sc.federation.strategy {
        StrategyConfig::FedAvg(FedAvgConfig {}) => Ok(Box::new(fedavg::FedAvg)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scenario_names_the_strategy() {
        let sc = Scenario::default();
        let s = from_scenario(&sc).unwrap();
        assert_eq!((s.name(), s.buffering()), ("fedavg", Buffering::Streaming));
        // a strategy that does not exist is refused when the scenario is read, naming it
        let e = Scenario::from_toml_str("[federation]\nstrategy = \"fedprox\"\n", &[]).unwrap_err();
        assert!(format!("{e:#}").contains("unknown kind `fedprox`"), "{e:#}");
    }

    #[test]
    fn a_strategy_without_state_refuses_one() {
        let mut s = from_scenario(&Scenario::default()).unwrap();
        assert!(s.state().is_none());
        s.load_state(None).unwrap();
        let e = s.load_state(Some(WeightSet::default())).unwrap_err();
        assert!(e.to_string().contains("keeps none"), "{e}");
    }
}
