//! The live run page's state model: a [`StatusBoard`] that the run feeds as it goes (phase,
//! round start, each sampled client's progress, each round's record, the final evaluation)
//! and that [`StatusBoard::snapshot`] turns into the page's JSON ([`Snapshot`]), with the
//! connected sites read from the run's [`Registry`] at that moment.
//!
//! The board holds only what the page shows: the scenario as `scenario.json` has it (no key,
//! no certificate: those never are in a scenario), names, addresses, progress and the round
//! records of `rounds.jsonl`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Instant;

use fedssl_shared::config::Scenario;
use serde::Serialize;

use crate::server::records::RoundRecord;
use crate::server::registry::Registry;

/// Where the run is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Loading the data and building the initial backbone.
    Loading,
    /// Waiting for enough clients before a round.
    Waiting,
    /// A round is running.
    Round,
    /// The rounds are over: the clients are told, `final.safetensors` is written and the
    /// central evaluation runs.
    Evaluating,
    /// The run finished (`summary.json` written).
    Finished,
    /// The run failed (`error` says why).
    Failed,
}

/// A sampled client's progress in the current round.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "state", content = "reason")]
pub enum ClientState {
    /// Sampled; the round is not yet sent.
    Sampled,
    /// The round and the global weights were sent: the client trains.
    Training,
    /// Its update arrived.
    Uploaded,
    /// Its update went into the round's aggregate.
    Aggregated,
    /// Dropped from the round, with the reason `rounds.jsonl` records.
    Dropped(String),
}

impl ClientState {
    /// The state's name (`"training"`, …), as the JSON's `state`.
    fn name(&self) -> &'static str {
        match self {
            ClientState::Sampled => "sampled",
            ClientState::Training => "training",
            ClientState::Uploaded => "uploaded",
            ClientState::Aggregated => "aggregated",
            ClientState::Dropped(_) => "dropped",
        }
    }
}

/// What the board knows, behind its lock.
struct Board {
    phase: Phase,
    round: usize,
    progress: BTreeMap<u32, ClientState>,
    history: Vec<RoundRecord>,
    heard: BTreeMap<u32, Instant>,
    known: BTreeMap<u32, SiteView>,
    eval: Option<serde_json::Value>,
    error: Option<String>,
    /// When the run finished or failed (the elapsed time stops there).
    ended: Option<Instant>,
}

/// The live state of one run (shared by the rounds and the page's server).
pub struct StatusBoard {
    run: String,
    rounds: usize,
    scenario: serde_json::Value,
    started: Instant,
    registry: OnceLock<Arc<Registry>>,
    board: Mutex<Board>,
}

/// A site (connected client) as the page lists it.
#[derive(Clone, Debug, Serialize)]
pub struct SiteView {
    /// Client id.
    pub id: u32,
    /// Its certified site name, else its hello name.
    pub name: String,
    /// The address its connection comes from (`IP:PORT`).
    pub address: String,
    /// Whether it is connected now.
    pub connected: bool,
    /// Seconds since the coordinator last heard from it (it joined, or answered a round);
    /// `null` once it left.
    pub last_seen_seconds: Option<f64>,
    /// `left`, `idle` (not in the current round) or its [`ClientState`] name in the round.
    pub state: String,
}

/// A sampled client's line of the current round.
#[derive(Clone, Debug, Serialize)]
pub struct ProgressView {
    /// Client id.
    pub id: u32,
    /// Its site or hello name (`client K` when unknown).
    pub name: String,
    /// Its progress (`state`, and `reason` when dropped).
    #[serde(flatten)]
    pub state: ClientState,
}

/// The JSON of `GET /status.json`.
#[derive(Clone, Debug, Serialize)]
pub struct Snapshot {
    /// The scenario's name.
    pub run: String,
    /// Where the run is.
    pub phase: Phase,
    /// The current (or last) round, 1-based; 0 before the first.
    pub round: usize,
    /// `federation.rounds`.
    pub rounds: usize,
    /// Seconds since the run started.
    pub elapsed_seconds: f64,
    /// Every client seen in this run, connected or not, by id.
    pub sites: Vec<SiteView>,
    /// The sampled clients of the current round and their progress.
    pub progress: Vec<ProgressView>,
    /// The record of every completed (or failed) round since the run (or its resume)
    /// started, as in `rounds.jsonl`.
    pub history: Vec<RoundRecord>,
    /// The final evaluation (`summary.json`'s `eval`) once the run finished with one.
    pub eval: Option<serde_json::Value>,
    /// Whether the run ended successfully.
    pub finished: bool,
    /// Why the run failed.
    pub error: Option<String>,
    /// The scenario as `scenario.json` has it.
    pub scenario: serde_json::Value,
}

impl StatusBoard {
    /// The board of a run of `sc` that starts now, in phase `loading`.
    pub fn new(sc: &Scenario) -> Arc<Self> {
        Arc::new(Self {
            run: sc.name.clone(),
            rounds: sc.federation.rounds,
            scenario: serde_json::to_value(sc).unwrap_or(serde_json::Value::Null),
            started: Instant::now(),
            registry: OnceLock::new(),
            board: Mutex::new(Board {
                phase: Phase::Loading,
                round: 0,
                progress: BTreeMap::new(),
                history: Vec::new(),
                heard: BTreeMap::new(),
                known: BTreeMap::new(),
                eval: None,
                error: None,
                ended: None,
            }),
        })
    }

    /// The state. Every critical section only assigns plain values, so a lock poisoned by a
    /// panic elsewhere still guards consistent data and is taken as it is.
    fn board(&self) -> MutexGuard<'_, Board> {
        self.board.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The run's clients are admitted into `registry` from now on: phase `waiting`.
    pub fn attach(&self, registry: Arc<Registry>) {
        let _ = self.registry.set(registry);
        self.set_phase(Phase::Waiting);
    }

    /// Sets the phase.
    pub fn set_phase(&self, phase: Phase) {
        self.board().phase = phase;
    }

    /// Round `round` (1-based) started with the clients `sampled`.
    pub fn round_started(&self, round: usize, sampled: &[u32]) {
        let mut b = self.board();
        self.observe(&mut b);
        b.phase = Phase::Round;
        b.round = round;
        b.progress = sampled
            .iter()
            .map(|id| (*id, ClientState::Sampled))
            .collect();
    }

    /// Client `id` of the current round is now in `state`.
    pub fn client(&self, id: u32, state: ClientState) {
        self.board().progress.insert(id, state);
    }

    /// The coordinator heard from client `id` (an answer to a round).
    pub fn heard_from(&self, id: u32) {
        let mut b = self.board();
        b.heard.insert(id, Instant::now());
        self.observe(&mut b);
    }

    /// The record of a completed (or failed) round.
    pub fn round_done(&self, rec: &RoundRecord) {
        self.board().history.push(rec.clone());
    }

    /// The run finished, with the final evaluation `eval` (`summary.json`'s).
    pub fn finished(&self, eval: Option<serde_json::Value>) {
        let mut b = self.board();
        self.observe(&mut b);
        b.ended.get_or_insert_with(Instant::now);
        b.phase = Phase::Finished;
        b.eval = eval;
    }

    /// The run failed with `error`.
    pub fn failed(&self, error: String) {
        let mut b = self.board();
        self.observe(&mut b);
        b.ended.get_or_insert_with(Instant::now);
        b.phase = Phase::Failed;
        b.error = Some(error);
    }

    /// The page's JSON now.
    pub fn snapshot(&self) -> Snapshot {
        let mut b = self.board();
        self.observe(&mut b);
        self.snapshot_of(&b)
    }

    /// Brings `b.known` up to date with the registry's connected clients: a site seen once
    /// stays listed (as `left` once gone), whether or not the page was open while it was
    /// connected — the rounds call this too, so a page opened after the run still lists
    /// every site that took part.
    fn observe(&self, b: &mut Board) {
        let connected = self
            .registry
            .get()
            .map(|r| r.connected())
            .unwrap_or_default();
        let now = Instant::now();
        for known in b.known.values_mut() {
            known.connected = false;
            known.last_seen_seconds = None;
            known.state = "left".into();
        }
        for c in connected {
            let seen = b.heard.get(&c.id).map_or(c.joined, |h| (*h).max(c.joined));
            let state = b.progress.get(&c.id).map_or("idle", ClientState::name);
            let view = SiteView {
                id: c.id,
                name: c.site.unwrap_or(c.name),
                address: c.remote.to_string(),
                connected: true,
                last_seen_seconds: Some(now.duration_since(seen).as_secs_f64()),
                state: state.into(),
            };
            b.known.insert(c.id, view);
        }
    }

    /// The snapshot of `b`, whose `known` sites are up to date.
    fn snapshot_of(&self, b: &Board) -> Snapshot {
        let name_of = |id: u32| {
            b.known
                .get(&id)
                .map_or_else(|| format!("client {id}"), |s| s.name.clone())
        };
        Snapshot {
            run: self.run.clone(),
            phase: b.phase,
            round: b.round,
            rounds: self.rounds,
            elapsed_seconds: b
                .ended
                .unwrap_or_else(Instant::now)
                .duration_since(self.started)
                .as_secs_f64(),
            sites: b.known.values().cloned().collect(),
            progress: b
                .progress
                .iter()
                .map(|(id, s)| ProgressView {
                    id: *id,
                    name: name_of(*id),
                    state: s.clone(),
                })
                .collect(),
            history: b.history.clone(),
            eval: b.eval.clone(),
            finished: b.phase == Phase::Finished,
            error: b.error.clone(),
            scenario: self.scenario.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn board() -> Arc<StatusBoard> {
        let sc = Scenario::from_toml_str(
            "name = \"t\"\n[federation]\nclients = 3\nmin_clients = 2\nrounds = 4\n",
            &[],
        )
        .unwrap();
        StatusBoard::new(&sc)
    }

    #[test]
    fn a_round_goes_from_sampled_to_aggregated_or_dropped_in_the_json() {
        let b = board();
        let s = b.snapshot();
        assert_eq!((s.phase, s.round, s.rounds), (Phase::Loading, 0, 4));
        b.round_started(2, &[0, 2]);
        b.client(0, ClientState::Training);
        b.client(0, ClientState::Aggregated);
        b.client(
            2,
            ClientState::Dropped("missed the 60 s round deadline".into()),
        );
        let v = serde_json::to_value(b.snapshot()).unwrap();
        assert_eq!(v["phase"], "round");
        assert_eq!(v["round"], 2);
        assert_eq!(
            v["progress"],
            serde_json::json!([
                {"id": 0, "name": "client 0", "state": "aggregated"},
                {"id": 2, "name": "client 2", "state": "dropped",
                 "reason": "missed the 60 s round deadline"},
            ])
        );
        assert_eq!(v["scenario"]["federation"]["rounds"], 4);
        assert_eq!(
            (v["finished"].clone(), v["sites"].clone()),
            (false.into(), serde_json::json!([]))
        );
    }

    #[test]
    fn history_and_the_end_of_the_run() {
        let b = board();
        let mut rec = RoundRecord::new(1, 0.1);
        rec.bytes_sent = 10;
        b.round_done(&rec);
        b.finished(Some(serde_json::json!({"linear": {"top1": 0.5}})));
        let v = serde_json::to_value(b.snapshot()).unwrap();
        assert_eq!(v["history"][0]["round"], 1);
        assert_eq!(v["history"][0]["bytes_sent"], 10);
        assert_eq!(v["eval"]["linear"]["top1"], 0.5);
        assert_eq!(
            (v["finished"].clone(), v["phase"].clone()),
            (true.into(), "finished".into())
        );
        // the clock stops when the run ends
        let at_end = b.snapshot().elapsed_seconds;
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(b.snapshot().elapsed_seconds, at_end);
        b.failed("boom".into());
        let s = b.snapshot();
        assert!(!s.finished);
        assert_eq!(s.error.as_deref(), Some("boom"));
    }
}
