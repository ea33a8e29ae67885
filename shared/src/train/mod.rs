//! Local training, as a client runs it each round: the scenario's pretext task
//! ([`crate::pretext`]) on the client's shard with SGD + momentum.
//!
//! - [`config`]: [`LocalTrainConfig`], the hyper-parameters (`[train]`, and every round's).
//! - [`model`]: [`LocalModel`], a client's backbone and pretext heads, and which of them
//!   travel to the coordinator.
//! - [`local`]: [`train_local`], the loop (batches prepared ahead on their own thread).
//! - [`state`]: [`ClientState`], what a client keeps between rounds, and the merge of the
//!   round's global weights with it (FedBN, FedEMA, FedU, BYOL's target).

pub mod config;
pub mod local;
pub mod model;
pub mod state;

pub use config::LocalTrainConfig;
pub use local::{train_local, TrainStats, PREFETCH_BATCHES};
pub use model::LocalModel;
pub use state::{begin_round, divergence, keeps_backbone, ClientState, Merge};

/// Small models for the tests of training.
#[cfg(test)]
pub(crate) mod fixtures {
    use crate::model::{ModelConfig, ResNetConfig};
    use crate::pretext::PretextConfig;

    /// A narrow two-stage ResNet keeps the test fast on 2 CPU cores.
    pub(crate) fn small() -> ModelConfig {
        ModelConfig {
            resnet: ResNetConfig {
                stem_width: 8,
                widths: vec![8, 16],
                blocks: vec![1, 1],
                widen: 1,
            },
            ..ModelConfig::default()
        }
    }

    /// BYOL with narrow heads (hidden 8, out 4), τ_base 0.9, everything travelling.
    pub(crate) fn byol() -> PretextConfig {
        PretextConfig {
            task: crate::pretext::PretextKind::Byol,
            byol: crate::pretext::ByolConfig {
                hidden_dim: 8,
                out_dim: 4,
                tau_base: 0.9,
                ..Default::default()
            },
            ..PretextConfig::default()
        }
    }

    /// Rotation, all four angles, no flips.
    pub(crate) fn rotation() -> PretextConfig {
        let mut p = PretextConfig::default();
        p.rotation.flip = false;
        p
    }
}
