//! CIFAR-10 (Krizhevsky, "Learning Multiple Layers of Features from Tiny Images", 2009),
//! binary release `cifar-10-binary.tar.gz`.
//!
//! Layout of `cifar-10-batches-bin/`: `data_batch_1.bin` … `data_batch_5.bin` (train,
//! 50,000 images), `test_batch.bin` (10,000 images) and `batches.meta.txt` (class names, one
//! per line). Each `.bin` file is exactly 10,000 records of 3,073 bytes: one label byte
//! (0–9), then 1,024 red, 1,024 green and 1,024 blue bytes, each plane row-major 32×32.
//! Records are converted to the crate's `(N, H, W, C)` layout at load.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

use super::files::Release;
use super::ImageDataset;

/// Per-channel mean (R, G, B) of the CIFAR-10 training set on the 0..1 scale.
pub const MEAN: [f32; 3] = [0.4914, 0.4822, 0.4465];
/// Per-channel standard deviation (R, G, B) of the CIFAR-10 training set on the 0..1 scale.
pub const STD: [f32; 3] = [0.2470, 0.2435, 0.2616];

/// Bytes of one record: 1 label byte + 3 × 32 × 32 pixel bytes.
pub const RECORD_BYTES: usize = 3073;
/// Records in each batch file.
pub const RECORDS_PER_FILE: usize = 10_000;
/// Class names used when `batches.meta.txt` is absent.
pub const DEFAULT_CLASS_NAMES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

const TRAIN_FILES: [&str; 5] = [
    "data_batch_1.bin",
    "data_batch_2.bin",
    "data_batch_3.bin",
    "data_batch_4.bin",
    "data_batch_5.bin",
];
const TEST_FILES: [&str; 1] = ["test_batch.bin"];

/// Loads the 50,000 training images (`data_batch_1..5.bin`, in file order), or only the
/// first `limit` of them (reading only the files needed).
///
/// `dir` is either the `cifar-10-batches-bin` folder or a folder that contains it.
/// Normalisation statistics are [`MEAN`] and [`STD`].
///
/// Errors, naming the file, when a file is missing, its size is not 10,000 records of 3,073
/// bytes, or a label byte exceeds 9.
pub fn load_train(dir: &Path, limit: Option<usize>) -> Result<ImageDataset> {
    load(dir, &TRAIN_FILES, limit)
}

/// Loads the 10,000 test images (`test_batch.bin`), or only the first `limit` of them.
/// Same folder rules and errors as [`load_train`].
pub fn load_test(dir: &Path, limit: Option<usize>) -> Result<ImageDataset> {
    load(dir, &TEST_FILES, limit)
}

/// The `cifar-10-batches-bin` folder: `dir` itself, or `dir/cifar-10-batches-bin` if present.
pub fn resolve_dir(dir: &Path) -> PathBuf {
    RELEASE.resolve(dir)
}

/// The release, for the messages of [`super::files`].
const RELEASE: Release = Release {
    name: "CIFAR-10",
    inner: "cifar-10-batches-bin",
    url: "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
};

fn load(dir: &Path, files: &[&str], limit: Option<usize>) -> Result<ImageDataset> {
    let root = resolve_dir(dir);
    RELEASE.check_folder(&root)?;
    let want = limit.unwrap_or(usize::MAX);
    let mut images = Vec::new();
    let mut labels = Vec::new();
    for name in files {
        if labels.len() >= want {
            break;
        }
        let path = root.join(name);
        let take = (want - labels.len()).min(RECORDS_PER_FILE);
        read_batch_file(&path, take, &mut images, &mut labels)?;
    }
    let class_names = read_class_names(&root)?;
    Ok(ImageDataset {
        images,
        labels,
        height: 32,
        width: 32,
        channels: 3,
        num_classes: 10,
        class_names,
        mean: MEAN,
        std: STD,
        domains: Vec::new(),
        domain_names: Vec::new(),
    })
}

/// Validates one batch file and appends its first `take` records (HWC images, labels).
fn read_batch_file(
    path: &Path,
    take: usize,
    images: &mut Vec<u8>,
    labels: &mut Vec<u32>,
) -> Result<()> {
    let bytes = RELEASE.read(path)?;
    if bytes.len() % RECORD_BYTES != 0 {
        bail!(
            "CIFAR-10 file {} is truncated or corrupt: {} bytes is not a multiple of the \
             {RECORD_BYTES}-byte record",
            path.display(),
            bytes.len()
        );
    }
    let records = bytes.len() / RECORD_BYTES;
    if records != RECORDS_PER_FILE {
        bail!(
            "CIFAR-10 file {} holds {records} records, expected {RECORDS_PER_FILE}",
            path.display()
        );
    }
    images.reserve(take * 3072);
    labels.reserve(take);
    for (r, rec) in bytes.chunks_exact(RECORD_BYTES).enumerate() {
        let label = rec[0];
        if label > 9 {
            bail!(
                "CIFAR-10 file {} is malformed: record {r} has label {label} (must be 0-9)",
                path.display()
            );
        }
        if r >= take {
            continue; // still validate the labels of the whole file
        }
        labels.push(label as u32);
        let (rp, rest) = rec[1..].split_at(1024);
        let (gp, bp) = rest.split_at(1024);
        for p in 0..1024 {
            images.extend_from_slice(&[rp[p], gp[p], bp[p]]);
        }
    }
    Ok(())
}

fn read_class_names(root: &Path) -> Result<Vec<String>> {
    RELEASE.class_names(&root.join("batches.meta.txt"), &DEFAULT_CLASS_NAMES)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/data/cifar10");

    fn data_dir() -> Option<PathBuf> {
        let p = PathBuf::from(DATA);
        if resolve_dir(&p).join("test_batch.bin").exists() {
            Some(p)
        } else {
            eprintln!("note: CIFAR-10 not found at {DATA}; skipping");
            None
        }
    }

    #[test]
    fn test_split_has_1000_per_class() {
        let Some(dir) = data_dir() else { return };
        let ds = load_test(&dir, None).unwrap();
        assert_eq!(ds.len(), 10_000);
        assert_eq!(ds.images.len(), 10_000 * 32 * 32 * 3);
        assert_eq!(ds.class_counts(), vec![1000; 10]);
        assert_eq!(ds.class_names[0], "airplane");
        assert_eq!(ds.class_names[9], "truck");
        // the inner folder is accepted too
        let inner = load_test(&resolve_dir(&dir), Some(5)).unwrap();
        assert_eq!(inner.len(), 5);
        assert_eq!(inner.image(4), ds.image(4));
    }

    #[test]
    fn train_split_has_5000_per_class() {
        let Some(dir) = data_dir() else { return };
        let ds = load_train(&dir, None).unwrap();
        assert_eq!(ds.len(), 50_000);
        assert_eq!(ds.class_counts(), vec![5000; 10]);
        let lim = load_train(&dir, Some(12_345)).unwrap();
        assert_eq!(lim.len(), 12_345);
        assert_eq!(lim.image(12_344), ds.image(12_344));
        // the first record of data_batch_1 is image 0 with the file's first byte as label
        let raw = std::fs::read(resolve_dir(&dir).join("data_batch_1.bin")).unwrap();
        assert_eq!(ds.labels[0], raw[0] as u32);
        assert_eq!(&ds.image(0)[..3], &[raw[1], raw[1 + 1024], raw[1 + 2048]]);
    }

    #[test]
    fn hwc_conversion_of_a_synthetic_file() {
        let tmp = tempfile::tempdir().unwrap();
        let mut bytes = vec![0u8; RECORD_BYTES * RECORDS_PER_FILE];
        // record 0: label 3, R plane = pixel index % 256, G = 7, B = 200
        bytes[0] = 3;
        for p in 0..1024 {
            bytes[1 + p] = (p % 256) as u8;
            bytes[1 + 1024 + p] = 7;
            bytes[1 + 2048 + p] = 200;
        }
        std::fs::write(tmp.path().join("test_batch.bin"), &bytes).unwrap();
        let ds = load_test(tmp.path(), Some(2)).unwrap();
        assert_eq!(ds.labels, vec![3, 0]);
        let img = ds.image(0);
        // pixel (y=1, x=2) is plane index 34
        let o = (32 + 2) * 3;
        assert_eq!(&img[o..o + 3], &[34, 7, 200]);
        assert_eq!(ds.class_names.len(), 10);
    }

    #[test]
    fn truncated_or_malformed_files_are_errors_naming_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("test_batch.bin");
        let mut bytes = vec![0u8; RECORD_BYTES * RECORDS_PER_FILE];
        std::fs::write(&path, &bytes[..bytes.len() - 100]).unwrap();
        let e = format!("{:#}", load_test(tmp.path(), None).unwrap_err());
        assert!(
            e.contains("test_batch.bin") && e.contains("truncated"),
            "{e}"
        );

        std::fs::write(&path, &bytes[..RECORD_BYTES * 9_999]).unwrap();
        let e = format!("{:#}", load_test(tmp.path(), None).unwrap_err());
        assert!(
            e.contains("test_batch.bin") && e.contains("9999 records"),
            "{e}"
        );

        bytes[RECORD_BYTES * 17] = 12;
        std::fs::write(&path, &bytes).unwrap();
        let e = format!("{:#}", load_test(tmp.path(), None).unwrap_err());
        assert!(
            e.contains("test_batch.bin") && e.contains("label 12"),
            "{e}"
        );

        let e = format!("{:#}", load_train(tmp.path(), None).unwrap_err());
        assert!(e.contains("data_batch_1.bin"), "{e}");

        // a missing folder and a file given as the folder: each says which, and how to fix it
        let e = format!(
            "{:#}",
            load_test(&tmp.path().join("nope"), None).unwrap_err()
        );
        assert!(
            e.contains("nope does not exist") && e.contains("--data-dir"),
            "{e}"
        );
        let e = format!("{:#}", load_test(&path, None).unwrap_err());
        assert!(e.contains("test_batch.bin is not a folder"), "{e}");
    }

    #[cfg(unix)]
    #[test]
    fn a_dangling_symbolic_link_is_named_with_its_target() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("test_batch.bin");
        let gone = tmp.path().join("elsewhere").join("test_batch.bin");
        std::os::unix::fs::symlink(&gone, &file).unwrap();
        let e = format!("{:#}", load_test(tmp.path(), None).unwrap_err());
        assert!(
            e.contains(&format!(
                "CIFAR-10 file {} is a dangling symbolic link: its target {} does not exist",
                file.display(),
                gone.display()
            )),
            "{e}"
        );
        assert!(!e.contains("No such file"), "{e}");
        // the folder itself
        let dir = tmp.path().join("cifar");
        std::os::unix::fs::symlink(tmp.path().join("unmounted"), &dir).unwrap();
        let e = format!("{:#}", load_test(&dir, None).unwrap_err());
        assert!(
            e.contains("cifar is a dangling symbolic link (its target")
                && e.contains("unmounted does not exist)")
                && e.contains("--data-dir"),
            "{e}"
        );
    }

    #[test]
    fn truncated_copy_of_real_file_names_it() {
        let Some(dir) = data_dir() else { return };
        let real = std::fs::read(resolve_dir(&dir).join("test_batch.bin")).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let inner = tmp.path().join("cifar-10-batches-bin");
        std::fs::create_dir(&inner).unwrap();
        std::fs::write(inner.join("test_batch.bin"), &real[..real.len() / 2]).unwrap();
        let e = format!("{:#}", load_test(tmp.path(), None).unwrap_err());
        assert!(
            e.contains(&inner.join("test_batch.bin").display().to_string()),
            "{e}"
        );
    }
}
