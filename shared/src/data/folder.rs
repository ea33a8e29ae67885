//! A site's own images: a folder of PNG, JPEG, WebP or BMP files of any size
//! (`[data] dataset = "folder"`, `fedssl-client --dataset folder --data DIR`).
//!
//! The folder is read recursively; files and folders whose name starts with `.` are ignored
//! (among them this loader's own cache, [`super::folder_cache`]). The paths are sorted, so the
//! order of the images (and every seeded choice made on them) does not depend on the file
//! system. Files are decoded in parallel (rayon) with the `image` crate (its default decoding
//! limit of 512 MiB per image refuses decompression bombs), converted to RGB (grey is
//! replicated, alpha dropped, 16-bit scaled to 8), then the centred square of side
//! `min(W, H)` is cut out and resized to `image_size × image_size` with a triangle (bilinear,
//! antialiased) filter: the shorter side becomes `image_size` and the longer one is
//! centre-cropped. The result is `u8` `(N, H, W, C)` with `C = 3`, as every dataset here.
//!
//! Labels: none by default (a site's images are unlabelled); with
//! [`FolderLabels::Subfolders`] each top-level folder `DIR/<class>/…` is a class (classes in
//! sorted order, index = position), which is how a labelled probe set for the coordinator is
//! laid out. A file that cannot be decoded, or whose extension is not one of the four
//! formats, is an error naming it; with `skip_bad_images` it is left out and listed in
//! [`FolderLoad::skipped`]. A folder without any image is refused, naming it.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use image::imageops::FilterType;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::folder_cache;
use super::ImageDataset;

/// File extensions read (case-insensitive).
pub const EXTENSIONS: [&str; 5] = ["png", "jpg", "jpeg", "webp", "bmp"];

/// Deepest folder nesting read below the dataset's folder (a guard against symlink loops).
pub const MAX_DEPTH: usize = 32;

/// How a folder's images get labels.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FolderLabels {
    /// Unlabelled (the default): what a site's own images are.
    #[default]
    None,
    /// Every top-level folder `DIR/<class>/` is a class; its images (at any depth) have its
    /// label. A file directly in `DIR` is refused.
    Subfolders,
}

/// How to read a folder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FolderOptions {
    /// Side in pixels of the square images produced (`data.image_size`).
    pub image_size: usize,
    /// Where labels come from (`data.labels`).
    pub labels: FolderLabels,
    /// Leave out files that cannot be decoded, and count them, instead of failing
    /// (`data.skip_bad_images`, `--skip-bad-images`).
    pub skip_bad_images: bool,
    /// Read and write the folder's cache ([`super::folder_cache`]); on by default.
    pub cache: bool,
}

impl Default for FolderOptions {
    fn default() -> Self {
        Self {
            image_size: super::IMAGE_SIDE,
            labels: FolderLabels::None,
            skip_bad_images: false,
            cache: true,
        }
    }
}

/// A file that was left out, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BadImage {
    /// Path relative to the dataset's folder.
    pub path: PathBuf,
    /// Why it could not be read (the decoder's message).
    pub reason: String,
}

/// The result of reading a folder.
#[derive(Clone, Debug, PartialEq)]
pub struct FolderLoad {
    /// The images, `u8` `(N, image_size, image_size, 3)`.
    pub dataset: ImageDataset,
    /// Files left out with `skip_bad_images` (empty otherwise).
    pub skipped: Vec<BadImage>,
    /// True when the images came from a valid cache rather than from decoding.
    pub from_cache: bool,
}

/// One image file found in the folder: its path relative to the folder, its class index
/// (0 when unlabelled), its size in bytes and its modification time (nanoseconds since the
/// Unix epoch; 0 where the file system does not say).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Path relative to the dataset's folder.
    pub path: PathBuf,
    /// Class index (0 when unlabelled).
    pub class: u32,
    /// Size in bytes.
    pub bytes: u64,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: u128,
}

/// Reads the images of `dir` as `opts` says (module docs), from its cache when the cache
/// was made from exactly these files (names, sizes, modification times) with the same
/// options, else by decoding them (and then writing the cache).
///
/// Errors, naming the file or folder: `dir` is not a readable folder; it holds no image;
/// a file is not an image of a supported format or cannot be decoded (unless
/// `skip_bad_images`); with subfolder labels, a file outside every class folder or a class
/// folder without an image.
pub fn load_folder(dir: &Path, opts: &FolderOptions) -> Result<FolderLoad> {
    if !(1..=super::MAX_IMAGE_SIDE).contains(&opts.image_size) {
        bail!(
            "data.image_size must be in 1..={}, got {}",
            super::MAX_IMAGE_SIDE,
            opts.image_size
        );
    }
    let (entries, class_names) = list_files(dir, opts.labels)?;
    if entries.is_empty() {
        bail!(
            "the image folder {} holds no image (.png, .jpg, .jpeg, .webp or .bmp)",
            dir.display()
        );
    }
    if opts.cache {
        if let Some(hit) = folder_cache::read(dir, opts, &entries, &class_names) {
            return Ok(hit);
        }
    }
    tracing::info!(folder = %dir.display(), files = entries.len(), "decoding images");
    let load = decode_all(dir, opts, &entries, class_names)?;
    if opts.cache {
        folder_cache::write(dir, opts, &entries, &load);
    }
    Ok(load)
}

/// Checks `dir` before anything is decoded — what a client does before it connects, so that
/// a site learns of a wrong folder at once rather than after joining: the folder is readable,
/// holds at least one image, and every file has a supported extension and an image header
/// that the `image` crate recognises (format and dimensions; the pixels are not decoded, so a
/// file truncated after its header is found only by [`load_folder`]). Returns the number of
/// files that passed (with `skip_bad_images`, the others are only counted out).
///
/// Errors, naming the file or folder: as [`load_folder`]'s, for the header.
pub fn check_folder(dir: &Path, labels: FolderLabels, skip_bad_images: bool) -> Result<usize> {
    let (entries, _) = list_files(dir, labels)?;
    let mut good = 0usize;
    for e in &entries {
        let path = dir.join(&e.path);
        match check_header(&path) {
            Ok(()) => good += 1,
            Err(_) if skip_bad_images => {}
            Err(reason) => bail!(
                "{}: {reason} (--skip-bad-images or data.skip_bad_images = true leaves such files out)",
                path.display()
            ),
        }
    }
    if good == 0 {
        bail!(
            "the image folder {} holds no image (.png, .jpg, .jpeg, .webp or .bmp){}",
            dir.display(),
            if entries.is_empty() {
                String::new()
            } else {
                format!("; {} other file(s) left out", entries.len())
            }
        );
    }
    Ok(good)
}

/// Whether `path` has one of the [`EXTENSIONS`] (case-insensitive), or why not.
fn supported_extension(path: &Path) -> std::result::Result<(), String> {
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    if EXTENSIONS.contains(&ext.as_str()) {
        Ok(())
    } else {
        Err("not an image of a supported format (.png, .jpg, .jpeg, .webp, .bmp)".into())
    }
}

/// The extension and header of one file: a supported format whose dimensions can be read.
fn check_header(path: &Path) -> std::result::Result<(), String> {
    supported_extension(path)?;
    image::io::Reader::open(path)
        .map_err(|e| format!("cannot read: {e}"))?
        .with_guessed_format()
        .map_err(|e| format!("cannot read: {e}"))?
        .into_dimensions()
        .map(|_| ())
        .map_err(|e| format!("cannot decode the image: {e}"))
}

/// Every file below `dir` (hidden ones left out), sorted by relative path, with its class;
/// and the class names (empty when unlabelled).
fn list_files(dir: &Path, labels: FolderLabels) -> Result<(Vec<FileEntry>, Vec<String>)> {
    let meta = std::fs::metadata(dir)
        .with_context(|| format!("cannot read the image folder {}", dir.display()))?;
    if !meta.is_dir() {
        bail!("the image folder {} is not a folder", dir.display());
    }
    let mut entries = Vec::new();
    match labels {
        FolderLabels::None => {
            walk(dir, Path::new(""), 0, 0, &mut entries)?;
            Ok((entries, Vec::new()))
        }
        FolderLabels::Subfolders => {
            let mut names = Vec::new();
            for child in sorted_children(dir)? {
                let path = dir.join(&child);
                if path.is_dir() {
                    names.push(child.to_string_lossy().into_owned());
                } else {
                    bail!(
                        "{}: with data.labels = \"subfolders\" every image must be in a class folder {}/<class>/",
                        path.display(),
                        dir.display()
                    );
                }
            }
            for (class, name) in names.iter().enumerate() {
                let before = entries.len();
                walk(dir, Path::new(name), class as u32, 1, &mut entries)?;
                if entries.len() == before {
                    bail!(
                        "the class folder {} holds no image",
                        dir.join(name).display()
                    );
                }
            }
            Ok((entries, names))
        }
    }
}

/// The names of `dir`'s entries, hidden ones (leading `.`) left out, sorted.
fn sorted_children(dir: &Path) -> Result<Vec<std::ffi::OsString>> {
    let mut names = Vec::new();
    for e in
        std::fs::read_dir(dir).with_context(|| format!("cannot read folder {}", dir.display()))?
    {
        let e = e.with_context(|| format!("cannot read folder {}", dir.display()))?;
        let name = e.file_name();
        if !name.to_string_lossy().starts_with('.') {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// Appends the files below `root/rel` (recursively, sorted) to `out` with class `class`.
fn walk(root: &Path, rel: &Path, class: u32, depth: usize, out: &mut Vec<FileEntry>) -> Result<()> {
    let dir = root.join(rel);
    if depth > MAX_DEPTH {
        bail!(
            "{}: folders nested deeper than {MAX_DEPTH} levels (a symlink loop?)",
            dir.display()
        );
    }
    for name in sorted_children(&dir)? {
        let rel_child = rel.join(&name);
        let path = root.join(&rel_child);
        let meta =
            std::fs::metadata(&path).with_context(|| format!("cannot read {}", path.display()))?;
        if meta.is_dir() {
            walk(root, &rel_child, class, depth + 1, out)?;
        } else {
            let mtime_ns = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos());
            out.push(FileEntry {
                path: rel_child,
                class,
                bytes: meta.len(),
                mtime_ns,
            });
        }
    }
    Ok(())
}

/// Decodes every entry in parallel; bad files fail the load or, with `skip_bad_images`, are
/// listed. Mean and std are computed from the decoded pixels.
fn decode_all(
    dir: &Path,
    opts: &FolderOptions,
    entries: &[FileEntry],
    class_names: Vec<String>,
) -> Result<FolderLoad> {
    let decoded: Vec<std::result::Result<Vec<u8>, String>> = entries
        .par_iter()
        .map(|e| decode_one(&dir.join(&e.path), opts.image_size))
        .collect();
    let s = opts.image_size;
    let mut images = Vec::with_capacity(entries.len() * s * s * 3);
    let mut labels = Vec::new();
    let mut skipped = Vec::new();
    for (e, d) in entries.iter().zip(decoded) {
        match d {
            Ok(px) => {
                images.extend_from_slice(&px);
                labels.push(e.class);
            }
            Err(reason) if opts.skip_bad_images => {
                tracing::warn!(file = %dir.join(&e.path).display(), %reason, "skipping a bad image");
                skipped.push(BadImage {
                    path: e.path.clone(),
                    reason,
                });
            }
            Err(reason) => bail!(
                "{}: {reason} (--skip-bad-images or data.skip_bad_images = true leaves such files out)",
                dir.join(&e.path).display()
            ),
        }
    }
    if labels.is_empty() {
        bail!(
            "the image folder {} holds no readable image ({} skipped as bad)",
            dir.display(),
            skipped.len()
        );
    }
    let (mean, std) = ImageDataset::compute_mean_std(&images, 3);
    let labelled = opts.labels == FolderLabels::Subfolders;
    let dataset = ImageDataset {
        images,
        labels: if labelled { labels } else { Vec::new() },
        height: s,
        width: s,
        channels: 3,
        num_classes: class_names.len(),
        class_names,
        mean,
        std,
        domains: Vec::new(),
        domain_names: Vec::new(),
    };
    Ok(FolderLoad {
        dataset,
        skipped,
        from_cache: false,
    })
}

/// One file as `side × side × 3` RGB bytes (HWC), or why it cannot be read.
pub fn decode_one(path: &Path, side: usize) -> std::result::Result<Vec<u8>, String> {
    supported_extension(path)?;
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
    let img = image::io::Reader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| format!("cannot read: {e}"))?
        .decode()
        .map_err(|e| format!("cannot decode the image: {e}"))?;
    Ok(square_rgb(&img.to_rgb8(), side))
}

/// The centred `min(W, H)` square of `rgb`, resized to `side × side` (triangle filter), as
/// HWC bytes.
pub fn square_rgb(rgb: &image::RgbImage, side: usize) -> Vec<u8> {
    let (w, h) = rgb.dimensions();
    let m = w.min(h);
    let crop = image::imageops::crop_imm(rgb, (w - m) / 2, (h - m) / 2, m, m).to_image();
    let side = side as u32;
    if m == side {
        return crop.into_raw();
    }
    image::imageops::resize(&crop, side, side, FilterType::Triangle).into_raw()
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{GrayImage, Luma, Rgb, RgbImage, Rgba, RgbaImage};

    fn opts() -> FolderOptions {
        FolderOptions::default()
    }

    /// An RGB image whose pixel (x, y) is (x, y, 7) mod 256.
    fn ramp(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| Rgb([(x % 256) as u8, (y % 256) as u8, 7]))
    }

    #[test]
    fn odd_sizes_become_the_right_shape() {
        let d = tempfile::tempdir().unwrap();
        ramp(17, 300).save(d.path().join("a.png")).unwrap();
        ramp(1, 1).save(d.path().join("b.png")).unwrap();
        std::fs::create_dir(d.path().join("deep")).unwrap();
        ramp(4000, 10).save(d.path().join("deep/c.jpg")).unwrap();
        ramp(40, 32).save(d.path().join("deep/d.bmp")).unwrap();
        let l = load_folder(d.path(), &opts()).unwrap();
        let ds = &l.dataset;
        assert_eq!((ds.len(), ds.height, ds.width, ds.channels), (4, 32, 32, 3));
        assert_eq!(ds.images.len(), 4 * 32 * 32 * 3);
        assert!(ds.labels.is_empty() && ds.num_classes == 0);
        // sorted: a.png, b.png, deep/c.jpg, deep/d.bmp; the 1x1 image is one colour
        assert!(ds.image(1).chunks(3).all(|p| p == [0, 0, 7]));
        // 40x32 → its centred 32x32 (x 4..36) at scale 1: pixel (x, y) = (x + 4, y, 7)
        let d_img = ds.image(3);
        assert_eq!(&d_img[0..3], &[4, 0, 7]);
        assert_eq!(&d_img[(5 * 32 + 9) * 3..(5 * 32 + 9) * 3 + 3], &[13, 5, 7]);
        // 17x300: the centred 17x17 square (rows 141..158) resized up; its top-left is near
        // (0, 141) and its bottom-right near (16, 157)
        let a = ds.image(0);
        assert!(a[0] <= 1 && (140..=142).contains(&a[1]), "{:?}", &a[0..3]);
        let last = &a[a.len() - 3..];
        assert!(last[0] >= 15 && (156..=158).contains(&last[1]), "{last:?}");
        // a size other than 32
        let o = FolderOptions {
            image_size: 8,
            cache: false,
            ..opts()
        };
        let l8 = load_folder(d.path(), &o).unwrap();
        assert_eq!(
            (l8.dataset.height, l8.dataset.images.len()),
            (8, 4 * 8 * 8 * 3)
        );
    }

    #[test]
    fn grey_and_rgba_become_rgb() {
        let d = tempfile::tempdir().unwrap();
        GrayImage::from_pixel(20, 50, Luma([77]))
            .save(d.path().join("g.png"))
            .unwrap();
        RgbaImage::from_pixel(64, 64, Rgba([10, 200, 30, 128]))
            .save(d.path().join("h.png"))
            .unwrap();
        let ds = load_folder(d.path(), &opts()).unwrap().dataset;
        assert!(ds.image(0).chunks(3).all(|p| p == [77, 77, 77]));
        assert!(ds.image(1).chunks(3).all(|p| p == [10, 200, 30]));
        assert_eq!(ds.len(), 2);
    }

    #[test]
    fn a_truncated_jpeg_is_refused_by_name_or_skipped_and_counted() {
        let d = tempfile::tempdir().unwrap();
        ramp(64, 64).save(d.path().join("good.png")).unwrap();
        let full = d.path().join("full.jpg");
        ramp(64, 64).save(&full).unwrap();
        let bytes = std::fs::read(&full).unwrap();
        std::fs::write(d.path().join("broken.jpg"), &bytes[..bytes.len() / 3]).unwrap();
        std::fs::remove_file(&full).unwrap();
        std::fs::write(d.path().join("notes.txt"), b"hello").unwrap();
        let e = format!("{:#}", load_folder(d.path(), &opts()).unwrap_err());
        assert!(
            e.contains("broken.jpg") && e.contains("--skip-bad-images"),
            "{e}"
        );
        let skip = FolderOptions {
            skip_bad_images: true,
            ..opts()
        };
        let l = load_folder(d.path(), &skip).unwrap();
        assert_eq!(l.dataset.len(), 1);
        let names: Vec<_> = l.skipped.iter().map(|b| b.path.clone()).collect();
        assert_eq!(
            names,
            vec![PathBuf::from("broken.jpg"), PathBuf::from("notes.txt")]
        );
        assert!(
            l.skipped[1].reason.contains("supported format"),
            "{:?}",
            l.skipped
        );
        // only bad files: refused even with skipping
        std::fs::remove_file(d.path().join("good.png")).unwrap();
        let e = format!("{:#}", load_folder(d.path(), &skip).unwrap_err());
        assert!(
            e.contains("no readable image") && e.contains("2 skipped"),
            "{e}"
        );
    }

    #[test]
    fn the_check_before_connecting_names_a_missing_an_empty_and_a_bad_folder() {
        let refused = |dir: &Path, skip| {
            format!(
                "{:#}",
                check_folder(dir, FolderLabels::None, skip).unwrap_err()
            )
        };
        let d = tempfile::tempdir().unwrap();
        let e = refused(&d.path().join("nope"), false);
        assert!(
            e.contains("cannot read the image folder") && e.contains("nope"),
            "{e}"
        );
        let e = refused(d.path(), false);
        assert!(e.contains("holds no image"), "{e}");
        ramp(7, 5).save(d.path().join("a.png")).unwrap();
        ramp(9, 3).save(d.path().join("b.jpg")).unwrap();
        assert_eq!(
            check_folder(d.path(), FolderLabels::None, false).unwrap(),
            2
        );
        std::fs::write(d.path().join("README.txt"), b"site images").unwrap();
        std::fs::write(d.path().join("c.png"), b"not a png").unwrap();
        let e = refused(d.path(), false);
        assert!(
            e.contains("README.txt") && e.contains("supported format"),
            "{e}"
        );
        // skipped: only the two good files count
        assert_eq!(check_folder(d.path(), FolderLabels::None, true).unwrap(), 2);
        std::fs::remove_file(d.path().join("README.txt")).unwrap();
        let e = refused(d.path(), false);
        assert!(e.contains("c.png") && e.contains("cannot decode"), "{e}");
        // only bad files: refused even when skipping, with the count
        let only_bad = tempfile::tempdir().unwrap();
        std::fs::write(only_bad.path().join("notes.txt"), b"x").unwrap();
        let e = refused(only_bad.path(), true);
        assert!(
            e.contains("holds no image") && e.contains("1 other file(s)"),
            "{e}"
        );
    }

    #[test]
    fn an_empty_folder_is_refused_naming_it() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("sub")).unwrap();
        std::fs::write(d.path().join(".hidden.png"), b"x").unwrap();
        let e = format!("{:#}", load_folder(d.path(), &opts()).unwrap_err());
        assert!(
            e.contains(&d.path().display().to_string()) && e.contains("holds no image"),
            "{e}"
        );
        let missing = d.path().join("nope");
        let e = format!("{:#}", load_folder(&missing, &opts()).unwrap_err());
        assert!(e.contains("nope"), "{e}");
    }

    #[test]
    fn class_subfolders_are_labels() {
        let d = tempfile::tempdir().unwrap();
        for (class, v) in [("cat", 10u8), ("dog", 200)] {
            std::fs::create_dir_all(d.path().join(class).join("x")).unwrap();
            for i in 0..2 {
                RgbImage::from_pixel(33, 35, Rgb([v, i, 0]))
                    .save(d.path().join(class).join("x").join(format!("{i}.png")))
                    .unwrap();
            }
        }
        let o = FolderOptions {
            labels: FolderLabels::Subfolders,
            ..opts()
        };
        let ds = load_folder(d.path(), &o).unwrap().dataset;
        assert_eq!(ds.labels, vec![0, 0, 1, 1]);
        assert_eq!(ds.class_names, vec!["cat", "dog"]);
        assert_eq!(&ds.image(2)[0..3], &[200, 0, 0]);
        // unlabelled, the same files have no labels
        let u = load_folder(d.path(), &opts()).unwrap().dataset;
        assert!(u.labels.is_empty() && u.len() == 4);
        // a loose file refuses subfolder labels
        RgbImage::from_pixel(4, 4, Rgb([0, 0, 0]))
            .save(d.path().join("loose.png"))
            .unwrap();
        let e = format!("{:#}", load_folder(d.path(), &o).unwrap_err());
        assert!(e.contains("loose.png") && e.contains("class folder"), "{e}");
    }
}
