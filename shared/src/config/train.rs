//! `[train]`: local training on each client per round ([`LocalTrainConfig`], sent to the
//! clients in every round's config with that round's learning rate) and the schedule of the
//! learning rate over the run's rounds.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use crate::optim::LrSchedule;
use crate::train::LocalTrainConfig;

/// Local training section: the keys of [`LocalTrainConfig`] (`local_epochs`, `batch_size`,
/// `lr`, `momentum`, `weight_decay`) and `schedule`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Local epochs, batch size, base learning rate, momentum and weight decay.
    #[serde(flatten)]
    pub local: LocalTrainConfig,
    /// `"cosine"` (default) decays the round's learning rate over the rounds; `"constant"`
    /// keeps it. Within a round the rate is constant.
    pub schedule: LrSchedule,
}

impl Default for TrainConfig {
    /// [`LocalTrainConfig::default`] with the cosine schedule.
    fn default() -> Self {
        Self {
            local: LocalTrainConfig::default(),
            schedule: LrSchedule::Cosine,
        }
    }
}

impl TrainConfig {
    /// Checks ranges; the message names the `train.*` key.
    pub fn validate(&self) -> Result<()> {
        let t = &self.local;
        if t.local_epochs == 0 || t.batch_size == 0 {
            bail!("train.local_epochs and train.batch_size must be at least 1");
        }
        if !t.lr.is_finite() || t.lr <= 0.0 {
            bail!("train.lr must be a positive number, got {}", t.lr);
        }
        if !(0.0..1.0).contains(&t.momentum) {
            bail!("train.momentum must be in [0, 1), got {}", t.momentum);
        }
        if !t.weight_decay.is_finite() || t.weight_decay < 0.0 {
            bail!("train.weight_decay must be ≥ 0, got {}", t.weight_decay);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_stay_flat_and_unknown_ones_are_refused() {
        let t: TrainConfig =
            toml::from_str("local_epochs = 2\nlr = 1\nschedule = \"constant\"\n").unwrap();
        assert_eq!(t.local.local_epochs, 2);
        assert_eq!(t.local.lr, 1.0);
        assert_eq!(t.local.batch_size, 64);
        assert_eq!(t.schedule, LrSchedule::Constant);
        assert_eq!(
            toml::from_str::<TrainConfig>("").unwrap(),
            TrainConfig::default()
        );
        let e = toml::from_str::<TrainConfig>("lr = 0.1\nlearning_rate = 0.1\n").unwrap_err();
        assert!(e.to_string().contains("learning_rate"), "{e}");
        let json = serde_json::to_value(TrainConfig::default()).unwrap();
        let mut keys: Vec<&String> = json.as_object().unwrap().keys().collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "batch_size",
                "local_epochs",
                "lr",
                "momentum",
                "schedule",
                "weight_decay"
            ]
        );
    }
}
