//! Where a client's training images come from ([`DataSource`]) and how they are loaded once
//! the coordinator has described the run ([`resolve_data`]): a simulation's in-memory shard,
//! shard `k` of the scenario's partition into `n`, the whole dataset of a site, or a site's
//! own folder of images ([`fedssl_shared::data::folder`], resized to the run's
//! `data.image_size`); then the run's feature skew ([`fedssl_shared::feature_skew`]) of this
//! client.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use fedssl_shared::data::{DatasetKind, ImageDataset, Split};
use fedssl_shared::protocol::RunInfo;

/// Where a client's training images come from.
#[derive(Clone)]
pub enum DataSource {
    /// Images already in memory (simulation hands each client its shard `shard = (k, n)`,
    /// which also fixes the client's id, so a simulation is reproducible).
    InMemory {
        /// The shard's images.
        data: Arc<ImageDataset>,
        /// Which shard of how many, if any.
        shard: Option<(u32, u32)>,
    },
    /// Load the run's dataset (synthetic needs no `dir`; CIFAR-10, CIFAR-100 and STL-10 need
    /// it) and keep shard `k` (0-based) of the coordinator's partition into `n` shards.
    Shard {
        /// The release's folder; ignored for the synthetic dataset.
        dir: Option<PathBuf>,
        /// This client's shard, 0-based.
        k: u32,
        /// Number of shards.
        n: u32,
    },
    /// Virtual client `k` of `n` in a process hosting a slice of a simulation's clients
    /// (`fedssl-client --virtual A..B/N`): shard `k` as [`DataSource::Shard`] draws it, the
    /// dataset loaded and partitioned once for every virtual client of the process
    /// ([`SharedPartition`]).
    Virtual {
        /// This client's shard, 0-based.
        k: u32,
        /// Number of shards (the simulation's clients).
        n: u32,
        /// The dataset and its partition, shared by the process's virtual clients.
        partition: Arc<SharedPartition>,
    },
    /// Every training image of the dataset in `dir` is this site's data (a real deployment).
    Whole {
        /// The release's folder (for the synthetic dataset, `None`).
        dir: Option<PathBuf>,
    },
    /// This site's own folder of PNG/JPEG/WebP/BMP images, whatever the run's dataset
    /// (`fedssl-client --dataset folder --data DIR`): read recursively, unlabelled, resized
    /// to the run's `data.image_size`, through the folder's cache.
    Folder {
        /// The image folder.
        dir: PathBuf,
        /// Leave out (and count) files that cannot be decoded instead of failing.
        skip_bad_images: bool,
        /// Set once the folder is read: how many files were left out as bad.
        skipped: Arc<AtomicUsize>,
    },
}

impl DataSource {
    /// The shard `(k, n)` this source claims in its hello, if any.
    pub(crate) fn shard(&self) -> Option<(u32, u32)> {
        match self {
            DataSource::Shard { k, n, .. } | DataSource::Virtual { k, n, .. } => Some((*k, *n)),
            DataSource::InMemory { shard, .. } => *shard,
            DataSource::Whole { .. } | DataSource::Folder { .. } => None,
        }
    }
}

/// The run's training set and its partition into `n` shards, computed by the first virtual
/// client of a process that needs it and shared by the others ([`DataSource::Virtual`]): a
/// process hosting 1,000 virtual clients reads and partitions its dataset once, and each
/// client copies out only its own shard.
pub struct SharedPartition {
    /// The release's folder; `None` for the synthetic dataset.
    dir: Option<PathBuf>,
    /// The run it was computed for, and its partition.
    done: Mutex<Option<(RunInfo, Arc<Partitioned>)>>,
}

/// A run's training set and its shards' image indices (`parts[k]`: shard `k`).
type Partitioned = (ImageDataset, Vec<Vec<usize>>);

impl SharedPartition {
    /// An empty cache over the dataset in `dir` (`None`: synthetic).
    pub fn new(dir: Option<PathBuf>) -> Self {
        Self {
            dir,
            done: Mutex::new(None),
        }
    }

    /// The training set of `run` and its `n` shards, computed once per run.
    fn get(&self, run: &RunInfo, n: u32) -> Result<Arc<Partitioned>> {
        let mut done = self
            .done
            .lock()
            .map_err(|_| anyhow::anyhow!("a virtual client panicked while partitioning"))?;
        if let Some((r, p)) = done.as_ref() {
            if r == run {
                return Ok(p.clone());
            }
        }
        let p = Arc::new(partition_run(self.dir.as_deref(), run, n)?);
        *done = Some((run.clone(), p.clone()));
        Ok(p)
    }
}

/// The run's training set (an unlabelled set, e.g. STL-10's unlabelled images, as one class)
/// and its partition into `n` shards, drawn as the coordinator draws it: the scenario's
/// `[partition]` with its `partition` seed stream.
fn partition_run(dir: Option<&std::path::Path>, run: &RunInfo, n: u32) -> Result<Partitioned> {
    let full = load_run_train_set(dir, run)?.one_class_if_unlabelled();
    let parts = fedssl_shared::partition::partition_dataset(
        &full,
        n as usize,
        &run.partition,
        fedssl_shared::seed::derive(run.seed, fedssl_shared::seed::PARTITION, 0),
    )?;
    Ok((full, parts))
}

/// Checks that shard `k` of `n` (given by `flag`, `--shard` or `--virtual`) fits `run`.
fn check_shard(flag: &str, k: u32, n: u32, run: &RunInfo) -> Result<()> {
    if n != run.num_clients {
        bail!(
            "{flag} {k}/{n}: the coordinator's scenario has {} clients",
            run.num_clients
        );
    }
    if k >= n {
        bail!("{flag} {k}/{n}: K must be below N (shards are 0-based)");
    }
    Ok(())
}

impl DataSource {
    /// What can be checked of this source before the client connects, without knowing the
    /// run: a site's image folder is readable and holds images
    /// ([`fedssl_shared::data::check_folder`]; logged with its count); a `--data` folder of a
    /// dataset exists. Errors name the folder or file and say which flag gave it.
    pub fn check_before_connecting(&self) -> Result<()> {
        match self {
            DataSource::Folder {
                dir,
                skip_bad_images,
                ..
            } => {
                let n = fedssl_shared::data::check_folder(
                    dir,
                    fedssl_shared::data::FolderLabels::None,
                    *skip_bad_images,
                )
                .context("--data")?;
                tracing::info!(folder = %dir.display(), images = n, "this site's image folder");
                Ok(())
            }
            DataSource::Whole { dir } | DataSource::Shard { dir, .. } => {
                dir.as_deref().map_or(Ok(()), check_data_dir)
            }
            DataSource::Virtual { partition, .. } => {
                partition.dir.as_deref().map_or(Ok(()), check_data_dir)
            }
            DataSource::InMemory { .. } => Ok(()),
        }
    }
}

/// A dataset's `--data` folder exists and is a folder; the error names it.
fn check_data_dir(dir: &std::path::Path) -> Result<()> {
    let meta = std::fs::metadata(dir)
        .with_context(|| format!("--data {}: cannot read it", dir.display()))?;
    if !meta.is_dir() {
        bail!("--data {}: not a folder", dir.display());
    }
    Ok(())
}

/// Loads the training images this client owns, given the run described by the coordinator,
/// through the run's `[feature_skew]` transform of this client (its shard index `K`, or
/// `client_id` without a shard, of the run's clients; nothing is copied when it is off).
/// Errors: the dataset cannot be loaded, `--shard K/N` does not fit the run's clients, or
/// the transform cannot apply to the images.
pub(crate) fn resolve_data(
    source: &DataSource,
    run: &RunInfo,
    client_id: u32,
) -> Result<Arc<ImageDataset>> {
    let data = load_source(source, run)?;
    let index = source.shard().map_or(client_id, |(k, _)| k);
    match run
        .feature_skew
        .apply(&data, run.seed, index, run.num_clients)?
    {
        Some(skewed) => Ok(Arc::new(skewed)),
        None => Ok(data),
    }
}

/// The images of `source` as they are.
fn load_source(source: &DataSource, run: &RunInfo) -> Result<Arc<ImageDataset>> {
    match source {
        DataSource::InMemory { data, .. } => Ok(data.clone()),
        DataSource::Shard { .. } | DataSource::Virtual { .. } | DataSource::Whole { .. }
            if run.dataset == DatasetKind::Mixed =>
        {
            bail!(
                "the run's dataset is mixed (several datasets, one domain per client: a simulation's setup, whose sources are the coordinator's files); a site trains on its own data: --dataset folder --data DIR"
            )
        }
        DataSource::Whole { dir } if run.dataset == DatasetKind::Folder => {
            let dir = dir.as_ref().context(
                "the run's dataset is a folder of images: this site's folder is --data DIR",
            )?;
            load_site_folder(dir, run.image_size, false, &Arc::default())
        }
        DataSource::Whole { dir } => Ok(Arc::new(
            load_run_train_set(dir.as_deref(), run)?.unlabelled(),
        )),
        DataSource::Folder {
            dir,
            skip_bad_images,
            skipped,
        } => load_site_folder(dir, run.image_size, *skip_bad_images, skipped),
        DataSource::Shard { .. } | DataSource::Virtual { .. }
            if run.dataset == DatasetKind::Folder =>
        {
            bail!(
                "--shard/--virtual: the run's dataset is each site's own image folder, which is not partitioned; leave them out"
            )
        }
        DataSource::Shard { dir, k, n } => {
            check_shard("--shard", *k, *n, run)?;
            let (full, parts) = partition_run(dir.as_deref(), run, *n)?;
            Ok(Arc::new(full.subset(&parts[*k as usize]).unlabelled()))
        }
        DataSource::Virtual { k, n, partition } => {
            check_shard("--virtual", *k, *n, run)?;
            let p = partition.get(run, *n)?;
            Ok(Arc::new(p.0.subset(&p.1[*k as usize]).unlabelled()))
        }
    }
}

/// The run's training split ([`Split::Train`]: STL-10's `data.stl10_split`) read from `dir`
/// as the run says ([`RunInfo::load_options`]: its image size, CIFAR-100's labels), the first
/// `train_images` of it.
fn load_run_train_set(dir: Option<&std::path::Path>, run: &RunInfo) -> Result<ImageDataset> {
    fedssl_shared::data::load_split_with(
        run.dataset,
        dir,
        run.train_images,
        run.seed,
        Split::Train,
        &run.load_options(),
    )
}

/// This site's image folder `dir` at `image_size` pixels, unlabelled; the count of files
/// left out as bad (with `skip_bad_images`) is stored in `skipped` and logged.
fn load_site_folder(
    dir: &std::path::Path,
    image_size: usize,
    skip_bad_images: bool,
    skipped: &AtomicUsize,
) -> Result<Arc<ImageDataset>> {
    let opts = fedssl_shared::data::FolderOptions {
        image_size,
        skip_bad_images,
        ..Default::default()
    };
    let load = fedssl_shared::data::load_folder(dir, &opts)?;
    skipped.store(load.skipped.len(), Ordering::SeqCst);
    if !load.skipped.is_empty() {
        tracing::warn!(
            folder = %dir.display(),
            "left out {} bad image file(s) (--skip-bad-images): {}",
            load.skipped.len(),
            load.skipped
                .iter()
                .take(5)
                .map(|b| b.path.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    tracing::info!(
        folder = %dir.display(),
        images = load.dataset.len(),
        cached = load.from_cache,
        "this site's images"
    );
    Ok(Arc::new(load.dataset.unlabelled()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use fedssl_shared::config::Scenario;
    use fedssl_shared::feature_skew::RotationSkew;

    /// A run of the folder dataset at `image_size` pixels.
    fn folder_run(image_size: usize) -> RunInfo {
        let mut sc = Scenario::default();
        sc.data.dataset = DatasetKind::Folder;
        sc.data.image_size = image_size;
        RunInfo::of(&sc)
    }

    #[test]
    fn a_folder_run_reads_the_sites_data_as_a_folder_at_the_runs_size() {
        let d = tempfile::tempdir().unwrap();
        for i in 0..3u8 {
            image::RgbImage::from_pixel(30, 50, image::Rgb([i, 2, 3]))
                .save(d.path().join(format!("{i}.png")))
                .unwrap();
        }
        let run = folder_run(16);
        let whole = DataSource::Whole {
            dir: Some(d.path().to_path_buf()),
        };
        let ds = resolve_data(&whole, &run, 0).unwrap();
        assert_eq!((ds.len(), ds.height, ds.width), (3, 16, 16));
        assert!(ds.labels.is_empty());
        assert!(ds.image(2).chunks(3).all(|p| p == [2, 2, 3]));
        // the same through --dataset folder, with a bad file skipped and counted
        std::fs::write(d.path().join("bad.webp"), b"RIFF").unwrap();
        let skipped = Arc::new(AtomicUsize::new(0));
        let folder = DataSource::Folder {
            dir: d.path().to_path_buf(),
            skip_bad_images: true,
            skipped: skipped.clone(),
        };
        assert_eq!(resolve_data(&folder, &run, 0).unwrap().len(), 3);
        assert_eq!(skipped.load(Ordering::SeqCst), 1);
        let e = format!("{:#}", resolve_data(&whole, &run, 0).unwrap_err());
        assert!(e.contains("bad.webp"), "{e}");
        // a folder is not partitioned, and needs its folder
        let shard = DataSource::Shard {
            dir: Some(d.path().to_path_buf()),
            k: 0,
            n: 3,
        };
        let e = format!("{:#}", resolve_data(&shard, &run, 0).unwrap_err());
        assert!(e.contains("--shard"), "{e}");
        let e = format!(
            "{:#}",
            resolve_data(&DataSource::Whole { dir: None }, &run, 0).unwrap_err()
        );
        assert!(e.contains("--data DIR"), "{e}");
    }

    #[test]
    fn a_wrong_data_folder_is_found_before_connecting() {
        let d = tempfile::tempdir().unwrap();
        let folder = |dir: PathBuf, skip| DataSource::Folder {
            dir,
            skip_bad_images: skip,
            skipped: Arc::default(),
        };
        let e = format!(
            "{:#}",
            folder(d.path().join("missing"), false)
                .check_before_connecting()
                .unwrap_err()
        );
        assert!(
            e.starts_with("--data: cannot read the image folder") && e.contains("missing"),
            "{e}"
        );
        let e = format!(
            "{:#}",
            folder(d.path().to_path_buf(), false)
                .check_before_connecting()
                .unwrap_err()
        );
        assert!(e.contains("holds no image"), "{e}");
        image::RgbImage::from_pixel(4, 4, image::Rgb([1, 2, 3]))
            .save(d.path().join("a.png"))
            .unwrap();
        folder(d.path().to_path_buf(), false)
            .check_before_connecting()
            .unwrap();
        let e = format!(
            "{:#}",
            DataSource::Whole {
                dir: Some(d.path().join("a.png"))
            }
            .check_before_connecting()
            .unwrap_err()
        );
        assert!(e.contains("not a folder"), "{e}");
        DataSource::Whole { dir: None }
            .check_before_connecting()
            .unwrap();
    }

    #[test]
    fn the_runs_feature_skew_applies_to_this_clients_shard() {
        let mut sc = Scenario::default();
        sc.federation.clients = 4;
        let data = Arc::new(fedssl_shared::data::synthetic::generate(3, 1).unlabelled());
        let source = |k| DataSource::InMemory {
            data: data.clone(),
            shard: Some((k, 4)),
        };
        // off: the very same images, not a copy
        let run = RunInfo::of(&sc);
        assert!(Arc::ptr_eq(
            &resolve_data(&source(1), &run, 1).unwrap(),
            &data
        ));
        sc.feature_skew.rotation = RotationSkew::QuarterTurns;
        let run = RunInfo::of(&sc);
        // shard 1 of 4 (whatever the client id): a quarter turn; shard 0: untouched
        let got = resolve_data(&source(1), &run, 3).unwrap();
        for i in 0..3 {
            let want = fedssl_shared::image::rotate90(data.image(i), 32, 32, 3, 1);
            assert_eq!(got.image(i), want.as_slice());
        }
        assert_eq!(
            resolve_data(&source(0), &run, 2).unwrap().images,
            data.images
        );
        // without a shard, the client id chooses the transform: id 2 turns twice
        let whole = DataSource::InMemory {
            data: data.clone(),
            shard: None,
        };
        let got = resolve_data(&whole, &run, 2).unwrap();
        let want = fedssl_shared::image::rotate90(data.image(0), 32, 32, 3, 2);
        assert_eq!(got.image(0), want.as_slice());
    }

    #[test]
    fn an_stl10_site_reads_the_runs_split_at_the_runs_size_and_shards_it_as_one_class() {
        use fedssl_shared::data::stl10::{IMAGE_BYTES, PLANE_BYTES};
        let d = tempfile::tempdir().unwrap();
        // 2 labelled and 4 unlabelled images; every pixel of image i is (base + i, 0, 0)
        let x = |base: u8, k: u8| {
            (0..k)
                .flat_map(|i| {
                    let mut img = vec![0u8; IMAGE_BYTES];
                    img[..PLANE_BYTES].fill(base + i);
                    img
                })
                .collect::<Vec<u8>>()
        };
        std::fs::write(d.path().join("train_X.bin"), x(0, 2)).unwrap();
        std::fs::write(d.path().join("train_y.bin"), [3u8, 9]).unwrap();
        std::fs::write(d.path().join("unlabeled_X.bin"), x(200, 4)).unwrap();
        let mut sc = Scenario::default();
        sc.data.dataset = DatasetKind::Stl10;
        sc.data.image_size = 16;
        sc.federation.clients = 2;
        let run = RunInfo::of(&sc);
        let whole = DataSource::Whole {
            dir: Some(d.path().to_path_buf()),
        };
        let ds = resolve_data(&whole, &run, 0).unwrap();
        assert_eq!((ds.len(), ds.height, ds.width), (6, 16, 16));
        assert!(ds.labels.is_empty());
        let reds: Vec<u8> = (0..6).map(|i| ds.image(i)[0]).collect();
        assert_eq!(reds, vec![0, 1, 200, 201, 202, 203]);
        // --shard K/2: the unlabelled set is one class, split in two disjoint halves
        let mut seen = Vec::new();
        for k in 0..2 {
            let shard = DataSource::Shard {
                dir: Some(d.path().to_path_buf()),
                k,
                n: 2,
            };
            let part = resolve_data(&shard, &run, k).unwrap();
            assert_eq!(part.len(), 3);
            assert!(part.labels.is_empty());
            seen.extend((0..3).map(|i| part.image(i)[0]));
        }
        seen.sort();
        assert_eq!(seen, reds);
        // the labelled split, as the run says
        sc.data.stl10_split = fedssl_shared::data::Stl10Split::Train;
        let ds = resolve_data(&whole, &RunInfo::of(&sc), 0).unwrap();
        assert_eq!(ds.len(), 2);
    }

    #[test]
    fn a_site_of_a_mixed_run_is_refused_with_what_to_do() {
        let mut sc = Scenario::default();
        sc.data.dataset = DatasetKind::Mixed;
        let run = RunInfo::of(&sc);
        for source in [
            DataSource::Shard {
                dir: None,
                k: 0,
                n: 3,
            },
            DataSource::Whole { dir: None },
        ] {
            let e = format!("{:#}", resolve_data(&source, &run, 0).unwrap_err());
            assert!(
                e.starts_with("the run's dataset is mixed") && e.contains("--dataset folder"),
                "{e}"
            );
        }
    }
}
