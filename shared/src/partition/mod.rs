//! Splitting a labelled dataset among federated clients: the [`Partitioner`] seam.
//!
//! * [`iid`]: a seeded shuffle cut into near-equal shards (`kind = "iid"`, the default).
//! * [`dirichlet`]: per-class Dirichlet label skew of Hsu, Qi & Brown 2019
//!   (`kind = "dirichlet"`, `alpha = …`, optional `min_size`, `balanced`).
//! * [`label_quantity`]: #C = k classes per client (NIID-Bench).
//! * [`shards`]: McMahan et al. 2017's sort-and-shard.
//! * [`quantity`]: skewed shard sizes (Dirichlet or power law), IID labels.
//! * [`domain`]: domain skew, each client's images from one source of the mixed dataset
//!   ([`crate::data::mixed`]); it splits by the images' domains rather than their labels
//!   ([`Partitioner::splits_by`], [`partition_dataset`]).
//!
//! [`report`] measures a split: per-client class histograms, EMD and Jensen–Shannon
//! divergence to the population.
//!
//! The scenario's `[partition]` table is a [`PartitionConfig`]: its `kind` picks the
//! partitioner and the rest of the table is that partitioner's own config struct (see
//! [`crate::tagged`]). A new partitioner is one new file here: its config struct,
//! implementing [`Partitioner`], and one variant of [`PartitionConfig`].

pub mod dirichlet;
pub mod domain;
pub mod iid;
pub mod label_quantity;
pub mod quantity;
pub mod report;
pub mod shards;
mod sizes;

pub use dirichlet::DirichletConfig;
pub use domain::DomainConfig;
pub use iid::IidConfig;
pub use label_quantity::LabelQuantityConfig;
pub use quantity::{QuantityConfig, SizeLaw};
pub use shards::ShardsConfig;

use anyhow::{bail, Result};

use crate::data::ImageDataset;
use crate::tagged::{tagged_serde, Tagged};

/// What a partitioner splits the images by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SplitBy {
    /// Their class labels (every partitioner but `domain`).
    Labels,
    /// Their domains, the sources of the mixed dataset ([`ImageDataset::domains`]).
    Domains,
}

/// A way of splitting images among clients; implemented by each partitioner's config struct.
pub trait Partitioner {
    /// Checks the settings; the message names the `partition.*` key. Default: nothing to
    /// check.
    fn validate(&self) -> Result<()> {
        Ok(())
    }

    /// What [`Self::split`] receives as `labels` from [`partition_dataset`]: the images'
    /// class labels (default) or their domains.
    fn splits_by(&self) -> SplitBy {
        SplitBy::Labels
    }

    /// Splits the image indices `0..labels.len()` among `clients` clients, deterministically
    /// from `seed`. (`labels` are the domains, and `num_classes` their count, for a
    /// partitioner that [`Self::splits_by`] domains.) Called by [`partition`] with valid settings, `1 <= clients <= labels.len()`
    /// and every label `< num_classes`; must return `clients` non-empty shards in which every
    /// index appears exactly once (in any order: [`partition`] sorts them).
    fn split(
        &self,
        labels: &[u32],
        num_classes: usize,
        clients: usize,
        seed: u64,
    ) -> Result<Vec<Vec<usize>>>;
}

/// The scenario's `[partition]`: how images are distributed among clients. Written
/// `{ kind = "iid" }` (or just `"iid"`) or `{ kind = "dirichlet", alpha = 0.5 }`; unknown keys
/// are refused, including `alpha` with `kind = "iid"`.
#[derive(Clone, Debug, PartialEq)]
pub enum PartitionConfig {
    /// Uniformly random, equal-size shards (sizes differ by at most one).
    Iid(IidConfig),
    /// Per-class Dirichlet label skew with concentration `alpha > 0` (Hsu et al. 2019).
    Dirichlet(DirichletConfig),
    /// `classes_per_client` distinct classes per client (NIID-Bench #C = k).
    LabelQuantity(LabelQuantityConfig),
    /// Label-sorted shards dealt at random (McMahan et al. 2017).
    Shards(ShardsConfig),
    /// Skewed shard sizes, IID labels.
    Quantity(QuantityConfig),
    /// Each client's images from one domain of the mixed dataset.
    Domain(DomainConfig),
}

tagged_serde!(PartitionConfig {
    "iid" => Iid(IidConfig),
    "dirichlet" => Dirichlet(DirichletConfig),
    "label_quantity" => LabelQuantity(LabelQuantityConfig),
    "shards" => Shards(ShardsConfig),
    "quantity" => Quantity(QuantityConfig),
    "domain" => Domain(DomainConfig),
});

impl Default for PartitionConfig {
    /// IID.
    fn default() -> Self {
        PartitionConfig::Iid(IidConfig {})
    }
}

impl PartitionConfig {
    /// The partitioner this config chooses.
    pub fn partitioner(&self) -> &dyn Partitioner {
        match self {
            PartitionConfig::Iid(c) => c,
            PartitionConfig::Dirichlet(c) => c,
            PartitionConfig::LabelQuantity(c) => c,
            PartitionConfig::Shards(c) => c,
            PartitionConfig::Quantity(c) => c,
            PartitionConfig::Domain(c) => c,
        }
    }

    /// Checks the chosen partitioner's settings; the message names the `partition.*` key.
    pub fn validate(&self) -> Result<()> {
        self.partitioner().validate()
    }
}

/// Splits the images with labels `labels` among `num_clients` clients with the partitioner
/// `config` chooses.
///
/// Returns, per client, the sorted indices into `labels` of its images: every index belongs
/// to exactly one client and no client is empty. Deterministic from `seed`.
///
/// Errors when `num_clients` is 0 or exceeds `labels.len()`, when a label is
/// `>= num_classes`, when the settings are invalid (e.g. `alpha` not a finite positive
/// number), or when a partitioner breaks its contract (a bug, named).
pub fn partition(
    labels: &[u32],
    num_classes: usize,
    num_clients: usize,
    config: &PartitionConfig,
    seed: u64,
) -> Result<Vec<Vec<usize>>> {
    if num_clients == 0 {
        bail!("cannot partition among 0 clients");
    }
    if num_clients > labels.len() {
        bail!(
            "cannot give each of {num_clients} clients at least one image: only {} images",
            labels.len()
        );
    }
    if let Some((i, l)) = labels
        .iter()
        .enumerate()
        .find(|(_, &l)| l as usize >= num_classes)
    {
        bail!("label {l} of image {i} is not below num_classes = {num_classes}");
    }
    config.validate()?;
    let mut parts = config
        .partitioner()
        .split(labels, num_classes, num_clients, seed)?;
    for p in parts.iter_mut() {
        p.sort_unstable();
    }
    check_shards(&parts, labels.len(), num_clients)
        .map_err(|e| e.context(format!("partitioner `{}` is broken", config.kind())))?;
    Ok(parts)
}

/// Splits the images of `ds` among `num_clients` clients as [`partition`] does, by their
/// labels (`ds.labels`, `ds.num_classes`) or, for a partitioner that splits by domain
/// (`kind = "domain"`), by their domains (`ds.domains`, one per name of `ds.domain_names`).
/// The same guarantees and errors as [`partition`]; also an error when the partitioner splits
/// by domain and `ds` has none (not the mixed dataset).
pub fn partition_dataset(
    ds: &ImageDataset,
    num_clients: usize,
    config: &PartitionConfig,
    seed: u64,
) -> Result<Vec<Vec<usize>>> {
    match config.partitioner().splits_by() {
        SplitBy::Labels => partition(&ds.labels, ds.num_classes, num_clients, config, seed),
        SplitBy::Domains => {
            if ds.domains.is_empty() || ds.domains.len() != ds.len() {
                bail!(
                    "partition.kind = \"{}\" splits by domain, and these images have none: it needs data.dataset = \"mixed\" with its [[data.sources]]",
                    config.kind()
                );
            }
            partition(
                &ds.domains,
                ds.domain_names.len(),
                num_clients,
                config,
                seed,
            )
        }
    }
}

/// Errors unless `parts` are `clients` non-empty shards holding each of `0..n` once.
fn check_shards(parts: &[Vec<usize>], n: usize, clients: usize) -> Result<()> {
    if parts.len() != clients {
        bail!("it returned {} shards for {clients} clients", parts.len());
    }
    if let Some(k) = parts.iter().position(Vec::is_empty) {
        bail!("it left client {k} without images");
    }
    let mut seen = vec![false; n];
    for &i in parts.iter().flatten() {
        match seen.get_mut(i) {
            Some(s) if !*s => *s = true,
            Some(_) => bail!("it gave image {i} to two clients"),
            None => bail!("it returned image {i} of {n}"),
        }
    }
    if let Some(i) = seen.iter().position(|s| !s) {
        bail!("it gave image {i} to no client");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(n: usize, classes: u32) -> Vec<u32> {
        (0..n).map(|i| (i as u32 * 7 + 3) % classes).collect()
    }

    fn check_disjoint_complete(parts: &[Vec<usize>], n: usize) {
        let mut seen = vec![0u8; n];
        for p in parts {
            assert!(!p.is_empty());
            assert!(p.windows(2).all(|w| w[0] < w[1]), "not sorted");
            for &i in p {
                seen[i] += 1;
            }
        }
        assert!(seen.iter().all(|&s| s == 1));
    }

    fn class_shares(part: &[usize], labels: &[u32], classes: usize) -> Vec<f64> {
        let mut h = vec![0usize; classes];
        for &i in part {
            h[labels[i] as usize] += 1;
        }
        h.iter().map(|&c| c as f64 / part.len() as f64).collect()
    }

    #[test]
    fn iid_is_disjoint_complete_and_balanced() {
        let l = labels(1003, 10);
        let parts = partition(&l, 10, 7, &PartitionConfig::Iid(IidConfig {}), 1).unwrap();
        check_disjoint_complete(&parts, 1003);
        let sizes: Vec<usize> = parts.iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![144, 144, 143, 143, 143, 143, 143]);
    }

    #[test]
    fn dirichlet_large_alpha_is_near_uniform() {
        let l = crate::data::synthetic::generate(50_000, 0).labels;
        let scheme = PartitionConfig::Dirichlet(DirichletConfig {
            alpha: 1000.0,
            min_size: None,
            balanced: false,
        });
        let parts = partition(&l, 10, 10, &scheme, 3).unwrap();
        check_disjoint_complete(&parts, 50_000);
        for p in &parts {
            for s in class_shares(p, &l, 10) {
                assert!((s - 0.1).abs() < 0.05, "share {s}");
            }
        }
    }

    #[test]
    fn dirichlet_small_alpha_is_skewed_and_deterministic() {
        let l = labels(50_000, 10);
        let scheme = PartitionConfig::Dirichlet(DirichletConfig {
            alpha: 0.1,
            min_size: None,
            balanced: false,
        });
        let parts = partition(&l, 10, 10, &scheme, 4).unwrap();
        check_disjoint_complete(&parts, 50_000);
        let mean_max: f64 = parts
            .iter()
            .map(|p| class_shares(p, &l, 10).into_iter().fold(0.0, f64::max))
            .sum::<f64>()
            / 10.0;
        assert!(mean_max > 0.5, "mean max share {mean_max}");
        assert_eq!(parts, partition(&l, 10, 10, &scheme, 4).unwrap());
        assert_ne!(parts, partition(&l, 10, 10, &scheme, 5).unwrap());
    }

    #[test]
    fn many_clients_and_tiny_alpha_leave_no_client_empty() {
        let l = labels(40, 2);
        let scheme = PartitionConfig::Dirichlet(DirichletConfig {
            alpha: 0.01,
            min_size: None,
            balanced: false,
        });
        let parts = partition(&l, 2, 40, &scheme, 0).unwrap();
        check_disjoint_complete(&parts, 40);
        assert!(parts.iter().all(|p| p.len() == 1));
    }

    #[test]
    fn invalid_arguments_are_errors() {
        let l = labels(10, 2);
        assert!(partition(&l, 2, 11, &PartitionConfig::Iid(IidConfig {}), 0).is_err());
        assert!(partition(&l, 2, 0, &PartitionConfig::Iid(IidConfig {}), 0).is_err());
        for alpha in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let e = partition(
                &l,
                2,
                2,
                &PartitionConfig::Dirichlet(DirichletConfig {
                    alpha,
                    min_size: None,
                    balanced: false,
                }),
                0,
            );
            assert!(e.is_err(), "alpha {alpha}");
        }
        assert!(partition(&l, 1, 2, &PartitionConfig::Iid(IidConfig {}), 0).is_err());
    }

    #[test]
    fn scheme_serde_shape() {
        let dirichlet = |alpha| {
            PartitionConfig::Dirichlet(DirichletConfig {
                alpha,
                min_size: None,
                balanced: false,
            })
        };
        let iid = PartitionConfig::Iid(IidConfig {});
        let s: PartitionConfig = toml::from_str("kind = \"dirichlet\"\nalpha = 0.5").unwrap();
        assert_eq!(s, dirichlet(0.5));
        let s: PartitionConfig = toml::from_str("kind = \"iid\"").unwrap();
        assert_eq!(s, iid);
        assert!(toml::from_str::<PartitionConfig>("kind = \"iid\"\nalpha = 1.0").is_err());
        assert!(toml::from_str::<PartitionConfig>("kind = \"dirichlet\"").is_err());
        let e = toml::from_str::<PartitionConfig>("kind = \"iid\"\nbeta = 1").unwrap_err();
        assert!(e.to_string().contains("beta"), "{e}");
        crate::tagged::assert_unknown_keys_are_refused::<PartitionConfig>();
        let j = serde_json::to_string(&dirichlet(0.5)).unwrap();
        assert_eq!(j, r#"{"kind":"dirichlet","alpha":0.5,"balanced":false}"#);
        // IID has no settings: it is written as its bare name (before the tagged configs,
        // the hand-written raw form wrote `{"kind":"iid","alpha":null}` so that bincode,
        // which cannot skip fields, could carry it; bincode now carries (kind, settings)).
        assert_eq!(serde_json::to_string(&iid).unwrap(), r#""iid""#);
        // the form of earlier `scenario.json` files still reads back
        let back: PartitionConfig = serde_json::from_str(r#"{"kind":"iid","alpha":null}"#).unwrap();
        assert_eq!(back, iid);
        let back: PartitionConfig = serde_json::from_str(r#""iid""#).unwrap();
        assert_eq!(back, iid);
    }

    #[test]
    fn a_partitioner_that_breaks_its_contract_is_named() {
        assert!(check_shards(&[vec![0, 1], vec![2]], 3, 2).is_ok());
        for (parts, why) in [
            (vec![vec![0, 1, 2]], "1 shards for 2 clients"),
            (vec![vec![0, 1, 2], vec![]], "client 1 without images"),
            (vec![vec![0, 1], vec![1, 2]], "image 1 to two clients"),
            (vec![vec![0], vec![1]], "image 2 to no client"),
            (vec![vec![0, 1], vec![2, 3]], "image 3 of 3"),
        ] {
            let e = check_shards(&parts, 3, 2).unwrap_err().to_string();
            assert!(e.contains(why), "{parts:?}: {e}");
        }
    }
}

#[cfg(test)]
mod skew_tests {
    //! The partitioners of issue 13: disjoint and complete, seeded, their defining property
    //! measured, impossible settings refused with a clear error.
    use super::*;

    fn labels(n: usize, classes: u32) -> Vec<u32> {
        (0..n).map(|i| (i as u32 * 7 + 3) % classes).collect()
    }

    fn complete(parts: &[Vec<usize>], n: usize) {
        let mut seen = vec![0u8; n];
        for p in parts {
            assert!(!p.is_empty());
            for &i in p {
                seen[i] += 1;
            }
        }
        assert!(seen.iter().all(|&s| s == 1));
    }

    fn distinct_classes(p: &[usize], l: &[u32]) -> usize {
        let mut c: Vec<u32> = p.iter().map(|&i| l[i]).collect();
        c.sort_unstable();
        c.dedup();
        c.len()
    }

    fn dir(alpha: f64, min_size: Option<usize>, balanced: bool) -> PartitionConfig {
        PartitionConfig::Dirichlet(DirichletConfig {
            alpha,
            min_size,
            balanced,
        })
    }

    #[test]
    fn label_quantity_gives_k_classes_per_client() {
        let l = labels(5000, 10);
        for (k, clients) in [(1, 10), (2, 10), (3, 10), (2, 5), (2, 30)] {
            let c = PartitionConfig::LabelQuantity(LabelQuantityConfig {
                classes_per_client: k,
            });
            let parts = partition(&l, 10, clients, &c, 1).unwrap();
            complete(&parts, 5000);
            for p in &parts {
                assert_eq!(distinct_classes(p, &l), k, "k={k} clients={clients}");
            }
            assert_eq!(parts, partition(&l, 10, clients, &c, 1).unwrap());
        }
        let c = PartitionConfig::LabelQuantity(LabelQuantityConfig {
            classes_per_client: 2,
        });
        let e = partition(&l, 10, 4, &c, 0).unwrap_err().to_string();
        assert!(e.contains("covers at most 8 of the 10 classes"), "{e}");
        let c = PartitionConfig::LabelQuantity(LabelQuantityConfig {
            classes_per_client: 11,
        });
        assert!(partition(&l, 10, 4, &c, 0)
            .unwrap_err()
            .to_string()
            .contains("exceeds"));
    }

    #[test]
    fn shards_deal_label_sorted_pieces() {
        let l = labels(6000, 10);
        let c = PartitionConfig::Shards(ShardsConfig {
            shards_per_client: 2,
        });
        let parts = partition(&l, 10, 100, &c, 3).unwrap();
        complete(&parts, 6000);
        // 200 shards of 30 inside classes of 600: every client holds at most 2 classes
        assert!(parts
            .iter()
            .all(|p| p.len() == 60 && distinct_classes(p, &l) <= 2));
        assert_ne!(parts, partition(&l, 10, 100, &c, 4).unwrap());
        let e = partition(&labels(200, 10), 10, 150, &c, 0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("needs 300 shards"), "{e}");
    }

    #[test]
    fn quantity_sizes_follow_the_law_and_labels_stay_iid() {
        let l = labels(10_000, 10);
        let pl = PartitionConfig::Quantity(QuantityConfig {
            sizes: SizeLaw::PowerLaw,
            alpha: 0.5,
            exponent: 1.0,
            min_size: 1,
        });
        let parts = partition(&l, 10, 4, &pl, 0).unwrap();
        complete(&parts, 10_000);
        let mut sz: Vec<usize> = parts.iter().map(Vec::len).collect();
        sz.sort_unstable();
        // 1 + 9996 * (1/r) / (25/12), r = 4, 3, 2, 1: 1 + (1199.52, 1599.36, 2399.04, 4798.08),
        // the one image left over going to the largest remainder (0.52)
        assert_eq!(sz, vec![1201, 1600, 2400, 4799]);
        let big = parts.iter().find(|p| p.len() == 4799).unwrap();
        let share = big.iter().filter(|&&i| l[i] == 0).count() as f64 / big.len() as f64;
        assert!((share - 0.1).abs() < 0.02, "{share}");
        let dq = PartitionConfig::Quantity(QuantityConfig {
            sizes: SizeLaw::Dirichlet,
            alpha: 0.5,
            exponent: 1.0,
            min_size: 10,
        });
        let parts = partition(&l, 10, 10, &dq, 2).unwrap();
        complete(&parts, 10_000);
        assert!(parts.iter().all(|p| p.len() >= 10));
        assert_eq!(parts, partition(&l, 10, 10, &dq, 2).unwrap());
        let e = partition(&labels(200, 10), 10, 300, &dq, 0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("300 clients"), "{e}");
    }

    #[test]
    fn dirichlet_min_size_and_balanced() {
        let l = labels(5000, 10);
        let parts = partition(&l, 10, 10, &dir(0.1, Some(10), false), 5).unwrap();
        complete(&parts, 5000);
        assert!(parts.iter().all(|p| p.len() >= 10));
        let parts = partition(&l, 10, 10, &dir(0.1, None, true), 5).unwrap();
        complete(&parts, 5000);
        assert!(parts.iter().all(|p| p.len() == 500));
        let mean_max: f64 = parts
            .iter()
            .map(|p| {
                (0..10u32)
                    .map(|c| p.iter().filter(|&&i| l[i] == c).count())
                    .max()
                    .unwrap() as f64
                    / p.len() as f64
            })
            .sum::<f64>()
            / 10.0;
        assert!(
            mean_max > 0.3, // IID would give about 0.1
            "balanced alpha 0.1 should stay skewed: {mean_max}"
        );
        // alpha = 0.01, 100 clients, 1000 images: NIID-Bench's min size 10 cannot be met
        let e = partition(&labels(1000, 10), 10, 100, &dir(0.01, Some(10), false), 0)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("alpha = 0.01") && e.contains("100 clients") && e.contains("1000 images"),
            "{e}"
        );
        let e = partition(&labels(1000, 10), 10, 100, &dir(0.5, Some(20), false), 0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("2000 images, only 1000"), "{e}");
        // defaults unchanged: the same split as before the new keys
        assert_eq!(
            partition(&l, 10, 10, &dir(0.5, None, false), 9).unwrap(),
            partition(&l, 10, 10, &dir(0.5, None, false), 9).unwrap()
        );
    }

    #[test]
    fn new_kinds_read_from_toml() {
        let c: PartitionConfig =
            toml::from_str("kind = \"label_quantity\"\nclasses_per_client = 2").unwrap();
        assert_eq!(
            c,
            PartitionConfig::LabelQuantity(LabelQuantityConfig {
                classes_per_client: 2
            })
        );
        let c: PartitionConfig = toml::from_str("kind = \"shards\"").unwrap();
        assert_eq!(
            c,
            PartitionConfig::Shards(ShardsConfig {
                shards_per_client: 2
            })
        );
        let c: PartitionConfig =
            toml::from_str("kind = \"quantity\"\nsizes = \"power_law\"\nexponent = 2.0").unwrap();
        assert!(matches!(
            c,
            PartitionConfig::Quantity(QuantityConfig {
                sizes: SizeLaw::PowerLaw,
                ..
            })
        ));
        let c: PartitionConfig =
            toml::from_str("kind = \"dirichlet\"\nalpha = 0.1\nmin_size = 10\nbalanced = true")
                .unwrap();
        assert_eq!(c, dir(0.1, Some(10), true));
        assert!(toml::from_str::<PartitionConfig>("kind = \"shards\"\nalpha = 1").is_err());
    }
}
