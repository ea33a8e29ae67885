//! Coordinate-wise median (Yin, Chen, Ramchandran and Bartlett 2018, "Byzantine-Robust
//! Distributed Learning: Towards Optimal Statistical Rates", Option I): every learnable
//! coordinate of the next global model is the median of that coordinate over the round's n
//! updates,
//!
//! w_j = med{ w_{k,j} : k = 1..n },
//!
//! the middle value for odd n and the mean of the two middle values for even n (as
//! `numpy.median`, Flower's `FedMedian`). Unweighted: n_k does not count. No settings; needs
//! every update of the round ([`super::buffered`]). BatchNorm running statistics take the
//! sample-weighted mean.

use anyhow::Result;

use crate::strategy::buffered::{sorted_column, Buffered, RobustRule};

/// The coordinate-wise median rule.
#[derive(Clone, Debug)]
pub struct Median;

/// The median of sorted, non-empty `col` (computed in f64, then cast).
pub fn median_of_sorted(col: &[f32]) -> f32 {
    let n = col.len();
    if n % 2 == 1 {
        col[n / 2]
    } else {
        ((col[n / 2 - 1] as f64 + col[n / 2] as f64) / 2.0) as f32
    }
}

impl RobustRule for Median {
    fn name(&self) -> &'static str {
        "median"
    }

    fn combine(&self, updates: &[Buffered]) -> Result<Vec<f32>> {
        let d = updates[0].values.len();
        let mut col = Vec::with_capacity(updates.len());
        Ok((0..d)
            .map(|j| {
                sorted_column(updates, j, &mut col);
                median_of_sorted(&col)
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

    #[test]
    fn odd_and_even_counts_by_hand() {
        let odd = [
            (ws(&[3.0, -1.0], 2.0), 1u64),
            (ws(&[1.0, 5.0], 0.0), 1),
            (ws(&[2.0, 0.0], 4.0), 2),
        ];
        let r = aggregate(&mut Robust(Median), &odd);
        assert_eq!(w(&r), vec![2.0, 0.0]);
        // the running statistic is the weighted mean (2 + 0 + 8)/4
        assert_eq!(r.tensors["bn.running_var"].data, vec![2.5]);
        let mut even = odd.to_vec();
        even.push((ws(&[10.0, 1.0], 0.0), 4));
        // sorted: [1, 2, 3, 10] → 2.5 ; [-1, 0, 1, 5] → 0.5
        assert_eq!(w(&aggregate(&mut Robust(Median), &even)), vec![2.5, 0.5]);
    }

    #[test]
    fn a_client_sending_100x_weights_is_ignored() {
        ignores_a_scaled_client(&|| Box::new(Robust(Median)) as Box<dyn Strategy>);
    }
}
