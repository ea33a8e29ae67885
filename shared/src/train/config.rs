//! The hyper-parameters of one client's local training: one struct, read from the scenario's
//! `[train]` section, sent in every round's [`crate::protocol::RoundConfig`] (with that
//! round's learning rate) and given to [`super::train_local`].

use serde::{Deserialize, Serialize};

/// Hyper-parameters of local training (the task's own parameters live in the task, see
/// [`crate::pretext::PretextConfig`]). In the scenario's `[train]` these are its keys and `lr`
/// is the base learning rate; in a round's config `lr` is that round's rate, which stays
/// constant over the round's steps.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LocalTrainConfig {
    /// Passes over the shard per round.
    pub local_epochs: usize,
    /// Images per step, before the task multiplies them (e.g. ×4 rotations).
    pub batch_size: usize,
    /// Learning rate.
    pub lr: f64,
    /// SGD momentum μ.
    pub momentum: f64,
    /// L2 weight decay (not applied to 1-D variables: BatchNorm parameters and biases).
    pub weight_decay: f64,
}

impl Default for LocalTrainConfig {
    /// 1 epoch, batch 64, lr 0.05, momentum 0.9, weight decay 5e-4.
    fn default() -> Self {
        Self {
            local_epochs: 1,
            batch_size: 64,
            lr: 0.05,
            momentum: 0.9,
            weight_decay: 5e-4,
        }
    }
}
