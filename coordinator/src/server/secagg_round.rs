//! A round under secure aggregation (`federation.secure_aggregation`; Bonawitz et al. 2017,
//! Figure 4): the messages of [`fedssl_shared::protocol`] between the coordinator and each
//! sampled client, on one stream per client, phase by phase; the protocol's state is
//! [`RoundAggregation`]'s.
//!
//! 1. setup and keys: the round message ([`SecAggParams`]: threshold, ring, the sampled
//!    ids) and the global weights out, each client's public keys back (U1);
//! 2. shares: the key list out, each client's sealed shares back (U2: those that sent them);
//! 3. masked upload: the shares sealed for each client out; it trains and sends its masked
//!    update (U3: those whose vector was accepted and summed);
//! 4. unmasking: the survivors are told whose vectors arrived and whose did not, and answer
//!    with the shares that remove the masks (U4); the sum is unmasked, dequantised and
//!    divided by Σ n_k: the round's weighted mean, which the strategy's server step takes
//!    ([`SecureMean`]).
//!
//! A phase ends when every client of it answered or the round deadline passed. A client that
//! fails, leaves or sends something refused before its masked vector is summed is dropped
//! (`rounds.jsonl`'s `dropped`, with the reason); one that leaves after is still in the sum
//! and listed under `secure_aggregation.dropped_after_masking`. Fewer than the threshold at
//! any step fails the round: nothing is aggregated.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use fedssl_shared::config::Scenario;
use fedssl_shared::protocol::{
    encode_frame, read_message, read_weights_payload, write_message, ClientMessage, RoundConfig,
    SecAggParams, ServerMessage,
};
use fedssl_shared::secagg::aggregator::RoundAggregation;
use fedssl_shared::secagg::masking::PublicKeys;
use fedssl_shared::secagg::participant::Reveal;
use fedssl_shared::secagg::vector::{add_flat, ring_from_bytes};
use fedssl_shared::weights::WeightSet;
use tokio::task::JoinSet;
use tracing::warn;

use crate::server::client_round::GlobalPayload;
use crate::server::records::{DropReason, PhaseCost, RoundRecord, SecAggRecord};
use crate::server::registry::{ClientLink, Registry};
use crate::server::samples::SampleRule;
use crate::server::status::board::{ClientState, StatusBoard};
use crate::strategy::secure_mean::SecureMean;
use crate::strategy::RoundAggregator;

/// What a secure round needs from the round loop.
pub struct SecureRound<'a> {
    /// The run.
    pub scenario: &'a Scenario,
    /// Connected clients.
    pub registry: &'a Registry,
    /// Each sampled client's round config (as the strategy configured it).
    pub configs: std::collections::BTreeMap<u32, RoundConfig>,
    /// The round's sampled client ids, sorted.
    pub sampled: &'a [u32],
    /// The global weights the round starts from.
    pub global: &'a WeightSet,
    /// The n_k each client may report.
    pub samples: SampleRule,
    /// The round's deadline (every phase ends by it).
    pub deadline: tokio::time::Instant,
    /// Permits to hold a received masked vector ([`crate::server::rounds::DECODE_SLOTS`]).
    pub slots: Arc<tokio::sync::Semaphore>,
    /// The live run page.
    pub status: Arc<StatusBoard>,
}

/// One client's round stream.
struct Peer {
    id: u32,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
}

/// Bytes counted as they go, shared with the phase's tasks.
#[derive(Default)]
struct Bytes {
    sent: AtomicU64,
    received: AtomicU64,
}

impl Bytes {
    fn sent(&self, n: u64) {
        self.sent.fetch_add(n, Ordering::Relaxed);
    }
    fn received(&self, n: u64) {
        self.received.fetch_add(n, Ordering::Relaxed);
    }
    fn cost(&self, seconds: f64) -> PhaseCost {
        PhaseCost {
            seconds,
            bytes_sent: self.sent.load(Ordering::Relaxed),
            bytes_received: self.received.load(Ordering::Relaxed),
        }
    }
}

/// A typed refusal inside a task's error: recorded as [`DropReason::SecAgg`].
#[derive(Debug)]
struct Refused(String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl std::error::Error for Refused {}

/// A client's failure in a phase, as the reason `rounds.jsonl` gives.
fn reason_of(e: anyhow::Error) -> DropReason {
    if let Some(r) = e.downcast_ref::<Refused>() {
        return DropReason::SecAgg(r.0.clone());
    }
    if let Some(r) = e.downcast_ref::<ClientSaid>() {
        return DropReason::ClientFailed(r.0.clone());
    }
    DropReason::Exchange(format!("{e:#}"))
}

/// The client answered `Failed` (its local training failed).
#[derive(Debug)]
struct ClientSaid(String);

impl std::fmt::Display for ClientSaid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl std::error::Error for ClientSaid {}

/// Sends `msg` on `peer`'s stream, counting its bytes in `bytes`.
async fn send(peer: &mut Peer, msg: &ServerMessage, bytes: &Bytes) -> Result<()> {
    let n = encode_frame(msg)?.len() as u64;
    write_message(&mut peer.send, msg).await?;
    bytes.sent(n);
    Ok(())
}

/// Reads one client message from `peer`, counting its bytes in `bytes`; `Failed` is a
/// [`ClientSaid`] error.
async fn receive(peer: &mut Peer, bytes: &Bytes) -> Result<ClientMessage> {
    let m: ClientMessage = read_message(&mut peer.recv).await?;
    bytes.received(encode_frame(&m)?.len() as u64);
    if let ClientMessage::Failed { reason, .. } = m {
        return Err(ClientSaid(reason).into());
    }
    Ok(m)
}

/// Runs `task` for every `(id, input)` at once and hands each result to `on` as it arrives,
/// until all ended or `deadline` passed. Returns the peers whose task and `on` succeeded,
/// and every other client with why it is dropped (`deadline_seconds`: the round deadline,
/// for the message of those still pending).
async fn phase<I, T, F, Fut>(
    items: Vec<(u32, I)>,
    deadline: tokio::time::Instant,
    deadline_seconds: f64,
    task: F,
    mut on: impl FnMut(u32, T) -> Result<()>,
) -> (Vec<Peer>, Vec<(u32, DropReason)>)
where
    F: Fn(I) -> Fut,
    Fut: Future<Output = Result<(Peer, T)>> + Send + 'static,
    T: Send + 'static,
{
    let mut tasks = JoinSet::new();
    let mut pending = std::collections::BTreeSet::new();
    for (id, input) in items {
        let fut = task(input);
        pending.insert(id);
        tasks.spawn(async move { (id, fut.await) });
    }
    let (mut ok, mut dropped) = (Vec::new(), Vec::new());
    loop {
        match tokio::time::timeout_at(deadline, tasks.join_next()).await {
            Ok(None) => break,
            Ok(Some(Err(e))) => warn!("secure aggregation task failed: {e}"),
            Ok(Some(Ok((id, res)))) => {
                pending.remove(&id);
                match res.and_then(|(peer, t)| on(id, t).map(|()| peer)) {
                    Ok(peer) => ok.push(peer),
                    Err(e) => dropped.push((id, reason_of(e))),
                }
            }
            Err(_) => {
                tasks.abort_all();
                break;
            }
        }
    }
    for id in pending {
        dropped.push((
            id,
            DropReason::MissedDeadline {
                seconds: deadline_seconds,
            },
        ));
    }
    ok.sort_by_key(|p| p.id);
    (ok, dropped)
}

/// What a masked update brought besides its vector.
struct Masked {
    num_samples: u64,
    loss: f64,
    accuracy: Option<f64>,
    train_seconds: f64,
    y: Vec<u64>,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

/// The largest Σ n_k the round can have, when the coordinator knows it: every sampled
/// client's shard size, or the per-client cap where the shard is unknown.
fn max_total(rule: &SampleRule, sampled: &[u32]) -> Option<u64> {
    sampled
        .iter()
        .map(|id| rule.expected.get(id).copied().or(rule.cap))
        .sum()
}

/// Runs the round (module docs), filling `rec` (contributors, drops, losses, bytes,
/// seconds, its `secure_aggregation` record) as far as it gets. Returns the round's
/// aggregate for the strategy's server step, or the one-line reason the round failed
/// (nothing aggregated).
pub async fn secure_round(
    r: SecureRound<'_>,
    rec: &mut RoundRecord,
) -> std::result::Result<Box<dyn RoundAggregator>, String> {
    let started = Instant::now();
    let sc = r.scenario;
    let cfg = &sc.federation.secure_aggregation;
    let round = rec.round as u32 - 1;
    let t = cfg.threshold_of(r.sampled.len());
    let q = cfg.quantizer(max_total(&r.samples, r.sampled));
    let len = r.global.num_values();
    let graph = cfg.masking_graph();
    let mut agg = RoundAggregation::new(round as u64, t, q, len).with_graph(graph);
    let mut report = SecAggRecord {
        threshold: t,
        bits: q.bits,
        ..SecAggRecord::default()
    };
    let secs = sc.federation.round_deadline_seconds;
    let (model_bytes, keys_b, shares_b, masked_b, unmask_b) = (
        Arc::new(Bytes::default()),
        Arc::new(Bytes::default()),
        Arc::new(Bytes::default()),
        Arc::new(Bytes::default()),
        Arc::new(Bytes::default()),
    );
    let params = SecAggParams {
        threshold: t as u32,
        clip: q.clip,
        range: q.range,
        bits: q.bits,
        clients: r.sampled.to_vec(),
        neighbours: graph.to_wire(),
    };
    let payload = match GlobalPayload::of(r.global) {
        Ok(p) => Arc::new(p),
        Err(e) => return Err(format!("cannot serialise the global weights: {e:#}")),
    };

    // 1. setup and keys
    let mut items = Vec::new();
    for &id in r.sampled {
        let Some(link) = r.registry.link(id) else {
            drop_client(rec, &r.status, id, DropReason::LeftBeforeRound);
            continue;
        };
        let Some(config) = r.configs.get(&id).cloned() else {
            drop_client(rec, &r.status, id, DropReason::LeftBeforeRound);
            continue;
        };
        let msg = ServerMessage::Round {
            round,
            config,
            secagg: Some(params.clone()),
        };
        items.push((id, (id, link, msg)));
    }
    let (peers, dropped) = phase(
        items,
        r.deadline,
        secs,
        |(id, link, msg): (u32, ClientLink, ServerMessage)| {
            let (payload, model_bytes, keys_b, status) = (
                payload.clone(),
                model_bytes.clone(),
                keys_b.clone(),
                r.status.clone(),
            );
            async move {
                let (s, rv, header) = link.open().await?;
                model_bytes.sent(header);
                let mut peer = Peer {
                    id,
                    send: s,
                    recv: rv,
                };
                send(&mut peer, &msg, &model_bytes).await?;
                model_bytes.sent(payload.send(&mut peer.send).await?);
                status.client(id, ClientState::Training);
                match receive(&mut peer, &keys_b).await? {
                    ClientMessage::SecAggKeys {
                        round: got,
                        seal,
                        mask,
                    } if got == round => Ok((peer, PublicKeys { seal, mask })),
                    other => anyhow::bail!("protocol error: expected SecAggKeys, got {other:?}"),
                }
            }
        },
        |id, keys| {
            agg.add_keys(id, keys)
                .map_err(|e| Refused(format!("{e:#}")).into())
        },
    )
    .await;
    drop_all(rec, &r.status, dropped);
    report.advertised = peers.iter().map(|p| p.id).collect();
    let keys_started = Instant::now();
    let list = match agg.key_list() {
        Ok(l) => l,
        Err(e) => return Err(fail(rec, report, started, &[&model_bytes, &keys_b], e)),
    };
    let key_list = Arc::new(ServerMessage::SecAggKeyList {
        round,
        keys: list.iter().map(|(id, k)| (*id, k.seal, k.mask)).collect(),
    });
    let keys_seconds = keys_started.duration_since(started).as_secs_f64();

    // 2. shares
    let items = peers.into_iter().map(|p| (p.id, p)).collect();
    let (peers, dropped) = phase(
        items,
        r.deadline,
        secs,
        |mut peer: Peer| {
            let (msg, keys_b, shares_b) = (key_list.clone(), keys_b.clone(), shares_b.clone());
            async move {
                send(&mut peer, &msg, &keys_b).await?;
                match receive(&mut peer, &shares_b).await? {
                    ClientMessage::SecAggShares { round: got, shares } if got == round => {
                        Ok((peer, shares))
                    }
                    other => anyhow::bail!("protocol error: expected SecAggShares, got {other:?}"),
                }
            }
        },
        |id, shares| {
            agg.add_shares(id, shares)
                .map_err(|e| Refused(format!("{e:#}")).into())
        },
    )
    .await;
    drop_all(rec, &r.status, dropped);
    if let Err(e) = agg.begin_masking() {
        report.phases.insert("keys", keys_b.cost(keys_seconds));
        return Err(fail(
            rec,
            report,
            started,
            &[&model_bytes, &keys_b, &shares_b],
            e,
        ));
    }
    report.shared = peers.iter().map(|p| p.id).collect();
    let shares_seconds = keys_started.elapsed().as_secs_f64();

    // 3. masked upload (the clients train in it)
    let masked_started = Instant::now();
    let bits = q.bits;
    let items = peers
        .into_iter()
        .map(|p| {
            let msg = ServerMessage::SecAggRouted {
                round,
                shares: agg.routed_to(p.id),
            };
            (p.id, (p, msg))
        })
        .collect();
    let (mut loss_sum, mut total) = (0.0, 0u64);
    let (peers, dropped) = phase(
        items,
        r.deadline,
        secs,
        |(mut peer, msg): (Peer, ServerMessage)| {
            let (shares_b, masked_b) = (shares_b.clone(), masked_b.clone());
            let (rule, slots, status) = (r.samples.clone(), r.slots.clone(), r.status.clone());
            async move {
                send(&mut peer, &msg, &shares_b).await?;
                let (num_samples, loss, accuracy, train_seconds) =
                    match receive(&mut peer, &masked_b).await? {
                        ClientMessage::MaskedUpdate {
                            round: got,
                            num_samples,
                            loss,
                            accuracy,
                            train_seconds,
                            ..
                        } if got == round => (num_samples, loss, accuracy, train_seconds),
                        ClientMessage::MaskedUpdate { round: got, .. } => {
                            return Err(Refused(format!(
                                "a masked update of round {} in round {} (replay refused)",
                                got + 1,
                                round + 1
                            ))
                            .into())
                        }
                        other => {
                            anyhow::bail!("protocol error: expected MaskedUpdate, got {other:?}")
                        }
                    };
                let num_samples = rule
                    .weight(peer.id, num_samples)
                    .map_err(|e| Refused(e.to_string()))?;
                let permit = slots.acquire_owned().await?;
                let limit = len as u64 * bits as u64 / 8;
                let (bytes, n) = read_weights_payload(&mut peer.recv, limit)
                    .await
                    .map_err(|e| Refused(format!("masked vector: {e:#}")))?;
                masked_b.received(n);
                let y =
                    ring_from_bytes(&bytes, bits, len).map_err(|e| Refused(format!("{e:#}")))?;
                status.client(peer.id, ClientState::Uploaded);
                Ok((
                    peer,
                    Masked {
                        num_samples,
                        loss,
                        accuracy,
                        train_seconds,
                        y,
                        _permit: permit,
                    },
                ))
            }
        },
        |id, m: Masked| {
            agg.add_masked(id, m.num_samples, &m.y)
                .map_err(|e| anyhow::Error::from(Refused(format!("{e:#}"))))?;
            rec.contributed(id, m.loss, m.accuracy, m.num_samples, m.train_seconds);
            loss_sum += m.loss * m.num_samples as f64;
            total += m.num_samples;
            Ok(())
        },
    )
    .await;
    drop_all(rec, &r.status, dropped);
    rec.clients.sort_unstable();
    if total > 0 {
        rec.mean_loss = Some(loss_sum / total as f64);
    }
    report.masked = rec.clients.clone();
    report.phases.insert("keys", keys_b.cost(keys_seconds));
    report
        .phases
        .insert("shares", shares_b.cost(shares_seconds));
    report.phases.insert(
        "masked_upload",
        masked_b.cost(masked_started.elapsed().as_secs_f64()),
    );
    let req = match agg.unmask_request() {
        Ok(req) => req,
        Err(e) => {
            let all = [&model_bytes, &keys_b, &shares_b, &masked_b];
            return Err(fail(rec, report, started, &all, e));
        }
    };

    // 4. unmasking
    let unmask_started = Instant::now();
    let request = Arc::new(ServerMessage::SecAggUnmask {
        round,
        arrived: req.arrived.iter().copied().collect(),
        dropped: req.dropped.iter().copied().collect(),
    });
    let items = peers.into_iter().map(|p| (p.id, p)).collect();
    let (peers, dropped) = phase(
        items,
        r.deadline,
        secs,
        |mut peer: Peer| {
            let (msg, unmask_b) = (request.clone(), unmask_b.clone());
            async move {
                send(&mut peer, &msg, &unmask_b).await?;
                match receive(&mut peer, &unmask_b).await? {
                    ClientMessage::SecAggReveal {
                        round: got,
                        self_seeds,
                        mask_keys,
                    } if got == round => Ok((
                        peer,
                        Reveal {
                            self_seeds,
                            mask_keys,
                        },
                    )),
                    other => anyhow::bail!("protocol error: expected SecAggReveal, got {other:?}"),
                }
            }
        },
        |id, reveal| {
            agg.add_reveal(id, reveal)
                .map_err(|e| Refused(format!("{e:#}")).into())
        },
    )
    .await;
    for (id, why) in dropped {
        warn!(client = id, round = rec.round, "left after masking: {why}");
        report.dropped_after_masking.insert(id, why);
    }
    report.survivors = agg.survivors().iter().copied().collect();
    let result = agg.finish();
    for mut p in peers {
        p.send.finish().ok();
    }
    report.phases.insert(
        "unmasking",
        unmask_b.cost(unmask_started.elapsed().as_secs_f64()),
    );
    let all = [&model_bytes, &keys_b, &shares_b, &masked_b, &unmask_b];
    let (mean, total) = match result {
        Ok(m) => m,
        Err(e) => return Err(fail(rec, report, started, &all, e)),
    };
    let mean = match add_flat(r.global, &mean) {
        Ok(m) => m,
        Err(e) => return Err(fail(rec, report, started, &all, e)),
    };
    close(rec, report, started, &all);
    for id in &rec.clients {
        r.status.client(*id, ClientState::Aggregated);
    }
    Ok(Box::new(SecureMean {
        mean,
        contributions: rec.clients.len(),
        total_samples: total,
    }))
}

/// Records client `id`'s drop in `rec` and on the live page.
fn drop_client(rec: &mut RoundRecord, status: &StatusBoard, id: u32, reason: DropReason) {
    warn!(client = id, round = rec.round, "dropped: {reason}");
    status.client(id, ClientState::Dropped(reason.to_string()));
    rec.dropped_reasons.insert(id, reason);
}

fn drop_all(rec: &mut RoundRecord, status: &StatusBoard, dropped: Vec<(u32, DropReason)>) {
    for (id, why) in dropped {
        drop_client(rec, status, id, why);
    }
}

/// Completes `rec`: bytes of every phase, the dropped ids, the seconds, the report.
fn close(rec: &mut RoundRecord, report: SecAggRecord, started: Instant, bytes: &[&Arc<Bytes>]) {
    rec.bytes_sent = bytes.iter().map(|b| b.sent.load(Ordering::Relaxed)).sum();
    rec.bytes_received = bytes
        .iter()
        .map(|b| b.received.load(Ordering::Relaxed))
        .sum();
    rec.dropped = rec.dropped_reasons.keys().copied().collect();
    rec.seconds = started.elapsed().as_secs_f64();
    rec.secure_aggregation = Some(report);
}

/// [`close`]s `rec` of a round that failed with `e`, and returns the one-line reason.
fn fail(
    rec: &mut RoundRecord,
    report: SecAggRecord,
    started: Instant,
    bytes: &[&Arc<Bytes>],
    e: anyhow::Error,
) -> String {
    close(rec, report, started, bytes);
    format!("{e:#}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_become_typed_reasons_and_the_weight_bound_picks_the_ring() {
        let r = reason_of(Refused("client 2's masked vector has 3 elements".into()).into());
        assert_eq!(
            r.to_string(),
            "refused by secure aggregation: client 2's masked vector has 3 elements"
        );
        assert_eq!(
            reason_of(ClientSaid("out of memory".into()).into()),
            DropReason::ClientFailed("out of memory".into())
        );
        assert!(matches!(
            reason_of(anyhow::anyhow!("connection lost")),
            DropReason::Exchange(_)
        ));
        let rule = SampleRule {
            expected: [(0, 80), (1, 70)].into_iter().collect(),
            cap: None,
        };
        assert_eq!(max_total(&rule, &[0, 1]), Some(150));
        // a client whose shard is unknown, without a cap: no bound (the 64-bit ring)
        assert_eq!(max_total(&rule, &[0, 1, 2]), None);
        let capped = SampleRule {
            cap: Some(1000),
            ..rule
        };
        assert_eq!(max_total(&capped, &[0, 1, 2]), Some(1150));
    }
}
