//! Dirichlet label skew (Hsu, Qi & Brown, "Measuring the Effects of Non-Identical Data
//! Distribution for Federated Visual Classification", 2019): for every class, proportions
//! `p ~ Dir(α·1)` over the clients decide how that class's images are shared. Small `α`
//! (e.g. 0.1) gives clients dominated by one or two classes; large `α` (e.g. 1000) approaches
//! IID.
//!
//! Two opt-in variants (the defaults keep the split above bit for bit):
//! * `min_size = m`: NIID-Bench's rule (Li et al. 2022, `Xtra-Computing/NIID-Bench`,
//!   `noniid-labeldir`): the whole split is redrawn until every client holds at least `m`
//!   images, a client already holding `N / clients` images getting no more of later classes;
//!   at most [`MAX_DRAWS`] draws, then a clear error naming α, the clients and the images.
//! * `balanced = true`: equal shard sizes (`N / clients`, ±1) with Dirichlet class mixes,
//!   flwr-datasets' `InnerDirichletPartitioner`: each client draws its class proportions
//!   `q_k ~ Dir(α·1)` over the classes and the clients, in turn, draw the class of their next
//!   image from `q_k` restricted to the classes that still have images.

use anyhow::{bail, Result};
use rand::distr::weighted::WeightedIndex;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Gamma};
use serde::{Deserialize, Serialize};

use super::sizes;
use super::Partitioner;

/// The most draws `min_size` makes before it gives up.
pub const MAX_DRAWS: usize = 1000;

/// `[partition] kind = "dirichlet"`: per-class Dirichlet label skew.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirichletConfig {
    /// Concentration α > 0 (`partition.alpha`, required): small = skewed, large = close to
    /// IID.
    pub alpha: f64,
    /// NIID-Bench's minimum shard size (`partition.min_size`, default none: today's split,
    /// where an empty client gets one image from the largest): redraw until every client has
    /// at least this many images.
    #[serde(default)]
    pub min_size: Option<usize>,
    /// Equal shard sizes with per-client Dirichlet class mixes (`partition.balanced`, default
    /// false).
    #[serde(default)]
    pub balanced: bool,
}

impl Partitioner for DirichletConfig {
    /// Errors unless `alpha` is a finite number > 0, naming `partition.alpha`.
    fn validate(&self) -> Result<()> {
        let alpha = self.alpha;
        if !(alpha > 0.0 && alpha.is_finite()) {
            bail!("partition.alpha must be a positive number, got {alpha}");
        }
        if self.min_size == Some(0) {
            bail!("partition.min_size must be at least 1 (or absent)");
        }
        Ok(())
    }

    /// With `rng = StdRng::seed_from_u64(seed)`: for each class in order `0..num_classes`, the
    /// class's indices are shuffled, proportions `p_k = g_k / Σ g` with `g_k ~ Gamma(α, 1)` are
    /// drawn, and the indices are cut at `round(n_c · Σ_{j≤k} p_j)` (a class whose draws all
    /// underflow goes whole to one client drawn uniformly, the limit of Dir(α) as α → 0).
    /// Afterwards, while some client is empty, one image (the highest index) is moved to it
    /// from the currently largest client (lowest client id on ties); this slightly perturbs the
    /// drawn proportions only when α is tiny or clients many.
    fn split(
        &self,
        labels: &[u32],
        num_classes: usize,
        clients: usize,
        seed: u64,
    ) -> Result<Vec<Vec<usize>>> {
        if let Some(m) = self.min_size {
            let n = labels.len();
            if m.saturating_mul(clients) > n {
                bail!(
                    "partition.min_size = {m} needs {m} x {clients} clients = {} images, only {n}",
                    m * clients
                );
            }
        }
        if self.balanced {
            return balanced_split(self.alpha, labels, num_classes, clients, seed);
        }
        if let Some(m) = self.min_size {
            return min_size_split(self.alpha, m, labels, num_classes, clients, seed);
        }
        let alpha = self.alpha;
        let mut rng = StdRng::seed_from_u64(seed);
        let mut parts: Vec<Vec<usize>> = vec![Vec::new(); clients];
        let gamma = Gamma::new(alpha, 1.0)
            .map_err(|e| anyhow::anyhow!("invalid Dirichlet alpha {alpha}: {e}"))?;
        let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); num_classes];
        for (i, &l) in labels.iter().enumerate() {
            by_class[l as usize].push(i);
        }
        for class_idx in by_class.iter_mut() {
            class_idx.shuffle(&mut rng);
            let g: Vec<f64> = (0..clients).map(|_| gamma.sample(&mut rng)).collect();
            let sum: f64 = g.iter().sum();
            let n_c = class_idx.len();
            if !(sum > 0.0 && sum.is_finite()) {
                // every draw underflowed (tiny alpha): the whole class goes to one client,
                // the limit of Dir(α) as α → 0
                let k = rng.random_range(0..clients);
                parts[k].extend_from_slice(class_idx);
                continue;
            }
            let mut cum = 0.0;
            let mut start = 0usize;
            for (k, gk) in g.iter().enumerate() {
                cum += gk / sum;
                let end = if k + 1 == clients {
                    n_c
                } else {
                    ((cum * n_c as f64).round() as usize).clamp(start, n_c)
                };
                parts[k].extend_from_slice(&class_idx[start..end]);
                start = end;
            }
        }
        fill_empty_clients(&mut parts);
        Ok(parts)
    }
}

/// NIID-Bench's `noniid-labeldir` with `min_require_size = min`: redraws the per-class
/// Dirichlet cuts (a client at `N / clients` images or more gets a zero proportion of later
/// classes) until every client holds `min` images; at most [`MAX_DRAWS`] draws.
fn min_size_split(
    alpha: f64,
    min: usize,
    labels: &[u32],
    num_classes: usize,
    clients: usize,
    seed: u64,
) -> Result<Vec<Vec<usize>>> {
    let mut rng = StdRng::seed_from_u64(seed);
    let n = labels.len();
    let mut by_class = sizes::by_class(labels, num_classes);
    let cap = n as f64 / clients as f64;
    for _ in 0..MAX_DRAWS {
        let mut parts: Vec<Vec<usize>> = vec![Vec::new(); clients];
        for class_idx in by_class.iter_mut() {
            class_idx.shuffle(&mut rng);
            let mut p = match sizes::dirichlet(alpha, clients, &mut rng)? {
                Some(p) => p,
                None => {
                    let mut p = vec![0.0; clients];
                    p[rng.random_range(0..clients)] = 1.0;
                    p
                }
            };
            let capped: Vec<f64> = p
                .iter()
                .zip(&parts)
                .map(|(&pk, part)| if (part.len() as f64) < cap { pk } else { 0.0 })
                .collect();
            if capped.iter().sum::<f64>() > 0.0 {
                p = capped;
            }
            let sum: f64 = p.iter().sum();
            let n_c = class_idx.len();
            let mut cum = 0.0;
            let mut start = 0;
            for (k, pk) in p.iter().enumerate() {
                cum += pk / sum;
                let end = if k + 1 == clients {
                    n_c
                } else {
                    ((cum * n_c as f64).floor() as usize).clamp(start, n_c)
                };
                parts[k].extend_from_slice(&class_idx[start..end]);
                start = end;
            }
        }
        if parts.iter().all(|p| p.len() >= min) {
            return Ok(parts);
        }
    }
    bail!(
        "partition.min_size = {min}: no Dirichlet split with alpha = {alpha} gave each of {clients} clients {min} of the {n} images in {MAX_DRAWS} draws (raise partition.alpha, lower partition.min_size or use fewer clients)"
    )
}

/// Equal shard sizes, per-client Dirichlet class mixes (flwr-datasets'
/// `InnerDirichletPartitioner`): client `k` draws `q_k ~ Dir(α·1)` over the classes, then the
/// clients in turn (round-robin until full) take the next image of a class drawn from `q_k`
/// restricted to the classes with images left (uniform over those if `q_k` puts no mass there).
fn balanced_split(
    alpha: f64,
    labels: &[u32],
    num_classes: usize,
    clients: usize,
    seed: u64,
) -> Result<Vec<Vec<usize>>> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut by_class = sizes::by_class(labels, num_classes);
    for c in by_class.iter_mut() {
        c.shuffle(&mut rng);
    }
    let mut q = Vec::with_capacity(clients);
    for _ in 0..clients {
        q.push(
            sizes::dirichlet(alpha, num_classes, &mut rng)?.unwrap_or_else(|| {
                let mut p = vec![0.0; num_classes];
                p[rng.random_range(0..num_classes)] = 1.0;
                p
            }),
        );
    }
    let want = sizes::equal_sizes(labels.len(), clients);
    let mut parts: Vec<Vec<usize>> = want.iter().map(|&w| Vec::with_capacity(w)).collect();
    let mut left = labels.len();
    while left > 0 {
        for k in 0..clients {
            if parts[k].len() == want[k] {
                continue;
            }
            let avail: Vec<f64> = (0..num_classes)
                .map(|c| if by_class[c].is_empty() { 0.0 } else { q[k][c] })
                .collect();
            let w: Vec<f64> = if avail.iter().sum::<f64>() > 0.0 {
                avail
            } else {
                by_class
                    .iter()
                    .map(|c| f64::from(u8::from(!c.is_empty())))
                    .collect()
            };
            let c = WeightedIndex::new(&w)
                .map_err(|e| anyhow::anyhow!("balanced Dirichlet split: {e}"))?
                .sample(&mut rng);
            let i = by_class[c].pop().expect("a class with images left");
            parts[k].push(i);
            left -= 1;
        }
    }
    Ok(parts)
}

/// Moves one image (the highest index) from the largest client to each empty client.
fn fill_empty_clients(parts: &mut [Vec<usize>]) {
    while let Some(empty) = parts.iter().position(Vec::is_empty) {
        let largest = (0..parts.len())
            .max_by_key(|&k| (parts[k].len(), std::cmp::Reverse(k)))
            .expect("at least one client");
        let v = &mut parts[largest];
        let pos = (0..v.len())
            .max_by_key(|&i| v[i])
            .expect("largest client is non-empty");
        let moved = v.swap_remove(pos);
        parts[empty].push(moved);
    }
}
