//! Where a client's training images come from ([`DataSource`]) and how they are loaded once
//! the coordinator has described the run ([`resolve_data`]): a simulation's in-memory shard,
//! shard `k` of the scenario's partition into `n`, or the whole dataset of a site.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Result};
use fedssl_shared::data::ImageDataset;
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
    /// Load the run's dataset (synthetic needs no `dir`; CIFAR-10 needs it) and keep shard `k`
    /// (0-based) of the coordinator's partition into `n` shards.
    Shard {
        /// CIFAR-10 folder; ignored for the synthetic dataset.
        dir: Option<PathBuf>,
        /// This client's shard, 0-based.
        k: u32,
        /// Number of shards.
        n: u32,
    },
    /// Every training image of the dataset in `dir` is this site's data (a real deployment).
    Whole {
        /// CIFAR-10 folder (for the synthetic dataset, `None`).
        dir: Option<PathBuf>,
    },
}

impl DataSource {
    /// The shard `(k, n)` this source claims in its hello, if any.
    pub(crate) fn shard(&self) -> Option<(u32, u32)> {
        match self {
            DataSource::Shard { k, n, .. } => Some((*k, *n)),
            DataSource::InMemory { shard, .. } => *shard,
            DataSource::Whole { .. } => None,
        }
    }
}

/// Loads the training images this client owns, given the run described by the coordinator.
/// Errors: the dataset cannot be loaded, or `--shard K/N` does not fit the run's clients.
pub(crate) fn resolve_data(source: &DataSource, run: &RunInfo) -> Result<Arc<ImageDataset>> {
    match source {
        DataSource::InMemory { data, .. } => Ok(data.clone()),
        DataSource::Whole { dir } => Ok(Arc::new(
            fedssl_shared::data::load_train_set(
                run.dataset,
                dir.as_deref(),
                run.train_images,
                run.seed,
            )?
            .unlabelled(),
        )),
        DataSource::Shard { dir, k, n } => {
            if *n != run.num_clients {
                bail!(
                    "--shard {k}/{n}: the coordinator's scenario has {} clients",
                    run.num_clients
                );
            }
            if k >= n {
                bail!("--shard {k}/{n}: K must be below N (shards are 0-based)");
            }
            let full = fedssl_shared::data::load_train_set(
                run.dataset,
                dir.as_deref(),
                run.train_images,
                run.seed,
            )?;
            let parts = fedssl_shared::partition::partition(
                &full.labels,
                full.num_classes,
                *n as usize,
                &run.partition,
                fedssl_shared::seed::derive(run.seed, fedssl_shared::seed::PARTITION, 0),
            )?;
            Ok(Arc::new(full.subset(&parts[*k as usize]).unlabelled()))
        }
    }
}
