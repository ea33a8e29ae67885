//! Bulyan (El Mhamdi, Guerraoui and Rouault 2018, "The Hidden Vulnerability of Distributed
//! Learning in Byzantium", ICML, Algorithm 1 with Krum as the selection rule A). With n
//! updates V_1..V_n (the learnable weights, flattened) of which f may be byzantine, and
//! n ≥ 4f + 3:
//!
//! 1. **Selection.** θ = n − 2f updates are chosen one at a time: Krum is applied to the
//!    updates not yet chosen (R, |R| = r), the update of lowest Krum score joins the selection
//!    S and leaves R. The score of i ∈ R is Σ_{j ∈ N_i} ‖V_i − V_j‖² over its k nearest other
//!    members of R, k = max(r − f − 2, 1) (capped at r − 1): Krum's n − f − 2 neighbours
//!    while r > f + 3, and one neighbour for the last, small R (as Flower's `Bulyan`, whose
//!    Krum keeps at least one neighbour). Ties go to the earlier update in the canonical
//!    order ([`super::buffered`]).
//! 2. **Aggregation.** With β = θ − 2f, coordinate j of the next model is the mean of the β
//!    values of {V_{s,j} : s ∈ S} closest to their median (the middle value, or the mean of the
//!    two middle values for even θ; ties in distance go to the smaller value):
//!
//!    w_j = 1/β · Σ_{v ∈ M_j} v,  M_j = the β members of S_j nearest med(S_j).
//!
//! Unweighted: n_k does not count (as the paper and Flower). The scenario is refused when it
//! loads unless `federation.min_clients` ≥ 4f + 3 (the message names the numbers); a round
//! that still ends with fewer updates is an error. Distances are in f64; needs every update of
//! the round ([`super::buffered`]). BatchNorm running statistics take the sample-weighted mean.

use anyhow::{bail, Result};

use crate::strategy::buffered::{Buffered, RobustRule};
use crate::strategy::krum::dist2;
use crate::strategy::median::median_of_sorted;

/// The Bulyan rule with f byzantine updates assumed.
#[derive(Clone, Debug)]
pub struct Bulyan {
    /// f, the byzantine updates assumed.
    pub byzantine: usize,
}

/// Stage 1: the indices of the θ = n − 2f updates that iterated Krum selects, in the order
/// chosen. Errors unless n ≥ 4f + 3, naming the numbers.
pub fn bulyan_select(updates: &[&[f32]], f: usize) -> Result<Vec<usize>> {
    let n = updates.len();
    if n < 4 * f + 3 {
        bail!(
            "Bulyan with byzantine = {f} needs n ≥ 4f + 3 = {} updates, the round has {n}",
            4 * f + 3
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
    let mut remaining: Vec<usize> = (0..n).collect();
    let mut selected = Vec::with_capacity(n - 2 * f);
    let mut row = Vec::with_capacity(n);
    while selected.len() < n - 2 * f {
        let r = remaining.len();
        let k = (r.saturating_sub(f + 2)).max(1).min(r - 1);
        let mut best: Option<(f64, usize)> = None;
        for (pos, &i) in remaining.iter().enumerate() {
            row.clear();
            row.extend(remaining.iter().filter(|&&j| j != i).map(|&j| d[i][j]));
            row.sort_by(f64::total_cmp);
            let score: f64 = row[..k].iter().sum();
            // strictly lower wins: ties keep the earlier (lower) index
            if best.is_none_or(|(s, _)| score < s) {
                best = Some((score, pos));
            }
        }
        let (_, pos) = best.expect("remaining is never empty while selecting");
        selected.push(remaining.remove(pos));
    }
    Ok(selected)
}

/// Stage 2 on one coordinate: the mean (in f64) of the `beta` values of `col` closest to its
/// median; `col` is sorted (`total_cmp`) and `1 ≤ beta ≤ col.len()`.
pub fn mean_around_median(col: &[f32], beta: usize) -> f32 {
    let med = median_of_sorted(col) as f64;
    let mut by_distance: Vec<f32> = col.to_vec();
    by_distance.sort_by(|&a, &b| {
        let (da, db) = ((a as f64 - med).abs(), (b as f64 - med).abs());
        da.total_cmp(&db).then(a.total_cmp(&b))
    });
    let sum: f64 = by_distance[..beta].iter().map(|&v| v as f64).sum();
    (sum / beta as f64) as f32
}

impl RobustRule for Bulyan {
    fn name(&self) -> &'static str {
        "bulyan"
    }

    fn combine(&self, updates: &[Buffered]) -> Result<Vec<f32>> {
        let f = self.byzantine;
        let rows: Vec<&[f32]> = updates.iter().map(|u| u.values.as_slice()).collect();
        let selected = bulyan_select(&rows, f)?;
        let beta = selected.len() - 2 * f;
        let d = updates[0].values.len();
        let mut col = Vec::with_capacity(selected.len());
        Ok((0..d)
            .map(|j| {
                col.clear();
                col.extend(selected.iter().map(|&s| updates[s].values[j]));
                col.sort_by(f32::total_cmp);
                mean_around_median(&col, beta)
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
    fn the_selection_and_the_trimmed_mean_by_hand() {
        // n = 7, f = 1: θ = 5 selected, β = 3 averaged. Points on a line:
        //   idx:   0  1  2  3  4  5   6
        //   value: 0  1  2  3  5  9  40
        // r = 7, k = 4: scores 0: 1+4+9+25 = 39, 1: 1+1+4+16 = 22, 2: 1+1+4+9 = 15,
        //   3: 1+4+4+9 = 18, 4: 4+9+16+16 = 45 → 2
        // r = 6, k = 3: 0: 1+9+25 = 35, 1: 1+4+16 = 21, 3: 4+4+9 = 17, 4: 4+16+16 = 36 → 3
        // r = 5, k = 2: 0: 1+25 = 26, 1: 1+16 = 17, 4: 16+16 = 32 → 1
        // r = 4, k = 1: 0: 25, 4: 16, 5: 16, 6: 961 → 4 (tie with 5: the earlier)
        // r = 3, k = max(0, 1) = 1: 0: 81, 5: 81, 6: 961 → 0 (tie with 5: the earlier)
        let pts: [&[f32]; 7] = [&[0.0], &[1.0], &[2.0], &[3.0], &[5.0], &[9.0], &[40.0]];
        assert_eq!(bulyan_select(&pts, 1).unwrap(), vec![2, 3, 1, 4, 0]);
        // selected values {0, 1, 2, 3, 5}: median 2, the 3 closest {2, 1, 3} → 2
        let u: Vec<_> = pts.iter().map(|p| (ws(p, 1.0), 4u64)).collect();
        let mut b = Robust(Bulyan { byzantine: 1 });
        let r = aggregate(&mut b, &u);
        assert_eq!(w(&r), vec![2.0]);
        assert_eq!(r.tensors["bn.running_var"].data, vec![1.0]);
        // f = 0: every update is selected and β = n: the plain (unweighted) mean
        let three: [&[f32]; 3] = [&[1.0], &[2.0], &[6.0]];
        let u: Vec<_> = three.iter().map(|p| (ws(p, 0.0), 1u64)).collect();
        assert_eq!(
            w(&aggregate(&mut Robust(Bulyan { byzantine: 0 }), &u)),
            vec![3.0]
        );
    }

    #[test]
    fn the_mean_around_the_median_on_odd_and_even_columns() {
        // odd: median 3; distances 1:2, 2:1, 3:0, 10:7, 11:8 → β = 3: {3, 2, 1} → 2
        assert_eq!(mean_around_median(&[1.0, 2.0, 3.0, 10.0, 11.0], 3), 2.0);
        // even: median (2 + 4)/2 = 3; distances 0:3, 2:1, 4:1, 100:97 → β = 2: {2, 4} → 3
        assert_eq!(mean_around_median(&[0.0, 2.0, 4.0, 100.0], 2), 3.0);
        // a distance tie goes to the smaller value: median 2 of {1, 2, 3}, β = 2 → {2, 1}
        assert_eq!(mean_around_median(&[1.0, 2.0, 3.0], 2), 1.5);
    }

    #[test]
    fn fewer_than_4f_plus_3_updates_are_refused_naming_the_numbers() {
        let pts: [&[f32]; 6] = [&[0.0], &[1.0], &[2.0], &[3.0], &[4.0], &[5.0]];
        let e = bulyan_select(&pts, 1).unwrap_err().to_string();
        assert!(
            e.contains("n ≥ 4f + 3 = 7") && e.contains("the round has 6"),
            "{e}"
        );
        let e = Robust(Bulyan { byzantine: 1 }).0.combine(
            &pts.iter()
                .map(|p| Buffered {
                    values: p.to_vec(),
                    samples: 1,
                })
                .collect::<Vec<_>>(),
        );
        assert!(e.is_err());
        // and when the scenario loads: min_clients 6 < 4·1 + 3
        let text = "[federation]\nclients = 8\nmin_clients = 6\nstrategy = \"bulyan\"\n";
        let e = fedssl_shared::config::Scenario::from_toml_str(text, &[]).unwrap_err();
        let msg = format!("{e:#}");
        assert!(
            msg.contains("n ≥ 4f + 3 = 7") && msg.contains("federation.min_clients is 6"),
            "{msg}"
        );
    }

    #[test]
    fn a_client_sending_100x_weights_is_ignored() {
        ignores_a_scaled_client(&|| Box::new(Robust(Bulyan { byzantine: 1 })) as Box<dyn Strategy>);
    }
}
