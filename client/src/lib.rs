//! fedssl client: joins a coordinator over QUIC, receives the global backbone each round,
//! trains it locally with the pretext task on its own unlabelled shard, and returns it.
//!
//! Training runs on tokio's blocking pool (never on the workers that drive QUIC), inside
//! candle's CPU thread pool. The local pretext head stays on the client across rounds; only
//! the backbone travels.
//!
//! Rooms (this file only hands their public names on):
//! - `session`: [`connect`] / [`open`] (or [`client_endpoint`] + [`connect_on`]), hello and welcome, the control stream, [`run_session`]
//!   (and [`run_session_keeping`], what a client keeps from one session to the next:
//!   [`Retained`]);
//! - [`reconnect`]: staying connected, [`run_reconnecting`] (backoff, jitter, which errors
//!   are retried);
//! - `round`: one local round (read the round and the weights, train, reply with the update);
//! - `secagg`: a round under secure aggregation (keys, shares, masked update, unmasking);
//! - `shared_endpoint`: [`SharedEndpoint`], many clients of one process over one endpoint,
//!   a few handshakes at a time;
//! - `state`: the client's state between rounds, by round, in memory or in files;
//! - `behaviour`: [`Behaviour`], honest, a simulated fault (disconnect, stall) or byzantine;
//! - `byzantine`: the corrupted updates of a simulated byzantine client (noise, sign flip);
//! - `data`: [`DataSource`], where the training images come from, and their loading;
//! - `options`: [`ClientOptions`] (how a session runs) and [`SessionReport`] (what it did);
//! - `progress`: the progress bar of a local round;
//! - [`tls`]: the client's TLS configuration (and why the coordinator's TLS refused it);
//! - [`kit`]: a site's startup kit (`--kit`);
//! - [`virtual_slice`]: a process hosting a slice of a simulation's virtual clients
//!   (`--virtual A..B/N`) over one connection;
//! - [`multiplex`]: the slice's virtual clients' sessions over one connection ([`Link`]).

pub mod kit;
pub mod multiplex;
pub mod reconnect;
pub mod tls;
pub mod virtual_slice;

mod behaviour;
mod byzantine;
mod data;
mod options;
mod progress;
mod round;
mod secagg;
mod session;
mod shared_endpoint;
mod state;

pub use behaviour::Behaviour;
pub use byzantine::Attack;
pub use data::{DataSource, SharedPartition};
pub use options::{default_training_slots, ClientOptions, SessionReport};
pub use reconnect::run_reconnecting;
pub use session::{
    client_endpoint, connect, connect_on, open, run_session, run_session_keeping, Link, Retained,
};
pub use shared_endpoint::{SharedEndpoint, HANDSHAKES_AT_ONCE};
