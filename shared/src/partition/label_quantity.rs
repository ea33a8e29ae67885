//! Label-quantity skew, "#C = k" (Li et al. 2022, NIID-Bench `noniid-#label{k}`; the
//! pathological split of McMahan et al. 2017 with k = 2): every client holds images of exactly
//! `k` classes, and each class's images are shared equally among the clients that hold it.

use anyhow::{bail, Result};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::{sizes, Partitioner};

/// `[partition] kind = "label_quantity"`: `classes_per_client` distinct classes per client.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelQuantityConfig {
    /// k, the number of distinct classes each client holds (`partition.classes_per_client`,
    /// required, at least 1).
    pub classes_per_client: usize,
}

impl Partitioner for LabelQuantityConfig {
    /// Errors when `classes_per_client` is 0.
    fn validate(&self) -> Result<()> {
        if self.classes_per_client == 0 {
            bail!("partition.classes_per_client must be at least 1");
        }
        Ok(())
    }

    /// With `rng = StdRng::seed_from_u64(seed)`. With at least as many clients as classes
    /// (NIID-Bench's rule), client `i` holds class `i mod K` and `k − 1` other classes drawn
    /// uniformly without replacement. With fewer clients, a seeded permutation `π` of the
    /// classes is dealt cyclically, client `i` holding `π[(i·k + j) mod K]` for `j < k`, so
    /// every class is held. Each class's shuffled images are then cut into equal parts
    /// (±1) among its holders, in client order.
    ///
    /// Errors when `k > K`, when `k · clients < K` (some class would be held by nobody), or
    /// when a class has fewer images than holders (a client would get no image of it).
    fn split(
        &self,
        labels: &[u32],
        num_classes: usize,
        clients: usize,
        seed: u64,
    ) -> Result<Vec<Vec<usize>>> {
        let k = self.classes_per_client;
        if k > num_classes {
            bail!("partition.classes_per_client = {k} exceeds the dataset's {num_classes} classes");
        }
        if k * clients < num_classes {
            bail!(
                "partition.classes_per_client = {k} with {clients} clients covers at most {} of the {num_classes} classes (needs k x clients >= classes)",
                k * clients
            );
        }
        let mut rng = StdRng::seed_from_u64(seed);
        let held = assign_classes(k, num_classes, clients, &mut rng);
        let mut by_class = sizes::by_class(labels, num_classes);
        let mut parts: Vec<Vec<usize>> = vec![Vec::new(); clients];
        for (c, idx) in by_class.iter_mut().enumerate() {
            idx.shuffle(&mut rng);
            let holders: Vec<usize> = (0..clients).filter(|&i| held[i].contains(&c)).collect();
            if idx.len() < holders.len() {
                bail!(
                    "partition.classes_per_client = {k}: class {c} has {} images for its {} clients",
                    idx.len(),
                    holders.len()
                );
            }
            let pieces = sizes::cut(idx, &sizes::equal_sizes(idx.len(), holders.len()));
            for (h, p) in holders.into_iter().zip(pieces) {
                parts[h].extend(p);
            }
        }
        Ok(parts)
    }
}

/// The `k` classes each of `clients` clients holds (see [`LabelQuantityConfig::split`]).
fn assign_classes(k: usize, classes: usize, clients: usize, rng: &mut StdRng) -> Vec<Vec<usize>> {
    if clients < classes {
        let mut perm: Vec<usize> = (0..classes).collect();
        perm.shuffle(rng);
        return (0..clients)
            .map(|i| (0..k).map(|j| perm[(i * k + j) % classes]).collect())
            .collect();
    }
    (0..clients)
        .map(|i| {
            let mut held = vec![i % classes];
            while held.len() < k {
                let c = rng.random_range(0..classes);
                if !held.contains(&c) {
                    held.push(c);
                }
            }
            held
        })
        .collect()
}
