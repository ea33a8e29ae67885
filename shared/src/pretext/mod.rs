//! Self-supervised pretext tasks: each turns unlabelled images into a batch with its own
//! targets.

pub mod rotation;

pub use rotation::{rotate_hwc, rotation_batch, RotationMode};
