//! The wire protocol between coordinator and clients.
//!
//! Transport: QUIC (quinn, TLS 1.3). The client opens one bidirectional *control* stream
//! and sends [`ClientMessage::Hello`]; the coordinator answers [`ServerMessage::Welcome`],
//! [`ServerMessage::Refused`] (for good) or [`ServerMessage::Busy`] (for now). For each
//! round the coordinator opens a fresh bidirectional stream, sends [`ServerMessage::Round`]
//! followed by the global backbone, and the client answers on it with
//! [`ClientMessage::Update`] followed by its trained backbone (or [`ClientMessage::Failed`]).
//! At the end the coordinator sends [`ServerMessage::Finished`] on the control stream and
//! closes the connection.
//!
//! A process hosting many virtual clients (`fedssl-client --virtual`) runs their sessions
//! over one connection: each opens its own control stream with
//! [`ClientMessage::MultiplexedHello`]; every stream the coordinator opens for one of them
//! starts with [`ServerMessage::For`] (the client id it is for) and then goes on as above;
//! each session ends with its control stream (a [`ClientMessage::Leaving`] first saying
//! why, when it fails), and the connection closes once every session on it is over.
//!
//! With secure aggregation ([`SecAggParams`] in the round message; Bonawitz et al. 2017,
//! Figure 4) the round's stream carries, after the round message and the global weights:
//! [`ClientMessage::SecAggKeys`] (the client's public keys) → [`ServerMessage::SecAggKeyList`]
//! (every advertised key) → [`ClientMessage::SecAggShares`] (sealed Shamir shares, one per
//! peer) → [`ServerMessage::SecAggRouted`] (the shares sealed for this client) → the client
//! trains → [`ClientMessage::MaskedUpdate`] followed by a payload of the masked vector
//! (`b/8` little-endian bytes per value, in the length-prefixed, CRC-checked weights framing)
//! → [`ServerMessage::SecAggUnmask`] (whose vectors arrived, whose did not) →
//! [`ClientMessage::SecAggReveal`] (the shares that unmask the sum).
//!
//! Framing:
//! - a control message is `u32` little-endian length + bincode 2 (standard config) bytes,
//!   decoded with an explicit limit of [`MAX_MESSAGE_BYTES`];
//! - a weights payload is `u64` little-endian length + `u32` little-endian CRC-32 (IEEE) +
//!   safetensors bytes; the length is checked against the receiver's limit *before* any
//!   allocation, and the checksum and the safetensors parse before the weights are used.
//!
//! [`PROTOCOL_VERSION`] travels in the first message; a peer with another version is refused
//! with a message that says both versions.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::config::Scenario;
use crate::data::{Cifar100Labels, DatasetKind, LoadOptions, Stl10Split};
use crate::model::ModelConfig;
use crate::partition::PartitionConfig;
use crate::pretext::PretextConfig;
use crate::train::LocalTrainConfig;
use crate::weights::WeightSet;

/// Version of this protocol; bumped on any incompatible change (3: [`RunInfo::partition`]
/// travels as its kind and that kind's settings; 4: [`RoundConfig::proximal_mu`]; 6:
/// [`RunInfo::compression`] (updates as encoded deltas), the folder dataset,
/// [`RunInfo::image_size`], [`ServerMessage::Busy`] and [`RunInfo::feature_skew`]; 7: the
/// CIFAR-100 and STL-10 datasets, [`RunInfo::cifar100_labels`] and [`RunInfo::stl10_split`];
/// 8: secure aggregation, [`SecAggParams`] in [`ServerMessage::Round`] and its messages; 9:
/// the mixed dataset as [`RunInfo::dataset`] and the `domain` partition in
/// [`RunInfo::partition`], which an older client could not decode; 10:
/// [`SecAggParams::neighbours`], SecAgg+'s k-regular masking graph; 11: multiplexed sessions,
/// [`ClientMessage::MultiplexedHello`], [`ClientMessage::Leaving`] and [`ServerMessage::For`]).
pub const PROTOCOL_VERSION: u32 = 11;

/// Largest control message accepted, in bytes (weights travel separately).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// ALPN protocol id negotiated in the TLS handshake. It stays `fedssl/1` across protocol
/// versions, so that a peer of another version still connects and is refused with a message
/// naming both versions instead of failing the TLS handshake.
pub const ALPN: &[u8] = b"fedssl/1";

/// Messages a client sends.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ClientMessage {
    /// First message on the control stream.
    Hello {
        /// Must equal the coordinator's [`PROTOCOL_VERSION`].
        protocol_version: u32,
        /// Free-form name, for logs (e.g. a host name).
        client_name: String,
        /// Which shard of the scenario's partition this client holds (`K/N`), if it uses one.
        shard: Option<(u32, u32)>,
    },
    /// The result of a round, followed on the same stream by a weights payload.
    Update {
        /// The round this update answers.
        round: u32,
        /// Training images of the shard (the FedAvg weight n_k).
        num_samples: u64,
        /// Mean pretext loss over the last local epoch.
        loss: f64,
        /// Pretext accuracy over the last local epoch, in [0, 1]; `None` for tasks without
        /// one (masked image modelling).
        accuracy: Option<f64>,
        /// Wall seconds of local training.
        train_seconds: f64,
    },
    /// Secure aggregation, step 1: the client's public keys for this round (X25519 `C_u`
    /// for sealing shares, `S_u` for masks; [`crate::secagg::masking`]).
    SecAggKeys {
        /// The round.
        round: u32,
        /// `C_u`.
        seal: [u8; 32],
        /// `S_u`.
        mask: [u8; 32],
    },
    /// Secure aggregation, step 2: the client's Shamir shares of `b_u` and `s_u`, one sealed
    /// box per other client of the key list (`(recipient id, ciphertext)`,
    /// [`crate::secagg::shares::seal`]).
    SecAggShares {
        /// The round.
        round: u32,
        /// `(recipient, sealed shares)` for every other client of the key list.
        shares: Vec<(u32, Vec<u8>)>,
    },
    /// Secure aggregation, step 3: the masked update, followed on the same stream by a payload
    /// of the masked vector (`u32` or `u64` little-endian values, as the round's ring).
    MaskedUpdate {
        /// The round.
        round: u32,
        /// Training images of the shard (n_k: the update was multiplied by it in the ring).
        num_samples: u64,
        /// Mean pretext loss over the last local epoch.
        loss: f64,
        /// Pretext accuracy over the last local epoch, `None` for tasks without one.
        accuracy: Option<f64>,
        /// Wall seconds of local training.
        train_seconds: f64,
    },
    /// Secure aggregation, step 4: the shares the coordinator asked for: of `b_u` for each
    /// client `u` whose vector arrived, of `s_v` for each `v` whose vector did not
    /// (`(owner id, 33-byte share)`).
    SecAggReveal {
        /// The round.
        round: u32,
        /// Shares of the self-mask seeds, by owner.
        self_seeds: Vec<(u32, Vec<u8>)>,
        /// Shares of the mask secret keys, by owner.
        mask_keys: Vec<(u32, Vec<u8>)>,
    },
    /// The client could not train this round; no payload follows.
    Failed {
        /// The round.
        round: u32,
        /// Why, in one line.
        reason: String,
    },
    /// First message on the control stream of a *multiplexed* session: one of many virtual
    /// clients sharing one connection (`fedssl-client --virtual`), as [`ClientMessage::Hello`]
    /// otherwise. The coordinator then starts every stream it opens for this client with
    /// [`ServerMessage::For`], and the session ends when its control stream ends, not the
    /// connection. Its own variant, not a field of `Hello`, so that a client of another
    /// version is still refused by version.
    MultiplexedHello {
        /// Must equal the coordinator's [`PROTOCOL_VERSION`].
        protocol_version: u32,
        /// Free-form name, for logs.
        client_name: String,
        /// Which shard of the scenario's partition this client holds (`K/N`), if it uses one.
        shard: Option<(u32, u32)>,
    },
    /// A multiplexed session's goodbye on its control stream, before the stream ends: why the
    /// client leaves (what a plain client says in its connection's close reason).
    Leaving {
        /// Why, in one line (at most 1,000 bytes).
        reason: String,
    },
}

/// What a client needs to know about the run, sent once in [`ServerMessage::Welcome`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunInfo {
    /// Scenario name.
    pub scenario: String,
    /// Scenario seed.
    pub seed: u64,
    /// Dataset of the run (a client with `--shard` partitions this one).
    pub dataset: DatasetKind,
    /// Training images in the run's dataset (synthetic: how many to generate; CIFAR-10: the limit).
    pub train_images: Option<usize>,
    /// Partition for `--shard K/N` clients.
    pub partition: PartitionConfig,
    /// Number of shards (clients) in the scenario.
    pub num_clients: u32,
    /// Backbone family and layout; the client builds the same one.
    pub model: ModelConfig,
    /// The pretext task and its parameters.
    pub pretext: PretextConfig,
    /// `federation.batch_norm`: which BatchNorm tensors the client keeps between rounds.
    pub batch_norm: crate::config::BatchNormPolicy,
    /// `federation.local_update`: how the client merges the global weights with its own.
    pub local_update: crate::config::LocalUpdateConfig,
    /// `federation.compression`: how the client encodes its update ([`crate::encoding`]).
    pub compression: crate::config::CompressionConfig,
    /// `data.image_size`: the side in pixels a client resizes its own image folder (and
    /// STL-10's images) to.
    pub image_size: usize,
    /// `data.cifar100_labels`: the labels a `--shard` client of a CIFAR-100 run partitions by.
    pub cifar100_labels: Cifar100Labels,
    /// `data.stl10_split`: the images a client of an STL-10 run trains on.
    pub stl10_split: Stl10Split,
    /// `[feature_skew]`: the fixed transform of each client's training images.
    pub feature_skew: crate::feature_skew::FeatureSkewConfig,
}

impl RunInfo {
    /// What the coordinator of scenario `sc` tells its clients about the run.
    pub fn of(sc: &Scenario) -> Self {
        Self {
            scenario: sc.name.clone(),
            seed: sc.seed,
            dataset: sc.data.dataset,
            train_images: sc.data.train_images,
            partition: sc.partition.clone(),
            num_clients: sc.federation.clients as u32,
            model: sc.model.clone(),
            pretext: sc.pretext.clone(),
            batch_norm: sc.federation.batch_norm,
            local_update: sc.federation.local_update.clone(),
            compression: sc.federation.compression.clone(),
            image_size: sc.data.image_size,
            cifar100_labels: sc.data.cifar100_labels,
            stl10_split: sc.data.stl10_split,
            feature_skew: sc.feature_skew.clone(),
        }
    }

    /// How a client reads the run's dataset: at `image_size`, with `cifar100_labels` and
    /// `stl10_split`; a folder unlabelled, its bad files an error, through its cache.
    pub fn load_options(&self) -> LoadOptions {
        let mut opts = LoadOptions {
            cifar100_labels: self.cifar100_labels,
            stl10_split: self.stl10_split,
            ..LoadOptions::default()
        };
        opts.folder.image_size = self.image_size;
        opts
    }
}

/// Per-round local training settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RoundConfig {
    /// The scenario's `[train]` with this round's learning rate (the schedule over the rounds
    /// already applied); constant over the round's steps.
    pub train: LocalTrainConfig,
    /// Seed of this client's augmentation and shuffling stream for this round.
    pub seed: u64,
    /// μ of FedProx's proximal term (μ/2)·‖w − w_global‖² over the backbone's learnable
    /// weights, added to the pretext loss ([`crate::train::train_local`]); 0 (every strategy
    /// but FedProx): no term.
    pub proximal_mu: f64,
}

/// A secure-aggregation round's parameters, sent with [`ServerMessage::Round`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SecAggParams {
    /// t, the Shamir threshold.
    pub threshold: u32,
    /// Clipping range c of the quantiser.
    pub clip: f32,
    /// Quantisation range R.
    pub range: u64,
    /// Ring bits b (32 or 64).
    pub bits: u32,
    /// The ids of the round's sampled clients.
    pub clients: Vec<u32>,
    /// The masking graph: 0 for the complete graph (every pair), else k, the neighbours of
    /// each client in SecAgg+'s k-regular graph over the key list
    /// ([`crate::secagg::graph::MaskingGraph`]).
    pub neighbours: u32,
}

impl SecAggParams {
    /// The quantiser these parameters describe.
    pub fn quantizer(&self) -> crate::secagg::quantize::Quantizer {
        crate::secagg::quantize::Quantizer {
            clip: self.clip,
            range: self.range,
            bits: self.bits,
        }
    }
}

/// Messages the coordinator sends.
// `Welcome` carries the run's pretext config (one table per task) and is sent once per
// client, so its size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ServerMessage {
    /// Accepts a client.
    Welcome {
        /// Id the coordinator gives this client (also in `rounds.jsonl`).
        client_id: u32,
        /// The run.
        run: RunInfo,
    },
    /// Refuses a client; the connection closes after it.
    Refused {
        /// Why, in one line.
        reason: String,
    },
    /// Starts a round; a weights payload (the global backbone) follows on the same stream.
    Round {
        /// 0-based round index.
        round: u32,
        /// Local training settings.
        config: RoundConfig,
        /// Secure aggregation's parameters; `None`: a plain round (the update follows the
        /// round's training at once).
        secagg: Option<SecAggParams>,
    },
    /// Secure aggregation: every client's advertised public keys, sorted by id
    /// (`(id, C_u, S_u)`).
    SecAggKeyList {
        /// The round.
        round: u32,
        /// `(id, C_u, S_u)` of every client whose keys arrived.
        keys: Vec<(u32, [u8; 32], [u8; 32])>,
    },
    /// Secure aggregation: the shares sealed for this client by every client whose shares
    /// arrived (`(sender id, ciphertext)`); the senders and this client are the clients the
    /// update is masked against.
    SecAggRouted {
        /// The round.
        round: u32,
        /// `(sender, sealed shares)`.
        shares: Vec<(u32, Vec<u8>)>,
    },
    /// Secure aggregation: whose masked vectors arrived (their self-mask shares are wanted)
    /// and whose did not (their mask-key shares are wanted); a client refuses a request
    /// that names a client in both.
    SecAggUnmask {
        /// The round.
        round: u32,
        /// Clients whose masked vector is in the sum.
        arrived: Vec<u32>,
        /// Clients of the masking whose vector is not.
        dropped: Vec<u32>,
    },
    /// The run is over; the client may exit.
    Finished {
        /// One-line summary for the client's log.
        message: String,
    },
    /// Not admitted now, for a reason that passes (the client's slot is still held by a
    /// connection of it that the coordinator has not yet seen die, or the run is full): a
    /// client that retries (`fedssl-client --retry-for`) tries again later. The connection
    /// closes after it. A [`ServerMessage::Refused`] client must not retry.
    Busy {
        /// Why, in one line.
        reason: String,
    },
    /// First message on every stream the coordinator opens on a multiplexed connection
    /// ([`ClientMessage::MultiplexedHello`]): which of the connection's virtual clients the
    /// stream is for. The stream then goes on as on a connection of its own.
    For {
        /// The client id the stream is for.
        client_id: u32,
    },
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_MESSAGE_BYTES>()
}

/// Encodes a control message into a frame (length prefix included).
pub fn encode_frame<T: Serialize>(msg: &T) -> Result<Vec<u8>> {
    let body = bincode::serde::encode_to_vec(msg, config()).context("cannot encode message")?;
    if body.len() > MAX_MESSAGE_BYTES {
        bail!(
            "message of {} bytes exceeds the {MAX_MESSAGE_BYTES}-byte limit",
            body.len()
        );
    }
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Decodes a control message body (without its length prefix). Errors on garbled bytes,
/// bytes left over, or a body over [`MAX_MESSAGE_BYTES`].
pub fn decode_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T> {
    if body.len() > MAX_MESSAGE_BYTES {
        bail!(
            "message of {} bytes exceeds the {MAX_MESSAGE_BYTES}-byte limit",
            body.len()
        );
    }
    let (msg, used) = bincode::serde::decode_from_slice(body, config())
        .map_err(|e| anyhow::anyhow!("garbled message: {e}"))?;
    if used != body.len() {
        bail!("garbled message: {} trailing bytes", body.len() - used);
    }
    Ok(msg)
}

/// Writes one control message.
pub async fn write_message<W: AsyncWrite + Unpin, T: Serialize>(w: &mut W, msg: &T) -> Result<()> {
    let frame = encode_frame(msg)?;
    w.write_all(&frame)
        .await
        .context("connection lost while sending a message")?;
    Ok(())
}

/// Reads one control message; the length is checked before the body is read.
pub async fn read_message<R: AsyncRead + Unpin, T: serde::de::DeserializeOwned>(
    r: &mut R,
) -> Result<T> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)
        .await
        .context("connection lost while reading a message")?;
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_MESSAGE_BYTES {
        bail!("peer announced a {len}-byte message; the limit is {MAX_MESSAGE_BYTES}");
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)
        .await
        .context("connection lost inside a message")?;
    decode_body(&body)
}

/// Header of a weights payload: `u64` length + `u32` CRC-32 of the safetensors bytes.
pub fn weights_header(bytes: &[u8]) -> [u8; 12] {
    let mut h = [0u8; 12];
    h[..8].copy_from_slice(&(bytes.len() as u64).to_le_bytes());
    h[8..].copy_from_slice(&crc32fast::hash(bytes).to_le_bytes());
    h
}

/// Writes already-serialised safetensors bytes as a weights payload. Returns bytes written.
pub async fn write_weights_bytes<W: AsyncWrite + Unpin>(w: &mut W, bytes: &[u8]) -> Result<u64> {
    w.write_all(&weights_header(bytes))
        .await
        .context("connection lost while sending weights")?;
    w.write_all(bytes)
        .await
        .context("connection lost while sending weights")?;
    Ok(12 + bytes.len() as u64)
}

/// Reads a weights payload's header: its length (at most `max_bytes`, checked before anything
/// else is read) and its CRC-32.
pub async fn read_weights_header<R: AsyncRead + Unpin>(
    r: &mut R,
    max_bytes: u64,
) -> Result<(u64, u32)> {
    let mut h = [0u8; 12];
    r.read_exact(&mut h)
        .await
        .context("connection lost while reading weights")?;
    let len = u64::from_le_bytes(std::array::from_fn(|i| h[i]));
    let crc = u32::from_le_bytes(std::array::from_fn(|i| h[8 + i]));
    if len > max_bytes {
        bail!("peer announced {len} bytes of weights; the limit is {max_bytes}");
    }
    Ok((len, crc))
}

/// Reads a weights payload of at most `max_bytes` and checks its CRC. Returns the payload's
/// bytes (unparsed: an encoded update, [`crate::encoding`]) and the bytes read.
pub async fn read_weights_payload<R: AsyncRead + Unpin>(
    r: &mut R,
    max_bytes: u64,
) -> Result<(Vec<u8>, u64)> {
    let (len, crc) = read_weights_header(r, max_bytes).await?;
    let mut bytes = vec![0u8; len as usize];
    r.read_exact(&mut bytes)
        .await
        .context("connection lost inside the weights")?;
    let got = crc32fast::hash(&bytes);
    if got != crc {
        bail!("weights checksum mismatch (announced {crc:08x}, computed {got:08x})");
    }
    Ok((bytes, 12 + len))
}

/// Reads a weights payload of at most `max_bytes`, parses it as it arrives (tensor by
/// tensor into their `f32` vectors: the payload is never held twice) and checks its CRC.
/// Returns the weights and the bytes read. Nothing is returned unless every check passes.
pub async fn read_weights<R: AsyncRead + Unpin>(
    r: &mut R,
    max_bytes: u64,
) -> Result<(WeightSet, u64)> {
    let (len, crc) = read_weights_header(r, max_bytes).await?;
    let w = crate::weights_stream::read_weight_set(r, len, crc).await?;
    Ok((w, 12 + len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::TensorData;

    fn hello(v: u32) -> ClientMessage {
        ClientMessage::Hello {
            protocol_version: v,
            client_name: "site-a".into(),
            shard: Some((1, 3)),
        }
    }

    #[test]
    fn round_trip_every_message_kind() {
        let msgs = vec![
            hello(PROTOCOL_VERSION),
            ClientMessage::Update {
                round: 3,
                num_samples: 1234,
                loss: 0.5,
                accuracy: Some(0.75),
                train_seconds: 1.5,
            },
            ClientMessage::Failed {
                round: 1,
                reason: "out of memory".into(),
            },
            ClientMessage::SecAggKeys {
                round: 2,
                seal: [1; 32],
                mask: [2; 32],
            },
            ClientMessage::SecAggShares {
                round: 2,
                shares: vec![(0, vec![9; 82]), (4, vec![8; 82])],
            },
            ClientMessage::MaskedUpdate {
                round: 2,
                num_samples: 80,
                loss: 1.25,
                accuracy: None,
                train_seconds: 0.5,
            },
            ClientMessage::SecAggReveal {
                round: 2,
                self_seeds: vec![(0, vec![1; 33])],
                mask_keys: vec![(4, vec![2; 33])],
            },
        ];
        for m in msgs {
            let f = encode_frame(&m).unwrap();
            assert_eq!(
                u32::from_le_bytes(f[..4].try_into().unwrap()) as usize,
                f.len() - 4
            );
            let back: ClientMessage = decode_body(&f[4..]).unwrap();
            assert_eq!(back, m);
        }
        for s in [
            ServerMessage::Finished {
                message: "done".into(),
            },
            ServerMessage::Busy {
                reason: "shard 1 is held".into(),
            },
            ServerMessage::SecAggKeyList {
                round: 2,
                keys: vec![(0, [1; 32], [2; 32]), (4, [3; 32], [4; 32])],
            },
            ServerMessage::SecAggRouted {
                round: 2,
                shares: vec![(4, vec![7; 82])],
            },
            ServerMessage::SecAggUnmask {
                round: 2,
                arrived: vec![0],
                dropped: vec![4],
            },
        ] {
            let back: ServerMessage = decode_body(&encode_frame(&s).unwrap()[4..]).unwrap();
            assert_eq!(back, s);
        }
    }

    #[test]
    fn welcome_with_every_partition_round_trips() {
        for partition in [
            PartitionConfig::Iid(crate::partition::IidConfig {}),
            PartitionConfig::Dirichlet(crate::partition::DirichletConfig {
                alpha: 0.3,
                min_size: None,
                balanced: false,
            }),
        ] {
            let m = ServerMessage::Welcome {
                client_id: 2,
                run: RunInfo {
                    scenario: "s".into(),
                    seed: 9,
                    dataset: DatasetKind::Stl10,
                    train_images: Some(100),
                    partition,
                    num_clients: 4,
                    model: ModelConfig::default(),
                    pretext: PretextConfig::default(),
                    batch_norm: crate::config::BatchNormPolicy::Local,
                    local_update: crate::config::LocalUpdateConfig::FedEma(
                        crate::config::FedEmaConfig { tau: 0.5 },
                    ),
                    compression: crate::config::CompressionConfig::TopK(
                        crate::config::compression::TopKConfig {
                            fraction: 0.25,
                            error_feedback: false,
                        },
                    ),
                    image_size: 48,
                    cifar100_labels: Cifar100Labels::Coarse,
                    stl10_split: Stl10Split::Unlabeled,
                    feature_skew: crate::feature_skew::FeatureSkewConfig {
                        noise: 0.1,
                        rotation: crate::feature_skew::RotationSkew::QuarterTurns,
                        ..Default::default()
                    },
                },
            };
            let back: ServerMessage = decode_body(&encode_frame(&m).unwrap()[4..]).unwrap();
            assert_eq!(back, m);
            let ServerMessage::Welcome { run, .. } = back else {
                unreachable!()
            };
            let opts = run.load_options();
            assert_eq!(opts.folder.image_size, 48);
            assert_eq!(opts.cifar100_labels, Cifar100Labels::Coarse);
            assert_eq!(opts.stl10_split, Stl10Split::Unlabeled);
        }
        let r = ServerMessage::Round {
            secagg: Some(SecAggParams {
                threshold: 3,
                clip: 8.0,
                range: 1 << 22,
                bits: 64,
                clients: vec![0, 2, 5],
                neighbours: 4,
            }),
            round: 1,
            config: RoundConfig {
                train: LocalTrainConfig {
                    local_epochs: 2,
                    batch_size: 32,
                    lr: 0.1,
                    momentum: 0.9,
                    weight_decay: 5e-4,
                },
                seed: 77,
                proximal_mu: 0.01,
            },
        };
        let back: ServerMessage = decode_body(&encode_frame(&r).unwrap()[4..]).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn garbled_and_trailing_bytes_are_refused() {
        let f = encode_frame(&hello(1)).unwrap();
        let mut body = f[4..].to_vec();
        body[0] = 0xff; // not a variant index
        assert!(decode_body::<ClientMessage>(&body).is_err());
        let mut long = f[4..].to_vec();
        long.push(0);
        assert!(decode_body::<ClientMessage>(&long)
            .unwrap_err()
            .to_string()
            .contains("trailing"));
        assert!(decode_body::<ClientMessage>(&[]).is_err());
    }

    #[tokio::test]
    async fn oversized_frame_is_refused_before_reading_it() {
        let mut frame = ((MAX_MESSAGE_BYTES + 1) as u32).to_le_bytes().to_vec();
        frame.extend_from_slice(&[0u8; 16]);
        let e = read_message::<_, ClientMessage>(&mut frame.as_slice())
            .await
            .unwrap_err();
        assert!(e.to_string().contains("limit"), "{e}");
        // An oversized string inside a message is refused by the decoder's limit too.
        let big = ClientMessage::Failed {
            round: 0,
            reason: "x".repeat(MAX_MESSAGE_BYTES + 10),
        };
        assert!(encode_frame(&big).is_err());
    }

    #[tokio::test]
    async fn wrong_version_decodes_so_it_can_be_refused() {
        let f = encode_frame(&hello(PROTOCOL_VERSION + 1)).unwrap();
        let m: ClientMessage = read_message(&mut f.as_slice()).await.unwrap();
        assert!(
            matches!(m, ClientMessage::Hello { protocol_version, .. } if protocol_version == PROTOCOL_VERSION + 1)
        );
    }

    #[tokio::test]
    async fn weights_payload_round_trip_and_checksum() {
        let mut w = WeightSet::default();
        w.tensors.insert(
            "x".into(),
            TensorData {
                shape: vec![3],
                data: vec![1.0, -2.0, 3.5],
            },
        );
        let bytes = w.to_safetensors().unwrap();
        let mut buf = Vec::new();
        let n = write_weights_bytes(&mut buf, &bytes).await.unwrap();
        assert_eq!(n as usize, buf.len());
        let (back, m) = read_weights(&mut buf.as_slice(), 1 << 20).await.unwrap();
        assert_eq!(back, w);
        assert_eq!(m, n);
        // one flipped bit in the body → checksum error
        let mut bad = buf.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        let e = read_weights(&mut bad.as_slice(), 1 << 20)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("checksum"), "{e}");
        // over the receiver's limit → refused
        let e = read_weights(&mut buf.as_slice(), 8).await.unwrap_err();
        assert!(e.to_string().contains("limit"), "{e}");
    }
}
