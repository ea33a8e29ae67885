//! One sampled client's part of a round, on a fresh stream of its connection: the round
//! message and the global weights out, the client's update (or its failure) back. The bytes
//! sent are counted as soon as they are sent, so a client that is dropped still counts.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use anyhow::{bail, Context, Result};
use fedssl_shared::config::CompressionConfig;
use fedssl_shared::encoding::decode_update;
use fedssl_shared::protocol::{
    encode_frame, read_message, read_weights, read_weights_payload, weights_header, write_message,
    ClientMessage, RoundConfig, ServerMessage,
};
use fedssl_shared::weights::WeightSet;

use crate::server::records::DropReason;
use crate::server::registry::ClientLink;
use crate::server::samples::SampleRule;
use crate::server::spool::{Spool, SpooledUpdate, SEND_CHUNK};
use crate::server::status::board::{ClientState, StatusBoard};

/// The global weights a round starts from, as one weights payload (safetensors bytes and
/// their header), serialised once and sent to every client from one place, never a copy
/// per client (with `write_all`, each connection held its own copy of up to its send
/// window: 8 clients of an 11 MB backbone took the coordinator to 149 MiB). That place is a
/// buffer that quinn references until each client acknowledges it, or, for a spooled run
/// ([`crate::server::spool`]), a file each client's stream reads in
/// [`crate::server::spool::SEND_CHUNK`] pieces (memory: the pieces in flight, bounded by
/// the connections' send windows). Cloning shares the buffer or the open file: each
/// client's task holds a clone until its copy is sent.
#[derive(Clone)]
pub struct GlobalPayload {
    header: [u8; 12],
    body: Body,
}

/// Where a [`GlobalPayload`]'s bytes are.
#[derive(Clone)]
enum Body {
    Memory(bytes::Bytes),
    File(Arc<std::fs::File>, u64),
}

impl GlobalPayload {
    /// The payload of `weights`, in memory. Errors when they cannot be serialised.
    pub fn of(weights: &WeightSet) -> Result<Self> {
        let bytes = weights.to_safetensors()?;
        Ok(Self {
            header: weights_header(&bytes),
            body: Body::Memory(bytes.into()),
        })
    }

    /// The payload of `weights`, written to `path` (a safetensors file, replaced if it
    /// exists) and sent from there. Errors when they cannot be serialised or the file
    /// cannot be written or opened (named).
    pub fn in_file(path: &Path, weights: &WeightSet) -> Result<Self> {
        let bytes = weights.to_safetensors()?;
        let header = weights_header(&bytes);
        std::fs::write(path, &bytes).with_context(|| format!("cannot write {}", path.display()))?;
        let len = bytes.len() as u64;
        drop(bytes);
        let file =
            std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
        Ok(Self {
            header,
            body: Body::File(Arc::new(file), len),
        })
    }

    /// Bytes of the safetensors payload (without its 12-byte header).
    pub fn len(&self) -> usize {
        match &self.body {
            Body::Memory(b) => b.len(),
            Body::File(_, len) => *len as usize,
        }
    }

    /// True for an empty payload (never: even no tensor has a safetensors header).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes the payload on `send` without copying a buffer (a file is read piece by
    /// piece); returns the bytes written (header included). Errors when the stream fails or
    /// the file cannot be read.
    pub async fn send(&self, send: &mut quinn::SendStream) -> Result<u64> {
        let lost = "connection lost while sending the weights";
        send.write_all(&self.header).await.context(lost)?;
        match &self.body {
            Body::Memory(b) => send.write_chunk(b.clone()).await.context(lost)?,
            Body::File(file, len) => {
                let mut at = 0u64;
                while at < *len {
                    let n = (*len - at).min(SEND_CHUNK as u64) as usize;
                    let f = file.clone();
                    let piece = tokio::task::spawn_blocking(move || {
                        let mut buf = vec![0u8; n];
                        std::os::unix::fs::FileExt::read_exact_at(&*f, &mut buf, at).map(|_| buf)
                    })
                    .await?
                    .context("cannot read the spooled global weights")?;
                    send.write_chunk(piece.into()).await.context(lost)?;
                    at += n as u64;
                }
            }
        }
        Ok((self.header.len() + self.len()) as u64)
    }
}

/// What every client of a round shares.
pub struct RoundShared {
    /// 0-based round number, as sent.
    pub round: u32,
    /// Largest accepted weights payload (`federation.max_weights_bytes`).
    pub max_weights_bytes: u64,
    /// Permits to hold a decoded update ([`crate::server::rounds::DECODE_SLOTS`]).
    pub slots: Arc<tokio::sync::Semaphore>,
    /// Bytes sent to each client this round.
    pub sent: SentBytes,
    /// How the clients encode their updates (`federation.compression`).
    pub compression: CompressionConfig,
    /// The global weights the round starts from, when updates arrive as encoded deltas
    /// (any compression but `"none"`) and are decoded against them.
    pub global: Option<WeightSet>,
    /// Where updates are written as they arrive, for a spooled run (`None`: they are
    /// decoded into memory).
    pub spool: Option<Arc<Spool>>,
    /// The sample counts n_k accepted ([`crate::server::samples`]).
    pub samples: SampleRule,
    /// The live run page's state: each client's progress (training, uploaded).
    pub status: Arc<StatusBoard>,
}

/// An update that arrived, decoded; it holds one of the round's decode slots until dropped.
pub struct Arrived {
    /// The client.
    pub id: u32,
    /// Its weights.
    pub update: Update,
    /// Training images behind them.
    pub num_samples: u64,
    /// Mean pretext loss of its last local epoch.
    pub loss: f64,
    /// Pretext accuracy of its last local epoch, when the task has one.
    pub accuracy: Option<f64>,
    /// Application bytes received from it (message and weights).
    pub bytes_received: u64,
    /// Wall seconds of local training it reported.
    pub train_seconds: f64,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

/// An arrived update's weights: in memory, or in a spool file.
pub enum Update {
    /// Decoded into memory.
    Memory(WeightSet),
    /// Written to the run's spool ([`crate::server::spool`]).
    File(SpooledUpdate),
}

/// The answer of a client that did not fail at the transport level.
enum Answer {
    Update(Arrived),
    Failed(String),
    Refused(crate::strategy::validate::Refusal),
}

/// The round of the client `link` reaches, with `config` and the global weights `payload`:
/// its decoded update, or why it is dropped.
pub async fn client_round(
    link: ClientLink,
    config: RoundConfig,
    payload: GlobalPayload,
    shared: Arc<RoundShared>,
) -> Result<Arrived, DropReason> {
    match exchange(link, config, payload, &shared).await {
        Ok(Answer::Update(a)) => Ok(a),
        Ok(Answer::Failed(reason)) => Err(DropReason::ClientFailed(reason)),
        Ok(Answer::Refused(r)) => Err(DropReason::Refused(r)),
        Err(e) => Err(DropReason::Exchange(format!("{e:#}"))),
    }
}

/// Sends the round and the weights (then lets go of them), reads the reply; a decode slot is
/// taken before the update's weights are read.
async fn exchange(
    link: ClientLink,
    config: RoundConfig,
    payload: GlobalPayload,
    shared: &RoundShared,
) -> Result<Answer> {
    let (id, round) = (link.id, shared.round);
    let (mut send, mut recv, header) = link.open().await?;
    shared.sent.add(id, header);
    let msg = ServerMessage::Round {
        round,
        config,
        secagg: None,
    };
    let frame_len = encode_frame(&msg)?.len() as u64;
    write_message(&mut send, &msg).await?;
    let n = payload.send(&mut send).await?;
    drop(payload);
    send.finish().ok();
    shared.sent.add(id, frame_len + n);
    shared.status.client(id, ClientState::Training);
    let reply: ClientMessage = read_message(&mut recv).await?;
    shared.status.heard_from(id);
    let reply_len = encode_frame(&reply)?.len() as u64;
    match reply {
        ClientMessage::Update {
            round: r,
            num_samples,
            loss,
            accuracy,
            train_seconds,
            ..
        } => {
            if r != round {
                bail!("answered round {r} during round {round}");
            }
            // a sample count that cannot be right: the weights are not even read
            let num_samples = match shared.samples.weight(id, num_samples) {
                Ok(n) => n,
                Err(refusal) => return Ok(Answer::Refused(refusal)),
            };
            let permit = shared.slots.clone().acquire_owned().await?;
            let max = shared.max_weights_bytes;
            let (update, wbytes) = match (&shared.global, &shared.spool) {
                (None, None) => {
                    let (w, n) = read_weights(&mut recv, max).await?;
                    (Update::Memory(w), n)
                }
                (None, Some(spool)) => {
                    let (u, n) = spool.receive(&mut recv, max, round, id).await?;
                    (Update::File(u), n)
                }
                (Some(global), _) => {
                    let (bytes, n) = read_weights_payload(&mut recv, max).await?;
                    let w = decode_update(&shared.compression, global, &bytes)
                        .context("bad encoded update")?;
                    (Update::Memory(w), n)
                }
            };
            shared.status.client(id, ClientState::Uploaded);
            Ok(Answer::Update(Arrived {
                id,
                update,
                num_samples,
                loss,
                accuracy,
                bytes_received: reply_len + wbytes,
                train_seconds,
                _permit: permit,
            }))
        }
        ClientMessage::Failed { reason, .. } => Ok(Answer::Failed(reason)),
        other => bail!("protocol error: expected Update, got {other:?}"),
    }
}

/// Bytes sent per client, recorded as soon as they are sent (so a dropped client's
/// traffic is still counted).
#[derive(Default)]
pub struct SentBytes {
    sent: Mutex<BTreeMap<u32, u64>>,
}

impl SentBytes {
    /// The counts. Each critical section is one map update, so a lock poisoned by a panic
    /// elsewhere still guards consistent counts and is taken as it is.
    fn counts(&self) -> MutexGuard<'_, BTreeMap<u32, u64>> {
        self.sent.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts `n` more bytes sent to client `id`.
    pub fn add(&self, id: u32, n: u64) {
        *self.counts().entry(id).or_default() += n;
    }

    /// Bytes sent to all clients.
    pub fn total(&self) -> u64 {
        self.counts().values().sum()
    }
}
