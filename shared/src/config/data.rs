//! `[data]`: which images a run uses and how many.

use std::path::PathBuf;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use crate::data::mixed::{check_sources, MixedSource};
use crate::data::{
    Cifar100Labels, DatasetKind, FolderLabels, FolderOptions, LoadOptions, Stl10Split, IMAGE_SIDE,
    MAX_IMAGE_SIDE,
};
use crate::partition::PartitionConfig;

/// Smallest `data.image_size` accepted (pixels per side): below it the backbones' strided
/// stages have nothing left to see.
pub const MIN_IMAGE_SIDE: usize = 8;

/// Data section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// `"synthetic"` (default), `"cifar10"`, `"cifar100"`, `"stl10"` (the binary releases,
    /// [`crate::data::cifar10`], [`crate::data::cifar100`], [`crate::data::stl10`]),
    /// `"folder"` (a folder of PNG/JPEG/WebP/BMP images, [`crate::data::folder`]) or
    /// `"mixed"` (the datasets of `sources` concatenated, each image's source its domain,
    /// [`crate::data::mixed`]).
    pub dataset: DatasetKind,
    /// The release's folder (the one holding `cifar-10-batches-bin`, `cifar-100-binary` or
    /// `stl10_binary`, or that folder itself), or the image folder (relative to the scenario
    /// file, or overridden by `--data-dir`). Mixed dataset: the folder the sources' relative
    /// paths start from (default: the scenario file's folder).
    pub path: Option<PathBuf>,
    /// The mixed dataset's sources, `[[data.sources]]` tables of `dataset`, `path`, `images`
    /// and `name` ([`MixedSource`]), in domain order; only with `dataset = "mixed"`, which
    /// needs at least one. Not written when empty.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<MixedSource>,
    /// Use only the first N training images (of the release's training split; STL-10: of
    /// `stl10_split`), or generate N (synthetic). `None`: all / 10,000 (synthetic).
    pub train_images: Option<usize>,
    /// Use only the first N test images, or generate N (synthetic). `None`: all / 2,000.
    pub test_images: Option<usize>,
    /// Side in pixels of the (square) images the backbone sees (default 32, in
    /// 8..=1024): the folder dataset resizes its images' shorter side to it and
    /// centre-crops; STL-10's 96×96 images are resized to it (96: as they are); CIFAR-10,
    /// CIFAR-100 and the synthetic set are 32×32 only.
    pub image_size: usize,
    /// Folder dataset: `"none"` (default; unlabelled) or `"subfolders"` (`DIR/<class>/…`,
    /// for a labelled probe set). Not CIFAR-100's labels: those are `cifar100_labels`.
    pub labels: FolderLabels,
    /// CIFAR-100: `"fine"` (default; 100 classes) or `"coarse"` (the 20 superclasses), for
    /// the partition's label skew and the probes alike. A key of its own rather than a value
    /// of `labels`, which the folder read by `[eval]` may need at the same time. Only with
    /// `dataset` or `eval.dataset` = `"cifar100"`.
    pub cifar100_labels: Cifar100Labels,
    /// STL-10: the images the clients train on, `"train+unlabeled"` (default: the 5,000
    /// labelled training images then the 100,000 unlabelled ones, without labels),
    /// `"unlabeled"` (the 100,000) or `"train"` (the 5,000, labelled: what a label-skew
    /// partition needs); `unlabelled` is accepted for `unlabeled`. The probes always fit on
    /// the labelled training split and test on the test split. Only with `dataset = "stl10"`.
    pub stl10_split: Stl10Split,
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
            sources: Vec::new(),
            labels: FolderLabels::None,
            skip_bad_images: false,
            cifar100_labels: Cifar100Labels::Fine,
            stl10_split: Stl10Split::TrainUnlabeled,
        }
    }
}

impl DataConfig {
    /// Checks the image counts and size, and the mixed dataset's sources
    /// ([`check_sources`]); the message names the `data.*` keys.
    pub fn validate(&self) -> Result<()> {
        if self.dataset == DatasetKind::Mixed {
            if let Some(key) = [
                ("data.train_images", self.train_images.is_some()),
                ("data.test_images", self.test_images.is_some()),
            ]
            .iter()
            .find_map(|(k, set)| set.then_some(k))
            {
                bail!(
                    "{key} does not apply to data.dataset = \"mixed\": give each source its `images` (its training images; a mixed run is tested on [eval] dataset)"
                );
            }
            check_sources(&self.sources, self.image_size)?;
        } else if !self.sources.is_empty() {
            bail!(
                "data.sources applies to data.dataset = \"mixed\" only (data.dataset is {:?}): set it, or leave the sources out",
                self.dataset.key()
            );
        }
        if self.train_images == Some(0) || self.test_images == Some(0) {
            bail!("data.train_images and data.test_images must be at least 1 (or left out)");
        }
        if !(MIN_IMAGE_SIDE..=MAX_IMAGE_SIDE).contains(&self.image_size) {
            bail!(
                "data.image_size must be in {MIN_IMAGE_SIDE}..={MAX_IMAGE_SIDE} pixels, got {}",
                self.image_size
            );
        }
        if self.image_size != IMAGE_SIDE && !self.dataset.resizes() {
            bail!(
                "data.image_size = {}: the {:?} images are {IMAGE_SIDE}×{IMAGE_SIDE}; only the folder and STL-10 datasets are resized",
                self.image_size,
                self.dataset
            );
        }
        Ok(())
    }

    /// Checks the keys of one dataset against the datasets the run reads (`dataset`, and
    /// `eval_dataset`, the scenario's `eval.dataset`) and its `partition`: `cifar100_labels`
    /// other than `"fine"` without CIFAR-100, `stl10_split` other than its default without
    /// `dataset = "stl10"`, and a label-skew partition (`dirichlet`, `label_quantity`,
    /// `shards`) of STL-10's unlabelled images are refused, naming the key.
    pub fn check_dataset_keys(
        &self,
        eval_dataset: Option<DatasetKind>,
        partition: &PartitionConfig,
    ) -> Result<()> {
        let reads = |kind| {
            self.dataset == kind
                || eval_dataset == Some(kind)
                || self.sources.iter().any(|s| s.dataset == kind)
        };
        if self.cifar100_labels != Cifar100Labels::default() && !reads(DatasetKind::Cifar100) {
            bail!(
                "data.cifar100_labels = \"coarse\" applies to the CIFAR-100 dataset only: set data.dataset or eval.dataset = \"cifar100\", or leave the key out"
            );
        }
        let trains_on_stl10 = self.dataset == DatasetKind::Stl10
            || self.sources.iter().any(|s| s.dataset == DatasetKind::Stl10);
        if self.stl10_split != Stl10Split::default() && !trains_on_stl10 {
            bail!(
                "data.stl10_split = \"{}\" applies to the STL-10 dataset only (data.dataset = \"stl10\", or a source of the mixed dataset): leave the key out",
                self.stl10_split.name()
            );
        }
        let label_skew = match partition {
            PartitionConfig::Dirichlet(_) => Some("dirichlet"),
            PartitionConfig::LabelQuantity(_) => Some("label_quantity"),
            PartitionConfig::Shards(_) => Some("shards"),
            PartitionConfig::Iid(_) | PartitionConfig::Quantity(_) | PartitionConfig::Domain(_) => {
                None
            }
        };
        if matches!(partition, PartitionConfig::Domain(_)) && self.dataset != DatasetKind::Mixed {
            bail!(
                "partition.kind = \"domain\" gives each client the images of one domain, a source of the mixed dataset: set data.dataset = \"mixed\" with its [[data.sources]], or another partition.kind"
            );
        }
        if let Some(kind) = label_skew {
            if self.dataset == DatasetKind::Stl10 && !self.stl10_split.is_labelled() {
                bail!(
                    "partition.kind = \"{kind}\" splits by label, and data.stl10_split = \"{}\" has no labels: set data.stl10_split = \"train\" (the 5,000 labelled images), or partition.kind = \"iid\" or \"quantity\"",
                    self.stl10_split.name()
                );
            }
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

    /// How the datasets of this section are read: [`Self::folder_options`],
    /// `cifar100_labels` and `stl10_split`.
    pub fn load_options(&self) -> LoadOptions {
        LoadOptions {
            folder: self.folder_options(),
            cifar100_labels: self.cifar100_labels,
            stl10_split: self.stl10_split,
            sources: self.sources.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Scenario;
    use crate::data::{Cifar100Labels, DatasetKind, Stl10Split};

    fn parse(text: &str) -> anyhow::Result<Scenario> {
        Scenario::from_toml_str(text, &[])
    }

    fn refused(text: &str) -> String {
        format!("{:#}", parse(text).unwrap_err())
    }

    #[test]
    fn cifar100_and_stl10_keys_have_defaults_and_are_read() {
        let d = Scenario::default().data;
        assert_eq!(d.cifar100_labels, Cifar100Labels::Fine);
        assert_eq!(d.stl10_split, Stl10Split::TrainUnlabeled);
        let sc = parse("[data]\ndataset = \"cifar100\"\ncifar100_labels = \"coarse\"\n").unwrap();
        assert_eq!(sc.data.dataset, DatasetKind::Cifar100);
        assert_eq!(
            sc.data.load_options().cifar100_labels,
            Cifar100Labels::Coarse
        );
        let sc =
            parse("[data]\ndataset = \"stl10\"\nstl10_split = \"unlabeled\"\nimage_size = 96\n")
                .unwrap();
        let opts = sc.data.load_options();
        assert_eq!(
            (opts.stl10_split, opts.folder.image_size),
            (Stl10Split::Unlabeled, 96)
        );
        // probing CIFAR-100's superclasses after pretraining elsewhere
        let sc = parse("[data]\ncifar100_labels = \"coarse\"\n[eval]\ndataset = \"cifar100\"\n")
            .unwrap();
        assert_eq!(sc.data.cifar100_labels, Cifar100Labels::Coarse);
    }

    #[test]
    fn unknown_values_and_keys_that_do_not_apply_are_refused_by_name() {
        let e = refused("[data]\ndataset = \"cifar100\"\ncifar100_labels = \"super\"\n");
        assert!(
            e.contains("unknown variant `super`") && e.contains("cifar100_labels"),
            "{e}"
        );
        let e = refused("[data]\ndataset = \"stl10\"\nstl10_split = \"test\"\n");
        assert!(
            e.contains("unknown variant `test`") && e.contains("stl10_split"),
            "{e}"
        );
        let e = refused("[data]\ndataset = \"cifar10\"\ncifar100_labels = \"coarse\"\n");
        assert!(
            e.starts_with(
                "data.cifar100_labels = \"coarse\" applies to the CIFAR-100 dataset only"
            ),
            "{e}"
        );
        let e = refused("[data]\ndataset = \"cifar100\"\nstl10_split = \"train\"\n");
        assert!(
            e.starts_with("data.stl10_split = \"train\" applies to the STL-10 dataset only"),
            "{e}"
        );
        // CIFAR-100 is 32×32; STL-10 may be resized, but not probed on 32×32 images at 64
        let e = refused("[data]\ndataset = \"cifar100\"\nimage_size = 64\n");
        assert!(e.contains("data.image_size = 64"), "{e}");
        let e = refused(
            "[data]\ndataset = \"stl10\"\nimage_size = 64\n[eval]\ndataset = \"cifar10\"\n",
        );
        assert!(
            e.contains("data.image_size = 64: eval.dataset Cifar10"),
            "{e}"
        );
        parse("[data]\ndataset = \"stl10\"\nimage_size = 64\n").unwrap();
        parse("[data]\ndataset = \"folder\"\nimage_size = 64\n[eval]\ndataset = \"stl10\"\n")
            .unwrap();
    }

    #[test]
    fn a_label_skew_of_stl10s_unlabelled_images_is_refused() {
        let dir = "[partition]\nkind = \"dirichlet\"\nalpha = 0.5\n";
        let e = refused(&format!("[data]\ndataset = \"stl10\"\n{dir}"));
        assert!(
            e.starts_with("partition.kind = \"dirichlet\" splits by label, and data.stl10_split = \"train+unlabeled\" has no labels")
                && e.contains("data.stl10_split = \"train\""),
            "{e}"
        );
        let e = refused(
            "[data]\ndataset = \"stl10\"\nstl10_split = \"unlabeled\"\n[partition]\nkind = \"shards\"\n",
        );
        assert!(e.contains("partition.kind = \"shards\""), "{e}");
        parse(&format!(
            "[data]\ndataset = \"stl10\"\nstl10_split = \"train\"\n{dir}"
        ))
        .unwrap();
        parse("[data]\ndataset = \"stl10\"\n[partition]\nkind = \"quantity\"\n").unwrap();
        parse(&format!("[data]\ndataset = \"cifar100\"\n{dir}")).unwrap();
    }

    #[test]
    fn the_mixed_dataset_is_read_and_its_mistakes_refused_by_key() {
        let mixed = "[data]\ndataset = \"mixed\"\n[[data.sources]]\ndataset = \"cifar10\"\npath = \"c10\"\nimages = 500\n[[data.sources]]\ndataset = \"synthetic\"\nimages = 200\nname = \"toy\"\n";
        let probe = "[eval]\ndataset = \"cifar10\"\n[partition]\nkind = \"domain\"\n";
        let sc = parse(&format!("{mixed}{probe}")).unwrap();
        assert_eq!(sc.data.dataset, DatasetKind::Mixed);
        let names: Vec<String> = sc.data.sources.iter().map(|s| s.domain_name()).collect();
        assert_eq!(names, ["cifar10", "toy"]);
        assert_eq!(sc.data.sources[0].images, Some(500));
        assert_eq!(sc.data.load_options().sources, sc.data.sources);
        // the probes need one labelled dataset
        let e = refused(mixed);
        assert!(
            e.starts_with("data.dataset = \"mixed\": its sources have different label spaces")
                && e.contains("eval.dataset"),
            "{e}"
        );
        parse(&format!("{mixed}[eval]\nenabled = false\n")).unwrap();
        let e = refused(&format!("{mixed}[eval]\ndataset = \"mixed\"\n"));
        assert!(e.starts_with("eval.dataset = \"mixed\""), "{e}");
        // an unknown key of a source is named
        let e = refused(&format!("{mixed}sizes = 3\n{probe}"));
        assert!(e.contains("unknown field `sizes`"), "{e}");
        // keys that do not apply
        let e = refused(&format!("{mixed}{probe}").replace(
            "dataset = \"mixed\"\n",
            "dataset = \"mixed\"\ntrain_images = 9\n",
        ));
        assert!(
            e.starts_with("data.train_images does not apply to data.dataset = \"mixed\""),
            "{e}"
        );
        let e = refused("[[data.sources]]\ndataset = \"cifar10\"\n");
        assert!(
            e.starts_with("data.sources applies to data.dataset = \"mixed\" only"),
            "{e}"
        );
        let e = refused("[partition]\nkind = \"domain\"\n");
        assert!(
            e.starts_with("partition.kind = \"domain\" gives each client the images of one domain"),
            "{e}"
        );
        let e = refused("[data]\ndataset = \"mixed\"\n[eval]\nenabled = false\n");
        assert!(e.contains("needs its sources"), "{e}");
        // STL-10's split applies to an STL-10 source
        parse(&format!(
            "{}[[data.sources]]\ndataset = \"stl10\"\n{probe}",
            mixed.replace(
                "dataset = \"mixed\"\n",
                "dataset = \"mixed\"\nstl10_split = \"unlabeled\"\n"
            )
        ))
        .unwrap();
    }

    #[test]
    fn a_mixed_datasets_sources_start_from_data_path_or_the_files_folder() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.toml");
        let text = "[data]\ndataset = \"mixed\"\n[[data.sources]]\ndataset = \"cifar10\"\npath = \"c10\"\n[eval]\nenabled = false\n";
        std::fs::write(&p, text).unwrap();
        let sc = Scenario::load(&p, &[]).unwrap();
        assert_eq!(sc.data.path.as_deref(), Some(dir.path()));
        assert_eq!(
            sc.data.sources[0].resolved_path(sc.data.path.as_deref()),
            Some(dir.path().join("c10"))
        );
        std::fs::write(&p, text.replace("[data]\n", "[data]\npath = \"d\"\n")).unwrap();
        let sc = Scenario::load(&p, &[]).unwrap();
        assert_eq!(
            sc.data.sources[0].resolved_path(sc.data.path.as_deref()),
            Some(dir.path().join("d").join("c10"))
        );
    }
}
