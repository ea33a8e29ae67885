//! The mixed dataset (`data.dataset = "mixed"`): several datasets, its **sources**
//! (`[[data.sources]]`), concatenated into one [`ImageDataset`], each image's source kept as
//! its **domain** ([`ImageDataset::domains`]). It is the data of a domain-skew experiment
//! (clients drawing from different datasets, as FedBN's Digits and Office-Caltech10 setups):
//! the `domain` partitioner ([`crate::partition::domain`]) gives every client images of one
//! domain.
//!
//! * Each source is one of the other datasets (`cifar10`, `cifar100`, `stl10`, `folder`,
//!   `synthetic`) with its own folder and image count, read by its own loader with the rest of
//!   `[data]` (`image_size`, `cifar100_labels`, `stl10_split`, `labels`, `skip_bad_images`),
//!   so every source is `data.image_size` pixels (STL-10 and folders are resized by their
//!   loaders; CIFAR and synthetic images are 32×32 only). Its **training** split is used
//!   (STL-10: `data.stl10_split`).
//! * **Labels**: the sources' label spaces differ (CIFAR-10's 10 classes, CIFAR-100's 100, an
//!   unlabelled folder), so the mixed set's classes are their disjoint union, in source order:
//!   source `i`'s class `c` is class `offset_i + c`, named `<domain>/<class name>`; an
//!   unlabelled source is one class, `<domain>/unlabelled`. Clients never see labels; the
//!   union is what a label-skew `[partition]` of the mixed set splits by and what
//!   `partition.json` counts. The probes do not use it: a mixed run is probed on
//!   `[eval] dataset` (one labelled dataset), which the scenario must name.
//! * The normalisation statistics are those of the concatenation.
//! * Synthetic sources are generated from the run seed's stream [`seed::MIXED_SOURCE`] with
//!   the source's index, so two synthetic sources are different images.
//!
//! Errors name the source: `data.sources[1] (stl10 at /data/stl10): …` followed by the
//! loader's message, which names the missing or broken file.

use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};

use super::load::{check_count, load_split_capped, DatasetKind, LoadOptions, Split};
use super::ImageDataset;
use crate::seed;

/// One source of the mixed dataset: a `[[data.sources]]` table. Unknown keys are refused by
/// name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MixedSource {
    /// The source's dataset: `"cifar10"`, `"cifar100"`, `"stl10"`, `"folder"` or
    /// `"synthetic"` (not `"mixed"`). Required.
    pub dataset: DatasetKind,
    /// Its folder (the release's, as `data.path` for that dataset, or the image folder); a
    /// relative path is relative to `data.path` (which `--data-dir` sets; default: the
    /// scenario file's folder). Not needed by `synthetic`.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Use only the first N images of its training split (synthetic: generate N); default
    /// all (synthetic: 10,000).
    #[serde(default)]
    pub images: Option<usize>,
    /// The domain's name in `partition.json` and in the class names; default the dataset's
    /// key (`"cifar10"`). Two sources need different names.
    #[serde(default)]
    pub name: Option<String>,
}

impl MixedSource {
    /// The domain's name: `name`, or the dataset's key (`"cifar10"`, `"stl10"`, …).
    pub fn domain_name(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| self.dataset.key().to_string())
    }

    /// The source's folder: `path`, joined to `base` (`data.path`) when relative.
    pub fn resolved_path(&self, base: Option<&Path>) -> Option<PathBuf> {
        self.path.as_ref().map(|p| match base {
            Some(b) if p.is_relative() => b.join(p),
            _ => p.clone(),
        })
    }
}

/// Checks the sources of `data.sources` (for `data.dataset = "mixed"`, at `image_size`
/// pixels): at least one; none of them `"mixed"`; every one resized when `image_size` is not
/// 32; `images` at least 1; no `path` on a synthetic source (it reads no files); domain names
/// of letters, digits, `-`, `_` and `.`, not starting with `.` (they become class-name
/// prefixes and report labels), distinct. Messages name `data.sources[i]`.
pub fn check_sources(sources: &[MixedSource], image_size: usize) -> Result<()> {
    ensure!(
        !sources.is_empty(),
        "data.dataset = \"mixed\" needs its sources: one [[data.sources]] table per dataset (dataset = \"cifar10\", path = …, images = …)"
    );
    for (i, s) in sources.iter().enumerate() {
        if s.dataset == DatasetKind::Mixed {
            bail!("data.sources[{i}].dataset = \"mixed\": a source is one dataset (cifar10, cifar100, stl10, folder or synthetic)");
        }
        if s.images == Some(0) {
            bail!("data.sources[{i}].images must be at least 1 (or left out: all)");
        }
        if image_size != super::IMAGE_SIDE && !s.dataset.resizes() {
            bail!(
                "data.sources[{i}] ({}): data.image_size = {image_size}, but {} images are {}×{} only; only the folder and STL-10 datasets are resized",
                s.domain_name(),
                s.dataset.display_name(),
                super::IMAGE_SIDE,
                super::IMAGE_SIDE
            );
        }
        if s.dataset == DatasetKind::Synthetic && s.path.is_some() {
            bail!("data.sources[{i}].path is set, but a synthetic source is generated in memory and reads no files: remove the path");
        }
        let name = s.domain_name();
        if name.trim().is_empty() {
            bail!("data.sources[{i}].name is empty");
        }
        if name.starts_with('.') {
            bail!(
                "data.sources[{i}].name `{}` starts with '.': start it with a letter or digit",
                name.escape_debug()
            );
        }
        if let Some(c) = name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
        {
            bail!(
                "data.sources[{i}].name `{}`: {c:?} is not allowed; use letters, digits, '-', '_' and '.'",
                name.escape_debug()
            );
        }
        if let Some(j) = sources[..i].iter().position(|o| o.domain_name() == name) {
            bail!(
                "data.sources[{i}]: the domain name `{name}` is also data.sources[{j}]'s: give one of them another `name`"
            );
        }
    }
    Ok(())
}

/// Loads the mixed dataset: every source of `opts.sources` (its folder resolved against
/// `base`, `data.path`) loaded by its dataset's loader ([`load_split_capped`], its training
/// split, its `images` limit, the run seed's [`seed::MIXED_SOURCE`] stream with its index as
/// its seed), concatenated in source order into `u8` `(N, H, W, 3)` images with the disjoint
/// union of the sources' classes as labels and each image's source as its domain (module
/// docs).
///
/// Errors: a source's loader's, behind `data.sources[i] (<domain> at <path>)`; a source whose
/// images are not `opts.folder.image_size` pixels; no sources. [`Split::Test`]: the mixed
/// dataset has none (its runs are probed on `[eval] dataset`).
pub fn load_mixed(
    base: Option<&Path>,
    seed: u64,
    split: Split,
    opts: &LoadOptions,
) -> Result<ImageDataset> {
    if split == Split::Test {
        bail!(
            "the mixed dataset has no test split (its sources have different label spaces): its runs are probed on [eval] dataset"
        );
    }
    check_sources(&opts.sources, opts.folder.image_size)?;
    let side = opts.folder.image_size;
    let mut out = ImageDataset {
        images: Vec::new(),
        labels: Vec::new(),
        height: side,
        width: side,
        channels: 3,
        num_classes: 0,
        class_names: Vec::new(),
        mean: [0.0; 3],
        std: [1.0; 3],
        domains: Vec::new(),
        domain_names: Vec::new(),
    };
    for (i, s) in opts.sources.iter().enumerate() {
        let name = s.domain_name();
        let dir = s.resolved_path(base);
        let at = dir
            .as_ref()
            .map_or_else(String::new, |d| format!(" at {}", d.display()));
        let what = || format!("data.sources[{i}] ({name}{at})");
        let ds = load_split_capped(
            s.dataset,
            dir.as_deref(),
            s.images,
            seed::derive(seed, seed::MIXED_SOURCE, i as u64),
            Split::Train,
            opts,
        )
        .with_context(what)?;
        check_count(
            &ds,
            s.images,
            "images",
            s.dataset,
            dir.as_deref(),
            Split::Train,
        )
        .with_context(what)?;
        ensure!(
            (ds.height, ds.width, ds.channels) == (side, side, 3),
            "{}: its images are {}×{}×{}, not {side}×{side}×3 (data.image_size)",
            what(),
            ds.height,
            ds.width,
            ds.channels
        );
        let offset = out.num_classes as u32;
        if ds.labels.is_empty() {
            out.labels.extend(std::iter::repeat_n(offset, ds.len()));
            out.class_names.push(format!("{name}/unlabelled"));
        } else {
            out.labels.extend(ds.labels.iter().map(|&l| offset + l));
            out.class_names
                .extend(ds.class_names.iter().map(|c| format!("{name}/{c}")));
        }
        out.num_classes = out.class_names.len();
        out.domains.extend(std::iter::repeat_n(i as u32, ds.len()));
        out.domain_names.push(name);
        out.images.extend_from_slice(&ds.images);
    }
    (out.mean, out.std) = ImageDataset::compute_mean_std(&out.images, 3);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{cifar100, stl10};

    /// `cifar-100-binary/train.bin` in `dir` with `n` records: image `i` has the coarse
    /// label `i % 20`, the fine label `i % 100` and every byte `i`.
    fn cifar100_fixture(dir: &Path, n: usize) {
        let inner = dir.join("cifar-100-binary");
        std::fs::create_dir_all(&inner).unwrap();
        let mut bytes = Vec::new();
        for i in 0..n {
            bytes.extend([(i % 20) as u8, (i % 100) as u8]);
            bytes.extend(std::iter::repeat_n(i as u8, cifar100::RECORD_BYTES - 2));
        }
        std::fs::write(inner.join("train.bin"), bytes).unwrap();
    }

    /// `stl10_binary/` in `dir` with `n` labelled training images (labels 1..=n) and `n`
    /// unlabelled ones, every pixel of image `i` red `100 + i`.
    fn stl10_fixture(dir: &Path, n: u8) {
        let inner = dir.join("stl10_binary");
        std::fs::create_dir_all(&inner).unwrap();
        let x = |k: u8| {
            (0..k)
                .flat_map(|i| {
                    let mut img = vec![0u8; stl10::IMAGE_BYTES];
                    img[..stl10::PLANE_BYTES].fill(100 + i);
                    img
                })
                .collect::<Vec<u8>>()
        };
        std::fs::write(inner.join("train_X.bin"), x(n)).unwrap();
        std::fs::write(inner.join("train_y.bin"), (1..=n).collect::<Vec<u8>>()).unwrap();
        std::fs::write(inner.join("unlabeled_X.bin"), x(n)).unwrap();
    }

    fn source(dataset: DatasetKind, path: Option<&str>, images: Option<usize>) -> MixedSource {
        MixedSource {
            dataset,
            path: path.map(PathBuf::from),
            images,
            name: None,
        }
    }

    fn opts(sources: Vec<MixedSource>) -> LoadOptions {
        LoadOptions {
            sources,
            ..LoadOptions::default()
        }
    }

    #[test]
    fn sources_are_concatenated_with_their_domains_and_disjoint_classes() {
        let dir = tempfile::tempdir().unwrap();
        cifar100_fixture(&dir.path().join("c100"), 12);
        stl10_fixture(&dir.path().join("stl"), 3);
        let o = opts(vec![
            source(DatasetKind::Cifar100, Some("c100"), Some(5)),
            source(DatasetKind::Synthetic, None, Some(7)),
            source(DatasetKind::Stl10, Some("stl"), None),
        ]);
        let ds = load_mixed(Some(dir.path()), 0, Split::Train, &o).unwrap();
        // 5 + 7 + (3 train + 3 unlabelled), 32×32×3
        assert_eq!(
            (ds.len(), ds.height, ds.width, ds.channels),
            (18, 32, 32, 3)
        );
        assert_eq!(ds.images.len(), 18 * 32 * 32 * 3);
        assert_eq!(ds.domains, [vec![0; 5], vec![1; 7], vec![2; 6]].concat());
        assert_eq!(ds.domain_names, ["cifar100", "synthetic", "stl10"]);
        // CIFAR-100 (fine) classes 0..100, synthetic 100..110, STL-10 (its unlabelled
        // split) one class: 110
        assert_eq!(ds.num_classes, 111);
        assert_eq!(&ds.labels[..5], &[0, 1, 2, 3, 4]);
        assert!(ds.labels[5..12].iter().all(|&l| (100..110).contains(&l)));
        assert_eq!(&ds.labels[12..], &[110; 6]);
        assert_eq!(ds.class_names[0], "cifar100/apple");
        assert_eq!(ds.class_names[110], "stl10/unlabelled");
        // the images are the sources' own, in order
        assert!(ds.image(3).iter().all(|&b| b == 3));
        assert_eq!(ds.image(12)[0], 100);
        // seeded: the same twice; the synthetic source is its own stream
        assert_eq!(
            ds,
            load_mixed(Some(dir.path()), 0, Split::Train, &o).unwrap()
        );
        let plain = crate::data::load_train_set(DatasetKind::Synthetic, None, Some(7), 0).unwrap();
        assert_ne!(ds.image(5), plain.image(0));
        // a subset keeps the domains
        let sub = ds.subset(&[0, 17]);
        assert_eq!(
            (sub.domains.clone(), sub.domain_names.len()),
            (vec![0, 2], 3)
        );
        // no test split
        let e = format!(
            "{:#}",
            load_mixed(Some(dir.path()), 0, Split::Test, &o).unwrap_err()
        );
        assert!(
            e.contains("no test split") && e.contains("[eval] dataset"),
            "{e}"
        );
    }

    #[test]
    fn a_bad_source_is_named_with_its_index_and_path() {
        let dir = tempfile::tempdir().unwrap();
        cifar100_fixture(&dir.path().join("c100"), 4);
        let o = opts(vec![
            source(DatasetKind::Cifar100, Some("c100"), None),
            source(DatasetKind::Stl10, Some("nowhere"), None),
        ]);
        let e = format!(
            "{:#}",
            load_mixed(Some(dir.path()), 0, Split::Train, &o).unwrap_err()
        );
        assert!(
            e.starts_with(&format!(
                "data.sources[1] (stl10 at {}): ",
                dir.path().join("nowhere").display()
            )),
            "{e}"
        );
        // more images than the source holds
        let o = opts(vec![source(DatasetKind::Cifar100, Some("c100"), Some(9))]);
        let e = format!(
            "{:#}",
            load_mixed(Some(dir.path()), 0, Split::Train, &o).unwrap_err()
        );
        assert!(
            e.starts_with("data.sources[0] (cifar100 at ")
                && e.contains("images = 9, but the CIFAR-100 training split at")
                && e.contains("holds only 4")
                && !e.contains("data.train_images"),
            "{e}"
        );
        // the sources' own checks
        for (sources, why) in [
            (vec![], "needs its sources"),
            (
                vec![source(DatasetKind::Mixed, None, None)],
                "data.sources[0].dataset = \"mixed\"",
            ),
            (
                vec![source(DatasetKind::Synthetic, None, Some(0))],
                "data.sources[0].images must be at least 1",
            ),
            (
                vec![
                    source(DatasetKind::Synthetic, None, None),
                    source(DatasetKind::Synthetic, None, None),
                ],
                "data.sources[1]: the domain name `synthetic` is also data.sources[0]'s",
            ),
            (
                vec![source(DatasetKind::Synthetic, Some("s"), None)],
                "data.sources[0].path is set, but a synthetic source",
            ),
            (
                vec![MixedSource {
                    name: Some("a/b".into()),
                    ..source(DatasetKind::Synthetic, None, None)
                }],
                "data.sources[0].name `a/b`: '/' is not allowed",
            ),
            (
                vec![MixedSource {
                    name: Some("..".into()),
                    ..source(DatasetKind::Synthetic, None, None)
                }],
                "data.sources[0].name `..` starts with '.'",
            ),
        ] {
            let e = check_sources(&sources, 32).unwrap_err().to_string();
            assert!(e.contains(why), "{e}");
        }
        let e = check_sources(&[source(DatasetKind::Cifar10, None, None)], 64)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("data.sources[0] (cifar10): data.image_size = 64"),
            "{e}"
        );
        check_sources(&[source(DatasetKind::Stl10, None, None)], 64).unwrap();
    }
}
