//! The probe of the evaluation suite: which probe ([`ProbeSpec`]) with its L2 weight decay
//! chosen on a held-out validation split of the labelled set, as Revisiting does.

use anyhow::{ensure, Result};
use rand::{rngs::StdRng, seq::SliceRandom, SeedableRng};

use crate::eval::features::HostFeatures;
use crate::eval::probe::linear::{linear_probe, ProbeConfig};
use crate::eval::probe::mlp::{mlp_probe, MlpConfig};
use crate::eval::probe::scoring::ProbeResult;

/// Which probe [`probe_with_selection`] fits, with its hyper-parameters (the weight decay in
/// them is replaced by the grid's values).
#[derive(Clone, Debug)]
pub enum ProbeSpec {
    /// [`linear_probe`].
    Linear(ProbeConfig),
    /// [`mlp_probe`].
    Mlp(MlpConfig),
}

impl ProbeSpec {
    fn fit(
        &self,
        wd: f64,
        train: &HostFeatures,
        train_y: &[u32],
        test: &HostFeatures,
        test_y: &[u32],
        k: usize,
    ) -> Result<ProbeResult> {
        match self {
            ProbeSpec::Linear(c) => {
                let c = ProbeConfig {
                    weight_decay: wd,
                    ..c.clone()
                };
                linear_probe(train, train_y, test, test_y, k, &c)
            }
            ProbeSpec::Mlp(c) => {
                let c = MlpConfig {
                    weight_decay: wd,
                    ..c.clone()
                };
                mlp_probe(train, train_y, test, test_y, k, &c)
            }
        }
    }
}

/// The held-out split of [`probe_with_selection`]: a seeded shuffle of `0..n`, the first
/// `round(n · val_fraction)` (at least 1, at most `n − 1`) are validation. Returns
/// `(fit, validation)` index lists, each sorted. Needs `n ≥ 2`.
pub fn validation_split(n: usize, val_fraction: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let mut idx: Vec<usize> = (0..n).collect();
    idx.shuffle(&mut StdRng::seed_from_u64(seed));
    let nv = ((n as f64 * val_fraction).round() as usize).clamp(1, n.saturating_sub(1).max(1));
    let mut val = idx[..nv].to_vec();
    let mut fit = idx[nv..].to_vec();
    val.sort_unstable();
    fit.sort_unstable();
    (fit, val)
}

/// A probe whose L2 weight decay is chosen as Revisiting does: each value of `grid` is fitted
/// on the labelled set minus a held-out validation split ([`validation_split`] with
/// `val_fraction`, `seed`) and scored by validation top-1; the best (the first on a tie) is
/// refitted on the whole labelled set and scored on `test`. The result records the chosen
/// value and every validation top-1. With one grid value (or fewer than 2 labelled
/// examples) there is no selection.
#[allow(clippy::too_many_arguments)]
pub fn probe_with_selection(
    spec: &ProbeSpec,
    grid: &[f64],
    val_fraction: f64,
    seed: u64,
    train: &HostFeatures,
    train_y: &[u32],
    test: &HostFeatures,
    test_y: &[u32],
    num_classes: usize,
) -> Result<ProbeResult> {
    ensure!(!grid.is_empty(), "probe: the weight-decay grid is empty");
    if grid.len() == 1 || train.rows < 2 {
        return spec.fit(grid[0], train, train_y, test, test_y, num_classes);
    }
    let (fit_idx, val_idx) = validation_split(train.rows, val_fraction, seed);
    let (fx, vx) = (train.select(&fit_idx), train.select(&val_idx));
    let fy: Vec<u32> = fit_idx.iter().map(|&i| train_y[i]).collect();
    let vy: Vec<u32> = val_idx.iter().map(|&i| train_y[i]).collect();
    let mut val_top1 = Vec::with_capacity(grid.len());
    for &wd in grid {
        val_top1.push(spec.fit(wd, &fx, &fy, &vx, &vy, num_classes)?.top1);
    }
    let best = val_top1
        .iter()
        .enumerate()
        .fold(0, |b, (i, &v)| if v > val_top1[b] { i } else { b });
    let mut r = spec.fit(grid[best], train, train_y, test, test_y, num_classes)?;
    r.val_top1 = val_top1;
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::probe::fixtures::{clusters, host};

    #[test]
    fn validation_split_is_disjoint_seeded_and_sized() {
        let (fit, val) = validation_split(100, 0.2, 5);
        assert_eq!((fit.len(), val.len()), (80, 20));
        let mut all: Vec<usize> = fit.iter().chain(&val).copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..100).collect::<Vec<_>>());
        assert_eq!(validation_split(100, 0.2, 5), (fit, val.clone()));
        assert_ne!(validation_split(100, 0.2, 6).1, val);
        assert_eq!(validation_split(3, 0.01, 0).1.len(), 1);
        assert_eq!(validation_split(3, 0.99, 0).1.len(), 2);
    }

    #[test]
    fn selection_reports_the_grid_and_refits_with_the_best_value() {
        let (train_x, train_y) = clusters(600, 12, 10, 1.5, 81);
        let (test_x, test_y) = clusters(600, 12, 10, 1.5, 82);
        let spec = ProbeSpec::Linear(ProbeConfig {
            epochs: 10,
            ..ProbeConfig::default()
        });
        // A huge decay shrinks W to ~0: never the best on validation.
        let grid = [10.0, 1e-3, 0.0];
        let (tx, vx) = (host(&train_x), host(&test_x));
        let r =
            probe_with_selection(&spec, &grid, 0.2, 1, &tx, &train_y, &vx, &test_y, 10).unwrap();
        assert_eq!(r.val_top1.len(), 3);
        let best = r.val_top1.iter().cloned().fold(f64::MIN, f64::max);
        let chosen = grid.iter().position(|&w| w == r.weight_decay).unwrap();
        assert_eq!(r.val_top1[chosen], best);
        assert_ne!(r.weight_decay, 10.0);
        assert_eq!(r.train_labels, 600, "refitted on the whole labelled set");
        let direct = spec
            .fit(r.weight_decay, &tx, &train_y, &vx, &test_y, 10)
            .unwrap();
        assert_eq!((direct.top1, direct.top5), (r.top1, r.top5));
        let single =
            probe_with_selection(&spec, &[1e-3], 0.2, 1, &tx, &train_y, &vx, &test_y, 10).unwrap();
        assert!(single.val_top1.is_empty());
        assert_eq!(single.weight_decay, 1e-3);
    }
}
