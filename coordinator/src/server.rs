//! The QUIC server: client registry, handshake, and round orchestration.
//!
//! A round: wait for enough clients, sample the participation fraction with the round's
//! seed, send every sampled client the global backbone and the round config on a fresh
//! stream, and fold updates into a streaming FedAvg as they arrive. A client that errors,
//! vanishes, sends a bad update or misses the round deadline is dropped from the round
//! (recorded in `rounds.jsonl`); the run goes on while at least `min_clients` contribute.
//! At most [`DECODE_SLOTS`] received updates are held in memory at once, whatever the
//! number of clients.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use fedssl_shared::protocol::{
    encode_frame, read_message, read_weights, write_message, write_weights_bytes, ClientMessage,
    RoundConfig, RunInfo, ServerMessage, PROTOCOL_VERSION,
};
use fedssl_shared::scenario::Scenario;
use fedssl_shared::weights::WeightSet;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use rand::seq::IndexedRandom;
use serde::Serialize;
use tokio::task::JoinSet;
use tracing::{info, warn};

use crate::aggregate::FedAvg;

/// Updates decoded and waiting for aggregation at any moment (bounds memory).
pub const DECODE_SLOTS: usize = 2;

/// A connected client.
struct Registered {
    conn: quinn::Connection,
    ctrl: Arc<tokio::sync::Mutex<quinn::SendStream>>,
    name: String,
}

/// Connected clients by id.
pub struct Registry {
    clients: Mutex<BTreeMap<u32, Registered>>,
    changed: tokio::sync::Notify,
    next_id: AtomicU32,
    capacity: usize,
    run: RunInfo,
}

impl Registry {
    /// An empty registry for a run of `run.num_clients` clients.
    pub fn new(run: RunInfo) -> Arc<Self> {
        Arc::new(Self {
            clients: Mutex::new(BTreeMap::new()),
            changed: tokio::sync::Notify::new(),
            next_id: AtomicU32::new(run.num_clients),
            capacity: run.num_clients as usize,
            run,
        })
    }

    /// Ids of the connected clients, sorted.
    pub fn ids(&self) -> Vec<u32> {
        self.clients.lock().unwrap().keys().copied().collect()
    }

    fn conn(&self, id: u32) -> Option<quinn::Connection> {
        self.clients
            .lock()
            .unwrap()
            .get(&id)
            .map(|r| r.conn.clone())
    }

    fn remove(&self, id: u32, conn: &quinn::Connection) {
        let mut g = self.clients.lock().unwrap();
        if g.get(&id)
            .is_some_and(|r| r.conn.stable_id() == conn.stable_id())
        {
            let r = g.remove(&id).unwrap();
            info!(client = id, name = %r.name, "client left");
        }
        drop(g);
        self.changed.notify_waiters();
    }

    /// Waits until `want` clients are connected, or `min` are and `grace` has passed since;
    /// errors after `timeout`.
    pub async fn wait_for(
        &self,
        min: usize,
        want: usize,
        grace: Duration,
        timeout: Duration,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut min_since: Option<Instant> = None;
        loop {
            let notified = self.changed.notified();
            let n = self.ids().len();
            if n >= want {
                return Ok(());
            }
            if n >= min {
                let since = *min_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= grace {
                    return Ok(());
                }
            } else {
                min_since = None;
            }
            if Instant::now() >= deadline {
                bail!("only {n} of the {min} clients needed (federation.min_clients) joined within {:.0} s", timeout.as_secs_f64());
            }
            let _ = tokio::time::timeout(Duration::from_millis(250), notified).await;
        }
    }

    /// Tells every connected client that the run is over and closes the connections.
    pub async fn finish_all(&self, message: &str) {
        let clients: Vec<(
            quinn::Connection,
            Arc<tokio::sync::Mutex<quinn::SendStream>>,
        )> = self
            .clients
            .lock()
            .unwrap()
            .values()
            .map(|r| (r.conn.clone(), r.ctrl.clone()))
            .collect();
        let mut goodbyes = JoinSet::new();
        for (conn, ctrl) in &clients {
            let (conn, ctrl, message) = (conn.clone(), ctrl.clone(), message.to_string());
            goodbyes.spawn(async move {
                let mut s = ctrl.lock().await;
                if write_message(&mut *s, &ServerMessage::Finished { message })
                    .await
                    .is_ok()
                {
                    let _ = s.finish();
                }
                // Give the client a moment to read it and close first.
                let _ = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await;
            });
        }
        while goodbyes.join_next().await.is_some() {}
        for (conn, _) in clients {
            conn.close(0u32.into(), b"run finished");
        }
    }
}

/// Accepts connections until the endpoint closes; each gets a handshake task.
pub async fn accept_loop(endpoint: quinn::Endpoint, registry: Arc<Registry>) {
    while let Some(incoming) = endpoint.accept().await {
        let registry = registry.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            if let Err(e) = handshake(incoming, registry).await {
                warn!(%remote, "client not admitted: {e:#}");
            }
        });
    }
}

async fn handshake(incoming: quinn::Incoming, registry: Arc<Registry>) -> Result<()> {
    let conn = incoming.await.context("TLS/QUIC handshake failed")?;
    let (send, mut recv) = tokio::time::timeout(Duration::from_secs(30), conn.accept_bi())
        .await
        .context("no hello within 30 s")??;
    let hello: ClientMessage =
        tokio::time::timeout(Duration::from_secs(30), read_message(&mut recv))
            .await
            .context("no hello within 30 s")??;
    let (name, shard) = match hello {
        ClientMessage::Hello {
            protocol_version,
            client_name,
            shard,
        } => {
            if protocol_version != PROTOCOL_VERSION {
                return Err(refuse(send, &conn, format!(
                    "client `{client_name}` speaks protocol version {protocol_version}, this coordinator speaks {PROTOCOL_VERSION}"
                ))
                .await);
            }
            (client_name, shard)
        }
        other => {
            return Err(refuse(
                send,
                &conn,
                format!("expected Hello as the first message, got {other:?}"),
            )
            .await)
        }
    };
    let admitted: std::result::Result<u32, String> = {
        let g = registry.clients.lock().unwrap();
        if g.len() >= registry.capacity {
            Err(format!(
                "the run already has its {} clients (federation.clients)",
                registry.capacity
            ))
        } else {
            match shard {
                Some((k, n)) if n != registry.run.num_clients || k >= n => Err(format!(
                    "shard {k}/{n} does not fit this run: it has {} shards, numbered 0..{}",
                    registry.run.num_clients,
                    registry.run.num_clients.saturating_sub(1)
                )),
                Some((k, _)) if g.contains_key(&k) => {
                    Err(format!(
                    "shard {k} is already held by a connected client (a client that just vanished frees it within federation.idle_timeout_seconds; retry shortly)"
                ))
                }
                Some((k, _)) => Ok(k),
                None => Ok(registry.next_id.fetch_add(1, Ordering::SeqCst)),
            }
        }
    };
    let id = match admitted {
        Ok(id) => id,
        Err(reason) => return Err(refuse(send, &conn, reason).await),
    };
    registry.clients.lock().unwrap().insert(
        id,
        Registered {
            conn: conn.clone(),
            ctrl: Arc::new(tokio::sync::Mutex::new(send)),
            name: name.clone(),
        },
    );
    {
        let ctrl = registry
            .clients
            .lock()
            .unwrap()
            .get(&id)
            .map(|r| r.ctrl.clone());
        if let Some(ctrl) = ctrl {
            let mut s = ctrl.lock().await;
            write_message(
                &mut *s,
                &ServerMessage::Welcome {
                    client_id: id,
                    run: registry.run.clone(),
                },
            )
            .await?;
        }
    }
    info!(client = id, %name, remote = %conn.remote_address(), "client joined");
    registry.changed.notify_waiters();
    let reg = registry.clone();
    tokio::spawn(async move {
        let why = conn.closed().await;
        if let quinn::ConnectionError::ApplicationClosed(c) = &why {
            if !c.reason.is_empty() && c.reason.as_ref() != b"done" {
                warn!(
                    client = id,
                    "client left: {}",
                    String::from_utf8_lossy(&c.reason)
                );
            }
        }
        reg.remove(id, &conn);
    });
    Ok(())
}

/// Sends a refusal, lets the client read it, closes the connection; returns the reason as an error.
async fn refuse(
    mut send: quinn::SendStream,
    conn: &quinn::Connection,
    reason: String,
) -> anyhow::Error {
    let _ = write_message(
        &mut send,
        &ServerMessage::Refused {
            reason: reason.clone(),
        },
    )
    .await;
    let _ = send.finish();
    let _ = tokio::time::timeout(Duration::from_secs(2), conn.closed()).await;
    conn.close(1u32.into(), b"refused");
    anyhow::anyhow!(reason)
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
    pub dropped_reasons: BTreeMap<u32, String>,
    /// Mean pretext loss of each contributing client's last local epoch.
    pub loss: BTreeMap<u32, f64>,
    /// Pretext accuracy of each contributing client's last local epoch, in [0, 1] (empty
    /// for tasks without an accuracy, such as masked image modelling).
    pub accuracy: BTreeMap<u32, f64>,
    /// Training images behind each contributing update (FedAvg weights).
    pub samples: BTreeMap<u32, u64>,
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
}

struct Arrived {
    id: u32,
    weights: WeightSet,
    num_samples: u64,
    loss: f64,
    accuracy: Option<f64>,
    bytes_received: u64,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

#[allow(clippy::too_many_arguments)]
async fn client_round(
    id: u32,
    conn: quinn::Connection,
    round: u32,
    config: RoundConfig,
    global: Arc<Vec<u8>>,
    max_bytes: u64,
    slots: Arc<tokio::sync::Semaphore>,
    sent: Arc<SentBytes>,
) -> Result<Arrived> {
    let (mut send, mut recv) = conn.open_bi().await.context("connection lost")?;
    let msg = ServerMessage::Round { round, config };
    let frame_len = encode_frame(&msg)?.len() as u64;
    write_message(&mut send, &msg).await?;
    let n = write_weights_bytes(&mut send, &global).await?;
    send.finish().ok();
    sent.add(id, frame_len + n);
    let reply: ClientMessage = read_message(&mut recv).await?;
    let reply_len = encode_frame(&reply)?.len() as u64;
    match reply {
        ClientMessage::Update {
            round: r,
            num_samples,
            loss,
            accuracy,
            ..
        } => {
            if r != round {
                bail!("answered round {r} during round {round}");
            }
            let permit = slots.acquire_owned().await?;
            let (weights, wbytes) = read_weights(&mut recv, max_bytes).await?;
            Ok(Arrived {
                id,
                weights,
                num_samples,
                loss,
                accuracy,
                bytes_received: reply_len + wbytes,
                _permit: permit,
            })
        }
        ClientMessage::Failed { reason, .. } => bail!("client reported failure: {reason}"),
        other => bail!("protocol error: expected Update, got {other:?}"),
    }
}

/// Bytes sent per client, recorded as soon as they are sent (so a dropped client's
/// traffic is still counted).
#[derive(Default)]
struct SentBytes {
    sent: Mutex<BTreeMap<u32, u64>>,
}

impl SentBytes {
    fn add(&self, id: u32, n: u64) {
        *self.sent.lock().unwrap().entry(id).or_default() += n;
    }
    fn total(&self) -> u64 {
        self.sent.lock().unwrap().values().sum()
    }
}

/// Where and how the rounds run.
pub struct RoundsContext<'a> {
    /// The run.
    pub scenario: &'a Scenario,
    /// Connected clients.
    pub registry: Arc<Registry>,
    /// Output folder (checkpoints, `rounds.jsonl`).
    pub out: &'a std::path::Path,
    /// Seconds to wait for more than `min_clients` before the first round.
    pub start_grace: Duration,
    /// Progress bars.
    pub progress: Option<MultiProgress>,
    /// Rounds already completed by the run being resumed (0 for a fresh run): the first
    /// round run is `start_round + 1` (1-based), and `rounds.jsonl` is appended to.
    pub start_round: usize,
    /// The k-NN monitor of `eval.knn_every` (`None`: off).
    pub monitor: Option<Arc<crate::eval::knn::KnnMonitor>>,
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
}

/// Runs rounds `start_round + 1 ..= federation.rounds` from `global`, checkpointing each;
/// returns the final global backbone.
pub async fn run_rounds(ctx: RoundsContext<'_>, mut global: WeightSet) -> Result<RoundsOutcome> {
    let sc = ctx.scenario;
    let fed = &sc.federation;
    let ckpt_dir = ctx.out.join("checkpoints");
    std::fs::create_dir_all(&ckpt_dir)
        .with_context(|| format!("cannot create {}", ckpt_dir.display()))?;
    let rounds_path = ctx.out.join("rounds.jsonl");
    let mut rounds_file = std::fs::OpenOptions::new()
        .create(true)
        .append(ctx.start_round > 0)
        .write(true)
        .truncate(ctx.start_round == 0)
        .open(&rounds_path)
        .with_context(|| format!("cannot write {}", rounds_path.display()))?;
    let bar = ctx.progress.as_ref().map(|mp| {
        let b = mp.add(ProgressBar::new(fed.rounds as u64));
        b.set_position(ctx.start_round as u64);
        b.set_style(
            ProgressStyle::with_template(
                "round [{bar:30}] {pos}/{len} {elapsed_precise} {wide_msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("##-"),
        );
        b
    });
    let slots = Arc::new(tokio::sync::Semaphore::new(DECODE_SLOTS));
    let mut out = RoundsOutcome {
        global: WeightSet::default(),
        rounds_completed: ctx.start_round,
        bytes_sent: 0,
        bytes_received: 0,
        clients_seen: BTreeSet::new(),
    };
    let join_timeout = Duration::from_secs_f64(fed.join_timeout_seconds);
    for round in ctx.start_round..fed.rounds {
        let grace = if round == ctx.start_round {
            ctx.start_grace
        } else {
            Duration::ZERO
        };
        ctx.registry
            .wait_for(fed.min_clients, fed.clients, grace, join_timeout)
            .await?;
        let started = Instant::now();
        let connected = ctx.registry.ids();
        let k = ((fed.participation * connected.len() as f64).ceil() as usize)
            .max(fed.min_clients)
            .min(connected.len());
        let mut rng = fedssl_shared::seed::rng(sc.seed, "sampling", round as u64);
        let mut sampled: Vec<u32> = connected.choose_multiple(&mut rng, k).copied().collect();
        sampled.sort_unstable();
        let lr = sc.round_lr(round);
        let payload = Arc::new(global.to_safetensors()?);
        let sent = Arc::new(SentBytes::default());
        let mut tasks = JoinSet::new();
        let mut pending: BTreeSet<u32> = BTreeSet::new();
        let mut dropped_reasons = BTreeMap::new();
        for &id in &sampled {
            let Some(conn) = ctx.registry.conn(id) else {
                dropped_reasons.insert(id, "left before the round started".to_string());
                continue;
            };
            let config = RoundConfig {
                local_epochs: sc.train.local_epochs as u32,
                batch_size: sc.train.batch_size as u32,
                lr,
                momentum: sc.train.momentum,
                weight_decay: sc.train.weight_decay,
                seed: fedssl_shared::seed::derive(
                    sc.seed,
                    "client-train",
                    ((round as u64) << 32) | id as u64,
                ),
            };
            pending.insert(id);
            let (payload, slots, sent) = (payload.clone(), slots.clone(), sent.clone());
            let max = fed.max_weights_bytes;
            tasks.spawn(async move {
                (
                    id,
                    client_round(id, conn, round as u32, config, payload, max, slots, sent).await,
                )
            });
        }
        let deadline = tokio::time::Instant::from_std(
            started + Duration::from_secs_f64(fed.round_deadline_seconds),
        );
        let mut agg = FedAvg::new(&global);
        let mut rec = RoundRecord {
            round: round + 1,
            clients: vec![],
            dropped: vec![],
            dropped_reasons: BTreeMap::new(),
            loss: BTreeMap::new(),
            accuracy: BTreeMap::new(),
            samples: BTreeMap::new(),
            mean_loss: None,
            lr,
            seconds: 0.0,
            bytes_sent: 0,
            bytes_received: 0,
            knn_top1: None,
            failed: None,
        };
        let mut loss_sum = 0.0;
        loop {
            match tokio::time::timeout_at(deadline, tasks.join_next()).await {
                Ok(None) => break,
                Ok(Some(Err(e))) => warn!("round task failed: {e}"),
                Ok(Some(Ok((id, res)))) => {
                    pending.remove(&id);
                    match res {
                        Ok(a) => {
                            rec.bytes_received += a.bytes_received;
                            match agg.add(&a.weights, a.num_samples) {
                                Ok(()) => {
                                    rec.clients.push(a.id);
                                    rec.loss.insert(a.id, a.loss);
                                    if let Some(acc) = a.accuracy {
                                        rec.accuracy.insert(a.id, acc);
                                    }
                                    rec.samples.insert(a.id, a.num_samples);
                                    loss_sum += a.loss * a.num_samples as f64;
                                }
                                Err(e) => {
                                    warn!(client = id, round = round + 1, "update refused: {e:#}");
                                    dropped_reasons.insert(id, format!("{e:#}"));
                                }
                            }
                        }
                        Err(e) => {
                            warn!(client = id, round = round + 1, "dropped: {e:#}");
                            dropped_reasons.insert(id, format!("{e:#}"));
                        }
                    }
                }
                Err(_) => {
                    for id in &pending {
                        warn!(
                            client = id,
                            round = round + 1,
                            "dropped: missed the round deadline"
                        );
                        dropped_reasons.insert(
                            *id,
                            format!(
                                "missed the {:.0} s round deadline",
                                fed.round_deadline_seconds
                            ),
                        );
                    }
                    tasks.abort_all();
                    break;
                }
            }
        }
        rec.bytes_sent = sent.total();
        rec.clients.sort_unstable();
        rec.dropped = dropped_reasons.keys().copied().collect();
        rec.dropped_reasons = dropped_reasons;
        rec.seconds = started.elapsed().as_secs_f64();
        let contributed = agg.contributions();
        if agg.total_samples() > 0 {
            rec.mean_loss = Some(loss_sum / agg.total_samples() as f64);
        }
        if contributed < fed.min_clients {
            let reason = format!(
                "only {contributed} valid update(s) arrived, federation.min_clients is {}",
                fed.min_clients
            );
            rec.failed = Some(format!("{reason}; nothing was aggregated"));
            let line = serde_json::to_string(&rec)?;
            use std::io::Write;
            writeln!(rounds_file, "{line}")?;
            rounds_file.flush()?;
            bail!(
                "round {}: {reason} (dropped: {:?})",
                round + 1,
                rec.dropped_reasons
            );
        }
        global = agg.finish()?;
        global.save(&ckpt_dir.join(format!("round-{:04}.safetensors", round + 1)))?;
        if let Some(m) = ctx
            .monitor
            .as_ref()
            .filter(|m| m.due(round + 1, fed.rounds))
        {
            let (m, g) = (m.clone(), global.clone());
            let knn = tokio::task::spawn_blocking(move || m.score(&g)).await??;
            info!(round = round + 1, knn_top1 = knn, "k-NN monitor");
            rec.knn_top1 = Some(knn);
        }
        {
            use std::io::Write;
            writeln!(rounds_file, "{}", serde_json::to_string(&rec)?)?;
            rounds_file.flush()?;
        }
        out.bytes_sent += rec.bytes_sent;
        out.bytes_received += rec.bytes_received;
        out.rounds_completed = round + 1;
        out.clients_seen.extend(rec.clients.iter().copied());
        let mut msg = format!(
            "loss {:.3} | {} clients, {} dropped | {:.1} s",
            rec.mean_loss.unwrap_or(f64::NAN),
            rec.clients.len(),
            rec.dropped.len(),
            rec.seconds
        );
        if let Some(k) = rec.knn_top1 {
            msg += &format!(" | k-NN {:.1}%", 100.0 * k);
        }
        match bar.as_ref().filter(|b| !b.is_hidden()) {
            Some(b) => {
                b.set_message(msg.clone());
                b.inc(1);
            }
            None => eprintln!("round {}/{}: {msg}", round + 1, fed.rounds),
        }
    }
    if let Some(b) = bar {
        b.finish();
    }
    out.global = global;
    Ok(out)
}
