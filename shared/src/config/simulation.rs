//! `[simulation]`: settings that only matter for `simulate` (all clients in one process),
//! including injected client failures and byzantine clients.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use crate::tagged::tagged_serde;

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
    /// Byzantine clients, to study robust aggregation: `byzantine = { kind = "noise" |
    /// "sign_flip", clients = [..], scale = … }` (default: none). They train as usual, then
    /// send a corrupted update in every round (see [`ByzantineConfig`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub byzantine: Option<ByzantineConfig>,
}

/// `simulation.byzantine`: which clients send corrupted updates, and how. Only the learnable
/// weights are corrupted; the BatchNorm running statistics (`*.running_mean`, `*.running_var`,
/// `*.num_batches_tracked`) are sent as trained, and the reported sample count is the true one.
#[derive(Clone, Debug, PartialEq)]
pub enum ByzantineConfig {
    /// Every learnable tensor t is replaced by Gaussian noise N(0, (scale·σ_t)²), σ_t the
    /// standard deviation of the global tensor t the round started from (seeded by the
    /// `byzantine` stream of [`crate::seed`]).
    Noise(AttackConfig),
    /// Every learnable tensor is w_global − scale·(w_k − w_global): the client's own update,
    /// reversed and scaled.
    SignFlip(AttackConfig),
}

tagged_serde!(ByzantineConfig {
    "noise" => Noise(AttackConfig),
    "sign_flip" => SignFlip(AttackConfig),
});

impl ByzantineConfig {
    /// The settings, whatever the kind.
    pub fn attack(&self) -> &AttackConfig {
        match self {
            ByzantineConfig::Noise(a) | ByzantineConfig::SignFlip(a) => a,
        }
    }
}

/// The settings of a byzantine behaviour.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AttackConfig {
    /// Ids (shard indices) of the byzantine clients (default none).
    pub clients: Vec<u32>,
    /// The noise's standard deviation in units of σ_t (`noise`), or the factor of the
    /// reversed update (`sign_flip`); default 1, finite and > 0.
    pub scale: f64,
}

impl Default for AttackConfig {
    /// No client, scale 1.
    fn default() -> Self {
        Self {
            clients: Vec::new(),
            scale: 1.0,
        }
    }
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
    /// Secure aggregation only: the client trains and sends its masked update, then its
    /// connection goes away before the unmasking (its update is still in the round's sum,
    /// unmasked from the other clients' shares while `threshold` of them answer).
    DropAfterMasking,
}

impl SimulationConfig {
    /// Refuses a `drop_after_masking` fault in a run without secure aggregation
    /// (`secure_aggregation`: `federation.secure_aggregation.enabled`), naming the fault.
    pub fn check_secure_aggregation(&self, secure_aggregation: bool) -> Result<()> {
        if secure_aggregation {
            return Ok(());
        }
        if let Some(i) = self
            .faults
            .iter()
            .position(|f| f.kind == FaultKind::DropAfterMasking)
        {
            bail!("simulation.faults[{i}]: kind \"drop_after_masking\" needs federation.secure_aggregation.enabled = true");
        }
        Ok(())
    }

    /// Checks that every fault names a client below `clients` and a round in `1..=rounds`
    /// (the run's `federation.clients` and `federation.rounds`).
    pub fn validate(&self, clients: usize, rounds: usize) -> Result<()> {
        for (i, fault) in self.faults.iter().enumerate() {
            if fault.client as usize >= clients || fault.round == 0 || fault.round as usize > rounds
            {
                bail!("simulation.faults[{i}]: client must be < federation.clients and round in 1..=federation.rounds");
            }
        }
        if let Some(b) = &self.byzantine {
            let a = b.attack();
            if !a.scale.is_finite() || a.scale <= 0.0 {
                bail!(
                    "simulation.byzantine.scale must be a positive number, got {}",
                    a.scale
                );
            }
            for &c in &a.clients {
                if c as usize >= clients {
                    bail!(
                        "simulation.byzantine.clients: client {c} is not below federation.clients = {clients}"
                    );
                }
                if self.faults.iter().any(|f| f.client == c) {
                    bail!("simulation.byzantine.clients: client {c} also has a simulation.faults entry; give it one behaviour");
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Scenario;

    #[test]
    fn byzantine_clients_read_and_are_checked_naming_the_key() {
        let text = "[federation]\nclients = 4\n[simulation]\n\
                    byzantine = { kind = \"noise\", clients = [1, 3], scale = 2.5 }\n";
        let sc = Scenario::from_toml_str(text, &[]).unwrap();
        assert_eq!(
            sc.simulation.byzantine,
            Some(ByzantineConfig::Noise(AttackConfig {
                clients: vec![1, 3],
                scale: 2.5
            }))
        );
        let flip = text.replace("\"noise\", clients = [1, 3], scale = 2.5", "\"sign_flip\"");
        let sc = Scenario::from_toml_str(&flip, &[]).unwrap();
        assert_eq!(
            sc.simulation.byzantine,
            Some(ByzantineConfig::SignFlip(AttackConfig::default()))
        );
        // absent: none, and scenario.json does not mention it
        let plain = Scenario::from_toml_str("[federation]\nclients = 4\n", &[]).unwrap();
        assert_eq!(plain.simulation.byzantine, None);
        let json = serde_json::to_string(&plain.simulation).unwrap();
        assert!(!json.contains("byzantine"), "{json}");
        let bad = |t: &str, want: &str| {
            let e = format!("{:#}", Scenario::from_toml_str(t, &[]).unwrap_err());
            assert!(e.contains(want), "{e}");
        };
        bad(
            &text.replace("[1, 3]", "[4]"),
            "client 4 is not below federation.clients = 4",
        );
        bad(&text.replace("2.5", "0.0"), "simulation.byzantine.scale");
        bad(&text.replace("scale", "scal"), "scal");
        bad(
            &format!("{text}[[simulation.faults]]\nclient = 1\nround = 1\nkind = \"stall\"\n"),
            "client 1 also has a simulation.faults entry",
        );
        crate::tagged::assert_unknown_keys_are_refused::<ByzantineConfig>();
    }
}
