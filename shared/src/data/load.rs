//! Loading a run's dataset: which one ([`DatasetKind`], the scenario's `data.dataset`), how
//! it is read ([`LoadOptions`], the rest of `[data]`) and its splits ([`Split`]), the same on
//! the coordinator and on every client.
//!
//! A dataset has three splits: the images the clients train on ([`Split::Train`]), the
//! labelled images the probes fit on ([`Split::Labelled`]) and the test images
//! ([`Split::Test`]). For every dataset but STL-10 the first two are the same, its training
//! split; STL-10's clients train on `data.stl10_split` (by default its unlabelled images too)
//! and its probes on its 5,000 labelled training images ([`train_split_is_labelled`] says
//! which case a run is in).
//!
//! The folder dataset ([`super::folder`]) has splits only when its folder does: with
//! `<path>/train/` and `<path>/test/` these are its splits; otherwise the whole folder is the
//! training split and it has no test split (a run then evaluates on `[eval] dataset`).

use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::cifar100::Cifar100Labels;
use super::folder::{load_folder, FolderOptions};
use super::mixed::{self, MixedSource};
use super::stl10::Stl10Split;
use super::{cifar10, cifar100, stl10, synthetic, ImageDataset};
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
    /// CIFAR-100, binary version (`cifar-100-binary`; fine or coarse labels, [`cifar100`]).
    Cifar100,
    /// STL-10, binary version (`stl10_binary`; 96×96 images resized to `data.image_size`,
    /// [`stl10`]).
    Stl10,
    /// Several of the others concatenated, each image's source its domain (`data.sources`,
    /// [`mixed`]): the data of a domain-skew run.
    Mixed,
}

impl DatasetKind {
    /// The dataset's name in messages (`"CIFAR-100"`).
    pub fn display_name(self) -> &'static str {
        match self {
            DatasetKind::Synthetic => "synthetic",
            DatasetKind::Cifar10 => "CIFAR-10",
            DatasetKind::Folder => "image folder",
            DatasetKind::Cifar100 => "CIFAR-100",
            DatasetKind::Stl10 => "STL-10",
            DatasetKind::Mixed => "mixed",
        }
    }

    /// The dataset's key in a scenario (`"cifar10"`, `"stl10"`, …).
    pub fn key(self) -> &'static str {
        match self {
            DatasetKind::Synthetic => "synthetic",
            DatasetKind::Cifar10 => "cifar10",
            DatasetKind::Folder => "folder",
            DatasetKind::Cifar100 => "cifar100",
            DatasetKind::Stl10 => "stl10",
            DatasetKind::Mixed => "mixed",
        }
    }

    /// True for the datasets whose images are resized to `data.image_size` (the folder and
    /// STL-10), and for the mixed dataset, whose sources are checked one by one
    /// ([`mixed::check_sources`]); the others are 32×32 only.
    pub fn resizes(self) -> bool {
        matches!(
            self,
            DatasetKind::Folder | DatasetKind::Stl10 | DatasetKind::Mixed
        )
    }
}

/// Which split of a dataset to load (module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    /// The images the clients train on: the training split (STL-10: `data.stl10_split`).
    Train,
    /// The labelled images the probes fit on: the training split (STL-10: its 5,000
    /// labelled training images).
    Labelled,
    /// The test split.
    Test,
}

/// How a run's dataset is read, beyond its kind, folder and limit: the rest of `[data]`
/// ([`crate::config::DataConfig::load_options`]). Each dataset reads only its own fields.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// The folder dataset's options. Its `image_size` is `data.image_size`, which STL-10's
    /// images are resized to as well.
    pub folder: FolderOptions,
    /// CIFAR-100: fine (100) or coarse (20) labels (`data.cifar100_labels`).
    pub cifar100_labels: Cifar100Labels,
    /// STL-10: the images the clients train on (`data.stl10_split`).
    pub stl10_split: Stl10Split,
    /// The mixed dataset's sources (`data.sources`; empty for the other datasets).
    pub sources: Vec<MixedSource>,
}

/// True when the images the clients train on ([`Split::Train`]) are the probes' labelled
/// set ([`Split::Labelled`]): every dataset but STL-10 with a `data.stl10_split` other than
/// `"train"`.
pub fn train_split_is_labelled(dataset: DatasetKind, opts: &LoadOptions) -> bool {
    dataset != DatasetKind::Stl10 || opts.stl10_split.is_labelled()
}

/// Loads the training split of a run's dataset with the default [`LoadOptions`]: synthetic
/// images are generated from the run's seed (stream [`seed::SYNTHETIC_TRAIN`], so every
/// client and the coordinator get the same images; `limit` of them,
/// [`synthetic::DEFAULT_TRAIN_IMAGES`] when `None`); a release (CIFAR-10, CIFAR-100, STL-10)
/// is read from `dir` (the first `limit` images; errors say which file is missing or broken,
/// and that `--data-dir` sets it).
pub fn load_train_set(
    dataset: DatasetKind,
    dir: Option<&Path>,
    limit: Option<usize>,
    seed: u64,
) -> Result<ImageDataset> {
    load_split_with(
        dataset,
        dir,
        limit,
        seed,
        Split::Train,
        &LoadOptions::default(),
    )
}

/// Loads the test split of a run's dataset (see [`load_train_set`]; synthetic: stream
/// [`seed::SYNTHETIC_TEST`], [`synthetic::DEFAULT_TEST_IMAGES`] by default).
pub fn load_test_set(
    dataset: DatasetKind,
    dir: Option<&Path>,
    limit: Option<usize>,
    seed: u64,
) -> Result<ImageDataset> {
    load_split_with(
        dataset,
        dir,
        limit,
        seed,
        Split::Test,
        &LoadOptions::default(),
    )
}

/// Loads `split` of a dataset as [`load_train_set`] does, read as `opts` says: a folder
/// dataset as `opts.folder` says (its first `limit` images in path order), CIFAR-100 with
/// `opts.cifar100_labels`, STL-10 with `opts.stl10_split` (for [`Split::Train`]) at
/// `opts.folder.image_size` pixels, the mixed dataset as `opts.sources` says (`dir`: the
/// folder their relative paths start from; [`mixed::load_mixed`]). Images are `u8`
/// `(N, H, W, 3)`.
///
/// Errors: those of the dataset's loader; a dataset that needs a folder without one; a folder
/// dataset asked for a test split it does not have (module docs); a `limit` above the split's
/// size (named as `data.train_images` / `data.test_images`: never a silent cap).
pub fn load_split_with(
    dataset: DatasetKind,
    dir: Option<&Path>,
    limit: Option<usize>,
    seed: u64,
    split: Split,
    opts: &LoadOptions,
) -> Result<ImageDataset> {
    let ds = load_split_capped(dataset, dir, limit, seed, split, opts)?;
    let key = match split {
        Split::Train | Split::Labelled => "data.train_images",
        Split::Test => "data.test_images",
    };
    check_count(&ds, limit, key, dataset, dir, split)?;
    Ok(ds)
}

/// [`load_split_with`] without its last check: a split smaller than `limit` comes back
/// smaller (the caller checks with [`check_count`], naming its own key).
pub fn load_split_capped(
    dataset: DatasetKind,
    dir: Option<&Path>,
    limit: Option<usize>,
    seed: u64,
    split: Split,
    opts: &LoadOptions,
) -> Result<ImageDataset> {
    let train = split != Split::Test;
    let (default_n, stream) = if train {
        (synthetic::DEFAULT_TRAIN_IMAGES, seed::SYNTHETIC_TRAIN)
    } else {
        (synthetic::DEFAULT_TEST_IMAGES, seed::SYNTHETIC_TEST)
    };
    let needs_dir = || {
        dir.with_context(|| {
            format!(
                "the {} dataset needs a folder: data.path or --data-dir for the coordinator, --data for a client",
                dataset.display_name()
            )
        })
    };
    let ds = match dataset {
        DatasetKind::Synthetic => Ok(synthetic::generate(
            limit.unwrap_or(default_n),
            seed::derive(seed, stream, 0),
        )),
        DatasetKind::Cifar10 => {
            let dir = needs_dir()?;
            if train {
                cifar10::load_train(dir, limit)
            } else {
                cifar10::load_test(dir, limit)
            }
        }
        DatasetKind::Cifar100 => {
            let dir = needs_dir()?;
            if train {
                cifar100::load_train(dir, limit, opts.cifar100_labels)
            } else {
                cifar100::load_test(dir, limit, opts.cifar100_labels)
            }
        }
        DatasetKind::Stl10 => {
            let dir = needs_dir()?;
            let side = opts.folder.image_size;
            match split {
                Split::Train => stl10::load_train(dir, opts.stl10_split, limit, side),
                Split::Labelled => stl10::load_labelled(dir, limit, side),
                Split::Test => stl10::load_test(dir, limit, side),
            }
        }
        DatasetKind::Mixed => mixed::load_mixed(dir, seed, split, opts),
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
            let mut ds = load_folder(&split, &opts.folder)?.dataset;
            if let Some(n) = limit.filter(|&n| n < ds.len()) {
                ds = ds.subset(&(0..n).collect::<Vec<_>>());
            }
            Ok(ds)
        }
    }?;
    Ok(ds)
}

/// A dataset smaller than asked for is an error, not a silent cap: errors when `ds` (split
/// `split` of `dataset` at `dir`) holds fewer than `limit` images, naming `key` (the setting
/// that asked for them, e.g. `data.train_images`).
pub fn check_count(
    ds: &ImageDataset,
    limit: Option<usize>,
    key: &str,
    dataset: DatasetKind,
    dir: Option<&Path>,
    split: Split,
) -> Result<()> {
    if let Some(n) = limit.filter(|&n| n > ds.len()) {
        let which = match split {
            Split::Train => "training",
            Split::Labelled => "labelled training",
            Split::Test => "test",
        };
        let name = match dataset {
            DatasetKind::Folder => "image folder's".to_string(),
            other => other.display_name().to_string(),
        };
        anyhow::bail!(
            "{key} = {n}, but the {name} {which} split at {} holds only {} images: lower {key} or leave it out (all images)",
            dir.map_or_else(|| "?".into(), |d| d.display().to_string()),
            ds.len()
        );
    }
    Ok(())
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
        let opts = LoadOptions::default();
        let load = |n| {
            load_split_with(
                DatasetKind::Folder,
                Some(dir.path()),
                n,
                0,
                Split::Train,
                &opts,
            )
        };
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

    /// `stl10_binary/` in `dir` with `n` train images (labels 1, 2, …), `n + 1` test images
    /// and `2n` unlabelled ones; every pixel of image `i` of a file is `(base + i, 0, 0)`, with
    /// base 0 (train), 100 (test), 200 (unlabelled).
    fn stl10(dir: &Path, n: u8) {
        let inner = dir.join("stl10_binary");
        std::fs::create_dir_all(&inner).unwrap();
        let x = |base: u8, k: u8| {
            (0..k)
                .flat_map(|i| {
                    let mut img = vec![0u8; stl10::IMAGE_BYTES];
                    img[..stl10::PLANE_BYTES].fill(base + i);
                    img
                })
                .collect::<Vec<u8>>()
        };
        std::fs::write(inner.join("train_X.bin"), x(0, n)).unwrap();
        std::fs::write(inner.join("train_y.bin"), (1..=n).collect::<Vec<u8>>()).unwrap();
        std::fs::write(inner.join("test_X.bin"), x(100, n + 1)).unwrap();
        std::fs::write(inner.join("test_y.bin"), vec![10u8; n as usize + 1]).unwrap();
        std::fs::write(inner.join("unlabeled_X.bin"), x(200, 2 * n)).unwrap();
    }

    #[test]
    fn stl10_splits_follow_the_options() {
        let dir = tempfile::tempdir().unwrap();
        stl10(dir.path(), 3);
        let load = |split, limit, opts: &LoadOptions| {
            load_split_with(DatasetKind::Stl10, Some(dir.path()), limit, 0, split, opts)
        };
        let red = |ds: &ImageDataset| (0..ds.len()).map(|i| ds.image(i)[0]).collect::<Vec<_>>();
        let mut opts = LoadOptions::default();
        assert!(!train_split_is_labelled(DatasetKind::Stl10, &opts));
        // the default: train then unlabelled, no labels, resized to 32
        let train = load(Split::Train, None, &opts).unwrap();
        assert_eq!((train.len(), train.height), (9, 32));
        assert!(train.labels.is_empty());
        assert_eq!(red(&train), vec![0, 1, 2, 200, 201, 202, 203, 204, 205]);
        let labelled = load(Split::Labelled, None, &opts).unwrap();
        assert_eq!(labelled.labels, vec![0, 1, 2]);
        assert_eq!(red(&labelled), vec![0, 1, 2]);
        let test = load(Split::Test, Some(2), &opts).unwrap();
        assert_eq!(
            (test.labels.clone(), red(&test)),
            (vec![9, 9], vec![100, 101])
        );
        // unlabeled only, at 96 pixels; train only, labelled
        opts.stl10_split = Stl10Split::Unlabeled;
        opts.folder.image_size = 96;
        let u = load(Split::Train, Some(4), &opts).unwrap();
        assert_eq!((u.height, red(&u)), (96, vec![200, 201, 202, 203]));
        opts.stl10_split = Stl10Split::Train;
        assert!(train_split_is_labelled(DatasetKind::Stl10, &opts));
        let t = load(Split::Train, None, &opts).unwrap();
        assert_eq!(t.labels, vec![0, 1, 2]);
        // more than the split holds: the key, the dataset and the split are named
        let e = format!("{:#}", load(Split::Labelled, Some(4), &opts).unwrap_err());
        assert!(
            e.starts_with("data.train_images = 4, but the STL-10 labelled training split at ")
                && e.contains("holds only 3 images"),
            "{e}"
        );
        let e = format!("{:#}", load(Split::Test, Some(5), &opts).unwrap_err());
        assert!(
            e.starts_with("data.test_images = 5, but the STL-10 test split"),
            "{e}"
        );
        // the other datasets have one training split
        assert!(train_split_is_labelled(
            DatasetKind::Cifar100,
            &LoadOptions::default()
        ));
        assert!(train_split_is_labelled(
            DatasetKind::Folder,
            &LoadOptions::default()
        ));
    }

    #[test]
    fn cifar100_labels_follow_the_options_and_a_release_needs_its_folder() {
        let dir = tempfile::tempdir().unwrap();
        let mut rec = vec![0u8; cifar100::RECORD_BYTES];
        rec[0] = 11;
        rec[1] = 77;
        std::fs::write(dir.path().join("test.bin"), rec.repeat(2)).unwrap();
        let mut opts = LoadOptions::default();
        let load = |opts: &LoadOptions| {
            load_split_with(
                DatasetKind::Cifar100,
                Some(dir.path()),
                None,
                0,
                Split::Test,
                opts,
            )
        };
        let fine = load(&opts).unwrap();
        assert_eq!((fine.labels.clone(), fine.num_classes), (vec![77, 77], 100));
        opts.cifar100_labels = Cifar100Labels::Coarse;
        let coarse = load(&opts).unwrap();
        assert_eq!(
            (coarse.labels.clone(), coarse.num_classes),
            (vec![11, 11], 20)
        );
        for kind in [DatasetKind::Cifar100, DatasetKind::Stl10] {
            let e = format!(
                "{:#}",
                load_split_with(kind, None, None, 0, Split::Train, &opts).unwrap_err()
            );
            assert!(
                e.starts_with(&format!(
                    "the {} dataset needs a folder",
                    kind.display_name()
                )) && e.contains("--data-dir"),
                "{e}"
            );
        }
    }
}
