//! Image datasets held in memory as `u8` `(N, H, W, C)` bytes, decoded once at load, and
//! their conversion to normalised `f32` `(B, C, H, W)` batches.
//!
//! Datasets: [`cifar10`] and [`cifar100`] (the binary releases of Krizhevsky 2009),
//! [`stl10`] (the binary release of Coates et al. 2011: 96×96 images, 100,000 of them
//! unlabelled), [`synthetic`] (procedural shapes and textures, for tests and offline demos)
//! [`folder`] (a site's own image files, with its cache [`folder_cache`]) and [`mixed`]
//! (several of these concatenated, each image's source kept as its domain); [`files`] holds
//! what the binary releases' loaders share; [`load`] picks a run's dataset and loads its
//! splits. A new dataset is one new file here, one variant of [`DatasetKind`] and one arm in
//! [`load`].

pub mod cifar10;
pub mod cifar100;
pub(crate) mod files;
pub mod folder;
pub mod folder_cache;
pub mod load;
pub mod mixed;
pub mod stl10;
pub mod synthetic;

pub use cifar100::Cifar100Labels;
pub use folder::{check_folder, load_folder, FolderLabels, FolderLoad, FolderOptions};
pub use load::{
    load_split_with, load_test_set, load_train_set, train_split_is_labelled, DatasetKind,
    LoadOptions, Split,
};
pub use stl10::Stl10Split;

use anyhow::{bail, Result};
use candle_core::{Device, Tensor};

/// Side in pixels of the (square) images of CIFAR-10, CIFAR-100 and the synthetic set, and
/// the default `data.image_size` of the folder and STL-10 datasets; the scenario refuses layouts (patch grids, ViT
/// patches) that do not fit the run's image size.
pub const IMAGE_SIDE: usize = 32;

/// Largest `data.image_size` (pixels per side) a scenario may ask of the folder and STL-10
/// datasets.
pub const MAX_IMAGE_SIDE: usize = 1024;

/// An in-memory labelled image dataset.
///
/// Images are `u8` in `(N, H, W, C)` order (row-major, channels last), decoded once;
/// labels are `u32` class indices in `0..num_classes`.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageDataset {
    /// `N * H * W * C` bytes: image `i` is `images[i*H*W*C .. (i+1)*H*W*C]`, pixel `(y, x)`
    /// channel `c` at offset `(y*W + x)*C + c`.
    pub images: Vec<u8>,
    /// `N` class indices, or empty for an unlabelled dataset (what a client holds; see
    /// [`ImageDataset::unlabelled`]).
    pub labels: Vec<u32>,
    /// Image height `H` in pixels.
    pub height: usize,
    /// Image width `W` in pixels.
    pub width: usize,
    /// Channels `C` (3 for RGB; at most 3).
    pub channels: usize,
    /// Number of classes; every label is `< num_classes`.
    pub num_classes: usize,
    /// Human-readable class names, `num_classes` of them.
    pub class_names: Vec<String>,
    /// Per-channel mean on the 0..1 scale, used by [`ImageDataset::batch_tensor`].
    pub mean: [f32; 3],
    /// Per-channel standard deviation on the 0..1 scale.
    pub std: [f32; 3],
    /// `N` domain indices into [`ImageDataset::domain_names`] (which source of the
    /// [`mixed`] dataset each image came from), or empty for a dataset of one source (every
    /// dataset but `mixed`). Not a label: the `domain` partitioner
    /// ([`crate::partition::domain`]) splits by it.
    pub domains: Vec<u32>,
    /// The domains' names (`data.sources[i].name`, default the source's dataset key), one per
    /// source; empty when `domains` is.
    pub domain_names: Vec<String>,
}

impl ImageDataset {
    /// Number of images `N`.
    pub fn len(&self) -> usize {
        self.images.len() / self.image_bytes().max(1)
    }

    /// True when the dataset holds no image.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The same images without their labels: what a federated client may hold (clients never
    /// see labels; a pretext task makes its own targets).
    pub fn unlabelled(mut self) -> ImageDataset {
        self.labels = Vec::new();
        self
    }

    /// `self`, or, when it has no labels, the same images with every one in class 0 of a
    /// single class `"unlabelled"`: how an unlabelled training set (a site's folder, STL-10's
    /// unlabelled split) is partitioned among clients, the same way on the coordinator and on
    /// a `--shard K/N` client.
    pub fn one_class_if_unlabelled(mut self) -> ImageDataset {
        if self.labels.is_empty() {
            self.labels = vec![0; self.len()];
            self.num_classes = 1;
            self.class_names = vec!["unlabelled".into()];
        }
        self
    }

    /// Bytes of one image per image, `H * W * C`.
    pub fn image_bytes(&self) -> usize {
        self.height * self.width * self.channels
    }

    /// The `H*W*C` bytes of image `i` (HWC order). Panics if `i >= len()`.
    pub fn image(&self, i: usize) -> &[u8] {
        let s = self.image_bytes();
        &self.images[i * s..(i + 1) * s]
    }

    /// The `H*W*C` bytes of image `i` (HWC order). Errors, naming the index and the size,
    /// if `i >= len()`.
    pub fn try_image(&self, i: usize) -> Result<&[u8]> {
        if i >= self.len() {
            bail!(
                "image index {i} out of range (dataset has {} images)",
                self.len()
            );
        }
        Ok(self.image(i))
    }

    /// A new dataset holding copies of the listed images, in the order given (indices may
    /// repeat). Class names, `num_classes` and the normalisation statistics are kept from
    /// `self`, so every subset is normalised like its parent. Panics on an index out of range.
    pub fn subset(&self, idx: &[usize]) -> ImageDataset {
        let s = self.image_bytes();
        let mut images = Vec::with_capacity(idx.len() * s);
        let mut labels = Vec::with_capacity(idx.len());
        let mut domains = Vec::with_capacity(if self.domains.is_empty() {
            0
        } else {
            idx.len()
        });
        for &i in idx {
            images.extend_from_slice(self.image(i));
            if let Some(&l) = self.labels.get(i) {
                labels.push(l);
            }
            if let Some(&d) = self.domains.get(i) {
                domains.push(d);
            }
        }
        ImageDataset {
            images,
            labels,
            height: self.height,
            width: self.width,
            channels: self.channels,
            num_classes: self.num_classes,
            class_names: self.class_names.clone(),
            mean: self.mean,
            std: self.std,
            domains,
            domain_names: self.domain_names.clone(),
        }
    }

    /// Number of images of each class, a vector of length `num_classes`.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0usize; self.num_classes];
        for &l in &self.labels {
            if (l as usize) < counts.len() {
                counts[l as usize] += 1;
            }
        }
        counts
    }

    /// The listed images as a normalised `f32` tensor of shape `(B, C, H, W)` on `device`,
    /// `B = idx.len()`: value `(v/255 - mean[c]) / std[c]`.
    ///
    /// Errors if an index is out of range.
    pub fn batch_tensor(&self, idx: &[usize], device: &Device) -> Result<Tensor> {
        let s = self.image_bytes();
        let mut bytes = Vec::with_capacity(idx.len() * s);
        for &i in idx {
            bytes.extend_from_slice(self.try_image(i)?);
        }
        hwc_u8_to_tensor(
            &bytes,
            idx.len(),
            self.height,
            self.width,
            self.channels,
            self.mean,
            self.std,
            device,
        )
    }

    /// Per-channel mean and standard deviation of all pixels of `images` (`(N, H, W, C)`
    /// bytes), on the 0..1 scale. Channels beyond `C` get mean 0 and std 1; a constant
    /// channel gets std 1 (so normalising never divides by zero).
    pub fn compute_mean_std(images: &[u8], channels: usize) -> ([f32; 3], [f32; 3]) {
        let mut sum = [0f64; 3];
        let mut sum_sq = [0f64; 3];
        let c = channels.clamp(1, 3);
        for px in images.chunks_exact(channels.max(1)) {
            for ch in 0..c {
                let v = px[ch] as f64 / 255.0;
                sum[ch] += v;
                sum_sq[ch] += v * v;
            }
        }
        let n = (images.len() / channels.max(1)).max(1) as f64;
        let mut mean = [0f32; 3];
        let mut std = [1f32; 3];
        for ch in 0..c {
            let m = sum[ch] / n;
            let var = (sum_sq[ch] / n - m * m).max(0.0);
            mean[ch] = m as f32;
            std[ch] = if var > 1e-12 { var.sqrt() as f32 } else { 1.0 };
        }
        (mean, std)
    }
}

/// Converts `n` images of `(H, W, C)` `u8` bytes (concatenated in `bytes`) into a normalised
/// `f32` tensor `(n, C, H, W)` on `device`: `(v/255 - mean[c]) / std[c]`.
///
/// Errors if `bytes.len() != n*h*w*c` or `c > 3`.
#[allow(clippy::too_many_arguments)]
pub fn hwc_u8_to_tensor(
    bytes: &[u8],
    n: usize,
    h: usize,
    w: usize,
    c: usize,
    mean: [f32; 3],
    std: [f32; 3],
    device: &Device,
) -> Result<Tensor> {
    if bytes.len() != n * h * w * c {
        bail!(
            "image bytes ({}) do not match {n} images of {h}x{w}x{c}",
            bytes.len()
        );
    }
    if c > 3 {
        bail!("images with {c} channels are not supported (at most 3)");
    }
    let hw = h * w;
    let mut out = vec![0f32; n * c * hw];
    let mut scale = [0f32; 3];
    let mut offset = [0f32; 3];
    for ch in 0..c {
        scale[ch] = 1.0 / (255.0 * std[ch]);
        offset[ch] = -mean[ch] / std[ch];
    }
    for (img, dst) in bytes.chunks_exact(hw * c).zip(out.chunks_exact_mut(hw * c)) {
        for ch in 0..c {
            let plane = &mut dst[ch * hw..(ch + 1) * hw];
            let (s, o) = (scale[ch], offset[ch]);
            for (p, d) in plane.iter_mut().enumerate() {
                *d = img[p * c + ch] as f32 * s + o;
            }
        }
    }
    Ok(Tensor::from_vec(out, (n, c, h, w), device)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> ImageDataset {
        // two 1x2 RGB images
        ImageDataset {
            images: vec![0, 255, 51, 255, 0, 102, 10, 20, 30, 40, 50, 60],
            labels: vec![1, 0],
            height: 1,
            width: 2,
            channels: 3,
            num_classes: 2,
            class_names: vec!["a".into(), "b".into()],
            mean: [0.0, 0.5, 0.0],
            std: [1.0, 0.5, 2.0],
            domains: Vec::new(),
            domain_names: Vec::new(),
        }
    }

    #[test]
    fn batch_tensor_is_nchw_and_normalised() {
        let ds = tiny();
        let t = ds.batch_tensor(&[0], &Device::Cpu).unwrap();
        assert_eq!(t.dims(), &[1, 3, 1, 2]);
        let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        // R plane: 0/255, 255/255 ; G plane: (1-0.5)/0.5, (0-0.5)/0.5 ; B: 0.2/2, 0.4/2
        let want = [0.0, 1.0, 1.0, -1.0, 0.1, 0.2];
        for (a, b) in v.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{v:?}");
        }
        assert!(ds.batch_tensor(&[2], &Device::Cpu).is_err());
    }

    #[test]
    fn subset_copies_and_counts() {
        let ds = tiny();
        let s = ds.subset(&[1, 1, 0]);
        assert_eq!(s.len(), 3);
        assert_eq!(s.labels, vec![0, 0, 1]);
        assert_eq!(s.image(2), ds.image(0));
        assert_eq!(s.class_counts(), vec![2, 1]);
        assert_eq!(s.mean, ds.mean);
    }

    #[test]
    fn mean_std_of_known_pixels() {
        // channel 0 values 0 and 255 -> mean 0.5, std 0.5; channel 1 constant -> std 1
        let (m, s) = ImageDataset::compute_mean_std(&[0, 51, 255, 51], 2);
        assert!((m[0] - 0.5).abs() < 1e-6 && (s[0] - 0.5).abs() < 1e-6);
        assert!((m[1] - 0.2).abs() < 1e-6 && s[1] == 1.0);
    }
}

#[cfg(test)]
mod unlabelled_tests {
    /// True when every image has a label.
    fn is_labelled(ds: &super::ImageDataset) -> bool {
        ds.labels.len() == ds.len() && !ds.is_empty()
    }

    #[test]
    fn unlabelled_keeps_images_and_drops_labels() {
        let ds = super::synthetic::generate(12, 1);
        assert!(is_labelled(&ds));
        let sub = ds.subset(&[3, 5, 7]).unlabelled();
        assert_eq!(sub.len(), 3);
        assert!(sub.labels.is_empty() && !is_labelled(&sub));
        assert_eq!(sub.image(1), ds.image(5));
        assert_eq!(sub.subset(&[2]).image(0), ds.image(7));
        let one = sub.clone().one_class_if_unlabelled();
        assert_eq!((one.labels.clone(), one.num_classes), (vec![0, 0, 0], 1));
        assert_eq!(one.class_names, vec!["unlabelled"]);
        assert_eq!(one.images, sub.images);
        // a labelled set is left as it is
        assert_eq!(ds.clone().one_class_if_unlabelled(), ds);
    }
}
