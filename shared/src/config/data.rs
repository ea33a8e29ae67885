//! `[data]`: which images a run uses and how many.

use std::path::PathBuf;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use crate::data::DatasetKind;

/// Data section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// `"synthetic"` (default) or `"cifar10"`.
    pub dataset: DatasetKind,
    /// CIFAR-10 folder (relative to the scenario file, or overridden by `--data-dir`).
    pub path: Option<PathBuf>,
    /// Use only the first N training images (CIFAR-10), or generate N (synthetic). `None`: all (CIFAR-10) / 10,000 (synthetic).
    pub train_images: Option<usize>,
    /// Use only the first N test images (CIFAR-10), or generate N (synthetic). `None`: all / 2,000.
    pub test_images: Option<usize>,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            dataset: DatasetKind::Synthetic,
            path: None,
            train_images: None,
            test_images: None,
        }
    }
}

impl DataConfig {
    /// Checks the image counts; the message names the `data.*` keys.
    pub fn validate(&self) -> Result<()> {
        if self.train_images == Some(0) || self.test_images == Some(0) {
            bail!("data.train_images and data.test_images must be at least 1 (or left out)");
        }
        Ok(())
    }
}
