//! Helpers shared by the partitioners: images grouped by class, proportions turned into
//! integer sizes, a shuffled list cut into consecutive shards, and Dirichlet draws.

use anyhow::{anyhow, Result};
use rand::rngs::StdRng;
use rand_distr::{Distribution, Gamma};

/// The indices of the images of each class, `num_classes` lists in ascending index order.
pub(crate) fn by_class(labels: &[u32], num_classes: usize) -> Vec<Vec<usize>> {
    let mut by: Vec<Vec<usize>> = vec![Vec::new(); num_classes];
    for (i, &l) in labels.iter().enumerate() {
        by[l as usize].push(i);
    }
    by
}

/// Integer sizes summing to `n` in proportion to `weights` (non-negative, not all zero),
/// by the largest-remainder method (ties to the lower index).
pub(crate) fn sizes_from_weights(weights: &[f64], n: usize) -> Vec<usize> {
    let sum: f64 = weights.iter().sum();
    let exact: Vec<f64> = weights.iter().map(|w| w / sum * n as f64).collect();
    let mut sizes: Vec<usize> = exact.iter().map(|e| e.floor() as usize).collect();
    let mut left = n.saturating_sub(sizes.iter().sum());
    let mut order: Vec<usize> = (0..weights.len()).collect();
    order.sort_by(|&a, &b| {
        let (ra, rb) = (exact[a] - exact[a].floor(), exact[b] - exact[b].floor());
        rb.total_cmp(&ra).then(a.cmp(&b))
    });
    for &k in order.iter().cycle() {
        if left == 0 {
            break;
        }
        sizes[k] += 1;
        left -= 1;
    }
    sizes
}

/// Cuts `idx` into consecutive pieces of `sizes` (which sum to `idx.len()`).
pub(crate) fn cut(idx: &[usize], sizes: &[usize]) -> Vec<Vec<usize>> {
    let mut start = 0;
    sizes
        .iter()
        .map(|&s| {
            let p = idx[start..start + s].to_vec();
            start += s;
            p
        })
        .collect()
}

/// `n` near-equal sizes summing to `total` (the first `total % n` one larger).
pub(crate) fn equal_sizes(total: usize, n: usize) -> Vec<usize> {
    (0..n)
        .map(|k| total / n + usize::from(k < total % n))
        .collect()
}

/// One draw of `Dir(α·1)` over `n` outcomes, as `Gamma(α, 1)` draws normalised; `None`
/// when every draw underflowed to 0 (tiny α).
pub(crate) fn dirichlet(alpha: f64, n: usize, rng: &mut StdRng) -> Result<Option<Vec<f64>>> {
    let gamma =
        Gamma::new(alpha, 1.0).map_err(|e| anyhow!("invalid Dirichlet alpha {alpha}: {e}"))?;
    let g: Vec<f64> = (0..n).map(|_| gamma.sample(rng)).collect();
    let sum: f64 = g.iter().sum();
    if !(sum > 0.0 && sum.is_finite()) {
        return Ok(None);
    }
    Ok(Some(g.into_iter().map(|x| x / sum).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn largest_remainder_sizes() {
        assert_eq!(sizes_from_weights(&[1.0, 1.0, 1.0], 10), vec![4, 3, 3]);
        assert_eq!(sizes_from_weights(&[0.5, 0.3, 0.2], 7), vec![4, 2, 1]);
        assert_eq!(sizes_from_weights(&[0.0, 1.0], 5), vec![0, 5]);
        assert_eq!(equal_sizes(10, 4), vec![3, 3, 2, 2]);
        assert_eq!(cut(&[5, 6, 7, 8], &[1, 3]), vec![vec![5], vec![6, 7, 8]]);
    }
}
