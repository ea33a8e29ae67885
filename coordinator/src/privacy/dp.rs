//! DP-FedAvg (McMahan et al. 2018, "Learning Differentially Private Recurrent Language
//! Models", Algorithm 1 with the fixed-size federated averaging estimator): client-level
//! differential privacy of the aggregate, with adaptive clipping (Andrew et al. 2021,
//! "Differentially Private Learning with Adaptive Clipping", Algorithm 1).
//!
//! Each round, for the m accepted updates w_k of clients that trained from w_global:
//! 1. Δ_k = w_k − w_global over **every** tensor (BatchNorm running statistics included, so
//!    that nothing a client sends escapes the guarantee), clipped to L2 norm S:
//!    Δ̂_k = Δ_k · min(1, S/‖Δ_k‖);
//! 2. the next global model is w_global + (Σ_k Δ̂_k + N(0, (z_Δ·S)² I)) / m — every client
//!    weighs the same (the sample counts n_k are ignored: weighting by them would let one
//!    client's claimed n_k raise its sensitivity);
//! 3. with adaptive clipping, b̃ = (Σ_k 1[‖Δ_k‖ ≤ S] + N(0, σ_b²)) / m and
//!    S ← S · exp(−η (b̃ − γ)); the update noise then uses z_Δ = (z⁻² − (2σ_b)⁻²)^(−1/2) so
//!    that the two releases together are the Gaussian mechanism with multiplier z
//!    (Andrew et al., Theorem 1). Without it, z_Δ = z.
//!
//! The noise is drawn from the scenario's seed (stream [`fedssl_shared::seed::DP_NOISE`],
//! index: the 0-based round), and the strategy's state (rounds done, the current S) is
//! checkpointed, so a resumed run is bit-identical to an uninterrupted one. After each round
//! the [`Accountant`] reports (ε, δ) spent so far into `rounds.jsonl` (`privacy`).
//!
//! Trust model: the coordinator clips and adds the noise (central DP with a trusted
//! aggregator, as Flower's server-side DP wrappers); the released models — every round's
//! global backbone and the final one — are what the guarantee covers.

use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use fedssl_shared::config::DpConfig;
use fedssl_shared::seed;
use fedssl_shared::weights::{TensorData, WeightSet};
use rand::Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::Serialize;

use crate::privacy::accountant::{Accountant, PrivacySpent};
use crate::strategy::validate::{Refusal, UpdateLayout};
use crate::strategy::{Buffering, RoundAggregator, Strategy};

/// Names of the scalars of the checkpointed state.
const STATE_ROUNDS: &str = "dp.rounds_done";
const STATE_CLIP: &str = "dp.clip_norm";

/// What one DP round reports into `rounds.jsonl` (`privacy`).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct DpRoundReport {
    /// S used this round.
    pub clip_norm: f64,
    /// S for the next round (equal to `clip_norm` without adaptive clipping).
    pub next_clip_norm: f64,
    /// Std of the Gaussian noise added to the sum of clipped updates, z_Δ·S.
    pub noise_stddev: f64,
    /// Accepted updates whose norm exceeded S (clipped).
    pub clipped: usize,
    /// Accepted updates.
    pub updates: usize,
    /// Median pre-clipping L2 norm of the accepted updates.
    pub median_norm: f64,
    /// ε spent after this round by zCDP composition, at `delta`.
    pub epsilon_zcdp: f64,
    /// ε spent after this round by the sampled-Gaussian RDP bound, at `delta`.
    pub epsilon_rdp: f64,
    /// δ of both ε.
    pub delta: f64,
}

/// DP-FedAvg: see the module docs.
pub struct DpFedAvg {
    cfg: DpConfig,
    seed: u64,
    clip_norm: f64,
    rounds_done: u64,
    accountant: Accountant,
    delta: f64,
    sampled: usize,
    stats: Arc<Mutex<RoundStats>>,
    report: Option<DpRoundReport>,
}

/// What the round's aggregator hands back to the strategy beside the mean.
#[derive(Default)]
struct RoundStats {
    norms: Vec<f64>,
}

impl DpFedAvg {
    /// DP-FedAvg for a run of `clients` clients of which a round samples `sampled`, with the
    /// scenario's `seed`.
    ///
    /// # Errors
    /// When the configuration cannot be accounted (adaptive clipping whose count noise σ_b
    /// leaves no noise for the update: z ≤ 1/(2σ_b)).
    pub fn new(cfg: &DpConfig, seed: u64, clients: usize, sampled: usize) -> Result<Self> {
        let q = sampled as f64 / clients as f64;
        let accountant =
            Accountant::new(cfg.noise_multiplier, q).context("federation.dp.noise_multiplier")?;
        let dp = Self {
            cfg: cfg.clone(),
            seed,
            clip_norm: cfg.clip_norm,
            rounds_done: 0,
            accountant,
            delta: cfg.delta_of(clients),
            sampled,
            stats: Arc::default(),
            report: None,
        };
        dp.cfg.update_noise_multiplier(sampled)?;
        Ok(dp)
    }
}

impl Strategy for DpFedAvg {
    fn name(&self) -> &'static str {
        "fedavg"
    }

    fn buffering(&self) -> Buffering {
        Buffering::Streaming
    }

    fn begin_round(&self, global: &WeightSet) -> Box<dyn RoundAggregator> {
        Box::new(ClippedSum::new(global, self.clip_norm, self.stats.clone()))
    }

    fn apply(&mut self, global: &WeightSet, round: Box<dyn RoundAggregator>) -> Result<WeightSet> {
        let m = round.contributions();
        let sum = round.finish()?;
        let norms = std::mem::take(&mut self.stats.lock().expect("dp stats poisoned").norms);
        let z_delta = self.cfg.update_noise_multiplier(self.sampled)?;
        let sigma = z_delta * self.clip_norm;
        let mut rng = seed::rng(self.seed, seed::DP_NOISE, self.rounds_done);
        let next = noised_mean(global, sum, m, sigma, &mut rng);
        let clipped = norms.iter().filter(|&&n| n > self.clip_norm).count();
        let used = self.clip_norm;
        if let (Some(a), Some(sb)) = (&self.cfg.adaptive, self.cfg.count_stddev(self.sampled)) {
            let noise: f64 = StandardNormal.sample(&mut rng);
            let b = ((m - clipped) as f64 + sb * noise) / m as f64;
            self.clip_norm *= (-a.lr * (b - a.target_quantile)).exp();
        }
        self.rounds_done += 1;
        let spent: PrivacySpent = self.accountant.spent(self.rounds_done, self.delta)?;
        self.report = Some(DpRoundReport {
            clip_norm: used,
            next_clip_norm: self.clip_norm,
            noise_stddev: sigma,
            clipped,
            updates: m,
            median_norm: median(norms),
            epsilon_zcdp: spent.epsilon_zcdp,
            epsilon_rdp: spent.epsilon_rdp,
            delta: self.delta,
        });
        Ok(next)
    }

    fn state(&self) -> Option<WeightSet> {
        let mut w = WeightSet::default();
        let scalar = |v: f64| TensorData {
            shape: vec![1],
            data: vec![v as f32],
        };
        // The round count fits f32 exactly up to 2^24 rounds; S is kept as the bits of an f64.
        w.tensors
            .insert(STATE_ROUNDS.into(), scalar(self.rounds_done as f64));
        let bits = self.clip_norm.to_bits();
        w.tensors.insert(
            STATE_CLIP.into(),
            TensorData {
                shape: vec![2],
                data: vec![
                    f32::from_bits((bits >> 32) as u32),
                    f32::from_bits(bits as u32),
                ],
            },
        );
        Some(w)
    }

    fn load_state(&mut self, state: Option<WeightSet>) -> Result<()> {
        // None: a fresh run (a resumed DP run's checkpoints always hold the state, and resume
        // refuses a scenario that changed, so `federation.dp` cannot appear mid-run).
        let Some(w) = state else {
            self.rounds_done = 0;
            self.clip_norm = self.cfg.clip_norm;
            return Ok(());
        };
        let rounds = w
            .tensors
            .get(STATE_ROUNDS)
            .context("DP state without rounds_done")?;
        let clip = w
            .tensors
            .get(STATE_CLIP)
            .context("DP state without clip_norm")?;
        if rounds.data.len() != 1 || clip.data.len() != 2 {
            bail!("DP state has the wrong shapes");
        }
        self.rounds_done = rounds.data[0] as u64;
        let bits = (u64::from(clip.data[0].to_bits()) << 32) | u64::from(clip.data[1].to_bits());
        self.clip_norm = f64::from_bits(bits);
        Ok(())
    }

    fn report(&self) -> Option<serde_json::Value> {
        self.report
            .as_ref()
            .and_then(|r| serde_json::to_value(r).ok())
    }
}

/// w_global + (Σ Δ̂ + N(0, σ² I)) / m, in f64 then cast.
fn noised_mean(
    global: &WeightSet,
    sum: WeightSet,
    m: usize,
    sigma: f64,
    rng: &mut impl Rng,
) -> WeightSet {
    let mut out = WeightSet::default();
    for (name, t) in sum.tensors {
        let g = &global.tensors[name.as_str()].data;
        let data = t
            .data
            .iter()
            .zip(g)
            .map(|(&s, &gv)| {
                let noise: f64 = StandardNormal.sample(rng);
                (f64::from(gv) + (f64::from(s) + sigma * noise) / m as f64) as f32
            })
            .collect();
        out.tensors.insert(
            name,
            TensorData {
                shape: t.shape,
                data,
            },
        );
    }
    out
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Streaming sum of the clipped deltas Δ̂_k (see the module docs); `finish` returns the sum
/// itself, which [`DpFedAvg::apply`] noises and averages.
pub struct ClippedSum {
    layout: UpdateLayout,
    global: Vec<(String, Vec<usize>, Vec<f32>)>,
    sums: Vec<Vec<f64>>,
    clip_norm: f64,
    stats: Arc<Mutex<RoundStats>>,
    contributions: usize,
    total_samples: u64,
}

impl ClippedSum {
    fn new(global: &WeightSet, clip_norm: f64, stats: Arc<Mutex<RoundStats>>) -> Self {
        let g: Vec<_> = global
            .tensors
            .iter()
            .map(|(n, t)| (n.clone(), t.shape.clone(), t.data.clone()))
            .collect();
        let sums = g.iter().map(|(_, _, d)| vec![0.0; d.len()]).collect();
        Self {
            layout: UpdateLayout::of(global),
            global: g,
            sums,
            clip_norm,
            stats,
            contributions: 0,
            total_samples: 0,
        }
    }
}

/// ‖w − g‖₂ over every tensor, in f64.
fn delta_norm(update: &WeightSet, global: &[(String, Vec<usize>, Vec<f32>)]) -> f64 {
    global
        .iter()
        .map(|(name, _, g)| {
            let u = &update.tensors[name.as_str()].data;
            u.iter()
                .zip(g)
                .map(|(&a, &b)| (f64::from(a) - f64::from(b)).powi(2))
                .sum::<f64>()
        })
        .sum::<f64>()
        .sqrt()
}

impl RoundAggregator for ClippedSum {
    fn add(&mut self, update: &WeightSet, num_samples: u64) -> Result<(), Refusal> {
        self.layout.check(update, num_samples)?;
        let norm = delta_norm(update, &self.global);
        let scale = if norm > self.clip_norm {
            self.clip_norm / norm
        } else {
            1.0
        };
        for ((name, _, g), sum) in self.global.iter().zip(&mut self.sums) {
            let u = &update.tensors[name.as_str()].data;
            for ((s, &a), &b) in sum.iter_mut().zip(u).zip(g) {
                *s += scale * (f64::from(a) - f64::from(b));
            }
        }
        self.stats
            .lock()
            .expect("dp stats poisoned")
            .norms
            .push(norm);
        self.contributions += 1;
        self.total_samples += num_samples;
        Ok(())
    }

    fn contributions(&self) -> usize {
        self.contributions
    }

    fn total_samples(&self) -> u64 {
        self.total_samples
    }

    fn finish(self: Box<Self>) -> Result<WeightSet> {
        if self.contributions == 0 {
            bail!("no valid update to aggregate");
        }
        let mut out = WeightSet::default();
        for ((name, shape, _), sum) in self.global.into_iter().zip(self.sums) {
            let data = sum.into_iter().map(|s| s as f32).collect();
            out.tensors.insert(name, TensorData { shape, data });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fedssl_shared::config::AdaptiveClipConfig;

    fn ws(v: &[f32]) -> WeightSet {
        let mut w = WeightSet::default();
        w.tensors.insert(
            "a".into(),
            TensorData {
                shape: vec![v.len()],
                data: v.to_vec(),
            },
        );
        w
    }

    fn cfg(z: f64, s: f64) -> DpConfig {
        DpConfig {
            clip_norm: s,
            noise_multiplier: z,
            delta: Some(1e-5),
            adaptive: None,
        }
    }

    #[test]
    fn clipping_without_noise_known_answer() {
        // global 0; updates (3, 4) (norm 5 → clipped to norm 1: (0.6, 0.8)) and (0.3, 0.4)
        // (norm 0.5, kept): mean of the clipped deltas = (0.45, 0.6).
        let mut dp = DpFedAvg::new(&cfg(0.0, 1.0), 0, 10, 2).unwrap();
        let g = ws(&[0.0, 0.0]);
        let mut agg = dp.begin_round(&g);
        agg.add(&ws(&[3.0, 4.0]), 100).unwrap();
        agg.add(&ws(&[0.3, 0.4]), 1).unwrap();
        let next = dp.apply(&g, agg).unwrap();
        let d = &next.tensors["a"].data;
        assert!(
            (d[0] - 0.45).abs() < 1e-6 && (d[1] - 0.6).abs() < 1e-6,
            "{d:?}"
        );
        let r = dp.report.clone().unwrap();
        assert_eq!((r.clipped, r.updates), (1, 2));
        assert!((r.median_norm - 2.75).abs() < 1e-6, "{}", r.median_norm);
    }

    #[test]
    fn clipped_norms_never_exceed_s() {
        let g = ws(&[1.0, -1.0, 0.5]);
        for s in [0.1, 1.0, 7.0] {
            let mut dp = DpFedAvg::new(&cfg(0.0, s), 0, 1, 1).unwrap();
            let mut agg = dp.begin_round(&g);
            agg.add(&ws(&[11.0, 3.0, -20.0]), 1).unwrap();
            let next = dp.apply(&g, agg).unwrap();
            let norm = delta_norm(&next, &[("a".into(), vec![3], g.tensors["a"].data.clone())]);
            assert!(norm <= s * (1.0 + 1e-6), "S={s}: {norm}");
        }
    }

    #[test]
    fn the_noise_std_is_z_s_over_m() {
        // 4 updates equal to the global (Δ = 0) and z = 2, S = 3: the mean moves by pure
        // noise of std z·S/m = 1.5, measured over 20,000 coordinates.
        let n = 20_000;
        let g = ws(&vec![0.0; n]);
        let mut dp = DpFedAvg::new(&cfg(2.0, 3.0), 7, 4, 4).unwrap();
        let mut agg = dp.begin_round(&g);
        for _ in 0..4 {
            agg.add(&g, 1).unwrap();
        }
        let next = dp.apply(&g, agg).unwrap();
        let d = &next.tensors["a"].data;
        let mean = d.iter().map(|&v| f64::from(v)).sum::<f64>() / n as f64;
        let var = d
            .iter()
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum::<f64>()
            / n as f64;
        assert!(mean.abs() < 0.05, "{mean}");
        assert!((var.sqrt() - 1.5).abs() < 0.03, "{}", var.sqrt());
        let r = dp.report.clone().unwrap();
        assert_eq!(r.noise_stddev, 6.0);
    }

    #[test]
    fn adaptive_clipping_follows_the_quantile_and_resumes() {
        // All 4 updates under S: b̃ ≈ 1 (tiny count noise), S shrinks by exp(−η(1 − γ)).
        let mut c = cfg(1.0, 10.0);
        c.adaptive = Some(AdaptiveClipConfig {
            target_quantile: 0.5,
            lr: 0.2,
            count_stddev: Some(1e-9 * 4.0),
        });
        // σ_b so small that z_Δ would be undefined: refused with a clear line.
        let e = DpFedAvg::new(&c, 0, 4, 4).err().unwrap();
        assert!(
            format!("{e:#}").contains("too small for adaptive clipping"),
            "{e:#}"
        );
        c.adaptive.as_mut().unwrap().count_stddev = Some(1e3);
        let mut dp = DpFedAvg::new(&c, 0, 4, 4).unwrap();
        let g = ws(&[0.0, 0.0]);
        let mut agg = dp.begin_round(&g);
        for _ in 0..4 {
            agg.add(&ws(&[0.1, 0.0]), 1).unwrap();
        }
        dp.apply(&g, agg).unwrap();
        assert!(dp.clip_norm < 10.0 && dp.clip_norm > 0.0);
        // the state round-trips exactly
        let mut other = DpFedAvg::new(&c, 0, 4, 4).unwrap();
        other.load_state(dp.state()).unwrap();
        assert_eq!(other.clip_norm.to_bits(), dp.clip_norm.to_bits());
        assert_eq!(other.rounds_done, 1);
        other.load_state(None).unwrap();
        assert_eq!((other.rounds_done, other.clip_norm), (0, 10.0));
        assert!(other.load_state(Some(ws(&[1.0]))).is_err());
    }

    #[test]
    fn same_seed_same_noise_and_refused_updates_change_nothing() {
        let g = ws(&[0.0; 8]);
        let run = |seed| {
            let mut dp = DpFedAvg::new(&cfg(1.0, 1.0), seed, 2, 2).unwrap();
            let mut agg = dp.begin_round(&g);
            agg.add(&ws(&[0.1; 8]), 1).unwrap();
            assert!(agg.add(&ws(&[0.1; 3]), 1).is_err());
            assert!(agg.add(&ws(&[f32::NAN; 8]), 1).is_err());
            assert_eq!(agg.contributions(), 1);
            dp.apply(&g, agg).unwrap().tensors["a"].data.clone()
        };
        assert_eq!(run(1), run(1));
        assert_ne!(run(1), run(2));
    }
}
