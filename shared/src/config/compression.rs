//! `[federation.compression]`: how a client encodes its update on the wire
//! ([`CompressionConfig`], a [`kind` table](crate::tagged)). `"none"` (the default) sends the
//! trained weights as `F32` safetensors, exactly as before this key existed; every other
//! kind sends the update Δ = w_k − w_global of each learnable tensor encoded
//! ([`crate::encoding`]), the BatchNorm running statistics as exact `F32` values. The kind
//! travels to the clients in the welcome ([`crate::protocol::RunInfo`]).

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use crate::tagged::{tagged_serde, Tagged};

/// `federation.compression`.
#[derive(Clone, Debug, PartialEq)]
pub enum CompressionConfig {
    /// `"none"`: full `F32` weights (the default).
    None(NoCompression),
    /// `"fp16"`: Δ in IEEE half precision (2 bytes a value).
    Fp16(LossyConfig),
    /// `"bf16"`: Δ in bfloat16 (2 bytes a value, `f32`'s exponent range).
    Bf16(LossyConfig),
    /// `"int8"`: Δ as symmetric 8-bit integers with an `f32` scale per tensor or per output
    /// channel.
    Int8(Int8Config),
    /// `"topk"`: the `fraction` of Δ's values largest in magnitude, as (index, value) pairs
    /// (Aji & Heafield 2017; with error feedback, Stich, Cordonnier & Jaggi 2018).
    TopK(TopKConfig),
}

tagged_serde!(CompressionConfig {
    "none" => None(NoCompression),
    "fp16" => Fp16(LossyConfig),
    "bf16" => Bf16(LossyConfig),
    "int8" => Int8(Int8Config),
    "topk" => TopK(TopKConfig),
});

impl Default for CompressionConfig {
    /// `"none"`.
    fn default() -> Self {
        CompressionConfig::None(NoCompression {})
    }
}

impl CompressionConfig {
    /// The kind's name.
    pub fn name(&self) -> &'static str {
        self.kind()
    }

    /// True for `"none"`.
    pub fn is_none(&self) -> bool {
        matches!(self, CompressionConfig::None(_))
    }

    /// Whether the client carries what the encoding lost into its next round's update.
    pub fn error_feedback(&self) -> bool {
        match self {
            CompressionConfig::None(_) => false,
            CompressionConfig::Fp16(c) | CompressionConfig::Bf16(c) => c.error_feedback,
            CompressionConfig::Int8(c) => c.error_feedback,
            CompressionConfig::TopK(c) => c.error_feedback,
        }
    }

    /// Checks the ranges; the message names the `federation.compression.*` key.
    pub fn validate(&self) -> Result<()> {
        if let CompressionConfig::TopK(c) = self {
            if !(c.fraction.is_finite() && c.fraction > 0.0 && c.fraction <= 1.0) {
                bail!(
                    "federation.compression.fraction (topk) must be in (0, 1], got {}",
                    c.fraction
                );
            }
        }
        Ok(())
    }
}

/// `kind = "none"`: no settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoCompression {}

/// `kind = "fp16"` or `"bf16"`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LossyConfig {
    /// Carry the rounding error into the next round's update (default false).
    pub error_feedback: bool,
}

/// `kind = "int8"`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Int8Config {
    /// One scale per output channel (the first dimension) of tensors with two or more
    /// dimensions, instead of one per tensor (default true).
    pub per_channel: bool,
    /// Carry the rounding error into the next round's update (default false).
    pub error_feedback: bool,
}

impl Default for Int8Config {
    fn default() -> Self {
        Self {
            per_channel: true,
            error_feedback: false,
        }
    }
}

/// `kind = "topk"`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TopKConfig {
    /// Fraction of each tensor's values sent, in (0, 1] (default 0.1; at least one value).
    pub fraction: f64,
    /// Carry the values not sent into the next round's update (default true: top-k without
    /// it loses most of the update).
    pub error_feedback: bool,
}

impl Default for TopKConfig {
    fn default() -> Self {
        Self {
            fraction: 0.1,
            error_feedback: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Scenario;

    use super::*;

    #[test]
    fn kinds_read_with_defaults_and_bad_keys_are_refused() {
        let sc = Scenario::from_toml_str("name = \"c\"", &[]).unwrap();
        assert!(sc.federation.compression.is_none());
        let sc = Scenario::from_toml_str(
            "name = \"c\"\n[federation.compression]\nkind = \"topk\"\nfraction = 0.05\n",
            &[],
        )
        .unwrap();
        assert_eq!(
            sc.federation.compression,
            CompressionConfig::TopK(TopKConfig {
                fraction: 0.05,
                error_feedback: true
            })
        );
        let sc =
            Scenario::from_toml_str("name = \"c\"", &["federation.compression=\"int8\"".into()])
                .unwrap();
        assert_eq!(
            sc.federation.compression,
            CompressionConfig::Int8(Int8Config::default())
        );
        let e = Scenario::from_toml_str(
            "name = \"c\"",
            &["federation.compression={kind=\"topk\", fraction=0}".into()],
        )
        .unwrap_err();
        assert!(
            format!("{e:#}").contains("federation.compression.fraction"),
            "{e:#}"
        );
        let e = Scenario::from_toml_str(
            "name = \"c\"",
            &["federation.compression={kind=\"fp16\", per_channel=true}".into()],
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("per_channel"), "{e:#}");
        let e = Scenario::from_toml_str("name = \"c\"", &["federation.compression=\"zip\"".into()])
            .unwrap_err();
        assert!(format!("{e:#}").contains("unknown kind `zip`"), "{e:#}");
        // the JSON a run writes reads back the same
        let sc = Scenario::from_toml_str(
            "name = \"c\"",
            &["federation.compression={kind=\"int8\", per_channel=false}".into()],
        )
        .unwrap();
        let json = serde_json::to_string(&sc).unwrap();
        assert_eq!(Scenario::from_json_str(&json, &[]).unwrap(), sc);
    }
}
