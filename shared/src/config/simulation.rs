//! `[simulation]`: settings that only matter for `simulate` (all clients in one process),
//! including injected client failures.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

/// Simulation section.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SimulationConfig {
    /// How many in-process clients may train at once; `0` picks one per 2 CPU cores
    /// (so the cores are split, never oversubscribed).
    pub concurrent_training: usize,
    /// Injected client failures, to study dropouts: `[[simulation.faults]]` with `client`,
    /// `round` (1-based) and `kind`.
    pub faults: Vec<Fault>,
}

/// A simulated client failure.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    /// Client id (its shard index).
    pub client: u32,
    /// 1-based round at whose start the client fails.
    pub round: u32,
    /// What happens.
    pub kind: FaultKind,
}

/// How a simulated client fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// The client's connection goes away mid-round and it never comes back (a killed process).
    Disconnect,
    /// The client stops answering but keeps its connection (a hung process): only the round
    /// deadline frees the round.
    Stall,
}

impl SimulationConfig {
    /// Checks that every fault names a client below `clients` and a round in `1..=rounds`
    /// (the run's `federation.clients` and `federation.rounds`).
    pub fn validate(&self, clients: usize, rounds: usize) -> Result<()> {
        for (i, fault) in self.faults.iter().enumerate() {
            if fault.client as usize >= clients || fault.round == 0 || fault.round as usize > rounds
            {
                bail!("simulation.faults[{i}]: client must be < federation.clients and round in 1..=federation.rounds");
            }
        }
        Ok(())
    }
}
