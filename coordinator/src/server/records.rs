//! What the rounds leave in a run's folder: one [`RoundRecord`] per round in `rounds.jsonl`
//! ([`RoundsLog`]), and the global weights after every round in
//! `checkpoints/round-NNNN.safetensors` ([`Checkpoints`]), with the strategy's server state,
//! when it keeps one, in `checkpoints/round-NNNN.state.safetensors`.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use fedssl_shared::weights::WeightSet;
use serde::{Serialize, Serializer};

use crate::strategy::validate::Refusal;

/// Why a sampled client's update was not aggregated (its `Display` is the reason
/// `rounds.jsonl` records in `dropped_reasons`).
#[derive(Clone, Debug, PartialEq)]
pub enum DropReason {
    /// The client disconnected between its sampling and the start of the round.
    LeftBeforeRound,
    /// The client reported that its local round failed.
    ClientFailed(String),
    /// The round's exchange with the client failed (connection lost, protocol error, bad
    /// weights payload); the error with its causes.
    Exchange(String),
    /// The update arrived and the strategy refused it.
    Refused(Refusal),
    /// Secure aggregation refused what the client sent (a masked vector of the wrong
    /// length, a replay, shares for the wrong clients): the reason, naming the client.
    SecAgg(String),
    /// No update before the round deadline of this many seconds.
    MissedDeadline {
        /// `federation.round_deadline_seconds`.
        seconds: f64,
    },
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DropReason::LeftBeforeRound => write!(f, "left before the round started"),
            DropReason::ClientFailed(reason) => write!(f, "client reported failure: {reason}"),
            DropReason::Exchange(error) => write!(f, "{error}"),
            DropReason::Refused(r) => write!(f, "update refused: {r}"),
            DropReason::SecAgg(r) => write!(f, "refused by secure aggregation: {r}"),
            DropReason::MissedDeadline { seconds } => {
                write!(f, "missed the {seconds:.0} s round deadline")
            }
        }
    }
}

impl Serialize for DropReason {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// One line of `rounds.jsonl`.
#[derive(Clone, Debug, Serialize)]
pub struct RoundRecord {
    /// 1-based round number.
    pub round: usize,
    /// Ids whose updates were aggregated, sorted. In a round that `failed`, the ids whose
    /// valid updates arrived; none of them was aggregated.
    pub clients: Vec<u32>,
    /// Ids sampled for the round whose update was not aggregated, sorted.
    pub dropped: Vec<u32>,
    /// Why each dropped client was dropped.
    pub dropped_reasons: BTreeMap<u32, DropReason>,
    /// Mean pretext loss of each contributing client's last local epoch.
    pub loss: BTreeMap<u32, f64>,
    /// Pretext accuracy of each contributing client's last local epoch, in [0, 1] (empty
    /// for tasks without an accuracy, such as masked image modelling).
    pub accuracy: BTreeMap<u32, f64>,
    /// Training images behind each contributing update (FedAvg weights).
    pub samples: BTreeMap<u32, u64>,
    /// Wall seconds of local training each contributing client reported (its own clock; not
    /// checked and used for nothing but this record): the round's `seconds` less the largest
    /// of them is what the federation itself cost the round (sending, receiving, waiting,
    /// aggregating). Absent when none was reported.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub train_seconds: BTreeMap<u32, f64>,
    /// Sample-weighted mean pretext loss of the round's valid updates; `None` (`null`) only
    /// in a `failed` round where none arrived.
    pub mean_loss: Option<f64>,
    /// Learning rate of the round.
    pub lr: f64,
    /// Wall seconds of the round.
    pub seconds: f64,
    /// Application bytes sent to clients this round (messages and weights).
    pub bytes_sent: u64,
    /// Application bytes received from clients this round.
    pub bytes_received: u64,
    /// k-NN top-1 of the round's aggregated global backbone (`eval.knn_every` rounds only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub knn_top1: Option<f64>,
    /// Why the round failed (fewer than `federation.min_clients` valid updates): nothing was
    /// aggregated, the global backbone is the previous round's, and the run stops. Absent for
    /// a completed round.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed: Option<String>,
    /// DP-FedAvg's report of the round (`federation.dp`): clip norm, noise std, clipped
    /// updates, ε spent so far ([`crate::privacy::dp::DpRoundReport`]). Absent without DP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub privacy: Option<serde_json::Value>,
    /// The certified site name of each sampled client that has one (`serve --kit`,
    /// `simulate`); absent when no client was authenticated.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub sites: BTreeMap<u32, String>,
    /// The round's secure aggregation (`federation.secure_aggregation`): who took part in
    /// each step, and what each phase cost. Absent without it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secure_aggregation: Option<SecAggRecord>,
    /// `true` when the round's global weights and updates went through the run's `spool/`
    /// folder instead of memory (`federation.spool_above_bytes`); absent otherwise.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub spooled: bool,
}

/// The secure-aggregation part of a round's line of `rounds.jsonl`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SecAggRecord {
    /// t, the Shamir threshold of the round.
    pub threshold: usize,
    /// b, the ring's bits (32 or 64).
    pub bits: u32,
    /// Clients whose public keys arrived (U1).
    pub advertised: Vec<u32>,
    /// Clients whose sealed shares arrived (U2): every update is masked against them.
    pub shared: Vec<u32>,
    /// Clients whose masked vector is in the sum (U3; `clients` of the line).
    pub masked: Vec<u32>,
    /// Clients that answered the unmasking (U4).
    pub survivors: Vec<u32>,
    /// Clients whose masked vector is in the sum but that did not answer the unmasking
    /// (their self masks came from the survivors' shares), with why.
    pub dropped_after_masking: BTreeMap<u32, DropReason>,
    /// Each phase's cost: `keys` (from the round's start until every key arrived; bytes:
    /// the key advertisements and the key list relayed), `shares` (the sealed shares up and
    /// routed back), `masked_upload` (local training included: from the routed shares until
    /// the last masked vector; bytes: the masked vectors), `unmasking` (the request, the
    /// survivors' shares and the reconstruction). The round message and the global weights
    /// count in none of them.
    pub phases: BTreeMap<&'static str, PhaseCost>,
}

/// Wall seconds and application bytes of one secure-aggregation phase.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct PhaseCost {
    /// Wall seconds.
    pub seconds: f64,
    /// Bytes the coordinator sent in it.
    pub bytes_sent: u64,
    /// Bytes it received in it.
    pub bytes_received: u64,
}

impl RoundRecord {
    /// The record of round `round` (1-based) at learning rate `lr`, before any update.
    pub fn new(round: usize, lr: f64) -> Self {
        Self {
            round,
            clients: vec![],
            dropped: vec![],
            dropped_reasons: BTreeMap::new(),
            loss: BTreeMap::new(),
            accuracy: BTreeMap::new(),
            samples: BTreeMap::new(),
            train_seconds: BTreeMap::new(),
            mean_loss: None,
            lr,
            seconds: 0.0,
            bytes_sent: 0,
            bytes_received: 0,
            knn_top1: None,
            failed: None,
            privacy: None,
            sites: BTreeMap::new(),
            secure_aggregation: None,
            spooled: false,
        }
    }

    /// Records client `id`'s aggregated update: its id among `clients`, and its pretext
    /// `loss` and `accuracy` (if the task has one), its `samples` and the `train_seconds` it
    /// reported. A plain and a secure round record alike.
    pub fn contributed(
        &mut self,
        id: u32,
        loss: f64,
        accuracy: Option<f64>,
        samples: u64,
        train_seconds: f64,
    ) {
        self.clients.push(id);
        self.loss.insert(id, loss);
        if let Some(a) = accuracy {
            self.accuracy.insert(id, a);
        }
        self.samples.insert(id, samples);
        self.train_seconds.insert(id, train_seconds);
    }

    /// `dropped_reasons` as `{id: "reason", …}`, the form error messages quote.
    pub fn reasons_text(&self) -> String {
        let text: BTreeMap<u32, String> = self
            .dropped_reasons
            .iter()
            .map(|(id, r)| (*id, r.to_string()))
            .collect();
        format!("{text:?}")
    }
}

/// `rounds.jsonl`, open for appending one line per round.
pub struct RoundsLog {
    file: std::fs::File,
}

impl RoundsLog {
    /// Opens `<out>/rounds.jsonl`: emptied for a fresh run, appended to when `resuming`.
    pub fn open(out: &Path, resuming: bool) -> Result<Self> {
        let path = out.join("rounds.jsonl");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(resuming)
            .write(true)
            .truncate(!resuming)
            .open(&path)
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(Self { file })
    }

    /// Appends `rec` as one JSON line and flushes it.
    pub fn append(&mut self, rec: &RoundRecord) -> Result<()> {
        writeln!(self.file, "{}", serde_json::to_string(rec)?)?;
        self.file.flush()?;
        Ok(())
    }
}

/// The checkpoints folder of a run, `<out>/checkpoints`.
pub struct Checkpoints {
    dir: PathBuf,
    keep: Option<usize>,
}

impl Checkpoints {
    /// The folder of `out`'s checkpoints, created if missing.
    pub fn create(out: &Path) -> Result<Self> {
        let dir = out.join("checkpoints");
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(Self { dir, keep: None })
    }

    /// Keeps only the newest `keep` round checkpoints (`federation.keep_checkpoints`;
    /// `None`: all): each [`Self::save`] then deletes the older ones, weights and state.
    pub fn keeping(self, keep: Option<usize>) -> Self {
        Self { keep, ..self }
    }

    /// Saves, when the strategy keeps one, its server `state` after round `round` (1-based),
    /// then the global weights: each file is written atomically and the weights last, so a
    /// checkpoint that `--resume` finds always has its state beside it (a run killed between
    /// the two leaves a state file of a round without weights, which resume ignores).
    pub fn save(&self, round: usize, global: &WeightSet, state: Option<&WeightSet>) -> Result<()> {
        if let Some(state) = state {
            state.save(&self.dir.join(state_file(round)))?;
        }
        global.save(&self.dir.join(weights_file(round)))?;
        if let Some(keep) = self.keep {
            self.prune(round.saturating_sub(keep.max(1)))?;
        }
        Ok(())
    }

    /// Deletes the checkpoints (weights and state) of rounds `1..=upto`.
    fn prune(&self, upto: usize) -> Result<()> {
        for e in std::fs::read_dir(&self.dir)
            .with_context(|| format!("cannot read {}", self.dir.display()))?
        {
            let name = e?.file_name().to_string_lossy().into_owned();
            let round = round_of_weights_file(&name).or_else(|| {
                name.strip_prefix("round-")?
                    .strip_suffix(".state.safetensors")?
                    .parse()
                    .ok()
            });
            if round.is_some_and(|r| r <= upto) {
                let p = self.dir.join(&name);
                std::fs::remove_file(&p)
                    .with_context(|| format!("cannot delete old checkpoint {}", p.display()))?;
            }
        }
        Ok(())
    }
}

/// `round-NNNN.safetensors`: the global weights after round `round` (1-based).
pub fn weights_file(round: usize) -> String {
    format!("round-{round:04}.safetensors")
}

/// `round-NNNN.state.safetensors`: the strategy's server state after round `round`.
pub fn state_file(round: usize) -> String {
    format!("round-{round:04}.state.safetensors")
}

/// The round of a [`weights_file`] name (`round-0003.safetensors` → 3); `None` for any other
/// name, a [`state_file`] included.
pub fn round_of_weights_file(name: &str) -> Option<usize> {
    name.strip_prefix("round-")?
        .strip_suffix(".safetensors")?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_checkpoints_keeps_the_newest_k() {
        let dir = tempfile::tempdir().unwrap();
        let w = WeightSet::default();
        let ck = Checkpoints::create(dir.path()).unwrap().keeping(Some(2));
        for r in 1..=4 {
            ck.save(r, &w, Some(&w)).unwrap();
        }
        let mut names: Vec<String> = std::fs::read_dir(dir.path().join("checkpoints"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "round-0003.safetensors",
                "round-0003.state.safetensors",
                "round-0004.safetensors",
                "round-0004.state.safetensors"
            ]
        );
        // the default keeps every round's
        let all = tempfile::tempdir().unwrap();
        let ck = Checkpoints::create(all.path()).unwrap();
        for r in 1..=3 {
            ck.save(r, &w, None).unwrap();
        }
        assert_eq!(
            std::fs::read_dir(all.path().join("checkpoints"))
                .unwrap()
                .count(),
            3
        );
    }

    #[test]
    fn drop_reasons_are_recorded_in_words() {
        let mut rec = RoundRecord::new(2, 0.1);
        rec.dropped_reasons.insert(0, DropReason::LeftBeforeRound);
        rec.dropped_reasons
            .insert(1, DropReason::ClientFailed("no data".into()));
        rec.dropped_reasons
            .insert(2, DropReason::MissedDeadline { seconds: 60.0 });
        rec.dropped_reasons.insert(
            3,
            DropReason::Refused(Refusal::MissingTensor { name: "a.w".into() }),
        );
        rec.dropped_reasons
            .insert(4, DropReason::Exchange("connection lost: timed out".into()));
        let v = serde_json::to_value(&rec).unwrap();
        assert_eq!(
            v["dropped_reasons"],
            serde_json::json!({
                "0": "left before the round started",
                "1": "client reported failure: no data",
                "2": "missed the 60 s round deadline",
                "3": "update refused: update lacks tensor `a.w`",
                "4": "connection lost: timed out",
            })
        );
        assert!(v.get("knn_top1").is_none() && v.get("failed").is_none());
        assert!(rec
            .reasons_text()
            .starts_with("{0: \"left before the round started\", 1: "));
    }

    #[test]
    fn checkpoint_names_and_their_rounds() {
        assert_eq!(weights_file(3), "round-0003.safetensors");
        assert_eq!(round_of_weights_file(&weights_file(12)), Some(12));
        assert_eq!(round_of_weights_file(&state_file(12)), None);
        assert_eq!(round_of_weights_file("final.safetensors"), None);
        let dir = tempfile::tempdir().unwrap();
        let ck = Checkpoints::create(dir.path()).unwrap();
        let w = WeightSet::default();
        ck.save(1, &w, None).unwrap();
        ck.save(2, &w, Some(&w)).unwrap();
        let mut names: Vec<String> = std::fs::read_dir(dir.path().join("checkpoints"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "round-0001.safetensors",
                "round-0002.safetensors",
                "round-0002.state.safetensors"
            ]
        );
    }
}
