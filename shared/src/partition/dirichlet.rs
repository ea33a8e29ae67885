//! Dirichlet label skew (Hsu, Qi & Brown, "Measuring the Effects of Non-Identical Data
//! Distribution for Federated Visual Classification", 2019): for every class, proportions
//! `p ~ Dir(α·1)` over the clients decide how that class's images are shared. Small `α`
//! (e.g. 0.1) gives clients dominated by one or two classes; large `α` (e.g. 1000) approaches
//! IID.

use anyhow::{bail, Result};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Gamma};
use serde::{Deserialize, Serialize};

use super::Partitioner;

/// `[partition] kind = "dirichlet"`: per-class Dirichlet label skew.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirichletConfig {
    /// Concentration α > 0 (`partition.alpha`, required): small = skewed, large = close to
    /// IID.
    pub alpha: f64,
}

impl Partitioner for DirichletConfig {
    /// Errors unless `alpha` is a finite number > 0, naming `partition.alpha`.
    fn validate(&self) -> Result<()> {
        let alpha = self.alpha;
        if !(alpha > 0.0 && alpha.is_finite()) {
            bail!("partition.alpha must be a positive number, got {alpha}");
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
