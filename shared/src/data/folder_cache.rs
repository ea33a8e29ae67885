//! The decoded-images cache of an image folder ([`super::folder`]), so that a second run on
//! the same folder starts at once.
//!
//! The cache is one file in the folder itself, `<DIR>/.fedssl-cache-<S>px.bin` for images of
//! side `S` (hidden, so the folder's reader ignores it). It is keyed by the exact list of
//! files it was made from — relative path, class, size in bytes and modification time (ns) of
//! every file, bad ones included — and by the options (image size, labels, skipping): a cache
//! whose key differs in anything is stale and rebuilt, never used. Layout: the magic
//! `FEDSSLFC`, a `u32` LE version, a `u64` LE length `L`, `L` bytes of JSON header
//! ([`Header`]: the key, the shape, labels, class names, mean/std, skipped files, the CRC-32
//! of the pixels), then the `N·S·S·3` pixel bytes. A file that does not parse, has the wrong
//! length or checksum is rebuilt too (with a warning).
//!
//! Writing goes to a temporary file in the same folder, then a rename, so a reader never
//! sees half a cache. A folder that cannot be written (read-only share) is not an error: the
//! images are used, a warning says that the cache could not be written.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::folder::{BadImage, FileEntry, FolderLabels, FolderLoad, FolderOptions};
use super::ImageDataset;

const MAGIC: &[u8; 8] = b"FEDSSLFC";
const VERSION: u32 = 1;
/// Largest JSON header read (bytes); a larger length field means a corrupt file.
const MAX_HEADER_BYTES: u64 = 1 << 30;

/// What the cache was made from: equal keys, and only equal keys, let the cache be used.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Key {
    image_size: usize,
    labels: FolderLabels,
    skip_bad_images: bool,
    class_names: Vec<String>,
    files: Vec<FileEntry>,
}

/// The JSON header of a cache file.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Header {
    key: Key,
    images: usize,
    labels: Vec<u32>,
    mean: [f32; 3],
    std: [f32; 3],
    skipped: Vec<BadImage>,
    crc32: u32,
}

/// The cache file of `dir` for images of side `image_size`.
pub fn cache_path(dir: &Path, image_size: usize) -> PathBuf {
    dir.join(format!(".fedssl-cache-{image_size}px.bin"))
}

fn key_of(opts: &FolderOptions, entries: &[FileEntry], class_names: &[String]) -> Key {
    Key {
        image_size: opts.image_size,
        labels: opts.labels,
        skip_bad_images: opts.skip_bad_images,
        class_names: class_names.to_vec(),
        files: entries.to_vec(),
    }
}

/// The cached images of `dir` if its cache file exists and was made from exactly `entries`
/// with `opts`; `None` otherwise (no cache, stale or corrupt: the caller decodes).
pub fn read(
    dir: &Path,
    opts: &FolderOptions,
    entries: &[FileEntry],
    class_names: &[String],
) -> Option<FolderLoad> {
    let path = cache_path(dir, opts.image_size);
    let bytes = std::fs::read(&path).ok()?;
    match parse(&bytes, &key_of(opts, entries, class_names)) {
        Ok(Some(load)) => {
            tracing::info!(cache = %path.display(), images = load.dataset.len(), "images from the folder's cache");
            Some(load)
        }
        Ok(None) => {
            tracing::info!(cache = %path.display(), "the folder changed since its cache was made: decoding again");
            None
        }
        Err(why) => {
            tracing::warn!(cache = %path.display(), %why, "ignoring a broken cache file");
            None
        }
    }
}

/// `Ok(None)`: a well-formed cache of other files or options; `Err`: not a valid cache.
fn parse(bytes: &[u8], want: &Key) -> Result<Option<FolderLoad>, String> {
    if bytes.len() < 20 || &bytes[0..8] != MAGIC {
        return Err("not a fedssl folder cache".into());
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().map_err(|_| "short")?);
    if version != VERSION {
        return Err(format!("cache version {version}, expected {VERSION}"));
    }
    let len = u64::from_le_bytes(bytes[12..20].try_into().map_err(|_| "short")?);
    if len > MAX_HEADER_BYTES || len > (bytes.len() - 20) as u64 {
        return Err("header length out of range".into());
    }
    let end = 20 + len as usize;
    let header: Header = serde_json::from_slice(&bytes[20..end]).map_err(|e| e.to_string())?;
    if header.key != *want {
        return Ok(None);
    }
    let s = header.key.image_size;
    let pixels = &bytes[end..];
    if pixels.len() != header.images * s * s * 3 {
        return Err("pixel bytes do not match the header".into());
    }
    if crc32fast::hash(pixels) != header.crc32 {
        return Err("pixel checksum mismatch".into());
    }
    let labelled = header.key.labels == FolderLabels::Subfolders;
    if labelled && header.labels.len() != header.images {
        return Err("labels do not match the images".into());
    }
    let dataset = ImageDataset {
        images: pixels.to_vec(),
        labels: if labelled { header.labels } else { Vec::new() },
        height: s,
        width: s,
        channels: 3,
        num_classes: header.key.class_names.len(),
        class_names: header.key.class_names,
        mean: header.mean,
        std: header.std,
        domains: Vec::new(),
        domain_names: Vec::new(),
    };
    Ok(Some(FolderLoad {
        dataset,
        skipped: header.skipped,
        from_cache: true,
    }))
}

/// Writes `load` as the cache of `dir` (made from `entries` with `opts`), atomically; a
/// failure is a warning, never an error.
pub fn write(dir: &Path, opts: &FolderOptions, entries: &[FileEntry], load: &FolderLoad) {
    let path = cache_path(dir, opts.image_size);
    if let Err(e) = write_file(&path, opts, entries, load) {
        tracing::warn!(cache = %path.display(), error = %e, "could not write the folder's cache (the images are used all the same)");
    }
}

fn write_file(
    path: &Path,
    opts: &FolderOptions,
    entries: &[FileEntry],
    load: &FolderLoad,
) -> std::io::Result<()> {
    let ds = &load.dataset;
    let header = Header {
        key: key_of(opts, entries, &ds.class_names),
        images: ds.len(),
        labels: ds.labels.clone(),
        mean: ds.mean,
        std: ds.std,
        skipped: load.skipped.clone(),
        crc32: crc32fast::hash(&ds.images),
    };
    let json = serde_json::to_vec(&header)?;
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
        f.write_all(MAGIC)?;
        f.write_all(&VERSION.to_le_bytes())?;
        f.write_all(&(json.len() as u64).to_le_bytes())?;
        f.write_all(&json)?;
        f.write_all(&ds.images)?;
        f.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::super::folder::load_folder;
    use super::*;
    use image::{Rgb, RgbImage};
    use std::time::{Duration, SystemTime};

    #[test]
    fn the_cache_is_used_and_a_changed_file_invalidates_it() {
        let d = tempfile::tempdir().unwrap();
        for i in 0..3u8 {
            RgbImage::from_pixel(40, 30, Rgb([i * 50, 1, 2]))
                .save(d.path().join(format!("{i}.png")))
                .unwrap();
        }
        let opts = FolderOptions::default();
        let first = load_folder(d.path(), &opts).unwrap();
        assert!(!first.from_cache);
        let cache = cache_path(d.path(), 32);
        assert!(cache.is_file());
        let second = load_folder(d.path(), &opts).unwrap();
        assert!(second.from_cache);
        assert_eq!(second.dataset, first.dataset);
        // other options: the same folder is decoded again, not served from this cache
        let skip = FolderOptions {
            skip_bad_images: true,
            ..opts.clone()
        };
        assert!(!load_folder(d.path(), &skip).unwrap().from_cache);
        assert!(!load_folder(d.path(), &opts).unwrap().from_cache);
        // change one image (new pixels, a later mtime): the new pixels appear
        let p = d.path().join("1.png");
        RgbImage::from_pixel(40, 30, Rgb([9, 99, 199]))
            .save(&p)
            .unwrap();
        let later = SystemTime::now() + Duration::from_secs(5);
        std::fs::File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_modified(later)
            .unwrap();
        let third = load_folder(d.path(), &opts).unwrap();
        assert!(!third.from_cache);
        assert!(third
            .dataset
            .image(1)
            .chunks(3)
            .all(|px| px == [9, 99, 199]));
        assert_eq!(third.dataset.image(0), first.dataset.image(0));
        // a file added is a change too
        RgbImage::from_pixel(8, 8, Rgb([3, 3, 3]))
            .save(d.path().join("3.png"))
            .unwrap();
        let fourth = load_folder(d.path(), &opts).unwrap();
        assert!(!fourth.from_cache && fourth.dataset.len() == 4);
        // a corrupt cache file is rebuilt, not trusted
        let mut bytes = std::fs::read(&cache).unwrap();
        let n = bytes.len();
        bytes[n - 1] ^= 0xff;
        std::fs::write(&cache, &bytes).unwrap();
        let fifth = load_folder(d.path(), &opts).unwrap();
        assert!(!fifth.from_cache);
        assert_eq!(fifth.dataset, fourth.dataset);
        assert!(load_folder(d.path(), &opts).unwrap().from_cache);
        // no temporary file is left behind
        let left: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("tmp"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }
}
