//! IID partitioning: a seeded shuffle of the images cut into near-equal shards.

use anyhow::Result;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use super::Partitioner;

/// `[partition] kind = "iid"`: uniformly random, equal-size shards (sizes differ by at most
/// one). No settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IidConfig {}

impl Partitioner for IidConfig {
    /// Shuffles `0..labels.len()` with `StdRng::seed_from_u64(seed)` and cuts it in order:
    /// the first `len % clients` shards get one image more.
    fn split(
        &self,
        labels: &[u32],
        _num_classes: usize,
        clients: usize,
        seed: u64,
    ) -> Result<Vec<Vec<usize>>> {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut idx: Vec<usize> = (0..labels.len()).collect();
        idx.shuffle(&mut rng);
        let base = labels.len() / clients;
        let extra = labels.len() % clients;
        let mut parts = Vec::with_capacity(clients);
        let mut start = 0;
        for k in 0..clients {
            let len = base + usize::from(k < extra);
            parts.push(idx[start..start + len].to_vec());
            start += len;
        }
        Ok(parts)
    }
}
