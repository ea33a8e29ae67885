//! `[data]`: which images a run uses and how many.

use std::path::PathBuf;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

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
    /// [`crate::data::cifar10`], [`crate::data::cifar100`], [`crate::data::stl10`]) or
    /// `"folder"` (a folder of PNG/JPEG/WebP/BMP images, [`crate::data::folder`]).
    pub dataset: DatasetKind,
    /// The release's folder (the one holding `cifar-10-batches-bin`, `cifar-100-binary` or
    /// `stl10_binary`, or that folder itself), or the image folder (relative to the scenario
    /// file, or overridden by `--data-dir`).
    pub path: Option<PathBuf>,
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
            labels: FolderLabels::None,
            skip_bad_images: false,
            cifar100_labels: Cifar100Labels::Fine,
            stl10_split: Stl10Split::TrainUnlabeled,
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
        let reads = |kind| self.dataset == kind || eval_dataset == Some(kind);
        if self.cifar100_labels != Cifar100Labels::default() && !reads(DatasetKind::Cifar100) {
            bail!(
                "data.cifar100_labels = \"coarse\" applies to the CIFAR-100 dataset only: set data.dataset or eval.dataset = \"cifar100\", or leave the key out"
            );
        }
        if self.stl10_split != Stl10Split::default() && self.dataset != DatasetKind::Stl10 {
            bail!(
                "data.stl10_split = \"{}\" applies to the STL-10 dataset only (data.dataset = \"stl10\"): leave the key out",
                self.stl10_split.name()
            );
        }
        let label_skew = match partition {
            PartitionConfig::Dirichlet(_) => Some("dirichlet"),
            PartitionConfig::LabelQuantity(_) => Some("label_quantity"),
            PartitionConfig::Shards(_) => Some("shards"),
            PartitionConfig::Iid(_) | PartitionConfig::Quantity(_) => None,
        };
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
}
