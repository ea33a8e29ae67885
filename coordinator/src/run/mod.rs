//! Run modes: what the coordinator's subcommands do, from a scenario to the files of a run.
//! [`job`] is one whole `simulate` or `serve` run (its clients from [`simulate`] or
//! [`serve`], its folder from [`outputs`], continued by [`resume`]); [`checkpoint_eval`] is
//! the `eval` subcommand; [`features_export`] the `features` subcommand; [`split`] the
//! `partition` subcommand; [`data`] loads a run's datasets.

pub mod checkpoint_eval;
pub mod data;
pub mod features_export;
pub mod job;
pub mod outputs;
pub mod resume;
pub mod serve;
pub mod simulate;
pub mod split;
