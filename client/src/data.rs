//! Where a client's training images come from ([`DataSource`]) and how they are loaded once
//! the coordinator has described the run ([`resolve_data`]): a simulation's in-memory shard,
//! shard `k` of the scenario's partition into `n`, or the whole dataset of a site; then the
//! run's feature skew ([`fedssl_shared::feature_skew`]) of this client.

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

#[cfg(test)]
mod tests {
    use super::*;
    use fedssl_shared::config::Scenario;
    use fedssl_shared::feature_skew::RotationSkew;

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
}
