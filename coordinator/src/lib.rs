//! fedssl coordinator: holds the global backbone, runs the rounds over QUIC, aggregates
//! client updates (FedAvg), checkpoints, and evaluates the backbone centrally (linear probe).
//! `simulate` runs the coordinator and N clients in one process over loopback QUIC — the same
//! code path as a multi-machine deployment.

pub mod eval;
pub mod experiments;
pub mod run;
pub mod server;
pub mod strategy;

/// The paths `coordinator/tests` use, as they were before the restructure of issue 11; the
/// lead re-points the tests crate and deletes these.
#[doc(hidden)]
pub mod pretext_compare {
    pub use crate::experiments::pretext_compare::*;
}

#[doc(hidden)]
pub mod evaluate {
    pub use crate::run::checkpoint_eval::{eval_checkpoint, run_scenario_of};
}

#[doc(hidden)]
pub mod tls {
    pub use crate::server::tls::*;

    /// [`crate::server::tls::server_config`] without client authentication (the old
    /// signature).
    pub fn server_config(
        id: &ServerIdentity,
        idle_timeout: std::time::Duration,
    ) -> anyhow::Result<quinn::ServerConfig> {
        crate::server::tls::server_config(id, idle_timeout, None)
    }
}

#[doc(hidden)]
pub mod job {
    pub use crate::run::job::{run_job, Job, Mode};
    pub use crate::run::outputs::Summary;
}
