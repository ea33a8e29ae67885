//! Krum and Multi-Krum (Blanchard, El Mhamdi, Guerraoui and Stainer 2017, "Machine Learning
//! with Adversaries: Byzantine Tolerant Gradient Descent", §4). With n updates V_1..V_n (the
//! learnable weights, flattened) of which f may be byzantine, each update's score is the sum
//! of its squared distances to its n − f − 2 closest other updates,
//!
//! s(i) = Σ_{j ∈ N_i} ‖V_i − V_j‖²,  N_i = the n − f − 2 nearest j ≠ i,
//!
//! which needs n > 2f + 2 (a round with fewer updates is an error; the scenario is refused
//! up front when `federation.min_clients` cannot guarantee it). Krum takes the update of
//! lowest score; Multi-Krum the sample-weighted mean of the m lowest-scored (m = `selected`,
//! default n − f; the paper averages them, Flower's `Krum` weights that mean by n_k as done
//! here). Ties go to the earlier update in the canonical order ([`super::buffered`]).
//! Distances are in f64. BatchNorm running statistics take the sample-weighted mean.

use anyhow::{bail, Result};

use crate::strategy::buffered::{Buffered, RobustRule};

/// Krum (`selected = Some(1)`) or Multi-Krum.
#[derive(Clone, Debug)]
pub struct Krum {
    /// The strategy's name: `"krum"` or `"multi_krum"`.
    pub name: &'static str,
    /// f, the byzantine updates assumed.
    pub byzantine: usize,
    /// m, the updates kept (`None`: n − f).
    pub selected: Option<usize>,
}

/// Squared Euclidean distance in f64.
pub(crate) fn dist2(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| {
            let d = x as f64 - y as f64;
            d * d
        })
        .sum()
}

/// The indices of the `m` updates of lowest Krum score with `f` byzantine assumed, best
/// first (ties: lower index). Errors unless n > 2f + 2 and 1 ≤ m ≤ n − f.
pub fn krum_select(updates: &[&[f32]], f: usize, m: usize) -> Result<Vec<usize>> {
    let n = updates.len();
    if n <= 2 * f + 2 {
        bail!(
            "Krum with byzantine = {f} needs more than 2f + 2 = {} updates, the round has {n}",
            2 * f + 2
        );
    }
    if m == 0 || m > n - f {
        bail!(
            "Multi-Krum selects 1..={} of {n} updates (n − f), not {m}",
            n - f
        );
    }
    let mut d = vec![vec![0.0f64; n]; n];
    for i in 0..n {
        for j in i + 1..n {
            let v = dist2(updates[i], updates[j]);
            d[i][j] = v;
            d[j][i] = v;
        }
    }
    let neighbours = n - f - 2;
    let scores: Vec<f64> = (0..n)
        .map(|i| {
            let mut row: Vec<f64> = (0..n).filter(|&j| j != i).map(|j| d[i][j]).collect();
            row.sort_by(f64::total_cmp);
            row[..neighbours].iter().sum()
        })
        .collect();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]).then(a.cmp(&b)));
    order.truncate(m);
    Ok(order)
}

impl RobustRule for Krum {
    fn name(&self) -> &'static str {
        self.name
    }

    fn combine(&self, updates: &[Buffered]) -> Result<Vec<f32>> {
        let n = updates.len();
        let m = self.selected.unwrap_or(n.saturating_sub(self.byzantine));
        let rows: Vec<&[f32]> = updates.iter().map(|u| u.values.as_slice()).collect();
        let mut chosen = krum_select(&rows, self.byzantine, m)?;
        if chosen.len() == 1 {
            return Ok(updates[chosen[0]].values.clone());
        }
        chosen.sort_unstable();
        let total: f64 = chosen.iter().map(|&i| updates[i].samples as f64).sum();
        let mut sum = vec![0.0f64; updates[0].values.len()];
        for &i in &chosen {
            let w = updates[i].samples as f64;
            for (s, &v) in sum.iter_mut().zip(&updates[i].values) {
                *s += w * v as f64;
            }
        }
        Ok(sum.into_iter().map(|s| (s / total) as f32).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::strategy::buffered::testing::{aggregate, ignores_a_scaled_client, w, ws};
    use crate::strategy::buffered::Robust;
    use crate::strategy::Strategy;

    fn krum(f: usize) -> Robust<Krum> {
        Robust(Krum {
            name: "krum",
            byzantine: f,
            selected: Some(1),
        })
    }

    #[test]
    fn the_planted_centre_is_selected() {
        // five points on a line; f = 1, n − f − 2 = 2 neighbours:
        // 0: {1, 2} → 1 + 4 = 5 ; 1: {0, 2} → 1 + 1 = 2 ; 2: {1, 0 or 3} → 1 + 4 = 5 ;
        // 3: {2, 1} → 4 + 9 = 13 ; 4: far away
        let pts: [&[f32]; 5] = [&[0.0], &[1.0], &[2.0], &[4.0], &[50.0]];
        assert_eq!(krum_select(&pts, 1, 1).unwrap(), vec![1]);
        assert_eq!(krum_select(&pts, 1, 3).unwrap(), vec![1, 0, 2]);
        // n = 4 is not > 2f + 2 = 4
        let e = krum_select(&pts[..4], 1, 1).unwrap_err();
        assert!(e.to_string().contains("more than 2f + 2 = 4"), "{e}");
        assert!(krum_select(&pts, 1, 5).is_err());
        // Krum returns the selected update itself; the running statistic is the weighted mean
        let u: Vec<_> = pts.iter().map(|p| (ws(p, 1.0), 3u64)).collect();
        let r = aggregate(&mut krum(1), &u);
        assert_eq!(w(&r), vec![1.0]);
        assert_eq!(r.tensors["bn.running_var"].data, vec![1.0]);
    }

    #[test]
    fn multi_krum_averages_the_selected_by_samples() {
        let pts: [&[f32]; 5] = [&[0.0], &[1.0], &[2.0], &[4.0], &[50.0]];
        let u: Vec<_> = pts
            .iter()
            .zip([1u64, 2, 3, 4, 5])
            .map(|(p, n)| (ws(p, 0.0), n))
            .collect();
        let mut mk = Robust(Krum {
            name: "multi_krum",
            byzantine: 1,
            selected: Some(3),
        });
        // scores as above (the samples do not change them): {1, 0, 2}, weighted (0·1 + 1·2 +
        // 2·3)/6
        assert_eq!(w(&aggregate(&mut mk, &u)), vec![(8.0f64 / 6.0) as f32]);
        // m = n − f = 4 by default keeps 3 as well: 0..=3
        mk.0.selected = None;
        assert_eq!(w(&aggregate(&mut mk, &u)), vec![(24.0f64 / 10.0) as f32]);
    }

    #[test]
    fn a_client_sending_100x_weights_is_ignored() {
        ignores_a_scaled_client(&|| Box::new(krum(1)) as Box<dyn Strategy>);
        ignores_a_scaled_client(&|| {
            Box::new(Robust(Krum {
                name: "multi_krum",
                byzantine: 1,
                selected: None,
            })) as Box<dyn Strategy>
        });
    }
}
