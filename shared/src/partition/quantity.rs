//! Quantity skew with IID labels: shard sizes from a Dirichlet (NIID-Bench
//! `iid-diff-quantity`, Li et al. 2022: `q ~ Dir(α·1)` over the clients, resampled until every
//! client has `min_size` images) or from a power law (`size ∝ rank^(−exponent)` over a seeded
//! order of the clients, as the unbalanced splits of LEAF and flwr-datasets' size
//! partitioners); the images themselves are a seeded shuffle, so every client's label mix is
//! the population's.

use anyhow::{bail, Result};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use super::{sizes, Partitioner};

/// The most Dirichlet draws before the sizes are declared impossible.
pub const MAX_DRAWS: usize = 1000;

/// How the shard sizes are drawn.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SizeLaw {
    /// Proportions `q ~ Dir(alpha·1)` over the clients.
    Dirichlet,
    /// Proportions `∝ r^(−exponent)`, `r = 1..clients` the clients' ranks in a seeded order.
    PowerLaw,
}

/// `[partition] kind = "quantity"`: skewed shard sizes, IID labels.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuantityConfig {
    /// `"dirichlet"` (default) or `"power_law"` (`partition.sizes`).
    #[serde(default = "dirichlet_law")]
    pub sizes: SizeLaw,
    /// Dirichlet concentration > 0 (`partition.alpha`, default 0.5).
    #[serde(default = "half")]
    pub alpha: f64,
    /// Power-law exponent ≥ 0 (`partition.exponent`, default 1: sizes ∝ 1/r).
    #[serde(default = "one")]
    pub exponent: f64,
    /// The smallest shard (`partition.min_size`, default 1).
    #[serde(default = "min_one")]
    pub min_size: usize,
}

fn dirichlet_law() -> SizeLaw {
    SizeLaw::Dirichlet
}
fn half() -> f64 {
    0.5
}
fn one() -> f64 {
    1.0
}
fn min_one() -> usize {
    1
}

impl Partitioner for QuantityConfig {
    /// Errors on `alpha` not finite positive, `exponent` negative or not finite, or
    /// `min_size` 0.
    fn validate(&self) -> Result<()> {
        if !(self.alpha > 0.0 && self.alpha.is_finite()) {
            bail!(
                "partition.alpha must be a positive number, got {}",
                self.alpha
            );
        }
        if !(self.exponent >= 0.0 && self.exponent.is_finite()) {
            bail!(
                "partition.exponent must be a number >= 0, got {}",
                self.exponent
            );
        }
        if self.min_size == 0 {
            bail!("partition.min_size must be at least 1");
        }
        Ok(())
    }

    /// With `rng = StdRng::seed_from_u64(seed)`: the sizes are drawn (Dirichlet: redrawn
    /// until the smallest is `min_size`, at most [`MAX_DRAWS`] times; power law: `min_size`
    /// each plus the rest by the law, largest remainder), then a shuffle of the images is cut
    /// in client order. Errors when `min_size · clients` exceeds the images or no Dirichlet
    /// draw fits, naming α, the clients and the images.
    fn split(
        &self,
        labels: &[u32],
        _num_classes: usize,
        clients: usize,
        seed: u64,
    ) -> Result<Vec<Vec<usize>>> {
        let n = labels.len();
        let m = self.min_size;
        if m.saturating_mul(clients) > n {
            bail!(
                "partition.min_size = {m} needs {m} x {clients} clients = {} images, only {n}",
                m * clients
            );
        }
        let mut rng = StdRng::seed_from_u64(seed);
        let sz = match self.sizes {
            SizeLaw::Dirichlet => self.dirichlet_sizes(n, clients, &mut rng)?,
            SizeLaw::PowerLaw => {
                let mut rank: Vec<usize> = (1..=clients).collect();
                rank.shuffle(&mut rng);
                let w: Vec<f64> = rank
                    .iter()
                    .map(|&r| (r as f64).powf(-self.exponent))
                    .collect();
                let rest = sizes::sizes_from_weights(&w, n - m * clients);
                rest.into_iter().map(|s| s + m).collect()
            }
        };
        let mut idx: Vec<usize> = (0..n).collect();
        idx.shuffle(&mut rng);
        Ok(sizes::cut(&idx, &sz))
    }
}

impl QuantityConfig {
    fn dirichlet_sizes(&self, n: usize, clients: usize, rng: &mut StdRng) -> Result<Vec<usize>> {
        for _ in 0..MAX_DRAWS {
            if let Some(q) = sizes::dirichlet(self.alpha, clients, rng)? {
                let sz = sizes::sizes_from_weights(&q, n);
                if sz.iter().all(|&s| s >= self.min_size) {
                    return Ok(sz);
                }
            }
        }
        bail!(
            "partition.sizes = \"dirichlet\": no draw with alpha = {} gave each of {clients} clients {} of the {n} images in {MAX_DRAWS} draws (raise partition.alpha, lower partition.min_size or use fewer clients)",
            self.alpha,
            self.min_size
        )
    }
}
