//! fedssl coordinator: holds the global backbone, runs the rounds over QUIC, aggregates the
//! clients' updates, checkpoints, and evaluates the backbone centrally. `simulate` runs the
//! coordinator and N clients in one process over loopback QUIC — the same code path as a
//! multi-machine deployment.
//!
//! Rooms, from the top: [`run`] (the run modes: a `simulate`/`serve` job, the `eval`
//! subcommand, resume, the run folder's files), [`experiments`] (sweep and its presets
//! compare and compare-pretexts, the runner they share, tables, charts), [`server`] (registry, handshake and its `Authenticator`, the round loop,
//! records, TLS), [`provision`] (the CA and the sites' startup kits), [`strategy`] (the `Strategy` trait and FedAvg), [`eval`] (features, probes,
//! the evaluation suite, the k-NN monitor). A new aggregation strategy is a file in
//! `strategy/`; a new way to admit clients an `Authenticator` in `server/handshake.rs`'s
//! terms; a new evaluation a file in `eval/`.

pub mod eval;
pub mod experiments;
pub mod privacy;
pub mod provision;
pub mod run;
pub mod server;
pub mod strategy;
