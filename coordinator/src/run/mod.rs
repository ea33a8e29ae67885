//! Run modes: what the coordinator's subcommands do from a scenario to the files of a run.

pub mod checkpoint_eval;
