//! STL-10 (Coates, Lee and Ng, "An Analysis of Single-Layer Networks in Unsupervised Feature
//! Learning", AISTATS 2011), binary release `stl10_binary.tar.gz`
//! (<https://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz>).
//!
//! Layout of `stl10_binary/`: `train_X.bin` and `train_y.bin` (5,000 labelled images),
//! `test_X.bin` and `test_y.bin` (8,000 labelled images), `unlabeled_X.bin` (100,000
//! unlabelled images), and `class_names.txt` (optional here: the 10 names, one per line).
//! An `_X` file is a sequence of 96×96 RGB images of 27,648 bytes each: the red, green and
//! blue planes one after the other, each plane **column-major** (the byte of row `y`, column
//! `x` of channel `c` is at `c·9216 + x·96 + y`). A `_y` file is one byte per image, the class
//! `1..=10`, stored here as the class index `0..=9`.
//!
//! A run uses three of its splits ([`super::load::Split`]): the clients train on
//! `data.stl10_split` ([`Stl10Split`]; by default the 5,000 labelled training images followed
//! by the 100,000 unlabelled ones, without labels — the split STL-10 was made for), the probes
//! fit on the labelled training split ([`load_labelled`]) and are tested on the test split.
//! Images are converted to the crate's `(N, H, W, C)` layout and kept at 96×96 when
//! `data.image_size = 96`, else resized to `data.image_size` with the folder dataset's filter
//! ([`super::folder::square_rgb`]: triangle, antialiased). An `_X` file is read as a stream
//! in chunks of [`CHUNK_IMAGES`] images (converted in parallel): with a limit only the first
//! `limit` images are read, and only the resized images are held.

use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::files::Release;
use super::folder::square_rgb;
use super::{ImageDataset, MAX_IMAGE_SIDE};

/// Side in pixels of STL-10's images.
pub const SIDE: usize = 96;
/// Bytes of one channel plane, 96 × 96.
pub const PLANE_BYTES: usize = SIDE * SIDE;
/// Bytes of one image in an `_X` file, 3 × 96 × 96.
pub const IMAGE_BYTES: usize = 3 * PLANE_BYTES;
/// Images of the labelled training split (`train_X.bin`).
pub const TRAIN_IMAGES: usize = 5_000;
/// Images of the test split (`test_X.bin`).
pub const TEST_IMAGES: usize = 8_000;
/// Images of the unlabelled split (`unlabeled_X.bin`).
pub const UNLABELED_IMAGES: usize = 100_000;
/// Images read (and converted in parallel) at a time.
pub const CHUNK_IMAGES: usize = 1024;

/// Per-channel mean (R, G, B) on the 0..1 scale: the STL-10 statistics in common use
/// (SimCLR and BYOL reimplementations).
pub const MEAN: [f32; 3] = [0.4467, 0.4398, 0.4066];
/// Per-channel standard deviation (R, G, B) on the 0..1 scale (see [`MEAN`]).
pub const STD: [f32; 3] = [0.2603, 0.2566, 0.2713];

/// Class names used when `class_names.txt` is absent (label byte 1 is `airplane`).
pub const DEFAULT_CLASS_NAMES: [&str; 10] = [
    "airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck",
];

/// The images the clients train on (`data.stl10_split`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Stl10Split {
    /// The 5,000 labelled training images followed by the 100,000 unlabelled ones, without
    /// labels (the default): all the images STL-10 offers for pretraining.
    #[default]
    #[serde(rename = "train+unlabeled", alias = "train+unlabelled")]
    TrainUnlabeled,
    /// The 100,000 unlabelled images (`unlabeled_X.bin`).
    #[serde(rename = "unlabeled", alias = "unlabelled")]
    Unlabeled,
    /// The 5,000 labelled training images, with their labels (for label-skew partitions).
    #[serde(rename = "train")]
    Train,
}

impl Stl10Split {
    /// The name a scenario writes (`"train+unlabeled"`, `"unlabeled"`, `"train"`).
    pub fn name(self) -> &'static str {
        match self {
            Stl10Split::TrainUnlabeled => "train+unlabeled",
            Stl10Split::Unlabeled => "unlabeled",
            Stl10Split::Train => "train",
        }
    }

    /// True when the split's images have labels (only [`Stl10Split::Train`]).
    pub fn is_labelled(self) -> bool {
        self == Stl10Split::Train
    }
}

/// The release, for the messages of [`super::files`].
const RELEASE: Release = Release {
    name: "STL-10",
    inner: "stl10_binary",
    url: "https://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz",
};

/// One `_X` file of the release, with its `_y` file if it has labels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Part {
    Train,
    Test,
    Unlabeled,
}

impl Part {
    fn files(self) -> (&'static str, Option<&'static str>) {
        match self {
            Part::Train => ("train_X.bin", Some("train_y.bin")),
            Part::Test => ("test_X.bin", Some("test_y.bin")),
            Part::Unlabeled => ("unlabeled_X.bin", None),
        }
    }

    /// The official number of images of the part.
    fn official_count(self) -> usize {
        match self {
            Part::Train => TRAIN_IMAGES,
            Part::Test => TEST_IMAGES,
            Part::Unlabeled => UNLABELED_IMAGES,
        }
    }
}

/// Loads the images the clients train on, `split`: `(N, S, S, 3)` with `S = image_size`,
/// `N` the split's size (105,000, 100,000 or 5,000) or the first `limit` of them (reading
/// only the files and images needed: `train+unlabeled` with a limit up to 5,000 does not open
/// `unlabeled_X.bin`). Labelled (`0..10`) only for [`Stl10Split::Train`]; the others have no
/// labels (`labels` empty). `dir` is the `stl10_binary` folder or a folder that contains it.
/// Normalisation statistics are [`MEAN`] and [`STD`].
///
/// Errors, naming the folder or file: the folder or a file needed is missing (saying that
/// `--data-dir` / `data.path` sets it); an `_X` file's size is not a multiple of the
/// 27,648-byte image (the size is given); a `_y` file does not hold one byte per image of its
/// `_X` file, or a label is outside `1..=10` (the image is named); `image_size` is not in
/// `1..=1024`; `class_names.txt` does not list 10 names. A file holding another number of
/// images than the release's (5,000, 8,000, 100,000) is read as it is, and said at warn level.
pub fn load_train(
    dir: &Path,
    split: Stl10Split,
    limit: Option<usize>,
    image_size: usize,
) -> Result<ImageDataset> {
    load_parts(
        dir,
        split_parts(split),
        split.is_labelled(),
        limit,
        image_size,
    )
}

/// Loads the 5,000 labelled training images (`train_X.bin`, `train_y.bin`), or the first
/// `limit`, with their labels: the probes' training set. Shapes and errors as
/// [`load_train`]'s.
pub fn load_labelled(dir: &Path, limit: Option<usize>, image_size: usize) -> Result<ImageDataset> {
    load_parts(dir, &[Part::Train], true, limit, image_size)
}

/// Loads the 8,000 labelled test images (`test_X.bin`, `test_y.bin`), or the first `limit`.
/// Shapes and errors as [`load_train`]'s.
pub fn load_test(dir: &Path, limit: Option<usize>, image_size: usize) -> Result<ImageDataset> {
    load_parts(dir, &[Part::Test], true, limit, image_size)
}

/// The `stl10_binary` folder: `dir/stl10_binary` if present, else `dir` itself.
pub fn resolve_dir(dir: &Path) -> PathBuf {
    RELEASE.resolve(dir)
}

/// One image of an `_X` file (three column-major 96×96 planes) as `side × side × 3` HWC
/// bytes: at its own size when `side` is 96, else resized with [`square_rgb`]. Panics if
/// `src` is not [`IMAGE_BYTES`] long.
pub fn image_to_hwc(src: &[u8], side: usize) -> Vec<u8> {
    assert_eq!(
        src.len(),
        IMAGE_BYTES,
        "an STL-10 image is {IMAGE_BYTES} bytes"
    );
    let (r, rest) = src.split_at(PLANE_BYTES);
    let (g, b) = rest.split_at(PLANE_BYTES);
    let img = image::RgbImage::from_fn(SIDE as u32, SIDE as u32, |x, y| {
        let i = x as usize * SIDE + y as usize;
        image::Rgb([r[i], g[i], b[i]])
    });
    if side == SIDE {
        img.into_raw()
    } else {
        square_rgb(&img, side)
    }
}

fn split_parts(split: Stl10Split) -> &'static [Part] {
    match split {
        Stl10Split::TrainUnlabeled => &[Part::Train, Part::Unlabeled],
        Stl10Split::Unlabeled => &[Part::Unlabeled],
        Stl10Split::Train => &[Part::Train],
    }
}

/// The images of `parts`, in order, the first `limit` of them; labelled when `labelled`.
fn load_parts(
    dir: &Path,
    parts: &[Part],
    labelled: bool,
    limit: Option<usize>,
    side: usize,
) -> Result<ImageDataset> {
    if !(1..=MAX_IMAGE_SIDE).contains(&side) {
        bail!("data.image_size must be in 1..={MAX_IMAGE_SIDE}, got {side}");
    }
    let root = resolve_dir(dir);
    RELEASE.check_folder(&root)?;
    let want = limit.unwrap_or(usize::MAX);
    let mut images = Vec::new();
    let mut labels = Vec::new();
    let mut n = 0usize;
    for &part in parts {
        if n >= want {
            break;
        }
        let (x_name, y_name) = part.files();
        let x_path = root.join(x_name);
        let (x, count) = open_images(&x_path, part.official_count())?;
        let take = (want - n).min(count);
        if let Some(y_name) = y_name {
            let y = read_labels(&root.join(y_name), count, &x_path)?;
            if labelled {
                labels.extend_from_slice(&y[..take]);
            }
        }
        read_images(x, &x_path, take, side, &mut images)?;
        n += take;
    }
    let class_names = RELEASE.class_names(&root.join("class_names.txt"), &DEFAULT_CLASS_NAMES)?;
    Ok(ImageDataset {
        images,
        labels,
        height: side,
        width: side,
        channels: 3,
        num_classes: DEFAULT_CLASS_NAMES.len(),
        class_names,
        mean: MEAN,
        std: STD,
        domains: Vec::new(),
        domain_names: Vec::new(),
    })
}

/// Opens the `_X` file `path` and returns it with its number of images. Errors, naming the
/// file and its size, unless it is a whole number of images; a count other than the official
/// `official` is said at warn level (a subset made on purpose is read as it is).
fn open_images(path: &Path, official: usize) -> Result<(std::fs::File, usize)> {
    let (f, len) = RELEASE.open(path)?;
    if len % IMAGE_BYTES as u64 != 0 {
        bail!(
            "STL-10 file {} is truncated or corrupt: {len} bytes is not a multiple of the \
             {IMAGE_BYTES}-byte image",
            path.display()
        );
    }
    let count = (len / IMAGE_BYTES as u64) as usize;
    if count != official {
        tracing::warn!(
            file = %path.display(),
            "STL-10 file holds {count} images; the release's holds {official}"
        );
    }
    Ok((f, count))
}

/// The labels of the `_y` file `path`, one byte per image of `x_path` (`count` of them), as
/// class indices `0..10`.
fn read_labels(path: &Path, count: usize, x_path: &Path) -> Result<Vec<u32>> {
    let bytes = RELEASE.read(path)?;
    if bytes.len() != count {
        bail!(
            "STL-10 file {} holds {} labels, but {} holds {count} images (one label byte per image)",
            path.display(),
            bytes.len(),
            x_path.display()
        );
    }
    bytes
        .iter()
        .enumerate()
        .map(|(i, &l)| match l {
            1..=10 => Ok(l as u32 - 1),
            _ => bail!(
                "STL-10 file {} is malformed: image {i} has label {l} (must be 1-10)",
                path.display()
            ),
        })
        .collect()
}

/// Appends the first `take` images of the `_X` file `f` (at `path`), converted to
/// `side × side × 3` HWC bytes, to `out`, reading [`CHUNK_IMAGES`] at a time.
fn read_images(
    f: std::fs::File,
    path: &Path,
    take: usize,
    side: usize,
    out: &mut Vec<u8>,
) -> Result<()> {
    out.reserve(take * side * side * 3);
    let mut reader = BufReader::with_capacity(1 << 20, f);
    let mut buf = Vec::new();
    let mut done = 0usize;
    while done < take {
        let k = (take - done).min(CHUNK_IMAGES);
        buf.resize(k * IMAGE_BYTES, 0);
        reader
            .read_exact(&mut buf)
            .with_context(|| format!("cannot read STL-10 file {}", path.display()))?;
        let converted: Vec<Vec<u8>> = buf
            .par_chunks_exact(IMAGE_BYTES)
            .map(|src| image_to_hwc(src, side))
            .collect();
        for img in converted {
            out.extend_from_slice(&img);
        }
        done += k;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An asymmetric image in the release's layout: at row `y`, column `x`, red is `y`, green
    /// is `x` and blue is `seed`.
    fn image(seed: u8) -> Vec<u8> {
        let mut v = vec![0u8; IMAGE_BYTES];
        for x in 0..SIDE {
            for y in 0..SIDE {
                v[x * SIDE + y] = y as u8;
                v[PLANE_BYTES + x * SIDE + y] = x as u8;
                v[2 * PLANE_BYTES + x * SIDE + y] = seed;
            }
        }
        v
    }

    /// `stl10_binary/` in a new tempdir with 3 train (labels 1, 10, 5), 2 test (labels 2, 3)
    /// and 4 unlabelled images; image `i` of a file has blue `seed + i`, with seeds 0 (train),
    /// 50 (test) and 100 (unlabelled).
    fn release() -> tempfile::TempDir {
        let tmp = tempfile::tempdir().unwrap();
        let inner = tmp.path().join("stl10_binary");
        std::fs::create_dir(&inner).unwrap();
        let x = |seed: u8, n: u8| (0..n).flat_map(|i| image(seed + i)).collect::<Vec<u8>>();
        std::fs::write(inner.join("train_X.bin"), x(0, 3)).unwrap();
        std::fs::write(inner.join("train_y.bin"), [1u8, 10, 5]).unwrap();
        std::fs::write(inner.join("test_X.bin"), x(50, 2)).unwrap();
        std::fs::write(inner.join("test_y.bin"), [2u8, 3]).unwrap();
        std::fs::write(inner.join("unlabeled_X.bin"), x(100, 4)).unwrap();
        tmp
    }

    /// The HWC pixel `(y, x)` of image `i`.
    fn px(ds: &ImageDataset, i: usize, y: usize, x: usize) -> [u8; 3] {
        let o = (y * ds.width + x) * 3;
        ds.image(i)[o..o + 3].try_into().unwrap()
    }

    #[test]
    fn native_size_keeps_the_column_major_pixels_in_place() {
        let tmp = release();
        let ds = load_parts(tmp.path(), &[Part::Train], true, None, 96).unwrap();
        assert_eq!((ds.len(), ds.height, ds.width, ds.channels), (3, 96, 96, 3));
        assert_eq!(ds.images.len(), 3 * 96 * 96 * 3);
        assert_eq!(ds.labels, vec![0, 9, 4]);
        assert_eq!(ds.num_classes, 10);
        assert_eq!(ds.class_names[9], "truck");
        assert_eq!((ds.mean, ds.std), (MEAN, STD));
        // row 5, column 70: red is the row, green the column (a row-major read would swap them)
        assert_eq!(px(&ds, 0, 5, 70), [5, 70, 0]);
        assert_eq!(px(&ds, 2, 95, 0), [95, 0, 2]);
        assert_eq!(px(&ds, 1, 0, 95), [0, 95, 1]);
        // test split: labels 2, 3 → 1, 2
        let t = load_parts(tmp.path(), &[Part::Test], true, None, 96).unwrap();
        assert_eq!(t.labels, vec![1, 2]);
        assert_eq!(px(&t, 1, 10, 20), [10, 20, 51]);
    }

    #[test]
    fn resized_images_keep_their_orientation() {
        let tmp = release();
        let ds = load_parts(tmp.path(), &[Part::Test], true, None, 32).unwrap();
        assert_eq!((ds.len(), ds.height, ds.width), (2, 32, 32));
        assert_eq!(ds.images.len(), 2 * 32 * 32 * 3);
        // 96 → 32: output pixel j covers input pixels 3j..3j+3 (centre 3j + 1); blue is constant
        let [r, g, b] = px(&ds, 0, 2, 30);
        assert!((6..=8).contains(&r) && (90..=92).contains(&g), "{r} {g}");
        assert_eq!(b, 50);
        let [r, g, b] = px(&ds, 1, 31, 0);
        assert!((93..=95).contains(&r) && g <= 2, "{r} {g}");
        assert_eq!(b, 51);
        // the image crate's own resize of the same 96×96 image gives the same bytes
        let want = square_rgb(
            &image::RgbImage::from_raw(96, 96, image_to_hwc(&image(50), 96)).unwrap(),
            32,
        );
        assert_eq!(ds.image(0), want.as_slice());
    }

    #[test]
    fn the_clients_splits_and_their_limits() {
        let tmp = release();
        let both = [Part::Train, Part::Unlabeled];
        // train+unlabeled: 3 + 4 images, unlabelled, train first
        let ds = load_parts(tmp.path(), &both, false, None, 96).unwrap();
        assert_eq!(ds.len(), 7);
        assert!(ds.labels.is_empty());
        let blues: Vec<u8> = (0..7).map(|i| px(&ds, i, 0, 0)[2]).collect();
        assert_eq!(blues, vec![0, 1, 2, 100, 101, 102, 103]);
        // a limit into the second file reads only its first images
        let ds = load_parts(tmp.path(), &both, false, Some(5), 96).unwrap();
        let blues: Vec<u8> = (0..5).map(|i| px(&ds, i, 0, 0)[2]).collect();
        assert_eq!(blues, vec![0, 1, 2, 100, 101]);
        // unlabeled alone
        let ds = load_parts(tmp.path(), &[Part::Unlabeled], false, Some(2), 16).unwrap();
        assert_eq!((ds.len(), ds.height), (2, 16));
        assert_eq!(px(&ds, 1, 3, 3)[2], 101);
        // train, labelled, with a limit
        let ds = load_parts(tmp.path(), &[Part::Train], true, Some(2), 96).unwrap();
        assert_eq!(ds.labels, vec![0, 9]);
        assert_eq!(ds.len(), 2);
        // a limit within the train file never opens unlabeled_X.bin
        let inner = resolve_dir(tmp.path());
        std::fs::remove_file(inner.join("unlabeled_X.bin")).unwrap();
        assert_eq!(
            load_parts(tmp.path(), &both, false, Some(3), 96)
                .unwrap()
                .len(),
            3
        );
        let e = format!(
            "{:#}",
            load_parts(tmp.path(), &both, false, Some(4), 96).unwrap_err()
        );
        assert!(
            e.contains("unlabeled_X.bin does not exist")
                && e.contains("--data-dir")
                && e.contains("data.path")
                && e.contains("stl10_binary.tar.gz"),
            "{e}"
        );
    }

    #[test]
    fn the_public_loaders_choose_the_files() {
        let tmp = release();
        let blue = |ds: &ImageDataset| {
            (0..ds.len())
                .map(|i| px(ds, i, 0, 0)[2])
                .collect::<Vec<_>>()
        };
        // the probes' labelled set: train_X.bin with its labels
        let l = load_labelled(tmp.path(), None, 32).unwrap();
        assert_eq!(
            (l.len(), l.height, l.labels.clone()),
            (3, 32, vec![0, 9, 4])
        );
        assert_eq!(blue(&l), vec![0, 1, 2]);
        let t = load_test(tmp.path(), Some(1), 96).unwrap();
        assert_eq!((t.labels.clone(), blue(&t)), (vec![1], vec![50]));
        // the clients' splits
        let u = load_train(tmp.path(), Stl10Split::Unlabeled, None, 32).unwrap();
        assert!(u.labels.is_empty());
        assert_eq!(blue(&u), vec![100, 101, 102, 103]);
        let both = load_train(tmp.path(), Stl10Split::TrainUnlabeled, None, 32).unwrap();
        assert!(both.labels.is_empty());
        assert_eq!(blue(&both), vec![0, 1, 2, 100, 101, 102, 103]);
        let tr = load_train(tmp.path(), Stl10Split::Train, Some(2), 32).unwrap();
        assert_eq!(tr.labels, vec![0, 9]);
        assert_eq!(tr.image(1), l.image(1));
        // the inner folder itself is accepted too
        let inner = load_test(&resolve_dir(tmp.path()), None, 96).unwrap();
        assert_eq!(inner.len(), 2);
        let e = format!("{:#}", load_test(tmp.path(), None, 0).unwrap_err());
        assert!(e.contains("data.image_size"), "{e}");
    }

    #[test]
    fn truncated_files_and_out_of_range_labels_are_refused_naming_the_file() {
        let tmp = release();
        let inner = resolve_dir(tmp.path());
        let x = inner.join("test_X.bin");
        let mut bytes = std::fs::read(&x).unwrap();
        bytes.truncate(bytes.len() - 1);
        std::fs::write(&x, &bytes).unwrap();
        let e = format!(
            "{:#}",
            load_parts(tmp.path(), &[Part::Test], true, None, 32).unwrap_err()
        );
        assert!(
            e.contains(&x.display().to_string())
                && e.contains(
                    "truncated or corrupt: 55295 bytes is not a multiple of the 27648-byte image"
                ),
            "{e}"
        );
        // one image short (whole images): its labels file does not match it
        bytes.truncate(IMAGE_BYTES);
        std::fs::write(&x, &bytes).unwrap();
        let e = format!(
            "{:#}",
            load_parts(tmp.path(), &[Part::Test], true, None, 32).unwrap_err()
        );
        assert!(
            e.contains(&format!(
                "test_y.bin holds 2 labels, but {} holds 1 images",
                x.display()
            )),
            "{e}"
        );
        // labels: 0 and 11 are outside 1..=10, a missing byte is a count
        let y = inner.join("train_y.bin");
        for (bad, at) in [([1u8, 0, 5], 1), ([1, 2, 11], 2)] {
            std::fs::write(&y, bad).unwrap();
            let e = format!(
                "{:#}",
                load_parts(tmp.path(), &[Part::Train], true, Some(1), 96).unwrap_err()
            );
            assert!(
                e.contains(&format!(
                    "STL-10 file {} is malformed: image {at} has label {} (must be 1-10)",
                    y.display(),
                    bad[at]
                )),
                "{e}"
            );
        }
        std::fs::write(&y, [1u8, 2]).unwrap();
        let e = format!(
            "{:#}",
            load_parts(tmp.path(), &[Part::Train], true, None, 96).unwrap_err()
        );
        assert!(e.contains("train_y.bin holds 2 labels, but"), "{e}");
        // the train+unlabeled split checks train_y.bin too, though it keeps no label
        let e = format!(
            "{:#}",
            load_parts(tmp.path(), &[Part::Train, Part::Unlabeled], false, None, 96).unwrap_err()
        );
        assert!(e.contains("train_y.bin"), "{e}");
        // a missing folder
        let e = format!(
            "{:#}",
            load_parts(&tmp.path().join("nope"), &[Part::Test], true, None, 32).unwrap_err()
        );
        assert!(
            e.contains("STL-10 folder")
                && e.contains("nope does not exist")
                && e.contains("--data-dir"),
            "{e}"
        );
    }

    #[test]
    fn splits_are_written_as_the_release_names_them() {
        #[derive(Deserialize)]
        struct T {
            s: Stl10Split,
        }
        let parse = |v: &str| toml::from_str::<T>(&format!("s = \"{v}\"")).map(|t| t.s);
        assert_eq!(
            parse("train+unlabeled").unwrap(),
            Stl10Split::TrainUnlabeled
        );
        assert_eq!(
            parse("train+unlabelled").unwrap(),
            Stl10Split::TrainUnlabeled
        );
        assert_eq!(parse("unlabeled").unwrap(), Stl10Split::Unlabeled);
        assert_eq!(parse("unlabelled").unwrap(), Stl10Split::Unlabeled);
        assert_eq!(parse("train").unwrap(), Stl10Split::Train);
        assert!(parse("test").is_err());
        assert_eq!(Stl10Split::default(), Stl10Split::TrainUnlabeled);
        for s in [
            Stl10Split::TrainUnlabeled,
            Stl10Split::Unlabeled,
            Stl10Split::Train,
        ] {
            assert_eq!(parse(s.name()).unwrap(), s);
        }
        assert!(Stl10Split::Train.is_labelled() && !Stl10Split::Unlabeled.is_labelled());
    }
}
