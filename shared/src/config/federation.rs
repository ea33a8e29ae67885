//! `[federation]`: clients, rounds, sampling, deadlines and the aggregation strategy.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::client_state::{BatchNormPolicy, LocalUpdateConfig};
use super::compression::CompressionConfig;
use super::limits::MAX_SECONDS;
use super::privacy::DpConfig;
use super::secure_aggregation::SecureAggregationConfig;
use super::strategy::StrategyConfig;

/// Federation section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FederationConfig {
    /// Number of clients (shards) in the run.
    pub clients: usize,
    /// A round starts only with this many connected clients, and the run fails if fewer survive a round.
    pub min_clients: usize,
    /// Number of rounds.
    pub rounds: usize,
    /// Fraction of connected clients sampled each round (at least `min_clients`).
    pub participation: f64,
    /// Aggregation strategy: `"fedavg"` (McMahan et al. 2017, the default), or a
    /// `{ kind = "…", … }` table ([`StrategyConfig`]).
    pub strategy: StrategyConfig,
    /// A client that has not returned its update this many seconds after the round started is dropped from the round.
    pub round_deadline_seconds: f64,
    /// Seconds `serve` waits for `min_clients` to connect before it gives up.
    pub join_timeout_seconds: f64,
    /// Seconds the first round waits for the other clients once `min_clients` have joined,
    /// before it samples (all `clients` joined: it starts at once). Default: 5 in `serve`, 60
    /// in `simulate`. A run whose clients start as many processes (a job array of
    /// `fedssl-client --virtual` slices) raises it, so that every slice has joined when the
    /// first round is sampled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_grace_seconds: Option<f64>,
    /// Largest accepted weights payload, in bytes.
    pub max_weights_bytes: u64,
    /// Most bytes a strategy that needs every update of a round (median, trimmed mean,
    /// Krum) may hold: a run whose sampled clients × model bytes exceed it is refused before
    /// its first round (default 4 GiB).
    pub max_buffered_bytes: u64,
    /// A backbone of more than this many bytes (4 per `f32` value) goes through files in
    /// the run's `spool/` folder instead of memory, when updates are uncompressed and not
    /// securely aggregated: the round's global weights are sent from a file and dropped from
    /// memory, and each update is written to disk as it arrives, checked, then added to the
    /// running sum one tensor at a time. The coordinator then holds its `f64` running sum (2×
    /// the model) and no copy of the model (default 256 MiB; 0: every model).
    pub spool_above_bytes: u64,
    /// A connection silent for this many seconds is considered dead (QUIC idle timeout;
    /// keep-alives are sent at a quarter of it).
    pub idle_timeout_seconds: f64,
    /// Client-level differential privacy (DP-FedAvg, `[federation.dp]`); absent: none.
    /// Needs `strategy = "fedavg"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dp: Option<DpConfig>,
    /// What happens to the backbone's BatchNorm tensors between rounds: `"aggregate"`
    /// (default), `"local"` (FedBN) or `"weights_only"` ([`BatchNormPolicy`]).
    pub batch_norm: BatchNormPolicy,
    /// How a client merges the global weights with its own before training: `"plain"`
    /// (default), or a `{ kind = "fedema" | "fedu", … }` table ([`LocalUpdateConfig`]).
    pub local_update: LocalUpdateConfig,
    /// The enrolled sites of the run (`serve --kit`): only a client whose certificate names
    /// one of them is admitted, and site `i` of the list is client `i` (holds shard `i`).
    /// Empty (the default): every site the kit's CA certified may join.
    pub sites: Vec<String>,
    /// How clients encode their updates (`[federation.compression] kind = "none" | "fp16" |
    /// "bf16" | "int8" | "topk"`, [`CompressionConfig`]); default `"none"`.
    pub compression: CompressionConfig,
    /// Checkpoint retention: keep only the newest K round checkpoints
    /// (`checkpoints/round-NNNN*.safetensors`, older ones deleted after each round); `None`
    /// (the default): keep every round's. `--resume` continues from the newest that loads,
    /// so K = 1 leaves no fallback if that one is damaged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_checkpoints: Option<usize>,
    /// The trust boundary of FedAvg's weights n_k: a client whose shard the coordinator knows
    /// (simulated clients, `--shard K/N` where the coordinator holds the run's dataset) must
    /// report exactly its shard's size, else its update is refused; any other client's claim
    /// is believed up to this many samples and capped to it. `None` (the default): no cap.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_samples_per_client: Option<u64>,
    /// Secure aggregation (`[federation.secure_aggregation]`, Bonawitz et al. 2017): the
    /// coordinator learns only the round's weighted sum ([`SecureAggregationConfig`]); off
    /// by default, and then not written into `scenario.json`.
    #[serde(skip_serializing_if = "SecureAggregationConfig::is_default")]
    pub secure_aggregation: SecureAggregationConfig,
}

impl Default for FederationConfig {
    fn default() -> Self {
        Self {
            clients: 3,
            min_clients: 2,
            rounds: 2,
            participation: 1.0,
            strategy: StrategyConfig::default(),
            round_deadline_seconds: 1800.0,
            join_timeout_seconds: 600.0,
            start_grace_seconds: None,
            max_weights_bytes: 1 << 30,
            max_buffered_bytes: 4 << 30,
            spool_above_bytes: 256 << 20,
            idle_timeout_seconds: 20.0,
            dp: None,
            batch_norm: BatchNormPolicy::Aggregate,
            local_update: LocalUpdateConfig::default(),
            sites: Vec::new(),
            compression: CompressionConfig::default(),
            keep_checkpoints: None,
            max_samples_per_client: None,
            secure_aggregation: SecureAggregationConfig::default(),
        }
    }
}

impl FederationConfig {
    /// Checks ranges and that `min_clients` fits `clients`; the message names the
    /// `federation.*` key.
    pub fn validate(&self) -> Result<()> {
        if self.clients == 0 {
            bail!("federation.clients must be at least 1");
        }
        if self.min_clients == 0 || self.min_clients > self.clients {
            bail!(
                "federation.min_clients must be in 1..={} (federation.clients), got {}",
                self.clients,
                self.min_clients
            );
        }
        if self.rounds == 0 {
            bail!("federation.rounds must be at least 1");
        }
        if !(self.participation > 0.0 && self.participation <= 1.0) {
            bail!(
                "federation.participation must be in (0, 1], got {}",
                self.participation
            );
        }
        if !(self.idle_timeout_seconds >= 1.0 && self.idle_timeout_seconds <= 3600.0) {
            bail!("federation.idle_timeout_seconds must be in [1, 3600]");
        }
        // Seconds become a `Duration`: NaN, negative or astronomically large values would
        // panic there, after the run folder was written.
        for (key, v) in [
            ("join_timeout_seconds", self.join_timeout_seconds),
            ("round_deadline_seconds", self.round_deadline_seconds),
        ] {
            if !(v > 0.0 && v <= MAX_SECONDS) {
                bail!("federation.{key} must be in (0, {MAX_SECONDS}] seconds, got {v}");
            }
        }
        if let Some(g) = self.start_grace_seconds {
            if !(0.0..=self.join_timeout_seconds).contains(&g) {
                bail!(
                    "federation.start_grace_seconds must be in [0, {}] (federation.join_timeout_seconds), got {g}",
                    self.join_timeout_seconds
                );
            }
        }
        if let Some(dp) = &self.dp {
            dp.validate()?;
            dp.update_noise_multiplier(self.max_sampled())?;
            if !matches!(self.strategy, StrategyConfig::FedAvg(_)) {
                bail!(
                    "federation.dp works with strategy \"fedavg\" only (DP-FedAvg), not `{}`: \
                     the other strategies' updates are not clipped and noised",
                    self.strategy.name()
                );
            }
        }
        self.local_update.validate()?;
        self.compression.validate()?;
        if self.keep_checkpoints == Some(0) {
            bail!("federation.keep_checkpoints must be at least 1 (or left out: keep all)");
        }
        if self.max_samples_per_client == Some(0) {
            bail!("federation.max_samples_per_client must be at least 1 (or left out: no cap)");
        }
        if !self.sites.is_empty() && self.sites.len() != self.clients {
            bail!(
                "federation.sites lists {} site(s) but federation.clients is {}: site i of the list is client i and holds shard i of {}, so list exactly {} (or leave federation.sites out to admit every site the kit's CA certified)",
                self.sites.len(),
                self.clients,
                self.clients,
                self.clients
            );
        }
        for (i, site) in self.sites.iter().enumerate() {
            super::check_site_name(site).with_context(|| format!("federation.sites[{i}]"))?;
            if self.sites[..i].contains(site) {
                let shown: String = site.chars().take(64).collect();
                bail!("federation.sites names `{}` twice", shown.escape_default());
            }
        }
        self.strategy.validate(self.min_clients)?;
        self.secure_aggregation.check_with(
            &self.strategy,
            self.dp.as_ref(),
            &self.compression,
            self.max_sampled(),
        )
    }

    /// The most clients a round samples: the participation fraction of all `clients`
    /// (rounded up), at least `min_clients` ([`Self::sampled_of`], as the round loop samples).
    pub fn max_sampled(&self) -> usize {
        self.sampled_of(self.clients)
    }

    /// How many of `connected` clients a round samples: `ceil(participation · connected)`, at
    /// least `min_clients`, at most `connected`.
    pub fn sampled_of(&self, connected: usize) -> usize {
        ((self.participation * connected as f64).ceil() as usize)
            .max(self.min_clients)
            .min(connected)
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Scenario;

    fn error_of(sets: &[&str]) -> String {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        format!("{:#}", Scenario::from_toml_str("", &sets).unwrap_err())
    }

    #[test]
    fn an_allow_list_of_sites_must_name_one_valid_site_per_client() {
        // the default scenario has 3 clients
        let e = error_of(&["federation.sites=[\"site-a\", \"site-b\"]"]);
        assert!(
            e.contains("lists 2 site(s) but federation.clients is 3"),
            "{e}"
        );
        let e = error_of(&["federation.sites=[\"a\", \"b\", \"c\", \"d\"]"]);
        assert!(e.contains("lists 4 site(s)"), "{e}");
        let e = error_of(&["federation.sites=[\"site-a\", \"Site B\", \"site-c\"]"]);
        assert!(
            e.contains("federation.sites[1]") && e.contains("Site B"),
            "{e}"
        );
        let e = error_of(&["federation.sites=[\"site-a\", \"ca\", \"site-c\"]"]);
        assert!(e.contains("reserved"), "{e}");
        let e = error_of(&["federation.sites=[\"site-a\", \"site-a\", \"site-c\"]"]);
        assert!(e.contains("names `site-a` twice"), "{e}");
        let sets = vec!["federation.sites=[\"site-a\", \"site-b\", \"site-c\"]".to_string()];
        let sc = Scenario::from_toml_str("", &sets).unwrap();
        assert_eq!(sc.federation.sites, ["site-a", "site-b", "site-c"]);
    }

    #[test]
    fn seconds_that_cannot_be_a_duration_are_refused_by_key() {
        let err = |set: &str| error_of(&[set]);
        for key in ["join_timeout_seconds", "round_deadline_seconds"] {
            for v in ["-5", "-1", "0", "nan", "1e20", "inf"] {
                let e = err(&format!("federation.{key}={v}"));
                assert!(
                    e.contains(&format!("federation.{key} must be in (0, 31536000]")),
                    "{key}={v}: {e}"
                );
            }
        }
        let e = err("federation.start_grace_seconds=700");
        assert!(
            e.contains("federation.start_grace_seconds must be in [0, 600]"),
            "{e}"
        );
        let sc = Scenario::from_toml_str("", &["federation.start_grace_seconds=30".to_string()])
            .unwrap();
        assert_eq!(sc.federation.start_grace_seconds, Some(30.0));
    }
}
