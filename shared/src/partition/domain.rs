//! Domain skew: every client draws from one domain, a source of the mixed dataset
//! ([`crate::data::mixed`]), as FedBN's (Li et al. 2021) Digits and Office-Caltech10 setups,
//! where each client holds the data of one dataset.
//!
//! Domains get clients in proportion to their sizes, each at least one: every client after
//! the first of each domain goes, one at a time, to the domain whose clients hold the most
//! images each (ties: the earlier domain), so shards are as equal as the domains allow (with
//! as many clients as domains: one client per domain, FedBN's setup). Or the scenario says
//! how many: `clients_per_domain = [a, b, …]`, one number per source in `data.sources` order,
//! summing to `federation.clients`. Clients are numbered domain by domain, in source order;
//! inside a domain its images are shuffled (seeded) and cut into near-equal shards, as `iid`.

use anyhow::{bail, ensure, Result};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use super::{Partitioner, SplitBy};

/// `[partition] kind = "domain"`: each client's images come from one domain of the mixed
/// dataset (module docs). Needs `data.dataset = "mixed"`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DomainConfig {
    /// Clients of each domain, in `data.sources` order, summing to `federation.clients`, each
    /// at least 1 (`partition.clients_per_domain`); default: in proportion to the domains'
    /// sizes (module docs).
    #[serde(default)]
    pub clients_per_domain: Option<Vec<usize>>,
}

impl DomainConfig {
    /// The clients of each domain of sizes `sizes` (images), `clients` in all (module docs).
    /// Errors: fewer clients than domains, or a `clients_per_domain` that does not fit
    /// (length, sum, a zero, more clients than a domain has images).
    pub fn clients_of_domains(&self, sizes: &[usize], clients: usize) -> Result<Vec<usize>> {
        let d = sizes.len();
        if let Some(c) = &self.clients_per_domain {
            ensure!(
                c.len() == d,
                "partition.clients_per_domain lists {} number(s), and the mixed dataset has {} domain(s) (data.sources): one number per source",
                c.len(),
                d
            );
            let sum: usize = c.iter().sum();
            ensure!(
                sum == clients,
                "partition.clients_per_domain = {c:?} sums to {sum}, and federation.clients = {clients}"
            );
            for (i, (&k, &n)) in c.iter().zip(sizes).enumerate() {
                ensure!(
                    k <= n,
                    "partition.clients_per_domain gives domain {i} {k} client(s), and it has only {n} image(s)"
                );
            }
            return Ok(c.clone());
        }
        if let Some(i) = sizes.iter().position(|&n| n == 0) {
            bail!("domain {i} of the mixed dataset has no image");
        }
        ensure!(
            clients >= d,
            "partition.kind = \"domain\" puts every client in one domain, and {clients} clients cannot cover the {d} domains: set federation.clients to at least {d}"
        );
        let mut c = vec![1usize; d];
        for _ in d..clients {
            // the domain whose clients hold the most images each: n_i / c_i largest, compared
            // exactly as n_i · c_j > n_j · c_i
            let mut best = 0;
            for i in 1..d {
                if sizes[i] * c[best] > sizes[best] * c[i] {
                    best = i;
                }
            }
            c[best] += 1;
        }
        Ok(c)
    }
}

impl Partitioner for DomainConfig {
    fn validate(&self) -> Result<()> {
        if let Some(c) = &self.clients_per_domain {
            ensure!(
                !c.is_empty(),
                "partition.clients_per_domain is empty: one number per source, or leave it out"
            );
            if let Some(i) = c.iter().position(|&k| k == 0) {
                bail!("partition.clients_per_domain[{i}] is 0: every domain needs a client (its images belong to someone)");
            }
        }
        Ok(())
    }

    fn splits_by(&self) -> SplitBy {
        SplitBy::Domains
    }

    /// `domains` are the images' domains (through [`super::partition_dataset`]),
    /// `num_domains` their count; one `StdRng::seed_from_u64(seed)` shuffles each domain's
    /// images in domain order.
    fn split(
        &self,
        domains: &[u32],
        num_domains: usize,
        clients: usize,
        seed: u64,
    ) -> Result<Vec<Vec<usize>>> {
        let mut of_domain: Vec<Vec<usize>> = vec![Vec::new(); num_domains];
        for (i, &d) in domains.iter().enumerate() {
            of_domain[d as usize].push(i);
        }
        let sizes: Vec<usize> = of_domain.iter().map(Vec::len).collect();
        let per_domain = self.clients_of_domains(&sizes, clients)?;
        let mut rng = StdRng::seed_from_u64(seed);
        let mut parts = Vec::with_capacity(clients);
        for (mut idx, k) in of_domain.into_iter().zip(per_domain) {
            idx.shuffle(&mut rng);
            let (base, extra) = (idx.len() / k, idx.len() % k);
            let mut start = 0;
            for j in 0..k {
                let len = base + usize::from(j < extra);
                parts.push(idx[start..start + len].to_vec());
                start += len;
            }
        }
        Ok(parts)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{partition_dataset, PartitionConfig};
    use super::*;
    use crate::data::ImageDataset;

    /// A dataset of `sizes[d]` images of each domain `d` (1×1 pixels, labels `i % 3`).
    fn mixed(sizes: &[usize]) -> ImageDataset {
        let n: usize = sizes.iter().sum();
        let domains: Vec<u32> = sizes
            .iter()
            .enumerate()
            .flat_map(|(d, &k)| std::iter::repeat_n(d as u32, k))
            .collect();
        ImageDataset {
            images: vec![0; n * 3],
            labels: (0..n as u32).map(|i| i % 3).collect(),
            height: 1,
            width: 1,
            channels: 3,
            num_classes: 3,
            class_names: vec!["a".into(), "b".into(), "c".into()],
            mean: [0.0; 3],
            std: [1.0; 3],
            domains,
            domain_names: (0..sizes.len()).map(|d| format!("d{d}")).collect(),
        }
    }

    fn domain(c: Option<Vec<usize>>) -> PartitionConfig {
        PartitionConfig::Domain(DomainConfig {
            clients_per_domain: c,
        })
    }

    /// The one domain of each shard (panics when a shard mixes domains).
    fn shard_domains(ds: &ImageDataset, parts: &[Vec<usize>]) -> Vec<u32> {
        parts
            .iter()
            .map(|p| {
                let d = ds.domains[p[0]];
                assert!(p.iter().all(|&i| ds.domains[i] == d), "{p:?}");
                d
            })
            .collect()
    }

    #[test]
    fn every_client_draws_from_exactly_its_domain_seeded_disjoint_and_complete() {
        let ds = mixed(&[600, 200, 200]);
        let parts = partition_dataset(&ds, 5, &domain(None), 7).unwrap();
        // 600 / 200 / 200 among 5: 3, 1, 1 (200 images each)
        assert_eq!(shard_domains(&ds, &parts), vec![0, 0, 0, 1, 2]);
        assert!(parts.iter().all(|p| p.len() == 200));
        let mut all: Vec<usize> = parts.iter().flatten().copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..1000).collect::<Vec<_>>());
        assert_eq!(parts, partition_dataset(&ds, 5, &domain(None), 7).unwrap());
        assert_ne!(parts, partition_dataset(&ds, 5, &domain(None), 8).unwrap());
        // as many clients as domains: one each (FedBN)
        let one = partition_dataset(&ds, 3, &domain(None), 0).unwrap();
        assert_eq!(shard_domains(&ds, &one), vec![0, 1, 2]);
        assert_eq!(
            one.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![600, 200, 200]
        );
        // an explicit mapping
        let parts = partition_dataset(&ds, 4, &domain(Some(vec![1, 2, 1])), 0).unwrap();
        assert_eq!(shard_domains(&ds, &parts), vec![0, 1, 1, 2]);
        assert_eq!(
            parts.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![600, 100, 100, 200]
        );
    }

    #[test]
    fn proportional_clients_keep_shards_even() {
        let c = DomainConfig::default();
        assert_eq!(c.clients_of_domains(&[500, 500], 4).unwrap(), vec![2, 2]);
        assert_eq!(c.clients_of_domains(&[900, 100], 10).unwrap(), vec![9, 1]);
        assert_eq!(c.clients_of_domains(&[5, 1000], 3).unwrap(), vec![1, 2]);
        assert_eq!(c.clients_of_domains(&[3, 2], 5).unwrap(), vec![3, 2]);
    }

    #[test]
    fn impossible_settings_are_refused_by_key() {
        let ds = mixed(&[10, 10, 10]);
        let e = |c: PartitionConfig, clients| {
            format!("{:#}", partition_dataset(&ds, clients, &c, 0).unwrap_err())
        };
        assert!(e(domain(None), 2).contains("2 clients cannot cover the 3 domains"));
        assert!(e(domain(Some(vec![1, 1])), 2)
            .contains("lists 2 number(s), and the mixed dataset has 3 domain(s)"));
        assert!(e(domain(Some(vec![1, 1, 1])), 4).contains("sums to 3, and federation.clients = 4"));
        assert!(e(domain(Some(vec![1, 1, 0])), 2).contains("clients_per_domain[2] is 0"));
        assert!(e(domain(Some(vec![1, 11, 1])), 13).contains("domain 1 11 client(s)"));
        // a dataset without domains
        let mut plain = mixed(&[10]);
        plain.domains.clear();
        plain.domain_names.clear();
        let e = format!(
            "{:#}",
            partition_dataset(&plain, 2, &domain(None), 0).unwrap_err()
        );
        assert!(e.contains("data.dataset = \"mixed\""), "{e}");
        // read from TOML, unknown keys named
        let c: PartitionConfig =
            toml::from_str("kind = \"domain\"\nclients_per_domain = [2, 1]").unwrap();
        assert_eq!(c, domain(Some(vec![2, 1])));
        assert_eq!(
            toml::from_str::<PartitionConfig>("kind = \"domain\"").unwrap(),
            domain(None)
        );
        let e = toml::from_str::<PartitionConfig>("kind = \"domain\"\nalpha = 1").unwrap_err();
        assert!(e.to_string().contains("alpha"), "{e}");
    }
}
