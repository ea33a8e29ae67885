//! fedssl-shared: everything the coordinator and the clients both need. No networking loops
//! live here.
//!
//! - [`config`]: the scenario schema (one file per section), loading, validation and `--set`;
//!   [`tagged`]: how a pluggable part's `kind = "…"` table is read, written and sent.
//! - [`data`]: datasets and their loaders; [`partition`]: the [`partition::Partitioner`]s that
//!   split a dataset among clients; [`feature_skew`]: fixed per-client image transforms.
//! - [`image`]: geometric operations on one image; [`augment`]: random augmentations.
//! - [`model`]: backbones; [`ops`]: their CPU kernels; [`pretext`]: the self-supervised tasks
//!   and their losses.
//! - [`train`]: local training (its hyper-parameters, the client's model, the loop);
//!   [`optim`]: SGD with momentum and the learning-rate schedules.
//! - [`encoding`]: how a client's update travels (`[federation.compression]`).
//! - [`weights`]: named weights and safetensors (`weights_stream`: read from a stream tensor by
//!   tensor); [`protocol`]: the wire messages and framing.
//! - [`secagg`]: secure aggregation's quantisation, masks, shares and unmasking.
//! - [`seed`]: every random stream of a run; [`device`]: device choice; [`cli`]: what both
//!   binaries do around their command.

pub mod augment;
pub mod cli;
pub mod config;
pub mod data;
pub mod device;
pub mod encoding;
pub mod feature_skew;
pub mod image;
pub mod model;
pub mod ops;
pub mod optim;
pub mod partition;
pub mod pretext;
pub mod protocol;
pub mod quic;
pub mod secagg;
pub mod seed;
pub mod tagged;
pub mod train;
pub mod weights;
pub mod weights_file;
mod weights_stream;
