//! Probes on frozen features, all on [`crate::eval::features::HostFeatures`]: the
//! [`linear`] probe (the suite's headline number), the [`mlp`] probe, their common
//! [`scoring`], and the [`selection`] of their L2 weight decay on a validation split.

pub mod linear;
pub mod mlp;
pub mod scoring;
pub mod selection;

#[cfg(test)]
mod fixtures;
