//! `top1_vs_epsilon.png` of a DP sweep: linear-probe top-1 against the ε each cell spent
//! (the sampled-Gaussian Rényi bound of [`crate::privacy::accountant`], at the cell's δ), the
//! privacy–utility curve of DP-FedAvg (McMahan et al. 2018, Figure 2's form). Put the noise
//! multiplier `federation.dp.noise_multiplier` on the sweep's first axis: one line is drawn per
//! combination of the other axes' values ([`crate::experiments::sweep::lines`]), through its
//! cells with a finite ε on a log axis. A cell with ε = ∞ (z = 0: clipping only) has no place on
//! that axis, so it is a flat line "… z = 0 (epsilon = inf)" at its top-1 across the chart, and the
//! random-init probe is a flat line too: where a curve crosses it, the noise has cost all that
//! pretraining gave.

use std::path::Path;

use anyhow::Result;

use crate::experiments::plot::{self, Series, XAxis};
use crate::experiments::sweep::{lines, CellStats, SweepPlan};

/// Draws the chart at `path` when the sweep ran with DP: every cell with a result has an ε
/// and at least one is finite; returns whether it drew. Errors only on an unwritable path.
pub fn draw(path: &Path, plan: &SweepPlan, stats: &[CellStats]) -> Result<bool> {
    let done: Vec<&CellStats> = stats.iter().filter(|s| s.mean.is_some()).collect();
    let eps: Vec<f64> = done
        .iter()
        .filter_map(|s| s.epsilon)
        .filter(|e| e.is_finite())
        .collect();
    if plan.grid.axes.is_empty()
        || done.is_empty()
        || done.iter().any(|s| s.epsilon.is_none())
        || eps.is_empty()
    {
        return Ok(false);
    }
    let lo = eps.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = eps.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let flat = |name: String, y: f64| Series {
        name,
        points: vec![(lo, y), (hi, y)],
        err: vec![],
        baseline: true,
    };
    let (per_x, names) = lines(plan);
    let mut series = vec![];
    for (j, name) in names.into_iter().enumerate() {
        let cells: Vec<&CellStats> = (j..stats.len()).step_by(per_x).map(|c| &stats[c]).collect();
        let mut pts: Vec<(f64, f64, f64)> = cells
            .iter()
            .filter_map(|s| match (s.mean, s.epsilon) {
                (Some(m), Some(e)) if e.is_finite() => Some((e, m, s.std.unwrap_or(0.0))),
                _ => None,
            })
            .collect();
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        let prefix = if name.is_empty() {
            String::new()
        } else {
            format!("{name}, ")
        };
        if !pts.is_empty() {
            series.push(Series {
                name: format!("{prefix}linear top-1"),
                points: pts.iter().map(|&(e, m, _)| (e, m)).collect(),
                err: pts.iter().map(|&(_, _, sd)| sd).collect(),
                baseline: false,
            });
        }
        if let Some(m) = cells
            .iter()
            .find(|s| s.epsilon == Some(f64::INFINITY))
            .and_then(|s| s.mean)
        {
            // the chart's font has no Greek letters: plain words on the image
            series.push(flat(format!("{prefix}z = 0 (epsilon = inf)"), m));
        }
    }
    let ri: Vec<f64> = done.iter().filter_map(|s| s.random_init_mean).collect();
    if !ri.is_empty() {
        series.push(flat(
            "random init".into(),
            ri.iter().sum::<f64>() / ri.len() as f64,
        ));
    }
    let delta = done.iter().filter_map(|s| s.delta).fold(0.0, f64::max);
    plot::line_chart(
        path,
        "Linear probe top-1 against privacy spent (bars: std)",
        &format!("epsilon (Renyi DP, delta = {delta}; log axis)"),
        "linear top-1",
        XAxis::Log,
        &series,
    )?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::experiments::grid::Grid;

    fn stats(mean: f64, epsilon: Option<f64>) -> CellStats {
        CellStats {
            mean: Some(mean),
            std: Some(0.01),
            random_init_mean: Some(0.33),
            n: 2,
            epsilon,
            delta: epsilon.map(|_| 0.125),
        }
    }

    fn plan_of(spec: &str) -> SweepPlan {
        let grid = Grid::parse(&[spec.to_string()]).unwrap();
        let cells = grid.cells();
        SweepPlan {
            grid,
            cells,
            seeds: vec![0, 1],
            runs: vec![],
            data_dir_read: false,
        }
    }

    #[test]
    fn drawn_only_for_a_dp_sweep_with_a_finite_epsilon() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.png");
        let plan = plan_of("federation.dp.noise_multiplier=[0, 0.5, 1]");
        let dp = [
            stats(0.34, Some(f64::INFINITY)),
            stats(0.30, Some(8.7)),
            stats(0.28, Some(2.7)),
        ];
        assert!(draw(&path, &plan, &dp).unwrap());
        let png = std::fs::read(&path).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        std::fs::remove_file(&path).unwrap();
        // without DP, or with ε = ∞ only, there is no ε axis to draw
        let plain = [stats(0.34, None), stats(0.30, None), stats(0.28, None)];
        assert!(!draw(&path, &plan, &plain).unwrap());
        let inf = [
            stats(0.34, Some(f64::INFINITY)),
            stats(0.30, Some(f64::INFINITY)),
            stats(0.28, Some(f64::INFINITY)),
        ];
        assert!(!draw(&path, &plan, &inf).unwrap());
        assert!(!path.exists());
    }
}
