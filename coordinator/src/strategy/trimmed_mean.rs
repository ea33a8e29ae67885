//! Coordinate-wise trimmed mean (Yin, Chen, Ramchandran and Bartlett 2018, "Byzantine-Robust
//! Distributed Learning: Towards Optimal Statistical Rates", Option II): for every learnable
//! coordinate, sort the round's n values, drop the k = ⌊β·n⌋ largest and the k smallest, and
//! average the remaining n − 2k,
//!
//! w_j = 1/(n − 2k) · Σ_{i = k+1}^{n−k} w_{(i),j},
//!
//! with β = `beta` in [0, 0.5) (default 0.2, Flower's `FedTrimmedAvg`), so n − 2k ≥ 1.
//! Unweighted: n_k does not count. Needs every update of the round ([`super::buffered`]);
//! BatchNorm running statistics take the sample-weighted mean.

use anyhow::Result;

use crate::strategy::buffered::{sorted_column, Buffered, RobustRule};

/// The trimmed-mean rule with trimmed fraction β.
#[derive(Clone, Debug)]
pub struct TrimmedMean {
    /// Fraction trimmed from each end, in [0, 0.5).
    pub beta: f64,
}

impl TrimmedMean {
    /// Values trimmed from each end of n: ⌊β·n⌋.
    pub fn trimmed(&self, n: usize) -> usize {
        (self.beta * n as f64).floor() as usize
    }
}

impl RobustRule for TrimmedMean {
    fn name(&self) -> &'static str {
        "trimmed_mean"
    }

    fn combine(&self, updates: &[Buffered]) -> Result<Vec<f32>> {
        let n = updates.len();
        let k = self.trimmed(n).min((n - 1) / 2);
        let d = updates[0].values.len();
        let mut col = Vec::with_capacity(n);
        Ok((0..d)
            .map(|j| {
                sorted_column(updates, j, &mut col);
                let kept = &col[k..n - k];
                (kept.iter().map(|&v| v as f64).sum::<f64>() / kept.len() as f64) as f32
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::strategy::buffered::testing::{aggregate, ignores_a_scaled_client, w, ws};
    use crate::strategy::buffered::Robust;
    use crate::strategy::Strategy;

    fn tm(beta: f64) -> Robust<TrimmedMean> {
        Robust(TrimmedMean { beta })
    }

    #[test]
    fn odd_and_even_counts_by_hand() {
        let five: Vec<_> = [
            [1.0, 50.0],
            [2.0, -4.0],
            [3.0, 0.0],
            [4.0, 2.0],
            [100.0, 1.0],
        ]
        .iter()
        .map(|v| (ws(v, 1.0), 1u64))
        .collect();
        // β = 0.2, n = 5: k = 1; [2, 3, 4] → 3 ; sorted [-4, 0, 1, 2, 50] → [0, 1, 2] → 1
        assert_eq!(w(&aggregate(&mut tm(0.2), &five)), vec![3.0, 1.0]);
        // β = 0: the plain (unweighted) mean
        assert_eq!(w(&aggregate(&mut tm(0.0), &five)), vec![22.0, 9.8]);
        let mut six = five.clone();
        six.push((ws(&[-10.0, 3.0], 1.0), 7));
        // n = 6, β = 0.2: k = 1; [-10, 1, 2, 3, 4, 100] → [1, 2, 3, 4] → 2.5 ;
        // [-4, 0, 1, 2, 3, 50] → [0, 1, 2, 3] → 1.5
        assert_eq!(w(&aggregate(&mut tm(0.2), &six)), vec![2.5, 1.5]);
        // β = 0.4, n = 6: k = 2 → [2, 3] → 2.5 ; [1, 2] → 1.5
        assert_eq!(w(&aggregate(&mut tm(0.4), &six)), vec![2.5, 1.5]);
        assert_eq!(TrimmedMean { beta: 0.49 }.trimmed(3), 1);
    }

    #[test]
    fn a_client_sending_100x_weights_is_ignored() {
        ignores_a_scaled_client(&|| Box::new(tm(0.2)) as Box<dyn Strategy>);
    }
}
