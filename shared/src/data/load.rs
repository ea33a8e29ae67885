//! Loading a run's dataset: which one ([`DatasetKind`], the scenario's `data.dataset`) and its
//! training and test splits, the same on the coordinator and on every client.

use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::{cifar10, synthetic, ImageDataset};
use crate::seed;

/// Which dataset a run uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DatasetKind {
    /// The built-in procedural 32×32 dataset (no download; see [`synthetic`]).
    Synthetic,
    /// CIFAR-10, binary version (`cifar-10-batches-bin`).
    Cifar10,
}

/// Loads the training split of a run's dataset: synthetic images are generated from the
/// run's seed (stream [`seed::SYNTHETIC_TRAIN`], so every client and the coordinator get the
/// same images; `limit` of them, [`synthetic::DEFAULT_TRAIN_IMAGES`] when `None`); CIFAR-10
/// is read from `dir` (the first `limit` images; errors say which file is missing or broken,
/// and that `--data-dir` sets it).
pub fn load_train_set(
    dataset: DatasetKind,
    dir: Option<&Path>,
    limit: Option<usize>,
    seed: u64,
) -> Result<ImageDataset> {
    load_split(dataset, dir, limit, seed, true)
}

/// Loads the test split of a run's dataset (see [`load_train_set`]; synthetic: stream
/// [`seed::SYNTHETIC_TEST`], [`synthetic::DEFAULT_TEST_IMAGES`] by default).
pub fn load_test_set(
    dataset: DatasetKind,
    dir: Option<&Path>,
    limit: Option<usize>,
    seed: u64,
) -> Result<ImageDataset> {
    load_split(dataset, dir, limit, seed, false)
}

fn load_split(
    dataset: DatasetKind,
    dir: Option<&Path>,
    limit: Option<usize>,
    seed: u64,
    train: bool,
) -> Result<ImageDataset> {
    let (default_n, stream) = if train {
        (synthetic::DEFAULT_TRAIN_IMAGES, seed::SYNTHETIC_TRAIN)
    } else {
        (synthetic::DEFAULT_TEST_IMAGES, seed::SYNTHETIC_TEST)
    };
    match dataset {
        DatasetKind::Synthetic => Ok(synthetic::generate(
            limit.unwrap_or(default_n),
            seed::derive(seed, stream, 0),
        )),
        DatasetKind::Cifar10 => {
            let dir = dir.context(
                "the CIFAR-10 dataset needs a folder: data.path or --data-dir for the coordinator, --data for a client",
            )?;
            if train {
                cifar10::load_train(dir, limit)
            } else {
                cifar10::load_test(dir, limit)
            }
        }
    }
}
