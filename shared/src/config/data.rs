//! `[data]`: which images a run uses and how many.

use std::path::PathBuf;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use crate::data::{DatasetKind, FolderLabels, FolderOptions, IMAGE_SIDE, MAX_IMAGE_SIDE};

/// Smallest `data.image_size` accepted (pixels per side): below it the backbones' strided
/// stages have nothing left to see.
pub const MIN_IMAGE_SIDE: usize = 8;

/// Data section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// `"synthetic"` (default), `"cifar10"` or `"folder"` (a folder of PNG/JPEG/WebP/BMP
    /// images, [`crate::data::folder`]).
    pub dataset: DatasetKind,
    /// CIFAR-10 folder, or the image folder (relative to the scenario file, or overridden by
    /// `--data-dir`).
    pub path: Option<PathBuf>,
    /// Use only the first N training images (CIFAR-10), or generate N (synthetic). `None`: all (CIFAR-10) / 10,000 (synthetic).
    pub train_images: Option<usize>,
    /// Use only the first N test images (CIFAR-10), or generate N (synthetic). `None`: all / 2,000.
    pub test_images: Option<usize>,
    /// Side in pixels of the (square) images the backbone sees (default 32, in
    /// 8..=1024): the folder dataset resizes its images' shorter side to it and
    /// centre-crops; CIFAR-10 and the synthetic set are 32×32 only.
    pub image_size: usize,
    /// Folder dataset: `"none"` (default; unlabelled) or `"subfolders"` (`DIR/<class>/…`,
    /// for a labelled probe set).
    pub labels: FolderLabels,
    /// Folder dataset: leave out (and count) files that cannot be decoded instead of failing
    /// (default false).
    pub skip_bad_images: bool,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            dataset: DatasetKind::Synthetic,
            path: None,
            train_images: None,
            test_images: None,
            image_size: IMAGE_SIDE,
            labels: FolderLabels::None,
            skip_bad_images: false,
        }
    }
}

impl DataConfig {
    /// Checks the image counts and size; the message names the `data.*` keys.
    pub fn validate(&self) -> Result<()> {
        if self.train_images == Some(0) || self.test_images == Some(0) {
            bail!("data.train_images and data.test_images must be at least 1 (or left out)");
        }
        if !(MIN_IMAGE_SIDE..=MAX_IMAGE_SIDE).contains(&self.image_size) {
            bail!(
                "data.image_size must be in {MIN_IMAGE_SIDE}..={MAX_IMAGE_SIDE} pixels, got {}",
                self.image_size
            );
        }
        if self.image_size != IMAGE_SIDE && self.dataset != DatasetKind::Folder {
            bail!(
                "data.image_size = {}: the {:?} images are {IMAGE_SIDE}×{IMAGE_SIDE}; only the folder dataset is resized",
                self.image_size,
                self.dataset
            );
        }
        Ok(())
    }

    /// How the folder dataset of this section is read.
    pub fn folder_options(&self) -> FolderOptions {
        FolderOptions {
            image_size: self.image_size,
            labels: self.labels,
            skip_bad_images: self.skip_bad_images,
            cache: true,
        }
    }
}
