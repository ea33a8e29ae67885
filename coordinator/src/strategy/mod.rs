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
//! (a coordinate-wise median, Krum), so its memory grows with the sampled clients, and
//! [`check_buffer_bound`] refuses, before the first round, a run whose sampled clients ×
//! model bytes exceed `federation.max_buffered_bytes`.
//!
//! The strategies, one file each: [`fedavg`]; [`fedprox`] (FedAvg with a proximal term in
//! the clients' loss, its μ sent in the round config); the server optimisers on the pseudo-gradient
//! ([`server_opt`]): [`fedavgm`], [`fedadam`], [`fedyogi`], [`fedadagrad`]; the robust rules
//! on the buffered updates ([`buffered`]): [`median`], [`trimmed_mean`], [`krum`] (Krum and
//! Multi-Krum), [`bulyan`]; [`ldawa`] (layer-wise cosine-weighted, streaming). Whatever the strategy, BatchNorm running statistics ([`is_running_stat`])
//! take FedAvg's sample-weighted mean: the optimisers and robust rules apply to the learnable
//! weights only. Under secure aggregation the round's mean arrives already unmasked
//! ([`secure_mean`]) and only the strategy's server step runs.

pub mod buffered;
pub mod bulyan;
pub mod fedadagrad;
pub mod fedadam;
pub mod fedavg;
pub mod fedavgm;
pub mod fedprox;
pub mod fedyogi;
pub mod krum;
pub mod ldawa;
pub mod median;
pub mod secure_mean;
pub mod server_opt;
pub mod trimmed_mean;
pub mod validate;

use anyhow::{bail, Result};
use fedssl_shared::config::{FedAvgConfig, Scenario, StrategyConfig};
use fedssl_shared::protocol::RoundConfig;
use fedssl_shared::weights::WeightSet;
use fedssl_shared::weights_file::WeightsFile;

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

    /// Whether [`Self::apply`] reads its `global` argument. A strategy whose server step is
    /// the aggregate itself (FedAvg, FedProx) says `false`, and a run whose global weights
    /// are spooled to disk during the round (`federation.spool_above_bytes`) then gives it
    /// empty weights rather than read them back. The default: `true`.
    fn apply_reads_global(&self) -> bool {
        true
    }

    /// Server state to checkpoint with the weights after a round (`None`: the strategy keeps
    /// none).
    fn state(&self) -> Option<WeightSet> {
        None
    }

    /// What the strategy reports of the round it just applied, written into that round's
    /// line of `rounds.jsonl` under `privacy` (DP-FedAvg's clip norm, noise and ε spent);
    /// `None` (the default): nothing.
    fn report(&self) -> Option<serde_json::Value> {
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

    /// [`Self::add`] for an update held in a file (a large model's update spooled to disk as
    /// it arrived, `crate::server::spool`). The default loads it whole and adds it; a
    /// streaming aggregator reads it tensor by tensor instead ([`fedavg::WeightedMean`]).
    /// Returns the refusal of an invalid update, which changes nothing. Errors when the file
    /// cannot be read; the round's aggregate is then to be discarded.
    fn add_file(&mut self, update: &WeightsFile, num_samples: u64) -> Result<Result<(), Refusal>> {
        Ok(self.add(&update.load()?, num_samples))
    }

    /// Updates accepted so far.
    fn contributions(&self) -> usize;

    /// Σ n_k of the updates accepted so far.
    fn total_samples(&self) -> u64;

    /// The aggregate of the accepted updates. Errors if there is none.
    fn finish(self: Box<Self>) -> Result<WeightSet>;
}

/// The strategy `sc.federation.strategy` names — the one place that reads that key.
pub fn from_scenario(sc: &Scenario) -> Result<Box<dyn Strategy>> {
    use buffered::Robust;
    if let Some(dp) = &sc.federation.dp {
        // FederationConfig::validate admits DP with FedAvg only.
        let fed = &sc.federation;
        return Ok(Box::new(crate::privacy::dp::DpFedAvg::new(
            dp,
            sc.seed,
            fed.clients,
            fed.max_sampled(),
        )?));
    }
    Ok(match &sc.federation.strategy {
        StrategyConfig::FedAvg(FedAvgConfig {}) => Box::new(fedavg::FedAvg),
        StrategyConfig::FedProx(c) => Box::new(fedprox::FedProx { mu: c.mu }),
        StrategyConfig::FedAvgM(c) => Box::new(fedavgm::fedavgm(c)),
        StrategyConfig::FedAdam(c) => Box::new(fedadam::fedadam(c)),
        StrategyConfig::FedYogi(c) => Box::new(fedyogi::fedyogi(c)),
        StrategyConfig::FedAdagrad(c) => Box::new(fedadagrad::fedadagrad(c)),
        StrategyConfig::Median(_) => Box::new(Robust(median::Median)),
        StrategyConfig::TrimmedMean(c) => {
            Box::new(Robust(trimmed_mean::TrimmedMean { beta: c.beta }))
        }
        StrategyConfig::Krum(c) => Box::new(Robust(krum::Krum {
            name: "krum",
            byzantine: c.byzantine,
            selected: Some(1),
        })),
        StrategyConfig::MultiKrum(c) => Box::new(Robust(krum::Krum {
            name: "multi_krum",
            byzantine: c.byzantine,
            selected: c.selected,
        })),
        StrategyConfig::Bulyan(c) => Box::new(Robust(bulyan::Bulyan {
            byzantine: c.byzantine,
        })),
        StrategyConfig::LDawa(_) => Box::new(ldawa::LDawa),
    })
}

/// Whether tensor `name` is a BatchNorm running statistic (its last segment is
/// `running_mean` or `running_var`, as the backbones name them; `num_batches_tracked` for
/// PyTorch-named weights): these take the sample-weighted mean under every strategy.
pub fn is_running_stat(name: &str) -> bool {
    matches!(
        name.rsplit('.').next(),
        Some("running_mean" | "running_var" | "num_batches_tracked")
    )
}

/// Refuses a strategy that buffers every update ([`Buffering::AllUpdates`]) when the round's
/// most sampled clients ([`fedssl_shared::config::FederationConfig::max_sampled`]) × the
/// bytes of `global` (4 per `f32` value) exceed `federation.max_buffered_bytes`; the message
/// names the strategy and the numbers. Streaming strategies always pass.
pub fn check_buffer_bound(
    strategy: &dyn Strategy,
    sc: &Scenario,
    global: &WeightSet,
) -> Result<()> {
    if strategy.buffering() != Buffering::AllUpdates {
        return Ok(());
    }
    let fed = &sc.federation;
    let clients = fed.max_sampled() as u64;
    let model_bytes = global.num_values() as u64 * 4;
    let need = clients.saturating_mul(model_bytes);
    if need > fed.max_buffered_bytes {
        bail!(
            "strategy `{}` keeps every update of a round: {clients} sampled clients × {model_bytes} \
             bytes per model = {need} bytes, over federation.max_buffered_bytes = {}; sample \
             fewer clients (federation.participation) or raise federation.max_buffered_bytes",
            strategy.name(),
            fed.max_buffered_bytes
        );
    }
    Ok(())
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
        let e =
            Scenario::from_toml_str("[federation]\nstrategy = \"fedsurely\"\n", &[]).unwrap_err();
        assert!(
            format!("{e:#}").contains("unknown kind `fedsurely`"),
            "{e:#}"
        );
        for (kind, buffering) in [
            ("fedprox", Buffering::Streaming),
            ("fedavgm", Buffering::Streaming),
            ("fedadam", Buffering::Streaming),
            ("fedyogi", Buffering::Streaming),
            ("fedadagrad", Buffering::Streaming),
            ("ldawa", Buffering::Streaming),
            ("median", Buffering::AllUpdates),
            ("trimmed_mean", Buffering::AllUpdates),
        ] {
            let sc =
                Scenario::from_toml_str(&format!("[federation]\nstrategy = \"{kind}\"\n"), &[])
                    .unwrap();
            let s = from_scenario(&sc).unwrap();
            assert_eq!((s.name(), s.buffering()), (kind, buffering));
        }
        // Krum needs n > 2f + 2 in every round: refused up front when min_clients is too low
        let text = "[federation]\nclients = 5\nmin_clients = 4\nstrategy = \"krum\"\n";
        let e = Scenario::from_toml_str(text, &[]).unwrap_err();
        assert!(
            format!("{e:#}").contains("federation.min_clients is 4"),
            "{e:#}"
        );
        let ok = ["federation.min_clients=5".to_string()];
        for kind in ["krum", "multi_krum"] {
            let sc =
                Scenario::from_toml_str(&text.replace("\"krum\"", &format!("\"{kind}\"")), &ok)
                    .unwrap();
            assert_eq!(from_scenario(&sc).unwrap().name(), kind);
        }
    }

    #[test]
    fn a_buffered_strategy_past_max_buffered_bytes_is_refused_naming_the_numbers() {
        use fedssl_shared::weights::TensorData;
        let mut global = WeightSet::default();
        global.tensors.insert(
            "w".into(),
            TensorData {
                shape: vec![250],
                data: vec![0.0; 250],
            },
        );
        // 8 clients, participation 0.5 → 4 sampled × 1000 bytes = 4000 bytes
        let text = "[federation]\nclients = 8\nparticipation = 0.5\nmax_buffered_bytes = 3999\n";
        let mut sc =
            Scenario::from_toml_str(text, &["federation.strategy=\"median\"".into()]).unwrap();
        let s = from_scenario(&sc).unwrap();
        let e = check_buffer_bound(s.as_ref(), &sc, &global).unwrap_err();
        let msg = e.to_string();
        for part in [
            "`median`",
            "4 sampled clients",
            "1000 bytes",
            "4000 bytes",
            "3999",
        ] {
            assert!(msg.contains(part), "{part}: {msg}");
        }
        sc.federation.max_buffered_bytes = 4000;
        check_buffer_bound(s.as_ref(), &sc, &global).unwrap();
        // a streaming strategy holds no update: it always passes
        sc.federation.max_buffered_bytes = 1;
        check_buffer_bound(&fedavg::FedAvg, &sc, &global).unwrap();
        assert!(is_running_stat("stem.bn.running_mean") && is_running_stat("a.running_var"));
        assert!(!is_running_stat("stem.bn.weight") && !is_running_stat("running_meanx"));
    }

    #[test]
    fn a_noise_client_is_ignored_by_the_robust_rules_and_moves_fedavg() {
        use crate::strategy::buffered::testing::{aggregate, w, ws};
        // 8 clients: 7 honest near (1, 2, 3), and client 7 sending Gaussian noise of std 10
        // (values drawn once from N(0, 10²) and written here)
        let honest = [
            [1.0, 2.0, 3.0],
            [1.1, 1.9, 3.2],
            [0.9, 2.1, 2.9],
            [1.05, 2.05, 3.05],
            [0.95, 1.95, 2.95],
            [1.02, 1.98, 3.01],
            [0.98, 2.02, 2.99],
        ];
        let noise = [-13.7f32, 8.2, 21.5];
        let mut u: Vec<(WeightSet, u64)> = honest.iter().map(|h| (ws(h, 1.0), 10)).collect();
        u.push((ws(&noise, 1.0), 10));
        let text = "[federation]\nclients = 8\nmin_clients = 8\n";
        for kind in ["median", "trimmed_mean", "krum", "multi_krum", "bulyan"] {
            let set = [format!("federation.strategy=\"{kind}\"")];
            let sc = Scenario::from_toml_str(text, &set).unwrap();
            let r = aggregate(from_scenario(&sc).unwrap().as_mut(), &u);
            for (v, h) in w(&r).iter().zip([1.0, 2.0, 3.0]) {
                assert!((v - h).abs() < 0.2, "{kind}: {:?}", w(&r));
            }
        }
        // FedAvg: (Σ honest + noise) / 8 moves every coordinate by more than 0.5 (by hand:
        // −0.84, 2.78, 5.33 against 1, 2, 3)
        let r = aggregate(&mut fedavg::FedAvg, &u);
        for (v, h) in w(&r).iter().zip([1.0f32, 2.0, 3.0]) {
            assert!((v - h).abs() > 0.5, "{:?}", w(&r));
        }
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
