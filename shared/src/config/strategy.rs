//! `federation.strategy`: which aggregation strategy the coordinator runs, as a
//! [`kind` table](crate::tagged) whose settings are the strategy's own config struct.
//!
//! `strategy = "fedavg"` (the form every scenario uses) and `strategy = { kind = "fedavg" }`
//! are the same. A new strategy is one variant and its config struct here, and its
//! implementation in the coordinator (`coordinator/src/strategy/`).

use serde::{Deserialize, Serialize};

use crate::tagged::{tagged_serde, Tagged};

/// The scenario's `federation.strategy`.
#[derive(Clone, Debug, PartialEq)]
pub enum StrategyConfig {
    /// Federated averaging (McMahan et al. 2017): the sample-weighted mean of the clients'
    /// weights (`"fedavg"`, the default).
    FedAvg(FedAvgConfig),
}

tagged_serde!(StrategyConfig {
    "fedavg" => FedAvg(FedAvgConfig),
});

impl Default for StrategyConfig {
    /// FedAvg.
    fn default() -> Self {
        StrategyConfig::FedAvg(FedAvgConfig {})
    }
}

impl StrategyConfig {
    /// The strategy's name, as written in the scenario and in `summary.json` (`"fedavg"`).
    pub fn name(&self) -> &'static str {
        self.kind()
    }
}

/// `kind = "fedavg"`: no settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FedAvgConfig {}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize, serde::Serialize)]
    struct Federation {
        strategy: StrategyConfig,
    }

    #[test]
    fn the_plain_name_and_the_table_are_the_same_strategy() {
        let fedavg = StrategyConfig::FedAvg(FedAvgConfig {});
        for text in [
            "strategy = \"fedavg\"",
            "strategy = { kind = \"fedavg\" }",
            "[strategy]\nkind = \"fedavg\"",
        ] {
            let f: Federation = toml::from_str(text).unwrap();
            assert_eq!(f.strategy, fedavg, "{text}");
        }
        assert_eq!(fedavg.name(), "fedavg");
        assert_eq!(StrategyConfig::default(), fedavg);
        // written as before the tagged configs: `"strategy": "fedavg"`
        assert_eq!(
            serde_json::to_string(&Federation { strategy: fedavg }).unwrap(),
            r#"{"strategy":"fedavg"}"#
        );
        let e = toml::from_str::<Federation>("strategy = \"fedprox\"").unwrap_err();
        assert!(e.to_string().contains("`fedprox`") && e.to_string().contains("`fedavg`"));
        crate::tagged::assert_unknown_keys_are_refused::<StrategyConfig>();
    }
}
