//! Loading a run's dataset: which one ([`DatasetKind`], the scenario's `data.dataset`) and its
//! training and test splits, the same on the coordinator and on every client.
//!
//! The folder dataset ([`super::folder`]) has splits only when its folder does: with
//! `<path>/train/` and `<path>/test/` these are its splits; otherwise the whole folder is the
//! training split and it has no test split (a run then evaluates on `[eval] dataset`).

use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::folder::{load_folder, FolderOptions};
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
    /// A folder of PNG/JPEG/WebP/BMP images of any size ([`super::folder`]).
    Folder,
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
    load_split_with(dataset, dir, limit, seed, true, &FolderOptions::default())
}

/// Loads the test split of a run's dataset (see [`load_train_set`]; synthetic: stream
/// [`seed::SYNTHETIC_TEST`], [`synthetic::DEFAULT_TEST_IMAGES`] by default).
pub fn load_test_set(
    dataset: DatasetKind,
    dir: Option<&Path>,
    limit: Option<usize>,
    seed: u64,
) -> Result<ImageDataset> {
    load_split_with(dataset, dir, limit, seed, false, &FolderOptions::default())
}

/// Loads the training (`train`) or test split of a dataset as [`load_train_set`] does, a
/// folder dataset read as `folder` says (its first `limit` images in path order). Errors:
/// those of the dataset's loader; a folder dataset without a folder, or asked for a test
/// split it does not have (module docs); a `limit` above the split's size (named as
/// `data.train_images` / `data.test_images`: never a silent cap).
pub fn load_split_with(
    dataset: DatasetKind,
    dir: Option<&Path>,
    limit: Option<usize>,
    seed: u64,
    train: bool,
    folder: &FolderOptions,
) -> Result<ImageDataset> {
    let (default_n, stream) = if train {
        (synthetic::DEFAULT_TRAIN_IMAGES, seed::SYNTHETIC_TRAIN)
    } else {
        (synthetic::DEFAULT_TEST_IMAGES, seed::SYNTHETIC_TEST)
    };
    let ds = match dataset {
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
        DatasetKind::Folder => {
            let dir = dir.context(
                "the folder dataset needs its folder: data.path (or eval.path) or --data-dir for the coordinator, --data for a client",
            )?;
            let (train_dir, test_dir) = (dir.join("train"), dir.join("test"));
            let split = if train_dir.is_dir() && test_dir.is_dir() {
                if train {
                    train_dir
                } else {
                    test_dir
                }
            } else if train {
                dir.to_path_buf()
            } else {
                anyhow::bail!(
                    "the image folder {} has no test split (make {}/train/ and {}/test/, or evaluate on another dataset with [eval] dataset)",
                    dir.display(),
                    dir.display(),
                    dir.display()
                );
            };
            let mut ds = load_folder(&split, folder)?.dataset;
            if let Some(n) = limit.filter(|&n| n < ds.len()) {
                ds = ds.subset(&(0..n).collect::<Vec<_>>());
            }
            Ok(ds)
        }
    }?;
    // A dataset smaller than asked for is an error, not a silent cap.
    if let Some(n) = limit.filter(|&n| n > ds.len()) {
        let (key, split) = if train {
            ("data.train_images", "training")
        } else {
            ("data.test_images", "test")
        };
        let name = match dataset {
            DatasetKind::Cifar10 => "CIFAR-10",
            DatasetKind::Folder => "image folder's",
            DatasetKind::Synthetic => "synthetic",
        };
        anyhow::bail!(
            "{key} = {n}, but the {name} {split} split at {} holds only {} images: lower {key} or leave it out (all images)",
            dir.map_or_else(|| "?".into(), |d| d.display().to_string()),
            ds.len()
        );
    }
    Ok(ds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limit_above_the_folder_size_is_an_error_naming_the_key_not_a_silent_cap() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..3 {
            image::RgbImage::from_pixel(5, 7, image::Rgb([i * 40, 9, 200]))
                .save(dir.path().join(format!("{i}.png")))
                .unwrap();
        }
        let opts = FolderOptions::default();
        let load = |n| load_split_with(DatasetKind::Folder, Some(dir.path()), n, 0, true, &opts);
        assert_eq!(load(Some(2)).unwrap().len(), 2);
        assert_eq!(load(Some(3)).unwrap().len(), 3);
        assert_eq!(load(None).unwrap().len(), 3);
        let e = format!("{:#}", load(Some(5)).unwrap_err());
        assert!(
            e.starts_with("data.train_images = 5, but the image folder's training split at ")
                && e.contains("holds only 3 images"),
            "{e}"
        );
    }
}
