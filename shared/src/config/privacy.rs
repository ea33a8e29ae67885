//! `[federation.dp]`: client-level differential privacy of DP-FedAvg (McMahan et al. 2018,
//! "Learning Differentially Private Recurrent Language Models"), with optional adaptive
//! clipping (Andrew et al. 2021, "Differentially Private Learning with Adaptive Clipping").
//!
//! ```toml
//! [federation.dp]
//! clip_norm = 1.0          # S: every client's update w_k − w_global is clipped to L2 norm S
//! noise_multiplier = 1.0   # z: Gaussian noise of std z·S is added to the sum of updates
//! # delta = 1e-3           # δ the accountant reports ε for (default 1 / federation.clients)
//! # adaptive = { target_quantile = 0.5, lr = 0.2 }   # S follows the γ-quantile of the norms
//! ```

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

/// Differential privacy of the aggregate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DpConfig {
    /// S, the L2 norm every client update (w_k − w_global, over every tensor) is clipped to
    /// (the initial S under adaptive clipping).
    pub clip_norm: f64,
    /// z, the noise multiplier: the sum of clipped updates gets Gaussian noise of std z·S.
    pub noise_multiplier: f64,
    /// δ of the reported (ε, δ); default 1 / `federation.clients`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta: Option<f64>,
    /// Adaptive clipping; absent: S stays fixed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adaptive: Option<AdaptiveClipConfig>,
}

/// Adaptive clipping (Andrew et al. 2021, Algorithm 1): after each round
/// S ← S · exp(−η (b̃ − γ)), b̃ the noised fraction of updates whose norm was ≤ S.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdaptiveClipConfig {
    /// γ, the quantile of the update norms S tracks (default 0.5).
    pub target_quantile: f64,
    /// η, the geometric learning rate of S (default 0.2, the paper's).
    pub lr: f64,
    /// σ_b, the std of the noise on the count of unclipped updates; default: the expected
    /// clients per round / 20 (the paper's recommendation).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count_stddev: Option<f64>,
}

impl Default for AdaptiveClipConfig {
    fn default() -> Self {
        Self {
            target_quantile: 0.5,
            lr: 0.2,
            count_stddev: None,
        }
    }
}

impl DpConfig {
    /// δ of the reported (ε, δ): `delta`, or by default 1 / `clients`.
    pub fn delta_of(&self, clients: usize) -> f64 {
        self.delta.unwrap_or(1.0 / clients as f64)
    }

    /// σ_b, the std of the noise on adaptive clipping's count of unclipped updates:
    /// `count_stddev`, or by default `sampled` clients per round / 20; `None` without
    /// adaptive clipping.
    pub fn count_stddev(&self, sampled: usize) -> Option<f64> {
        let a = self.adaptive.as_ref()?;
        Some(a.count_stddev.unwrap_or(sampled as f64 / 20.0))
    }

    /// z_Δ, the noise multiplier left for the update once adaptive clipping's count takes its
    /// share (Andrew et al. 2021, Thm. 1): (z⁻² − (2σ_b)⁻²)^(−1/2); z itself without adaptive
    /// clipping, 0 for z = 0.
    ///
    /// # Errors
    /// When z ≤ 1/(2σ_b): no noise would be left for the update; the message gives the bound.
    pub fn update_noise_multiplier(&self, sampled: usize) -> Result<f64> {
        let z = self.noise_multiplier;
        let Some(sb) = self.count_stddev(sampled) else {
            return Ok(z);
        };
        if z == 0.0 {
            return Ok(0.0);
        }
        let rest = z.powi(-2) - (2.0 * sb).powi(-2);
        if rest <= 0.0 {
            bail!(
                "federation.dp: noise_multiplier {z} is too small for adaptive clipping's count \
                 noise σ_b = {sb} (federation.dp.adaptive.count_stddev, default clients per round \
                 / 20): it needs z > 1/(2σ_b) = {}",
                1.0 / (2.0 * sb)
            );
        }
        Ok(rest.powf(-0.5))
    }

    /// Checks ranges; the message names the `federation.dp.*` key.
    pub fn validate(&self) -> Result<()> {
        if !(self.clip_norm.is_finite() && self.clip_norm > 0.0) {
            bail!(
                "federation.dp.clip_norm must be a positive number, got {}",
                self.clip_norm
            );
        }
        if !(self.noise_multiplier.is_finite() && self.noise_multiplier >= 0.0) {
            bail!(
                "federation.dp.noise_multiplier must be a number >= 0, got {}",
                self.noise_multiplier
            );
        }
        if let Some(d) = self.delta {
            if !(d > 0.0 && d < 1.0) {
                bail!("federation.dp.delta must be in (0, 1), got {d}");
            }
        }
        if let Some(a) = &self.adaptive {
            if !(a.target_quantile > 0.0 && a.target_quantile < 1.0) {
                bail!(
                    "federation.dp.adaptive.target_quantile must be in (0, 1), got {}",
                    a.target_quantile
                );
            }
            if !(a.lr.is_finite() && a.lr > 0.0) {
                bail!("federation.dp.adaptive.lr must be positive, got {}", a.lr);
            }
            if let Some(s) = a.count_stddev {
                if !(s.is_finite() && s > 0.0) {
                    bail!("federation.dp.adaptive.count_stddev must be positive, got {s}");
                }
            }
        }
        Ok(())
    }
}
