//! fedssl coordinator: holds the global backbone, runs the rounds over QUIC, aggregates
//! client updates (FedAvg), checkpoints, and evaluates the backbone centrally (linear probe).
//! `simulate` runs the coordinator and N clients in one process over loopback QUIC — the same
//! code path as a multi-machine deployment.

pub mod aggregate;
pub mod compare;
pub mod eval;
pub mod evaluate;
pub mod job;
pub mod plot;
pub mod pretext_compare;
pub mod resume;
pub mod server;
pub mod tls;
