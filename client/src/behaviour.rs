//! How a client behaves in a round: honestly (every real deployment), with a fault that a
//! simulation injects to study dropouts (a client that disconnects or stalls at the start of a
//! round), or as a simulated byzantine client that trains and then sends a corrupted update
//! ([`crate::byzantine`]). The round asks its behaviour before it trains
//! ([`Behaviour::before_training`]) and after ([`Behaviour::after_training`]), and, with
//! secure aggregation, once its masked update is sent ([`Behaviour::after_masking`]).

use anyhow::{bail, Result};
use fedssl_shared::config::{ByzantineConfig, Fault, FaultKind};
use fedssl_shared::seed;
use fedssl_shared::weights::WeightSet;
use tracing::warn;

use crate::byzantine::{corrupt, Attack};

/// What a client does at the start of each round.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum Behaviour {
    /// Trains and replies every round.
    #[default]
    Honest,
    /// Simulated failure: at the start of the 0-based round `round` the client fails as `kind`
    /// says; before that round it is honest.
    Fault {
        /// 0-based round (as on the wire) at whose start the client fails.
        round: u32,
        /// How it fails.
        kind: FaultKind,
    },
    /// Simulated byzantine client: trains every round, then sends its update corrupted by
    /// `attack` at `scale` ([`crate::byzantine::corrupt`]).
    Byzantine {
        /// How it corrupts its update.
        attack: Attack,
        /// The attack's scale (noise std in units of the global tensor's, or the flip factor).
        scale: f64,
    },
}

impl Behaviour {
    /// The behaviour of simulated client `client` under a scenario's `[[simulation.faults]]`
    /// (whose rounds are 1-based): its first fault listed, or [`Behaviour::Honest`].
    pub fn simulated(faults: &[Fault], client: u32) -> Self {
        faults
            .iter()
            .find(|f| f.client == client)
            .map_or(Self::Honest, |f| Self::Fault {
                round: f.round - 1,
                kind: f.kind,
            })
    }

    /// The behaviour of simulated client `client` under the scenario's `[simulation]`
    /// faults and `byzantine` (the scenario refuses a client listed in both): byzantine when
    /// `byzantine` lists it, else [`Self::simulated`].
    pub fn simulated_with(
        faults: &[Fault],
        byzantine: Option<&ByzantineConfig>,
        client: u32,
    ) -> Self {
        match byzantine {
            Some(b) if b.attack().clients.contains(&client) => Self::Byzantine {
                attack: match b {
                    ByzantineConfig::Noise(_) => Attack::Noise,
                    ByzantineConfig::SignFlip(_) => Attack::SignFlip,
                },
                scale: b.attack().scale,
            },
            _ => Self::simulated(faults, client),
        }
    }

    /// Whether the round must keep a copy of the global weights for
    /// [`Self::after_training`].
    pub(crate) fn needs_global(&self) -> bool {
        matches!(self, Self::Byzantine { .. })
    }

    /// Called by round `round` (0-based) of client `client_id` of the run with seed
    /// `run_seed` after training, with the trained backbone as safetensors `bytes` and the
    /// round's `global` weights (kept when [`Self::needs_global`]): the bytes to send.
    /// Byzantine: the corrupted update (noise seeded by `seed::BYZANTINE`,
    /// `round << 32 | client id`); otherwise `bytes` unchanged.
    pub(crate) fn after_training(
        &self,
        global: Option<&WeightSet>,
        bytes: Vec<u8>,
        run_seed: u64,
        client_id: u32,
        round: u32,
    ) -> Result<Vec<u8>> {
        let (Self::Byzantine { attack, scale }, Some(global)) = (self, global) else {
            return Ok(bytes);
        };
        let trained = WeightSet::from_safetensors(&bytes)?;
        let index = (round as u64) << 32 | client_id as u64;
        let s = seed::derive(run_seed, seed::BYZANTINE, index);
        let bad = corrupt(*attack, *scale, global, &trained, s)?;
        warn!(
            client_id,
            round = round + 1,
            ?attack,
            "simulated byzantine update"
        );
        bad.to_safetensors()
    }

    /// Called by a secure-aggregation round `round` (0-based) of client `client_id` once its
    /// masked update is sent. A `drop_after_masking` fault of this round closes `conn` and
    /// returns the error that ends the session (the client never answers the unmasking);
    /// otherwise returns at once.
    pub(crate) fn after_masking(
        &self,
        conn: &quinn::Connection,
        client_id: u32,
        round: u32,
    ) -> Result<()> {
        match *self {
            Self::Fault {
                round: r,
                kind: FaultKind::DropAfterMasking,
            } if r == round => {
                let shown = round + 1;
                warn!(
                    client_id,
                    round = shown,
                    "simulated fault: disconnecting after sending the masked update"
                );
                conn.close(0u32.into(), b"simulated failure");
                bail!("simulated disconnect after masking in round {shown}");
            }
            _ => Ok(()),
        }
    }

    /// Called by the round `round` (0-based) of client `client_id` before it trains. Honest:
    /// returns at once. A disconnect closes `conn` and returns the error that ends the
    /// session; a stall never returns (the coordinator's round deadline drops the client).
    pub(crate) async fn before_training(
        &self,
        conn: &quinn::Connection,
        client_id: u32,
        round: u32,
    ) -> Result<()> {
        // Logs count rounds from 1, as the coordinator does.
        let shown = round + 1;
        match *self {
            Self::Fault {
                round: r,
                kind: FaultKind::Disconnect,
            } if r == round => {
                warn!(
                    client_id,
                    round = shown,
                    "simulated fault: disconnecting mid-round"
                );
                conn.close(0u32.into(), b"simulated failure");
                bail!("simulated disconnect in round {shown}");
            }
            Self::Fault {
                round: r,
                kind: FaultKind::Stall,
            } if r == round => {
                warn!(client_id, round = shown, "simulated fault: stalling");
                std::future::pending::<()>().await;
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scenario_fault_becomes_the_behaviour_of_its_client_only() {
        let faults = [
            Fault {
                client: 1,
                round: 2,
                kind: FaultKind::Disconnect,
            },
            Fault {
                client: 1,
                round: 3,
                kind: FaultKind::Stall,
            },
        ];
        assert_eq!(
            Behaviour::simulated(&faults, 1),
            Behaviour::Fault {
                round: 1,
                kind: FaultKind::Disconnect
            }
        );
        assert_eq!(Behaviour::simulated(&faults, 0), Behaviour::Honest);
        let after = [Fault {
            client: 3,
            round: 2,
            kind: FaultKind::DropAfterMasking,
        }];
        assert_eq!(
            Behaviour::simulated(&after, 3),
            Behaviour::Fault {
                round: 1,
                kind: FaultKind::DropAfterMasking
            }
        );
        assert_eq!(Behaviour::simulated(&[], 1), Behaviour::Honest);
        let byz = ByzantineConfig::SignFlip(fedssl_shared::config::AttackConfig {
            clients: vec![2],
            scale: 4.0,
        });
        assert_eq!(
            Behaviour::simulated_with(&faults, Some(&byz), 2),
            Behaviour::Byzantine {
                attack: Attack::SignFlip,
                scale: 4.0
            }
        );
        assert_eq!(
            Behaviour::simulated_with(&faults, Some(&byz), 0),
            Behaviour::Honest
        );
        assert!(!Behaviour::Honest.needs_global());
    }
}
