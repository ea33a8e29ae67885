//! `[federation.secure_aggregation]`: the round runs Bonawitz et al. 2017's secure
//! aggregation ([`crate::secagg`]), so the coordinator learns only the sample-weighted sum of
//! the round's updates, never one client's.
//!
//! ```toml
//! [federation.secure_aggregation]
//! enabled = true
//! # threshold = 3        # t: shares needed to rebuild a secret; default max(2, ⌈2s/3⌉) of its s shares
//! # graph = "complete"   # every pair of the round's clients masks; "k_regular": SecAgg+, k neighbours
//! # k = 8                # graph = "k_regular" only: neighbours per client (even)
//! # clip_range = 8.0     # c: each update value Δ = w_k − w_global is clipped to [−c, c]
//! # quant_range = 4194304  # R = 2²²: [−c, c] maps onto the integers 0..=R
//! ```
//!
//! What it cannot be combined with is refused when the scenario loads
//! ([`SecureAggregationConfig::check_with`]): a strategy that needs the individual updates
//! (median, trimmed mean, Krum, Multi-Krum, Bulyan, L-DAWA), `[federation.dp]` (the
//! coordinator clips each update, which it no longer sees) and `[federation.compression]`
//! (the masked vector is its own fixed-point encoding).

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use super::compression::CompressionConfig;
use super::privacy::DpConfig;
use super::strategy::StrategyConfig;
use crate::secagg::quantize::Quantizer;

/// Which pairs of the round's clients agree a pairwise mask.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MaskGraph {
    /// Every pair (Bonawitz et al. 2017): O(m²) key agreements and shares per round.
    #[default]
    Complete,
    /// SecAgg+'s sparse graph (Bell et al. 2020): each client masks with, and shares its
    /// secrets among, `k` neighbours ([`crate::secagg::graph`]).
    KRegular,
}

/// `federation.secure_aggregation`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecureAggregationConfig {
    /// Run the rounds with secure aggregation (default false).
    pub enabled: bool,
    /// t: the Shamir threshold, the shares that rebuild a client's secret, so the clients
    /// that must answer the unmasking for the round to complete (with `"k_regular"`: of every
    /// client's neighbourhood); at least 2, at most the shares of a secret (the clients a round
    /// samples, or k + 1). Default (absent): `max(2, ⌈2s/3⌉)` of the s shares
    /// ([`Self::threshold_of`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threshold: Option<usize>,
    /// `"complete"` (default): every pair of clients masks; `"k_regular"` (SecAgg+): each
    /// client with `k` neighbours.
    pub graph: MaskGraph,
    /// k of `graph = "k_regular"` (neighbours per client, even, at least 2; required there);
    /// refused with `"complete"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub k: Option<usize>,
    /// c: every value of a client's update Δ = w_k − w_global is clipped to [−c, c] before
    /// it is quantised (default 8, Flower's SecAgg+ default); positive and finite.
    pub clip_range: f32,
    /// R: [−c, c] maps onto the integers 0..=R (default 2²² = 4194304, Flower's); the
    /// round trip errs by at most c/R per value (1.9e-6 at the defaults). In 1..2⁶³.
    pub quant_range: u64,
}

impl Default for SecureAggregationConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            threshold: None,
            graph: MaskGraph::Complete,
            k: None,
            clip_range: 8.0,
            quant_range: 1 << 22,
        }
    }
}

impl SecureAggregationConfig {
    /// True when the table is absent or `enabled = false` with every other key at its
    /// default (then `scenario.json` leaves it out).
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }

    /// The threshold t of a round that sampled `m` clients: `threshold`, or by default
    /// `max(2, ⌈2s/3⌉)` of the s shares of a secret (s = m, or k + 1 with the k-regular
    /// graph; Bonawitz et al. 2017 need t > s/2 for their security argument; ⌈2s/3⌉ leaves a
    /// third of the clients free to drop).
    pub fn threshold_of(&self, m: usize) -> usize {
        self.threshold
            .unwrap_or_else(|| self.masking_graph().default_threshold(m))
    }

    /// The masking graph of the rounds ([`crate::secagg::graph::MaskingGraph`]).
    pub fn masking_graph(&self) -> crate::secagg::graph::MaskingGraph {
        match (self.graph, self.k) {
            (MaskGraph::KRegular, Some(k)) => crate::secagg::graph::MaskingGraph::KRegular { k },
            _ => crate::secagg::graph::MaskingGraph::Complete,
        }
    }

    /// The quantiser of a round whose total weight Σ n_k is at most `max_total` (`None`:
    /// unknown): 32-bit ring when `max_total · R < 2³²`, else 64-bit (a sum that could wrap
    /// even then is an error when it is unmasked).
    pub fn quantizer(&self, max_total: Option<u64>) -> Quantizer {
        let fits32 = max_total.is_some_and(|n| (n as u128) * (self.quant_range as u128) < 1 << 32);
        Quantizer {
            clip: self.clip_range,
            range: self.quant_range,
            bits: if fits32 { 32 } else { 64 },
        }
    }

    /// Checks the keys' ranges and what secure aggregation is combined with: `strategy`,
    /// `dp`, `compression` and the most clients a round samples (`max_sampled`). Errors name the key, and for a refused combination both
    /// sides. A table that sets keys without `enabled = true` is refused (it would silently
    /// run the rounds unmasked); an absent or all-default table is off.
    pub fn check_with(
        &self,
        strategy: &StrategyConfig,
        dp: Option<&DpConfig>,
        compression: &CompressionConfig,
        max_sampled: usize,
    ) -> Result<()> {
        if !self.enabled {
            if !self.is_default() {
                bail!(
                    "federation.secure_aggregation sets keys but not enabled = true, so the rounds would run without it (updates unmasked): add enabled = true, or remove the table"
                );
            }
            return Ok(());
        }
        if !(self.clip_range.is_finite() && self.clip_range > 0.0) {
            bail!(
                "federation.secure_aggregation.clip_range must be a positive number, got {}",
                self.clip_range
            );
        }
        if self.quant_range == 0 || self.quant_range >= 1 << 63 {
            bail!(
                "federation.secure_aggregation.quant_range must be in 1..2^63, got {}",
                self.quant_range
            );
        }
        match (self.graph, self.k) {
            (MaskGraph::Complete, None) => {}
            (MaskGraph::Complete, Some(_)) => bail!(
                "federation.secure_aggregation.k is only for graph = \"k_regular\" (the complete graph masks every pair)"
            ),
            (MaskGraph::KRegular, None) => bail!(
                "federation.secure_aggregation.graph = \"k_regular\" needs k, the neighbours of each client (an even number, e.g. k = 8)"
            ),
            (MaskGraph::KRegular, Some(k)) => {
                if !crate::secagg::graph::MaskingGraph::is_valid_k(k) {
                    bail!(
                        "federation.secure_aggregation.k must be an even number of at least 2 (the circulant graph links each client to k/2 on either side), got {k}"
                    );
                }
            }
        }
        let shares = self.masking_graph().shares(max_sampled);
        if max_sampled > 255 {
            bail!(
                "federation.secure_aggregation supports at most 255 clients per round (GF(256) \
                 Shamir shares); a round here samples up to {max_sampled}"
            );
        }
        if max_sampled < 2 {
            bail!("federation.secure_aggregation needs at least 2 clients per round");
        }
        if let Some(t) = self.threshold {
            if t < 2 || t > shares {
                let of = if shares == max_sampled {
                    "the clients a round samples"
                } else {
                    "k + 1, the shares of each secret: a client's neighbours and itself"
                };
                bail!(
                    "federation.secure_aggregation.threshold must be in 2..={shares} ({of}), got {t}"
                );
            }
        }
        let name = strategy.name();
        if !matches!(
            strategy,
            StrategyConfig::FedAvg(_)
                | StrategyConfig::FedProx(_)
                | StrategyConfig::FedAvgM(_)
                | StrategyConfig::FedAdam(_)
                | StrategyConfig::FedYogi(_)
                | StrategyConfig::FedAdagrad(_)
        ) {
            bail!(
                "strategy `{name}` needs every client's own update, which secure aggregation \
                 (federation.secure_aggregation) hides from the coordinator: use fedavg, \
                 fedprox, fedavgm, fedadam, fedyogi or fedadagrad (a server step on the \
                 weighted mean), or turn secure aggregation off"
            );
        }
        if dp.is_some() {
            bail!(
                "federation.dp cannot be combined with federation.secure_aggregation: DP-FedAvg \
                 clips each client's update on the coordinator, which secure aggregation hides \
                 (clipping on the client is not yet implemented, issue #16)"
            );
        }
        if !compression.is_none() {
            bail!(
                "federation.compression = \"{}\" cannot be combined with \
                 federation.secure_aggregation: the masked update is its own fixed-point \
                 encoding of every value (b bits each); leave compression at \"none\"",
                compression.name()
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Scenario;

    #[test]
    fn a_table_with_keys_but_not_enabled_is_refused_not_run_unmasked() {
        for set in [
            "federation.secure_aggregation={threshold=2}",
            "federation.secure_aggregation={enabled=false, threshold=9}",
        ] {
            let e = format!(
                "{:#}",
                Scenario::from_toml_str("", &[set.to_string()]).unwrap_err()
            );
            assert!(
                e.contains("sets keys but not enabled = true") && e.contains("unmasked"),
                "{set}: {e}"
            );
        }
        let off = Scenario::from_toml_str(
            "",
            &["federation.secure_aggregation={enabled=false}".to_string()],
        )
        .unwrap();
        assert!(!off.federation.secure_aggregation.enabled);
    }

    #[test]
    fn defaults_threshold_and_ring_bits() {
        let c = SecureAggregationConfig::default();
        assert!(!c.enabled && c.is_default());
        assert_eq!(c.threshold_of(5), 4);
        assert_eq!(c.threshold_of(3), 2);
        assert_eq!(c.threshold_of(2), 2);
        assert_eq!(c.threshold_of(9), 6);
        // 1023 · 2²² < 2³² ≤ 1024 · 2²²
        assert_eq!(c.quantizer(Some(1023)).bits, 32);
        assert_eq!(c.quantizer(Some(1024)).bits, 64);
        assert_eq!(c.quantizer(None).bits, 64);
    }

    #[test]
    fn bad_keys_and_combinations_are_refused_naming_them() {
        let bad = |sets: &[&str], want: &[&str]| {
            let mut all = vec!["federation.secure_aggregation.enabled=true".to_string()];
            all.extend(sets.iter().map(|s| s.to_string()));
            let e = format!("{:#}", Scenario::from_toml_str("", &all).unwrap_err());
            for w in want {
                assert!(e.contains(w), "{sets:?}: {w}: {e}");
            }
        };
        bad(
            &["federation.secure_aggregation.thresholt=3"],
            &["thresholt"],
        );
        bad(
            &["federation.secure_aggregation.threshold=1"],
            &["federation.secure_aggregation.threshold"],
        );
        bad(
            &["federation.secure_aggregation.graph=\"k_regular\""],
            &["k_regular", "needs k"],
        );
        bad(
            &[
                "federation.secure_aggregation.graph=\"k_regular\"",
                "federation.secure_aggregation.k=3",
            ],
            &["federation.secure_aggregation.k", "even", "got 3"],
        );
        bad(
            &["federation.secure_aggregation.k=4"],
            &["federation.secure_aggregation.k is only for graph = \"k_regular\""],
        );
        bad(
            &[
                "federation.clients=20",
                "federation.secure_aggregation.graph=\"k_regular\"",
                "federation.secure_aggregation.k=4",
                "federation.secure_aggregation.threshold=6",
            ],
            &["threshold must be in 2..=5 (k + 1", "got 6"],
        );
        let sparse = Scenario::from_toml_str(
            "",
            &[
                "federation.clients=20".into(),
                "federation.secure_aggregation.enabled=true".into(),
                "federation.secure_aggregation.graph=\"k_regular\"".into(),
                "federation.secure_aggregation.k=4".into(),
            ],
        )
        .unwrap();
        let sa = &sparse.federation.secure_aggregation;
        assert_eq!(
            sa.masking_graph(),
            crate::secagg::graph::MaskingGraph::KRegular { k: 4 }
        );
        // 5 shares of each secret (4 neighbours and the client): t = ⌈10/3⌉ = 4
        assert_eq!(sa.threshold_of(20), 4);
        bad(
            &["federation.secure_aggregation.clip_range=0.0"],
            &["clip_range"],
        );
        bad(
            &["federation.compression=\"fp16\""],
            &["federation.compression", "secure_aggregation"],
        );
        bad(
            &["federation.dp={clip_norm=1.0,noise_multiplier=1.0}"],
            &["federation.dp", "secure_aggregation"],
        );
        for s in ["median", "trimmed_mean", "ldawa"] {
            bad(
                &[&format!("federation.strategy=\"{s}\"")],
                &[&format!("`{s}`"), "secure aggregation"],
            );
        }
        let ok = Scenario::from_toml_str(
            "",
            &[
                "federation.secure_aggregation.enabled=true".into(),
                "federation.strategy=\"fedadam\"".into(),
                "federation.batch_norm=\"local\"".into(),
            ],
        )
        .unwrap();
        assert!(ok.federation.secure_aggregation.enabled);
        // off: not written into scenario.json
        let json = serde_json::to_string(&Scenario::default().federation).unwrap();
        assert!(!json.contains("secure_aggregation"), "{json}");
    }
}
