//! fedssl coordinator: holds the global backbone, runs the rounds over QUIC, aggregates the
//! clients' updates, checkpoints, and evaluates the backbone centrally. `simulate` runs the
//! coordinator and N clients in one process over loopback QUIC — the same code path as a
//! multi-machine deployment.
//!
//! Rooms, from the top: [`run`] (the run modes: a `simulate`/`serve` job, the `eval`
//! subcommand, resume, the run folder's files), [`experiments`] (compare, compare-pretexts,
//! tables, charts), [`server`] (registry, handshake and its `Authenticator`, the round loop,
//! records, TLS), [`strategy`] (the `Strategy` trait and FedAvg), [`eval`] (features, probes,
//! the evaluation suite, the k-NN monitor). A new aggregation strategy is a file in
//! `strategy/`; a new way to admit clients an `Authenticator` in `server/handshake.rs`'s
//! terms; a new evaluation a file in `eval/`.

pub mod eval;
pub mod experiments;
pub mod run;
pub mod server;
pub mod strategy;

// Old paths (before issue 11's restructure) that `coordinator/tests` and `client/tests` still
// use: hidden shims, to be deleted once the lead has re-pointed the top-level tests crate
// (see /work/notes/renames-coord.txt).

/// Old path of [`experiments::pretext_compare`].
#[doc(hidden)]
pub mod pretext_compare {
    pub use crate::experiments::pretext_compare::*;
}

/// Old path of the `eval` subcommand's functions, now in [`run::checkpoint_eval`].
#[doc(hidden)]
pub mod evaluate {
    pub use crate::run::checkpoint_eval::{eval_checkpoint, run_scenario_of};
}

/// Old path of [`server::tls`], with the old two-argument `server_config`.
#[doc(hidden)]
pub mod tls {
    pub use crate::server::tls::*;

    /// [`crate::server::tls::server_config`] without client authentication.
    pub fn server_config(
        id: &ServerIdentity,
        idle_timeout: std::time::Duration,
    ) -> anyhow::Result<quinn::ServerConfig> {
        crate::server::tls::server_config(id, idle_timeout, None)
    }
}

/// Old path of [`run::job`] and [`run::outputs::Summary`].
#[doc(hidden)]
pub mod job {
    pub use crate::run::job::{run_job, Job, Mode};
    pub use crate::run::outputs::Summary;
}
