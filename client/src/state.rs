//! Where a client keeps its state between rounds, by round: in memory ([`Local`], with its
//! model) or in files ([`StateFiles`], `simulate`'s `<run>/clients/`). Kept by round so that
//! a round that a restarted coordinator runs again (`serve --resume`, `simulate --resume`:
//! the round it was killed in) starts from the state after the round before it — the state it
//! started from the first time — and the resumed run is the uninterrupted one. The state of a
//! round and later ones, left by the interrupted attempt, are dropped when that round starts
//! again; states older than the one a round starts from are dropped too, so at most two are
//! kept: the one the round in progress started from, and its own once it trained.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use fedssl_shared::train::{ClientState, LocalModel};
use fedssl_shared::weights::WeightSet;

/// A client's model and state kept in memory between rounds (and across its reconnections).
#[derive(Default)]
pub(crate) struct Local {
    /// The local model.
    model: Option<LocalModel>,
    /// The round (0-based) whose successful training left `model` as it is (`None`: none yet).
    model_round: Option<u32>,
    /// The client's state after the rounds it trained, by 0-based round.
    states: BTreeMap<u32, ClientState>,
    /// What the update encoding lost so far (`federation.compression` with
    /// `error_feedback`; memory mode). Not kept by round: a round repeated after a
    /// coordinator restart starts from the residual the interrupted attempt left.
    pub residual: Option<WeightSet>,
}

impl Local {
    /// The model and state that round `round` (0-based) starts from: the state of the newest
    /// round before `round` that this client trained, and the model if that same round left
    /// it (`None`: the caller rebuilds it from the state, as [`StateFiles`] mode does every
    /// round).
    pub fn start(&mut self, round: u32) -> (Option<LocalModel>, Option<ClientState>) {
        self.states.retain(|&r, _| r < round);
        let base = self.states.keys().next_back().copied();
        if let Some(b) = base {
            self.states.retain(|&r, _| r >= b);
        }
        let state = base.and_then(|b| self.states.get(&b).cloned());
        let model = self.model.take();
        if self.model_round == base {
            (model, state)
        } else {
            (None, state)
        }
    }

    /// Keeps `model` after round `round` (0-based), with `trained`, the state the round's
    /// training left (`None`: it failed; the model is kept as training left it, as before a
    /// repeated round could exist, and the state the round started from stays).
    pub fn end(&mut self, round: u32, model: LocalModel, trained: Option<ClientState>) {
        self.model = Some(model);
        if let Some(st) = trained {
            self.model_round = Some(round);
            self.states.insert(round, st);
        }
    }
}

/// The state files of one client in a folder: `<id>.after-round-NNNN.safetensors`, the state
/// after the 1-based round `NNNN` (written atomically).
pub(crate) struct StateFiles {
    dir: PathBuf,
    id: u32,
}

impl StateFiles {
    /// The state files of client `id` in `dir`.
    pub fn new(dir: &Path, id: u32) -> Self {
        Self {
            dir: dir.to_path_buf(),
            id,
        }
    }

    /// The file of the state after the 1-based round `n`.
    fn file(&self, n: u32) -> PathBuf {
        self.dir
            .join(format!("{}.after-round-{n:04}.safetensors", self.id))
    }

    /// The 1-based rounds of this client's files, sorted.
    fn rounds(&self) -> Result<Vec<u32>> {
        let prefix = format!("{}.after-round-", self.id);
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", self.dir.display())),
        };
        let mut rounds: Vec<u32> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.strip_prefix(&prefix)?
                    .strip_suffix(".safetensors")?
                    .parse()
                    .ok()
            })
            .collect();
        rounds.sort_unstable();
        Ok(rounds)
    }

    /// The state that round `round` (0-based) starts from: the newest file of a round before
    /// it (`None`: none, the client's first round). The files of `round` and later, and those
    /// older than the one read, are deleted. Errors: the folder or the file cannot be read.
    pub fn start(&self, round: u32) -> Result<Option<ClientState>> {
        let rounds = self.rounds()?;
        // 1-based `n` is the state after 0-based round `n - 1`: before `round` when n <= round
        let base = rounds.iter().copied().filter(|&n| n <= round).max();
        for &n in &rounds {
            if n > round || base.is_some_and(|b| n < b) {
                let f = self.file(n);
                std::fs::remove_file(&f)
                    .with_context(|| format!("cannot delete {}", f.display()))?;
            }
        }
        base.map(|b| {
            Ok(ClientState {
                weights: WeightSet::load(&self.file(b))?,
            })
        })
        .transpose()
    }

    /// Writes the state after round `round` (0-based).
    pub fn save(&self, round: u32, st: &ClientState) -> Result<()> {
        st.weights.save(&self.file(round + 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fedssl_shared::weights::TensorData;

    fn state(v: f32) -> ClientState {
        let mut weights = WeightSet::default();
        weights.tensors.insert(
            "head.w".into(),
            TensorData {
                shape: vec![1],
                data: vec![v],
            },
        );
        ClientState { weights }
    }

    #[test]
    fn a_repeated_round_starts_from_the_state_before_it_in_memory() {
        let mut local = Local::default();
        assert!(local.start(0).1.is_none());
        local.states.insert(0, state(0.0));
        local.states.insert(2, state(2.0));
        local.model_round = Some(2);
        // round 3 builds on round 2's state; round 0's is dropped
        let (m, st) = local.start(3);
        assert!(m.is_none());
        assert_eq!(st, Some(state(2.0)));
        assert_eq!(local.states.keys().copied().collect::<Vec<_>>(), [2]);
        local.states.insert(3, state(3.0));
        local.model_round = Some(3);
        // a coordinator restarted from checkpoint 2 runs round 3 again: round 2's state
        // again, round 3's is gone, and the model (round 3's) is not reused
        let (_, st) = local.start(3);
        assert_eq!(st, Some(state(2.0)));
        assert_eq!(local.states.keys().copied().collect::<Vec<_>>(), [2]);
        // a new run of the same scenario: round 0 starts afresh
        assert_eq!(local.start(0).1, None);
        assert!(local.states.is_empty());
    }

    #[test]
    fn a_repeated_round_starts_from_the_state_before_it_in_files() {
        let dir = tempfile::tempdir().unwrap();
        let files = StateFiles::new(dir.path(), 4);
        let other = StateFiles::new(dir.path(), 14);
        assert_eq!(files.start(0).unwrap(), None);
        files.save(0, &state(0.0)).unwrap();
        files.save(2, &state(2.0)).unwrap();
        other.save(0, &state(-1.0)).unwrap();
        assert_eq!(files.start(3).unwrap(), Some(state(2.0)));
        assert_eq!(files.rounds().unwrap(), [3]);
        files.save(3, &state(3.0)).unwrap();
        // round 3 (0-based) again, after a resume from checkpoint 3: round 2's state again
        assert_eq!(files.start(3).unwrap(), Some(state(2.0)));
        assert_eq!(files.rounds().unwrap(), [3]);
        assert!(dir.path().join("4.after-round-0003.safetensors").is_file());
        // another client's files are its own
        assert_eq!(other.start(5).unwrap(), Some(state(-1.0)));
        assert_eq!(files.start(0).unwrap(), None);
        assert!(files.rounds().unwrap().is_empty());
    }
}
