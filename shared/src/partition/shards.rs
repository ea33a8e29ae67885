//! Sort-and-shard (McMahan et al. 2017, "Communication-Efficient Learning of Deep Networks
//! from Decentralized Data", §3: MNIST sorted by digit, 200 shards of 300, two per client):
//! the images sorted by label are cut into `clients · shards_per_client` equal shards, which
//! are dealt to the clients at random.

use anyhow::{bail, Result};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use super::{sizes, Partitioner};

/// `[partition] kind = "shards"`: `shards_per_client` label-sorted shards per client.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardsConfig {
    /// Shards per client (`partition.shards_per_client`, default 2 as in McMahan et al.).
    #[serde(default = "two")]
    pub shards_per_client: usize,
}

fn two() -> usize {
    2
}

impl Partitioner for ShardsConfig {
    /// Errors when `shards_per_client` is 0.
    fn validate(&self) -> Result<()> {
        if self.shards_per_client == 0 {
            bail!("partition.shards_per_client must be at least 1");
        }
        Ok(())
    }

    /// The indices, shuffled with `StdRng::seed_from_u64(seed)` and then stably sorted by
    /// label, are cut into `S = clients · shards_per_client` consecutive shards of equal size
    /// (±1); a seeded permutation of the shards gives client `i` shards
    /// `π[i·s .. (i+1)·s]`. Errors when `S` exceeds the number of images.
    fn split(
        &self,
        labels: &[u32],
        _num_classes: usize,
        clients: usize,
        seed: u64,
    ) -> Result<Vec<Vec<usize>>> {
        let s = self.shards_per_client;
        let total = s.saturating_mul(clients);
        if total > labels.len() {
            bail!(
                "partition.shards_per_client = {s} with {clients} clients needs {total} shards, more than the {} images",
                labels.len()
            );
        }
        let mut rng = StdRng::seed_from_u64(seed);
        let mut idx: Vec<usize> = (0..labels.len()).collect();
        idx.shuffle(&mut rng);
        idx.sort_by_key(|&i| labels[i]);
        let shards = sizes::cut(&idx, &sizes::equal_sizes(idx.len(), total));
        let mut order: Vec<usize> = (0..total).collect();
        order.shuffle(&mut rng);
        Ok((0..clients)
            .map(|i| {
                order[i * s..(i + 1) * s]
                    .iter()
                    .flat_map(|&j| shards[j].iter().copied())
                    .collect()
            })
            .collect())
    }
}
