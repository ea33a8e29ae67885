//! The client-side keys of `[federation]` that make a client keep state between rounds:
//! `federation.batch_norm` ([`BatchNormPolicy`], FedBN) and `federation.local_update`
//! ([`LocalUpdateConfig`], a [`kind` table](crate::tagged): plain, FedEMA or FedU). Both
//! travel to the clients in the welcome ([`crate::protocol::RunInfo`]); the defaults keep
//! every client stateless apart from its local pretext heads.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use crate::tagged::{tagged_serde, Tagged};

/// `federation.batch_norm`: what happens to the backbone's BatchNorm tensors (`*.bn*.weight`,
/// `.bias`, `.running_mean`, `.running_var`) between rounds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchNormPolicy {
    /// Every BN tensor is aggregated like any weight and the client trains from the global
    /// ones (the default, the behaviour before this key existed).
    #[default]
    Aggregate,
    /// FedBN (Li, Jiang, Zhang, Kamp & Dou, ICLR 2021): from its second round on, a client
    /// overwrites the global BN affine parameters and running statistics with its own stored
    /// ones before training. The client still sends them and the coordinator still takes
    /// their sample-weighted mean, which is what the global model is evaluated with.
    Local,
    /// BN affine parameters aggregated, running statistics kept local.
    WeightsOnly,
}

impl BatchNormPolicy {
    /// The name as written in the scenario.
    pub fn name(self) -> &'static str {
        match self {
            BatchNormPolicy::Aggregate => "aggregate",
            BatchNormPolicy::Local => "local",
            BatchNormPolicy::WeightsOnly => "weights_only",
        }
    }
}

/// `federation.local_update`: how a client merges the global weights it receives with its
/// own weights from its previous round, before training. The coordinator aggregates with
/// `federation.strategy` whatever this is (the papers use FedAvg).
#[derive(Clone, Debug, PartialEq)]
pub enum LocalUpdateConfig {
    /// The client takes the global weights as they are (`"plain"`, the default).
    Plain(PlainConfig),
    /// FedEMA (Zhuang, Wen & Zhang, "Divergence-aware Federated Self-Supervised Learning",
    /// ICLR 2022): online encoder and predictor ← μ·local + (1 − μ)·global.
    FedEma(FedEmaConfig),
    /// FedU (Zhuang, Gan, Wen, Zhang & Yi, "Collaborative Unsupervised Visual Representation
    /// Learning from Decentralized Data", ICCV 2021): divergence-aware predictor update.
    FedU(FedUConfig),
}

tagged_serde!(LocalUpdateConfig {
    "plain" => Plain(PlainConfig),
    "fedema" => FedEma(FedEmaConfig),
    "fedu" => FedU(FedUConfig),
});

impl Default for LocalUpdateConfig {
    /// Plain.
    fn default() -> Self {
        LocalUpdateConfig::Plain(PlainConfig {})
    }
}

impl LocalUpdateConfig {
    /// The kind's name (`"plain"`, `"fedema"`, `"fedu"`).
    pub fn name(&self) -> &'static str {
        self.kind()
    }

    /// Checks the ranges; the message names the `federation.local_update.*` key.
    pub fn validate(&self) -> Result<()> {
        match self {
            LocalUpdateConfig::Plain(_) => Ok(()),
            LocalUpdateConfig::FedEma(c) => {
                if !(c.tau.is_finite() && c.tau > 0.0 && c.tau <= 1.0) {
                    bail!(
                        "federation.local_update.tau (fedema) must be in (0, 1], got {}",
                        c.tau
                    );
                }
                Ok(())
            }
            LocalUpdateConfig::FedU(c) => {
                if !(c.threshold.is_finite() && c.threshold >= 0.0) {
                    bail!(
                        "federation.local_update.threshold (fedu) must be ≥ 0, got {}",
                        c.threshold
                    );
                }
                Ok(())
            }
        }
    }
}

/// `kind = "plain"`: no settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlainConfig {}

/// `kind = "fedema"`: the client's merge weight μ = min(λ·d, 1), d its divergence
/// ([`crate::train::state`]), λ = τ/d at its first round with a divergence, so that its
/// first μ is τ (the paper's "autoscaler").
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FedEmaConfig {
    /// τ in (0, 1], the target of λ's calibration (default 0.7).
    pub tau: f64,
}

impl Default for FedEmaConfig {
    fn default() -> Self {
        Self { tau: 0.7 }
    }
}

/// `kind = "fedu"`: the client takes the global predictor only while its divergence d
/// ([`crate::train::state`]) is below `threshold`, and keeps its own otherwise.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FedUConfig {
    /// The divergence threshold (default 0.4; the divergence is in the units of the mean
    /// per-layer L2 distance of the backbone's convolution weights).
    pub threshold: f64,
}

impl Default for FedUConfig {
    fn default() -> Self {
        Self { threshold: 0.4 }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Scenario;

    #[test]
    fn keys_parse_default_and_are_checked() {
        let sc = Scenario::from_toml_str("", &[]).unwrap();
        assert_eq!(sc.federation.batch_norm, super::BatchNormPolicy::Aggregate);
        assert_eq!(sc.federation.local_update.name(), "plain");
        let text = "[federation]\nbatch_norm = \"local\"\nlocal_update = { kind = \"fedema\", tau = 0.5 }\n";
        let sc = Scenario::from_toml_str(text, &[]).unwrap();
        assert_eq!(sc.federation.batch_norm, super::BatchNormPolicy::Local);
        assert_eq!(
            sc.federation.local_update,
            super::LocalUpdateConfig::FedEma(super::FedEmaConfig { tau: 0.5 })
        );
        let bad = "[federation]\nlocal_update = { kind = \"fedema\", tau = 2.0 }\n";
        let e = format!("{:#}", Scenario::from_toml_str(bad, &[]).unwrap_err());
        assert!(e.contains("federation.local_update.tau"), "{e}");
        let bad = "[federation]\nlocal_update = { kind = \"fedu\", typo = 1 }\n";
        let e = format!("{:#}", Scenario::from_toml_str(bad, &[]).unwrap_err());
        assert!(e.contains("typo"), "{e}");
    }
}
