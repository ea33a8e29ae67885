//! The QUIC server of a run: the [`registry`] of connected clients, their admission
//! ([`handshake`], with its [`handshake::Authenticator`] seam), the [`rounds`] loop with each
//! client's part of a round (`client_round.rs`; under secure aggregation, `secagg_round.rs`), what the rounds write ([`records`], and
//! [`tensorboard`] event files), their progress on the terminal (`progress.rs`), the server's
//! [`tls`], the admission of enrolled sites ([`sites`], with the [`revocation`] list), the
//! sample counts a round accepts ([`samples`]) and the live run page ([`status`]).

mod client_round;
pub mod handshake;
mod progress;
pub mod records;
pub mod registry;
pub mod revocation;
pub mod rounds;
pub mod samples;
mod secagg_round;
pub mod sites;
pub mod spool;
pub mod status;
pub mod tensorboard;
pub mod tls;

pub use client_round::GlobalPayload;
