//! The round loop of a run.
//!
//! A round: wait for enough clients, sample the participation fraction with the round's
//! seed, send every sampled client the global backbone and its round config (from the
//! [`Strategy`]) on a fresh stream (`client_round.rs`), and hand updates to the
//! strategy's aggregator as they arrive. A client that errors, vanishes, sends a bad update or
//! misses the round deadline is dropped from the round (recorded in `rounds.jsonl`); the run
//! goes on while at least `min_clients` contribute. At most [`decode_slots`] received updates
//! are held in memory at once, whatever the number of clients; a backbone over
//! `federation.spool_above_bytes` goes through files instead ([`crate::server::spool`]):
//! during the round the coordinator holds the running sum and no copy of the model. After each round the global
//! weights are checkpointed, the k-NN monitor scores them when due, and the round's record is
//! appended to `rounds.jsonl` ([`crate::server::records`]) and, with `[logging] tensorboard`,
//! its scalars to a TensorBoard event file ([`crate::server::tensorboard`]). The live run page's
//! [`StatusBoard`] follows each round, client by client. With
//! `federation.secure_aggregation` a round's messages are `secagg_round.rs`'s instead, and
//! the strategy's server step takes the unmasked mean.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use fedssl_shared::config::{FederationConfig, Scenario};
use fedssl_shared::protocol::RoundConfig;
use fedssl_shared::train::LocalTrainConfig;
use fedssl_shared::weights::WeightSet;
use indicatif::MultiProgress;
use rand::seq::IndexedRandom;
use tokio::task::JoinSet;
use tracing::{info, warn};

use crate::eval::knn::KnnMonitor;
use crate::server::client_round::{
    client_round, Arrived, GlobalPayload, RoundShared, SentBytes, Update,
};
use crate::server::progress::RoundsProgress;
use crate::server::records::{Checkpoints, DropReason, RoundRecord, RoundsLog};
use crate::server::registry::Registry;
use crate::server::samples::SampleRule;
use crate::server::secagg_round::{secure_round, SecureRound};
use crate::server::spool::Spool;
use crate::server::status::board::{ClientState, Phase, StatusBoard};
use crate::server::tensorboard::EventWriter;
use crate::strategy::{RoundAggregator, Strategy};

/// Updates decoded and waiting for aggregation at any moment (bounds memory): two, so that
/// one is received while another is added, or one for a backbone over [`LARGE_MODEL_BYTES`]
/// ([`decode_slots`]).
pub const DECODE_SLOTS: usize = 2;

/// A backbone this large (bytes of `f32` values) is received one update at a time: with a
/// 1 GB model the second slot cost the coordinator 1 GB at its peak, for an overlap that
/// the network's time dwarfs.
pub const LARGE_MODEL_BYTES: usize = 256 << 20;

/// The decode slots of a run whose global weights are `global`: [`DECODE_SLOTS`], or 1 over
/// [`LARGE_MODEL_BYTES`].
pub fn decode_slots(global: &WeightSet) -> usize {
    if global.num_values().saturating_mul(4) > LARGE_MODEL_BYTES {
        1
    } else {
        DECODE_SLOTS
    }
}

/// Where and how the rounds run.
pub struct RoundsContext<'a> {
    /// The run.
    pub scenario: &'a Scenario,
    /// Connected clients.
    pub registry: Arc<Registry>,
    /// Output folder (checkpoints, `rounds.jsonl`).
    pub out: &'a Path,
    /// Seconds to wait for more than `min_clients` before the first round.
    pub start_grace: Duration,
    /// Progress bars.
    pub progress: Option<MultiProgress>,
    /// Rounds already completed by the run being resumed (0 for a fresh run): the first
    /// round run is `start_round + 1` (1-based), and `rounds.jsonl` is appended to.
    pub start_round: usize,
    /// The k-NN monitor of `eval.knn_every` (`None`: off).
    pub monitor: Option<Arc<KnnMonitor>>,
    /// The aggregation strategy (with its state restored when resuming).
    pub strategy: Box<dyn Strategy>,
    /// The live run page's state, fed as the rounds go.
    pub status: Arc<StatusBoard>,
}

/// Totals of a finished federation.
pub struct RoundsOutcome {
    /// Global backbone after the last round.
    pub global: WeightSet,
    /// Rounds completed.
    pub rounds_completed: usize,
    /// Application bytes sent / received.
    pub bytes_sent: u64,
    /// Application bytes received.
    pub bytes_received: u64,
    /// Distinct clients that contributed to at least one round.
    pub clients_seen: BTreeSet<u32>,
    /// The certified site name of every client id that had one (`id → site`).
    pub sites: BTreeMap<u32, String>,
}

impl RoundsOutcome {
    /// Adds a completed round's record to the totals.
    fn add(&mut self, rec: &RoundRecord) {
        self.bytes_sent += rec.bytes_sent;
        self.bytes_received += rec.bytes_received;
        self.rounds_completed = rec.round;
        self.clients_seen.extend(rec.clients.iter().copied());
    }
}

/// The round tasks still running, and the clients they serve.
struct InFlight {
    tasks: JoinSet<(u32, Result<Arrived, DropReason>)>,
    pending: BTreeSet<u32>,
}

/// Runs rounds `start_round + 1 ..= federation.rounds` from `global`, checkpointing each;
/// returns the final global backbone. Errors when a round fails (fewer than
/// `federation.min_clients` valid updates: its record is written first) or the clients do
/// not come.
pub async fn run_rounds(ctx: RoundsContext<'_>, mut global: WeightSet) -> Result<RoundsOutcome> {
    let RoundsContext {
        scenario: sc,
        registry,
        out,
        start_grace,
        progress,
        start_round,
        monitor,
        mut strategy,
        status,
    } = ctx;
    let fed = &sc.federation;
    let checkpoints = Checkpoints::create(out)?.keeping(fed.keep_checkpoints);
    let mut log = RoundsLog::open(out, start_round > 0)?;
    let mut tb = match sc.logging.tensorboard_dir(out) {
        Some(dir) => Some(EventWriter::create(&dir, "rounds")?),
        None => None,
    };
    let bar = RoundsProgress::new(progress.as_ref(), fed.rounds, start_round);
    info!(strategy = strategy.name(), buffering = ?strategy.buffering(), "aggregation");
    let bytes = (global.num_values() as u64).saturating_mul(4);
    let spool = match (bytes > fed.spool_above_bytes, held_in_memory(fed)) {
        (true, None) => Some(Arc::new(Spool::create(out)?)),
        (large, why) => {
            Spool::remove_stale(out)?;
            if let (true, Some(why)) = (large, why) {
                warn!(
                    bytes,
                    "federation.spool_above_bytes = {} is not used: {why}, so the global weights stay in memory",
                    fed.spool_above_bytes,
                );
            }
            None
        }
    };
    // spooled updates wait on disk, not in memory: two at a time, one received while
    // another is added
    let slots = match spool {
        Some(_) => DECODE_SLOTS,
        None => decode_slots(&global),
    };
    let slots = Arc::new(tokio::sync::Semaphore::new(slots));
    info!(spooled = spool.is_some(), "large-model spool");
    let mut totals = RoundsOutcome {
        global: WeightSet::default(),
        rounds_completed: start_round,
        bytes_sent: 0,
        bytes_received: 0,
        clients_seen: BTreeSet::new(),
        sites: BTreeMap::new(),
    };
    let join_timeout = Duration::from_secs_f64(fed.join_timeout_seconds);
    for round in start_round..fed.rounds {
        let grace = if round == start_round {
            start_grace
        } else {
            Duration::ZERO
        };
        if round == start_round || registry.ids().len() < fed.min_clients {
            status.set_phase(Phase::Waiting);
        }
        registry
            .wait_for(fed.min_clients, fed.clients, grace, join_timeout, |n| {
                bar.waiting(n, fed.clients, fed.min_clients)
            })
            .await?;
        let started = Instant::now();
        let sampled = sample_clients(&registry.ids(), sc, round);
        status.round_started(round + 1, &sampled);
        let lr = sc.round_lr(round);
        let shared = Arc::new(RoundShared {
            round: round as u32,
            max_weights_bytes: fed.max_weights_bytes,
            slots: slots.clone(),
            sent: SentBytes::default(),
            compression: fed.compression.clone(),
            global: (!fed.compression.is_none()).then(|| global.clone()),
            spool: spool.clone(),
            samples: SampleRule {
                expected: sampled
                    .iter()
                    .filter_map(|&id| Some((id, registry.expected_samples(id)?)))
                    .collect(),
                cap: fed.max_samples_per_client,
            },
            status: status.clone(),
        });
        let mut rec = RoundRecord::new(round + 1, lr);
        let deadline = tokio::time::Instant::from_std(
            started + Duration::from_secs_f64(fed.round_deadline_seconds),
        );
        let agg = if fed.secure_aggregation.enabled {
            let secure = SecureRound {
                scenario: sc,
                registry: &registry,
                configs: sampled
                    .iter()
                    .map(|&id| (id, round_config(strategy.as_ref(), sc, round, id, lr)))
                    .collect(),
                sampled: &sampled,
                global: &global,
                samples: shared.samples.clone(),
                deadline,
                slots: slots.clone(),
                status: status.clone(),
            };
            match secure_round(secure, &mut rec).await {
                Ok(agg) => agg,
                Err(reason) => {
                    let e = fail_round_because(&mut log, &mut rec, &reason);
                    status.round_done(&rec);
                    return Err(e);
                }
            }
        } else {
            let payload = match &spool {
                Some(spool) => spool.global_payload(round as u32, &global)?,
                None => GlobalPayload::of(&global)?,
            };
            let in_flight = dispatch(
                &registry,
                strategy.as_ref(),
                sc,
                &sampled,
                (&shared, &payload),
                &mut rec,
            );
            // the clients' tasks hold it until each has sent it
            drop(payload);
            let mut agg = strategy.begin_round(&global);
            if spool.is_some() {
                // the global weights are in the spool: out of memory until the server step,
                // their pages back to the kernel now, not when the heap next shrinks
                global = WeightSet::default();
                fedssl_shared::ops::trim_allocator();
                rec.spooled = true;
            }
            let collected = collect(in_flight, deadline, sc, agg.as_mut(), &mut rec, &status).await;
            let loss_sum = match collected {
                Ok(loss_sum) => loss_sum,
                Err(e) => {
                    let e = fail_round_because(&mut log, &mut rec, &format!("{e:#}"));
                    status.round_done(&rec);
                    return Err(e);
                }
            };
            close_record(&mut rec, &shared, started, agg.as_ref(), loss_sum);
            agg
        };
        let sites = registry.sites();
        rec.sites = sampled
            .iter()
            .filter_map(|id| Some((*id, sites.get(id)?.clone())))
            .collect();
        if agg.contributions() < fed.min_clients {
            let e = fail_round(&mut log, &mut rec, agg.contributions(), fed.min_clients);
            status.round_done(&rec);
            return Err(e);
        }
        // (a spooled run is never securely aggregated: its rounds all took the branch above)
        if let Some(spool) = &spool {
            if strategy.apply_reads_global() {
                global = spool.global(round as u32)?;
            }
            spool.end_round(round as u32);
        }
        global = strategy.apply(&global, agg)?;
        if spool.is_some() {
            // the running sum's pages go back to the kernel before the next round's payload
            fedssl_shared::ops::trim_allocator();
        }
        rec.privacy = strategy.report();
        checkpoints.save(round + 1, &global, strategy.state().as_ref())?;
        if let Some(m) = monitor.as_ref().filter(|m| m.due(round + 1, fed.rounds)) {
            rec.knn_top1 = Some(knn_score(m, &global, round + 1).await?);
        }
        log.append(&rec)?;
        status.round_done(&rec);
        if let Some(tb) = tb.as_mut() {
            tb.round(&rec)?;
        }
        totals.add(&rec);
        bar.round_done(&rec);
    }
    bar.finish();
    totals.global = global;
    totals.sites = registry.sites();
    Ok(totals)
}

/// Why a run's rounds keep the global weights in memory whatever the backbone's size, or
/// `None` when one over `federation.spool_above_bytes` can go through the spool
/// ([`crate::server::spool`]): secure aggregation, or compressed updates (decoded against the
/// global weights).
fn held_in_memory(fed: &FederationConfig) -> Option<&'static str> {
    if fed.secure_aggregation.enabled {
        Some("the round is securely aggregated")
    } else if !fed.compression.is_none() {
        Some("compressed updates are decoded against the global weights")
    } else {
        None
    }
}

/// The clients of round `round` (0-based) among the `connected` ids: the participation
/// fraction (rounded up, at least `min_clients`, at most all), drawn with the round's
/// `sampling` seed stream; sorted.
fn sample_clients(connected: &[u32], sc: &Scenario, round: usize) -> Vec<u32> {
    let fed = &sc.federation;
    let k = fed.sampled_of(connected.len());
    let mut rng = fedssl_shared::seed::rng(sc.seed, fedssl_shared::seed::SAMPLING, round as u64);
    let mut sampled: Vec<u32> = connected.choose_multiple(&mut rng, k).copied().collect();
    sampled.sort_unstable();
    sampled
}

/// Starts the round task of every `sampled` client still connected, with its round config
/// (the scenario's local training at the round's learning rate (`rec.lr`) and the client's
/// `client-train` seed, as the strategy configures it) and a share of the round's `payload`.
/// A client that left is recorded as dropped in `rec`.
fn dispatch(
    registry: &Registry,
    strategy: &dyn Strategy,
    sc: &Scenario,
    sampled: &[u32],
    (shared, payload): (&Arc<RoundShared>, &GlobalPayload),
    rec: &mut RoundRecord,
) -> InFlight {
    let round = shared.round as usize;
    let mut in_flight = InFlight {
        tasks: JoinSet::new(),
        pending: BTreeSet::new(),
    };
    for &id in sampled {
        let Some(link) = registry.link(id) else {
            drop_client(rec, &shared.status, id, DropReason::LeftBeforeRound);
            continue;
        };
        let config = round_config(strategy, sc, round, id, rec.lr);
        in_flight.pending.insert(id);
        let (shared, payload) = (shared.clone(), payload.clone());
        in_flight
            .tasks
            .spawn(async move { (id, client_round(link, config, payload, shared).await) });
    }
    in_flight
}

/// The round config of client `id` in round `round` (0-based) at learning rate `lr`: the
/// scenario's local training and the client's `client-train` seed, as the strategy
/// configures it.
pub(crate) fn round_config(
    strategy: &dyn Strategy,
    sc: &Scenario,
    round: usize,
    id: u32,
    lr: f64,
) -> RoundConfig {
    let base = RoundConfig {
        train: LocalTrainConfig {
            lr,
            ..sc.train.local.clone()
        },
        seed: fedssl_shared::seed::derive(
            sc.seed,
            fedssl_shared::seed::CLIENT_TRAIN,
            ((round as u64) << 32) | id as u64,
        ),
        proximal_mu: 0.0,
    };
    strategy.configure(round, id, base)
}

/// Collects the round's updates until every task ended or the `deadline` passed: each
/// arrived update goes to `agg`, and `rec` gets the contributions, the bytes received and
/// every drop with its reason (the clients still pending at the deadline miss it). Returns
/// the sample-weighted sum of the accepted updates' losses. `status` follows each client.
/// Errors when a spooled update's file could not be read while it was being added: the
/// aggregate may hold part of it, and the round's other tasks are stopped.
async fn collect(
    mut in_flight: InFlight,
    deadline: tokio::time::Instant,
    sc: &Scenario,
    agg: &mut dyn RoundAggregator,
    rec: &mut RoundRecord,
    status: &StatusBoard,
) -> Result<f64> {
    let mut loss_sum = 0.0;
    loop {
        match tokio::time::timeout_at(deadline, in_flight.tasks.join_next()).await {
            Ok(None) => break,
            Ok(Some(Err(e))) => warn!("round task failed: {e}"),
            Ok(Some(Ok((id, res)))) => {
                in_flight.pending.remove(&id);
                match res {
                    Ok(a) => {
                        rec.bytes_received += a.bytes_received;
                        let added = match &a.update {
                            Update::Memory(w) => agg.add(w, a.num_samples),
                            Update::File(u) => match agg.add_file(u.file(), a.num_samples) {
                                Ok(added) => {
                                    // the tensors it was read into go back to the kernel
                                    // (the allocator would keep up to 256 MiB per arena)
                                    fedssl_shared::ops::trim_allocator();
                                    added
                                }
                                Err(e) => {
                                    in_flight.tasks.abort_all();
                                    return Err(e.context(format!(
                                        "client {id}'s spooled update could not be added"
                                    )));
                                }
                            },
                        };
                        match added {
                            Ok(()) => {
                                rec.contributed(
                                    a.id,
                                    a.loss,
                                    a.accuracy,
                                    a.num_samples,
                                    a.train_seconds,
                                );
                                loss_sum += a.loss * a.num_samples as f64;
                                status.client(a.id, ClientState::Aggregated);
                            }
                            Err(r) => {
                                warn!(client = id, round = rec.round, "update refused: {r}");
                                drop_client(rec, status, id, DropReason::Refused(r));
                            }
                        }
                    }
                    Err(reason) => {
                        warn!(client = id, round = rec.round, "dropped: {reason}");
                        drop_client(rec, status, id, reason);
                    }
                }
            }
            Err(_) => {
                let seconds = sc.federation.round_deadline_seconds;
                for id in &in_flight.pending {
                    warn!(
                        client = id,
                        round = rec.round,
                        "dropped: missed the round deadline"
                    );
                    drop_client(rec, status, *id, DropReason::MissedDeadline { seconds });
                }
                in_flight.tasks.abort_all();
                break;
            }
        }
    }
    Ok(loss_sum)
}

/// Records in `rec` (and on the live page's `status`) that client `id` is dropped from the
/// round for `reason`.
fn drop_client(rec: &mut RoundRecord, status: &StatusBoard, id: u32, reason: DropReason) {
    status.client(id, ClientState::Dropped(reason.to_string()));
    rec.dropped_reasons.insert(id, reason);
}

/// Completes `rec` once the round's updates are in: bytes sent, contributors and dropped
/// clients sorted, the round's wall seconds since `started`, and the sample-weighted mean
/// loss of the accepted updates (`loss_sum / Σ n_k`; none without an accepted update).
fn close_record(
    rec: &mut RoundRecord,
    shared: &RoundShared,
    started: Instant,
    agg: &dyn RoundAggregator,
    loss_sum: f64,
) {
    rec.bytes_sent = shared.sent.total();
    rec.clients.sort_unstable();
    rec.dropped = rec.dropped_reasons.keys().copied().collect();
    rec.seconds = started.elapsed().as_secs_f64();
    if agg.total_samples() > 0 {
        rec.mean_loss = Some(loss_sum / agg.total_samples() as f64);
    }
}

/// A round with fewer than `min_clients` valid updates: writes its record (`failed`, nothing
/// aggregated) and returns the run's error.
fn fail_round(
    log: &mut RoundsLog,
    rec: &mut RoundRecord,
    contributed: usize,
    min_clients: usize,
) -> anyhow::Error {
    let reason = format!(
        "only {contributed} valid update(s) arrived, federation.min_clients is {min_clients}"
    );
    rec.failed = Some(format!("{reason}; nothing was aggregated"));
    if let Err(e) = log.append(rec) {
        return e;
    }
    anyhow::anyhow!(
        "round {}: {reason} (dropped: {})",
        rec.round,
        rec.reasons_text()
    )
}

/// A round that failed for `reason` (a secure-aggregation round with too few clients at one
/// of its steps, or whose unmasking failed; a spooled update that could not be read back):
/// writes its record (`failed`, nothing aggregated) and returns the run's error.
fn fail_round_because(log: &mut RoundsLog, rec: &mut RoundRecord, reason: &str) -> anyhow::Error {
    rec.failed = Some(format!("{reason}; nothing was aggregated"));
    if let Err(e) = log.append(rec) {
        return e;
    }
    let dropped = if rec.dropped_reasons.is_empty() {
        String::new()
    } else {
        format!(" (dropped: {})", rec.reasons_text())
    };
    anyhow::anyhow!(
        "round {}: {reason}; nothing was aggregated{dropped}",
        rec.round
    )
}

/// The k-NN monitor's score of `global` after round `round` (1-based), off the async workers.
async fn knn_score(monitor: &Arc<KnnMonitor>, global: &WeightSet, round: usize) -> Result<f64> {
    let (m, g) = (monitor.clone(), global.clone());
    let knn = tokio::task::spawn_blocking(move || m.score(&g)).await??;
    info!(round, knn_top1 = knn, "k-NN monitor");
    Ok(knn)
}
