//! CIFAR-100 (Krizhevsky, "Learning Multiple Layers of Features from Tiny Images", 2009),
//! binary release `cifar-100-binary.tar.gz`
//! (<https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz>).
//!
//! Layout of `cifar-100-binary/`: `train.bin` (50,000 images), `test.bin` (10,000 images),
//! and the optional `fine_label_names.txt` and `coarse_label_names.txt` (class names, one per
//! line). Each `.bin` file is a sequence of records of 3,074 bytes: one coarse-label byte
//! (0–19, the superclass), one fine-label byte (0–99), then 1,024 red, 1,024 green and 1,024
//! blue bytes, each plane row-major 32×32. Records are converted to the crate's
//! `(N, H, W, C)` layout at load; the labels are the fine ones (100 classes) unless
//! [`Cifar100Labels::Coarse`] (20 superclasses) is asked for (`data.cifar100_labels`).
//!
//! A file is read as a stream, one record at a time: only the images kept (the first `limit`)
//! are held, but every record's labels are checked.

use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::files::Release;
use super::ImageDataset;

/// Per-channel mean (R, G, B) of the CIFAR-100 training set on the 0..1 scale.
pub const MEAN: [f32; 3] = [0.5071, 0.4865, 0.4409];
/// Per-channel standard deviation (R, G, B) of the CIFAR-100 training set on the 0..1 scale.
pub const STD: [f32; 3] = [0.2673, 0.2564, 0.2762];

/// Bytes of one record: coarse label, fine label, 3 × 32 × 32 pixel bytes.
pub const RECORD_BYTES: usize = 3074;
/// Records in `train.bin`.
pub const TRAIN_RECORDS: usize = 50_000;
/// Records in `test.bin`.
pub const TEST_RECORDS: usize = 10_000;
/// Number of fine classes.
pub const FINE_CLASSES: usize = 100;
/// Number of coarse classes (superclasses).
pub const COARSE_CLASSES: usize = 20;

/// Which of a record's two labels a CIFAR-100 dataset carries (`data.cifar100_labels`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cifar100Labels {
    /// The 100 fine classes (the default; what "CIFAR-100 accuracy" means in papers).
    #[default]
    Fine,
    /// The 20 superclasses.
    Coarse,
}

impl Cifar100Labels {
    /// Number of classes of this labelling: 100 or 20.
    pub fn num_classes(self) -> usize {
        match self {
            Cifar100Labels::Fine => FINE_CLASSES,
            Cifar100Labels::Coarse => COARSE_CLASSES,
        }
    }
}

/// Fine class names (index order), used when `fine_label_names.txt` is absent.
pub const FINE_CLASS_NAMES: [&str; FINE_CLASSES] = [
    "apple",
    "aquarium_fish",
    "baby",
    "bear",
    "beaver",
    "bed",
    "bee",
    "beetle",
    "bicycle",
    "bottle",
    "bowl",
    "boy",
    "bridge",
    "bus",
    "butterfly",
    "camel",
    "can",
    "castle",
    "caterpillar",
    "cattle",
    "chair",
    "chimpanzee",
    "clock",
    "cloud",
    "cockroach",
    "couch",
    "crab",
    "crocodile",
    "cup",
    "dinosaur",
    "dolphin",
    "elephant",
    "flatfish",
    "forest",
    "fox",
    "girl",
    "hamster",
    "house",
    "kangaroo",
    "keyboard",
    "lamp",
    "lawn_mower",
    "leopard",
    "lion",
    "lizard",
    "lobster",
    "man",
    "maple_tree",
    "motorcycle",
    "mountain",
    "mouse",
    "mushroom",
    "oak_tree",
    "orange",
    "orchid",
    "otter",
    "palm_tree",
    "pear",
    "pickup_truck",
    "pine_tree",
    "plain",
    "plate",
    "poppy",
    "porcupine",
    "possum",
    "rabbit",
    "raccoon",
    "ray",
    "road",
    "rocket",
    "rose",
    "sea",
    "seal",
    "shark",
    "shrew",
    "skunk",
    "skyscraper",
    "snail",
    "snake",
    "spider",
    "squirrel",
    "streetcar",
    "sunflower",
    "sweet_pepper",
    "table",
    "tank",
    "telephone",
    "television",
    "tiger",
    "tractor",
    "train",
    "trout",
    "tulip",
    "turtle",
    "wardrobe",
    "whale",
    "willow_tree",
    "wolf",
    "woman",
    "worm",
];

/// Coarse class (superclass) names (index order), used when `coarse_label_names.txt` is
/// absent.
pub const COARSE_CLASS_NAMES: [&str; COARSE_CLASSES] = [
    "aquatic_mammals",
    "fish",
    "flowers",
    "food_containers",
    "fruit_and_vegetables",
    "household_electrical_devices",
    "household_furniture",
    "insects",
    "large_carnivores",
    "large_man-made_outdoor_things",
    "large_natural_outdoor_scenes",
    "large_omnivores_and_herbivores",
    "medium_mammals",
    "non-insect_invertebrates",
    "people",
    "reptiles",
    "small_mammals",
    "trees",
    "vehicles_1",
    "vehicles_2",
];

/// The release, for the messages of [`super::files`].
const RELEASE: Release = Release {
    name: "CIFAR-100",
    inner: "cifar-100-binary",
    url: "https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz",
};

/// Loads the 50,000 training images of `train.bin` (`(N, 32, 32, 3)`), or only the first
/// `limit` of them, with the `labels` asked for (100 fine or 20 coarse classes).
///
/// `dir` is either the `cifar-100-binary` folder or a folder that contains it.
/// Normalisation statistics are [`MEAN`] and [`STD`]; class names come from
/// `fine_label_names.txt` / `coarse_label_names.txt` when present, else
/// [`FINE_CLASS_NAMES`] / [`COARSE_CLASS_NAMES`].
///
/// Errors, naming the folder or file: the folder or `train.bin` is missing (saying that
/// `--data-dir` / `data.path` sets it); the file's size is not a multiple of the 3,074-byte
/// record (the size is given); a record's coarse label exceeds 19 or its fine label 99 (the
/// record is named); a class-names file does not list 100 / 20 names. A file of another
/// number of records than the release's (50,000) is read as it is, and said at warn level.
pub fn load_train(
    dir: &Path,
    limit: Option<usize>,
    labels: Cifar100Labels,
) -> Result<ImageDataset> {
    load(dir, "train.bin", TRAIN_RECORDS, limit, labels)
}

/// Loads the 10,000 test images of `test.bin`, or only the first `limit` of them. Same
/// folder rules, shapes and errors as [`load_train`] (the release's file holds 10,000).
pub fn load_test(dir: &Path, limit: Option<usize>, labels: Cifar100Labels) -> Result<ImageDataset> {
    load(dir, "test.bin", TEST_RECORDS, limit, labels)
}

/// The `cifar-100-binary` folder: `dir/cifar-100-binary` if present, else `dir` itself.
pub fn resolve_dir(dir: &Path) -> PathBuf {
    RELEASE.resolve(dir)
}

/// Reads `file` of the release in `dir`, whose official size is `expected` records.
fn load(
    dir: &Path,
    file: &str,
    expected: usize,
    limit: Option<usize>,
    labels: Cifar100Labels,
) -> Result<ImageDataset> {
    let root = resolve_dir(dir);
    RELEASE.check_folder(&root)?;
    let path = root.join(file);
    let (f, len) = RELEASE.open(&path)?;
    if len % RECORD_BYTES as u64 != 0 {
        bail!(
            "CIFAR-100 file {} is truncated or corrupt: {len} bytes is not a multiple of the \
             {RECORD_BYTES}-byte record",
            path.display()
        );
    }
    let records = (len / RECORD_BYTES as u64) as usize;
    if records != expected {
        tracing::warn!(
            file = %path.display(),
            "CIFAR-100 file holds {records} records; the release's holds {expected}"
        );
    }
    let take = limit.unwrap_or(records).min(records);
    let mut images = Vec::with_capacity(take * 3072);
    let mut kept = Vec::with_capacity(take);
    let mut reader = BufReader::with_capacity(1 << 20, f);
    let mut rec = vec![0u8; RECORD_BYTES];
    for r in 0..records {
        reader
            .read_exact(&mut rec)
            .with_context(|| format!("cannot read CIFAR-100 file {}", path.display()))?;
        let (coarse, fine) = (rec[0], rec[1]);
        if coarse as usize >= COARSE_CLASSES || fine as usize >= FINE_CLASSES {
            bail!(
                "CIFAR-100 file {} is malformed: record {r} has coarse label {coarse} (must be \
                 0-19) and fine label {fine} (must be 0-99)",
                path.display()
            );
        }
        if r >= take {
            continue; // still validate the labels of the whole file
        }
        kept.push(match labels {
            Cifar100Labels::Fine => fine as u32,
            Cifar100Labels::Coarse => coarse as u32,
        });
        let (rp, rest) = rec[2..].split_at(1024);
        let (gp, bp) = rest.split_at(1024);
        for p in 0..1024 {
            images.extend_from_slice(&[rp[p], gp[p], bp[p]]);
        }
    }
    let class_names = match labels {
        Cifar100Labels::Fine => {
            RELEASE.class_names(&root.join("fine_label_names.txt"), &FINE_CLASS_NAMES)?
        }
        Cifar100Labels::Coarse => {
            RELEASE.class_names(&root.join("coarse_label_names.txt"), &COARSE_CLASS_NAMES)?
        }
    };
    Ok(ImageDataset {
        images,
        labels: kept,
        height: 32,
        width: 32,
        channels: 3,
        num_classes: labels.num_classes(),
        class_names,
        mean: MEAN,
        std: STD,
        domains: Vec::new(),
        domain_names: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record with labels `(coarse, fine)` whose red plane is `(p + seed) % 256` at plane
    /// index `p`, green `seed`, blue `255 - seed`.
    fn record(coarse: u8, fine: u8, seed: u8) -> Vec<u8> {
        let mut r = vec![coarse, fine];
        r.extend((0..1024).map(|p| ((p + seed as usize) % 256) as u8));
        r.extend([seed; 1024]);
        r.extend([255 - seed; 1024]);
        r
    }

    /// `cifar-100-binary/<file>` in a new tempdir, holding `records`.
    fn release(file: &str, records: &[Vec<u8>]) -> tempfile::TempDir {
        let tmp = tempfile::tempdir().unwrap();
        let inner = tmp.path().join("cifar-100-binary");
        std::fs::create_dir(&inner).unwrap();
        std::fs::write(inner.join(file), records.concat()).unwrap();
        tmp
    }

    fn four() -> Vec<Vec<u8>> {
        vec![
            record(3, 42, 0),
            record(19, 99, 1),
            record(0, 0, 2),
            record(7, 57, 3),
        ]
    }

    #[test]
    fn fine_and_coarse_labels_shapes_and_pixel_order() {
        let tmp = release("test.bin", &four());
        let ds = load_test(tmp.path(), None, Cifar100Labels::Fine).unwrap();
        assert_eq!((ds.len(), ds.height, ds.width, ds.channels), (4, 32, 32, 3));
        assert_eq!(ds.images.len(), 4 * 32 * 32 * 3);
        assert_eq!(ds.labels, vec![42, 99, 0, 57]);
        assert_eq!(ds.num_classes, 100);
        assert_eq!(ds.class_names.len(), 100);
        assert_eq!(ds.class_names[42], "leopard");
        assert_eq!(ds.class_names[99], "worm");
        assert_eq!((ds.mean, ds.std), (MEAN, STD));
        // image 3, pixel (row 1, col 2) is plane index 34: R = 34 + 3, G = 3, B = 252
        let o = (32 + 2) * 3;
        assert_eq!(&ds.image(3)[o..o + 3], &[37, 3, 252]);
        // the last pixel (31, 31) of image 1: plane index 1023, R = (1023 + 1) % 256 = 0
        assert_eq!(&ds.image(1)[1023 * 3..], &[0, 1, 254]);

        let c = load_test(tmp.path(), None, Cifar100Labels::Coarse).unwrap();
        assert_eq!(c.labels, vec![3, 19, 0, 7]);
        assert_eq!(c.num_classes, 20);
        assert_eq!(c.class_names[3], "food_containers");
        assert_eq!(c.class_names[19], "vehicles_2");
        assert_eq!(c.images, ds.images);
        assert_eq!(c.class_counts()[19], 1);
    }

    #[test]
    fn a_limit_keeps_the_first_images_and_still_checks_every_label() {
        let tmp = release("train.bin", &four());
        let ds = load_train(tmp.path(), Some(2), Cifar100Labels::Fine).unwrap();
        assert_eq!(ds.len(), 2);
        assert_eq!(ds.labels, vec![42, 99]);
        assert_eq!(&ds.image(1)[..3], &[1, 1, 254]);
        // the inner folder itself is accepted too
        let inner = resolve_dir(tmp.path());
        assert!(inner.ends_with("cifar-100-binary"));
        let same = load_train(&inner, Some(2), Cifar100Labels::Fine).unwrap();
        assert_eq!(same, ds);
        // a bad label after the limit is still found
        let mut recs = four();
        recs[3][1] = 100;
        let tmp = release("train.bin", &recs);
        let e = format!(
            "{:#}",
            load_train(tmp.path(), Some(2), Cifar100Labels::Fine).unwrap_err()
        );
        assert!(
            e.contains("train.bin is malformed: record 3 has coarse label 7")
                && e.contains("fine label 100 (must be 0-99)"),
            "{e}"
        );
    }

    #[test]
    fn class_name_files_are_read_and_checked() {
        let tmp = release("test.bin", &four());
        let inner = resolve_dir(tmp.path());
        let names: Vec<String> = (0..20).map(|i| format!("super{i}")).collect();
        std::fs::write(
            inner.join("coarse_label_names.txt"),
            names.join("\n") + "\n\n",
        )
        .unwrap();
        let c = load_test(tmp.path(), None, Cifar100Labels::Coarse).unwrap();
        assert_eq!(c.class_names[7], "super7");
        std::fs::write(inner.join("fine_label_names.txt"), "a\nb\n").unwrap();
        let e = format!(
            "{:#}",
            load_test(tmp.path(), None, Cifar100Labels::Fine).unwrap_err()
        );
        assert!(
            e.contains("fine_label_names.txt lists 2 class names, expected 100"),
            "{e}"
        );
    }

    #[test]
    fn truncated_short_and_mislabelled_files_are_refused_naming_the_file() {
        // size not a multiple of the record: the size is said
        let mut bytes = four().concat();
        bytes.truncate(bytes.len() - 10);
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("test.bin");
        std::fs::write(&path, &bytes).unwrap();
        let e = format!(
            "{:#}",
            load_test(tmp.path(), None, Cifar100Labels::Fine).unwrap_err()
        );
        assert!(
            e.contains(&path.display().to_string())
                && e.contains(
                    "truncated or corrupt: 12286 bytes is not a multiple of the 3074-byte record"
                ),
            "{e}"
        );
        // whole records, fewer than the release's: read as they are
        std::fs::write(&path, four().concat()).unwrap();
        let ds = load_test(tmp.path(), None, Cifar100Labels::Fine).unwrap();
        assert_eq!(ds.labels, vec![42, 99, 0, 57]);
        // a coarse label out of range
        let mut recs = four();
        recs[1][0] = 20;
        std::fs::write(&path, recs.concat()).unwrap();
        let e = format!(
            "{:#}",
            load_test(tmp.path(), None, Cifar100Labels::Coarse).unwrap_err()
        );
        assert!(
            e.contains("test.bin is malformed: record 1 has coarse label 20 (must be 0-19)"),
            "{e}"
        );
        // a missing file and a missing folder say how to point the run at the data
        let e = format!(
            "{:#}",
            load_train(tmp.path(), None, Cifar100Labels::Fine).unwrap_err()
        );
        assert!(
            e.contains(&tmp.path().join("train.bin").display().to_string())
                && e.contains("does not exist")
                && e.contains("--data-dir")
                && e.contains("data.path")
                && e.contains("cifar-100-binary.tar.gz"),
            "{e}"
        );
        let e = format!(
            "{:#}",
            load_test(&tmp.path().join("nope"), None, Cifar100Labels::Fine).unwrap_err()
        );
        assert!(
            e.contains("CIFAR-100 folder")
                && e.contains("nope does not exist")
                && e.contains("--data-dir"),
            "{e}"
        );
        let e = format!(
            "{:#}",
            load_test(&path, None, Cifar100Labels::Fine).unwrap_err()
        );
        assert!(e.contains("test.bin is not a folder"), "{e}");
    }

    #[test]
    fn labels_are_written_in_scenarios_as_fine_or_coarse() {
        #[derive(Debug, Deserialize)]
        struct T {
            l: Cifar100Labels,
        }
        let t: T = toml::from_str("l = \"coarse\"").unwrap();
        assert_eq!(t.l, Cifar100Labels::Coarse);
        assert_eq!(Cifar100Labels::default(), Cifar100Labels::Fine);
        let e = toml::from_str::<T>("l = \"superclass\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("fine") && e.contains("coarse"), "{e}");
    }
}
