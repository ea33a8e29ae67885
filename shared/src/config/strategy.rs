//! `federation.strategy`: which aggregation strategy the coordinator runs, as a
//! [`kind` table](crate::tagged) whose settings are the strategy's own config struct.
//!
//! `strategy = "fedavg"` (the form every scenario uses) and `strategy = { kind = "fedavg" }`
//! are the same. A new strategy is one variant and its config struct here, and its
//! implementation in the coordinator (`coordinator/src/strategy/`).

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use crate::tagged::{tagged_serde, Tagged};

/// The scenario's `federation.strategy`.
///
/// Every strategy averages the BatchNorm running statistics (`*.running_mean`,
/// `*.running_var`) sample-weighted, as FedAvg does; the server optimisers and the robust
/// rules apply to the other (learnable) weights only.
#[derive(Clone, Debug, PartialEq)]
pub enum StrategyConfig {
    /// Federated averaging (McMahan et al. 2017): the sample-weighted mean of the clients'
    /// weights (`"fedavg"`, the default).
    FedAvg(FedAvgConfig),
    /// FedProx (Li et al. 2020): FedAvg, the clients adding a proximal term to their loss.
    FedProx(FedProxConfig),
    /// FedAvg with server momentum (Hsu et al. 2019).
    FedAvgM(FedAvgMConfig),
    /// Server Adam on the pseudo-gradient (Reddi et al. 2021).
    FedAdam(FedAdamConfig),
    /// Server Yogi on the pseudo-gradient (Reddi et al. 2021).
    FedYogi(FedYogiConfig),
    /// Server Adagrad on the pseudo-gradient (Reddi et al. 2021).
    FedAdagrad(FedAdagradConfig),
    /// Coordinate-wise median (Yin et al. 2018).
    Median(MedianConfig),
    /// Coordinate-wise trimmed mean (Yin et al. 2018).
    TrimmedMean(TrimmedMeanConfig),
    /// Krum (Blanchard et al. 2017): the one update closest to its neighbours.
    Krum(KrumConfig),
    /// Multi-Krum (Blanchard et al. 2017): the mean of the `m` best-scored updates.
    MultiKrum(MultiKrumConfig),
    /// Bulyan (El Mhamdi et al. 2018): Krum-selected updates, then a coordinate-wise trimmed
    /// mean around the median; needs n ≥ 4f + 3.
    Bulyan(BulyanConfig),
    /// L-DAWA (Rehman et al. 2023): every layer weighted by its cosine similarity to the
    /// global layer.
    LDawa(LDawaConfig),
}

tagged_serde!(StrategyConfig {
    "fedavg" => FedAvg(FedAvgConfig),
    "fedprox" => FedProx(FedProxConfig),
    "fedavgm" => FedAvgM(FedAvgMConfig),
    "fedadam" => FedAdam(FedAdamConfig),
    "fedyogi" => FedYogi(FedYogiConfig),
    "fedadagrad" => FedAdagrad(FedAdagradConfig),
    "median" => Median(MedianConfig),
    "trimmed_mean" => TrimmedMean(TrimmedMeanConfig),
    "krum" => Krum(KrumConfig),
    "multi_krum" => MultiKrum(MultiKrumConfig),
    "bulyan" => Bulyan(BulyanConfig),
    "ldawa" => LDawa(LDawaConfig),
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

    /// Checks the settings' ranges, and for Krum that every round can satisfy n > 2f + 2
    /// (a round aggregates at least `min_clients` updates); the message names the
    /// `federation.strategy.*` key.
    pub fn validate(&self, min_clients: usize) -> Result<()> {
        match self {
            StrategyConfig::FedAvg(_) | StrategyConfig::Median(_) | StrategyConfig::LDawa(_) => {
                Ok(())
            }
            StrategyConfig::FedProx(c) => {
                if !c.mu.is_finite() || c.mu < 0.0 {
                    bail!("federation.strategy.mu (fedprox) must be ≥ 0, got {}", c.mu);
                }
                Ok(())
            }
            StrategyConfig::FedAvgM(c) => {
                check_positive("server_lr", c.server_lr)?;
                check_unit("momentum", c.momentum)
            }
            StrategyConfig::FedAdam(FedAdamConfig(c))
            | StrategyConfig::FedYogi(FedYogiConfig(c))
            | StrategyConfig::FedAdagrad(FedAdagradConfig(c)) => c.validate(),
            StrategyConfig::TrimmedMean(c) => {
                if !(0.0..0.5).contains(&c.beta) {
                    bail!(
                        "federation.strategy.beta (trimmed_mean) must be in [0, 0.5), got {}",
                        c.beta
                    );
                }
                Ok(())
            }
            StrategyConfig::Krum(c) => check_krum("krum", c.byzantine, None, min_clients),
            StrategyConfig::MultiKrum(c) => {
                check_krum("multi_krum", c.byzantine, c.selected, min_clients)
            }
            StrategyConfig::Bulyan(c) => check_bulyan(c.byzantine, min_clients),
        }
    }
}

/// Bulyan's n ≥ 4f + 3 (El Mhamdi et al. 2018) for the fewest updates a round aggregates
/// (`min_clients`).
fn check_bulyan(f: usize, min_clients: usize) -> Result<()> {
    if min_clients < 4 * f + 3 {
        bail!(
            "bulyan with federation.strategy.byzantine = {f} needs n ≥ 4f + 3 = {} updates in \
             every round (El Mhamdi et al. 2018), but federation.min_clients is {min_clients}: \
             raise federation.min_clients to at least {} or lower byzantine",
            4 * f + 3,
            4 * f + 3
        );
    }
    Ok(())
}

/// `federation.strategy.<key>` must be a positive finite number.
fn check_positive(key: &str, v: f64) -> Result<()> {
    if !v.is_finite() || v <= 0.0 {
        bail!("federation.strategy.{key} must be a positive number, got {v}");
    }
    Ok(())
}

/// `federation.strategy.<key>` must be in [0, 1).
fn check_unit(key: &str, v: f64) -> Result<()> {
    if !(0.0..1.0).contains(&v) {
        bail!("federation.strategy.{key} must be in [0, 1), got {v}");
    }
    Ok(())
}

/// Krum's n > 2f + 2 for the fewest updates a round aggregates (`min_clients`), and
/// Multi-Krum's 1 ≤ m ≤ n − f.
fn check_krum(kind: &str, f: usize, m: Option<usize>, min_clients: usize) -> Result<()> {
    if min_clients <= 2 * f + 2 {
        bail!(
            "{kind} with federation.strategy.byzantine = {f} needs more than 2f + 2 = {} updates \
             in every round (Blanchard et al. 2017), but federation.min_clients is {min_clients}: \
             raise federation.min_clients to at least {} or lower byzantine",
            2 * f + 2,
            2 * f + 3
        );
    }
    if let Some(m) = m {
        if m == 0 || m > min_clients - f {
            bail!(
                "{kind}: federation.strategy.selected must be in 1..={} (federation.min_clients \
                 − byzantine), got {m}",
                min_clients - f
            );
        }
    }
    Ok(())
}

/// `kind = "fedavg"`: no settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FedAvgConfig {}

/// `kind = "fedprox"` (Li et al. 2020): each client minimises its pretext loss plus
/// (μ/2)·‖w − w_global‖² over the backbone's learnable weights; aggregation is FedAvg's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FedProxConfig {
    /// μ ≥ 0, the proximal coefficient (default 0.01, within the paper's grid
    /// {0.001, 0.01, 0.1, 1}); 0 trains exactly as FedAvg.
    pub mu: f64,
}

impl Default for FedProxConfig {
    /// μ = 0.01.
    fn default() -> Self {
        Self { mu: 0.01 }
    }
}

/// `kind = "fedavgm"` (Hsu et al. 2019): v ← β·v + Δ, w ← w + η·v, with Δ the round's
/// mean minus the global weights.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FedAvgMConfig {
    /// Server learning rate η (default 1.0).
    pub server_lr: f64,
    /// Server momentum β in [0, 1) (default 0.9; 0 with η = 1 is FedAvg).
    pub momentum: f64,
}

impl Default for FedAvgMConfig {
    /// η = 1.0, β = 0.9.
    fn default() -> Self {
        Self {
            server_lr: 1.0,
            momentum: 0.9,
        }
    }
}

/// The settings of the adaptive server optimisers (Reddi et al. 2021, Algorithm 2).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdaptiveConfig {
    /// Server learning rate η.
    pub server_lr: f64,
    /// First-moment decay β₁ in [0, 1).
    pub beta1: f64,
    /// Second-moment decay β₂ in [0, 1) (unused by FedAdagrad).
    pub beta2: f64,
    /// Adaptivity τ > 0, added to √v in the denominator.
    pub tau: f64,
}

impl AdaptiveConfig {
    /// Checks η > 0, τ > 0, β₁ and β₂ in [0, 1).
    pub fn validate(&self) -> Result<()> {
        check_positive("server_lr", self.server_lr)?;
        check_positive("tau", self.tau)?;
        check_unit("beta1", self.beta1)?;
        check_unit("beta2", self.beta2)
    }
}

/// Declares the config of one adaptive optimiser: a newtype of [`AdaptiveConfig`] whose
/// keys default to that optimiser's defaults.
macro_rules! adaptive_config {
    ($(#[$doc:meta])* $name:ident, $eta:expr, $b1:expr, $b2:expr, $tau:expr) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
        #[serde(from = "AdaptiveKeys", into = "AdaptiveKeys")]
        pub struct $name(pub AdaptiveConfig);

        impl Default for $name {
            fn default() -> Self {
                Self(AdaptiveConfig {
                    server_lr: $eta,
                    beta1: $b1,
                    beta2: $b2,
                    tau: $tau,
                })
            }
        }

        impl From<AdaptiveKeys> for $name {
            fn from(k: AdaptiveKeys) -> Self {
                let d = Self::default().0;
                Self(AdaptiveConfig {
                    server_lr: k.server_lr.unwrap_or(d.server_lr),
                    beta1: k.beta1.unwrap_or(d.beta1),
                    beta2: k.beta2.unwrap_or(d.beta2),
                    tau: k.tau.unwrap_or(d.tau),
                })
            }
        }

        impl From<$name> for AdaptiveKeys {
            fn from(c: $name) -> Self {
                AdaptiveKeys {
                    server_lr: Some(c.0.server_lr),
                    beta1: Some(c.0.beta1),
                    beta2: Some(c.0.beta2),
                    tau: Some(c.0.tau),
                }
            }
        }
    };
}

/// The keys of an adaptive optimiser's table as written (each optional).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct AdaptiveKeys {
    server_lr: Option<f64>,
    beta1: Option<f64>,
    beta2: Option<f64>,
    tau: Option<f64>,
}

adaptive_config!(
    /// `kind = "fedadam"`: `server_lr` η = 0.1, `beta1` = 0.9, `beta2` = 0.99, `tau` = 1e-9
    /// (Flower's `FedAdam` defaults; the paper leaves them to tuning).
    FedAdamConfig, 0.1, 0.9, 0.99, 1e-9
);
adaptive_config!(
    /// `kind = "fedyogi"`: `server_lr` η = 0.01, `beta1` = 0.9, `beta2` = 0.99, `tau` = 1e-3
    /// (Flower's `FedYogi` defaults).
    FedYogiConfig, 0.01, 0.9, 0.99, 1e-3
);
adaptive_config!(
    /// `kind = "fedadagrad"`: `server_lr` η = 0.1, `beta1` = 0 (no first-moment averaging),
    /// `tau` = 1e-9 (Flower's `FedAdagrad` defaults); `beta2` is unused.
    FedAdagradConfig, 0.1, 0.0, 0.0, 1e-9
);

/// `kind = "median"`: no settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MedianConfig {}

/// `kind = "trimmed_mean"`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrimmedMeanConfig {
    /// Fraction β in [0, 0.5) of the updates dropped from each end of every coordinate's
    /// sorted values: ⌊β·n⌋ each side (default 0.2, Flower's `FedTrimmedAvg`).
    pub beta: f64,
}

impl Default for TrimmedMeanConfig {
    /// β = 0.2.
    fn default() -> Self {
        Self { beta: 0.2 }
    }
}

/// `kind = "krum"`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KrumConfig {
    /// f, the number of byzantine clients assumed (default 1); every round needs
    /// n > 2f + 2 updates.
    pub byzantine: usize,
}

impl Default for KrumConfig {
    /// f = 1.
    fn default() -> Self {
        Self { byzantine: 1 }
    }
}

/// `kind = "multi_krum"`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MultiKrumConfig {
    /// f, the number of byzantine clients assumed (default 1); every round needs
    /// n > 2f + 2 updates.
    pub byzantine: usize,
    /// m, the updates selected and averaged (default: n − f of the round's n updates).
    pub selected: Option<usize>,
}

impl Default for MultiKrumConfig {
    /// f = 1, m = n − f.
    fn default() -> Self {
        Self {
            byzantine: 1,
            selected: None,
        }
    }
}

/// `kind = "bulyan"`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BulyanConfig {
    /// f, the number of byzantine clients assumed (default 1); every round needs
    /// n ≥ 4f + 3 updates.
    pub byzantine: usize,
}

impl Default for BulyanConfig {
    /// f = 1.
    fn default() -> Self {
        Self { byzantine: 1 }
    }
}

/// `kind = "ldawa"`: no settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LDawaConfig {}

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
        let e = toml::from_str::<Federation>("strategy = \"fedsurely\"").unwrap_err();
        assert!(e.to_string().contains("`fedsurely`") && e.to_string().contains("`fedavg`"));
        crate::tagged::assert_unknown_keys_are_refused::<StrategyConfig>();
    }

    #[test]
    fn every_kind_reads_its_defaults_and_round_trips() {
        let f: Federation =
            toml::from_str("[strategy]\nkind = \"fedadam\"\ntau = 0.001\n").unwrap();
        assert_eq!(
            f.strategy,
            StrategyConfig::FedAdam(FedAdamConfig(AdaptiveConfig {
                server_lr: 0.1,
                beta1: 0.9,
                beta2: 0.99,
                tau: 0.001
            }))
        );
        let f: Federation = toml::from_str("strategy = \"fedavgm\"").unwrap();
        assert_eq!(
            f.strategy,
            StrategyConfig::FedAvgM(FedAvgMConfig {
                server_lr: 1.0,
                momentum: 0.9
            })
        );
        let f: Federation = toml::from_str("strategy = \"fedyogi\"").unwrap();
        assert_eq!(
            f.strategy,
            StrategyConfig::FedYogi(FedYogiConfig::default())
        );
        assert_eq!(FedYogiConfig::default().0.tau, 1e-3);
        for kind in StrategyConfig::KINDS {
            let f: Federation = toml::from_str(&format!("strategy = \"{kind}\"")).unwrap();
            assert_eq!(f.strategy.name(), *kind);
            let json = serde_json::to_string(&f).unwrap();
            let back: Federation = serde_json::from_str(&json).unwrap();
            assert_eq!(back.strategy, f.strategy, "{json}");
            let cfg = bincode::config::standard();
            let bytes = bincode::serde::encode_to_vec(&f.strategy, cfg).unwrap();
            let (b, _): (StrategyConfig, usize) =
                bincode::serde::decode_from_slice(&bytes, cfg).unwrap();
            assert_eq!(b, f.strategy);
        }
        let f: Federation =
            toml::from_str("[strategy]\nkind = \"multi_krum\"\nbyzantine = 2\nselected = 3\n")
                .unwrap();
        assert_eq!(
            f.strategy,
            StrategyConfig::MultiKrum(MultiKrumConfig {
                byzantine: 2,
                selected: Some(3)
            })
        );
    }

    #[test]
    fn out_of_range_settings_are_refused_naming_the_key() {
        let bad = |text: &str, min_clients: usize, key: &str| {
            let f: Federation = toml::from_str(text).unwrap();
            let e = f.strategy.validate(min_clients).unwrap_err().to_string();
            assert!(e.contains(key), "{text}: {e}");
        };
        bad("strategy = { kind = \"fedadam\", beta1 = 1.0 }", 2, "beta1");
        bad("strategy = { kind = \"fedprox\", mu = -0.1 }", 2, "mu");
        bad("strategy = { kind = \"fedyogi\", tau = 0.0 }", 2, "tau");
        bad(
            "strategy = { kind = \"fedavgm\", server_lr = -1.0 }",
            2,
            "server_lr",
        );
        bad(
            "strategy = { kind = \"trimmed_mean\", beta = 0.5 }",
            2,
            "beta",
        );
        bad(
            "strategy = { kind = \"krum\", byzantine = 2 }",
            6,
            "2f + 2 = 6",
        );
        bad(
            "strategy = { kind = \"multi_krum\", byzantine = 1, selected = 5 }",
            5,
            "selected",
        );
        // Bulyan: n ≥ 4f + 3, the message names the numbers
        bad(
            "strategy = { kind = \"bulyan\", byzantine = 2 }",
            10,
            "4f + 3 = 11 updates in every round (El Mhamdi et al. 2018), but \
             federation.min_clients is 10: raise federation.min_clients to at least 11",
        );
        let b: Federation = toml::from_str("strategy = \"bulyan\"").unwrap();
        assert_eq!(
            b.strategy,
            StrategyConfig::Bulyan(BulyanConfig { byzantine: 1 })
        );
        b.strategy.validate(7).unwrap();
        assert!(b.strategy.validate(6).is_err());
        let ok: Federation =
            toml::from_str("strategy = { kind = \"krum\", byzantine = 2 }").unwrap();
        ok.strategy.validate(7).unwrap();
        StrategyConfig::default().validate(1).unwrap();
    }
}
