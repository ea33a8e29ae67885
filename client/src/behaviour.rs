//! How a client behaves in a round: honestly (every real deployment), or with a fault that a
//! simulation injects to study dropouts (a client that disconnects or stalls at the start of a
//! round). The round asks its behaviour once, after it has received the round's configuration
//! and the global weights and before it trains; everything a fault does lives here.

use anyhow::{bail, Result};
use fedssl_shared::config::{Fault, FaultKind};
use tracing::warn;

/// What a client does at the start of each round.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
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
        assert_eq!(Behaviour::simulated(&[], 1), Behaviour::Honest);
    }
}
