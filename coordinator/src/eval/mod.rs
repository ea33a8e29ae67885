//! Central evaluation of a frozen backbone: [`features`] extracts and caches them,
//! [`probe`] fits the probes on them, [`suite`] runs the evaluation suite of a run (probes,
//! per layer, [`few_labels`]) and writes `eval.json`, and [`knn`] monitors the backbone
//! during training.

pub mod features;
pub mod few_labels;
pub mod knn;
pub mod probe;
pub mod suite;
