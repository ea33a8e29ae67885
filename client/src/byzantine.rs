//! The corrupted updates a simulated byzantine client sends in place of its trained
//! backbone (`simulation.byzantine`, to study robust aggregation): Gaussian noise at the
//! scale of the global weights, or the client's own update reversed and scaled. Only the
//! learnable tensors are corrupted; BatchNorm running statistics are sent as trained.

use anyhow::{bail, Result};
use fedssl_shared::weights::{TensorData, WeightSet};
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};

/// How a byzantine client corrupts its update.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attack {
    /// Each learnable tensor t becomes N(0, (scale·σ_t)²) noise, σ_t the (population)
    /// standard deviation of the global tensor t.
    Noise,
    /// Each learnable tensor becomes w_global − scale·(w_k − w_global).
    SignFlip,
}

/// Whether `name` is a BatchNorm running statistic (`running_mean`, `running_var`,
/// `num_batches_tracked`, as the coordinator's strategies tell them apart).
fn is_running_stat(name: &str) -> bool {
    matches!(
        name.rsplit('.').next(),
        Some("running_mean" | "running_var" | "num_batches_tracked")
    )
}

/// The population standard deviation of `v` (0 for an empty tensor), in f64.
fn std_of(v: &[f32]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let n = v.len() as f64;
    let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
    (v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n).sqrt()
}

/// The update a byzantine client sends: `trained` (its honest weights) corrupted by `attack`
/// at `scale` relative to `global`, the weights the round started from; `seed` seeds the
/// noise (tensors drawn in name order). Errors when `trained` lacks a tensor of `global` or
/// has another length.
pub fn corrupt(
    attack: Attack,
    scale: f64,
    global: &WeightSet,
    trained: &WeightSet,
    seed: u64,
) -> Result<WeightSet> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = WeightSet::default();
    for (name, t) in &trained.tensors {
        let data = if is_running_stat(name) {
            t.data.clone()
        } else {
            let Some(g) = global.tensors.get(name) else {
                bail!("byzantine: the global weights lack tensor `{name}`");
            };
            if g.data.len() != t.data.len() {
                bail!("byzantine: tensor `{name}` has another length than the global one");
            }
            match attack {
                Attack::Noise => {
                    let sd = scale * std_of(&g.data);
                    (0..t.data.len())
                        .map(|_| {
                            let z: f64 = StandardNormal.sample(&mut rng);
                            (sd * z) as f32
                        })
                        .collect()
                }
                Attack::SignFlip => g
                    .data
                    .iter()
                    .zip(&t.data)
                    .map(|(&wg, &wk)| (wg as f64 - scale * (wk as f64 - wg as f64)) as f32)
                    .collect(),
            }
        };
        let shape = t.shape.clone();
        out.tensors.insert(name.clone(), TensorData { shape, data });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ws(tensors: &[(&str, &[f32])]) -> WeightSet {
        let mut s = WeightSet::default();
        for (name, data) in tensors {
            let shape = vec![data.len()];
            let data = data.to_vec();
            s.tensors
                .insert(name.to_string(), TensorData { shape, data });
        }
        s
    }

    #[test]
    fn sign_flip_reverses_the_update_and_keeps_running_statistics() {
        let global = ws(&[("w", &[1.0, -2.0]), ("bn.running_var", &[1.0])]);
        let trained = ws(&[("w", &[1.5, -1.0]), ("bn.running_var", &[3.0])]);
        // w_g − 2·(w_k − w_g): 1 − 2·0.5 = 0 ; −2 − 2·1 = −4
        let r = corrupt(Attack::SignFlip, 2.0, &global, &trained, 0).unwrap();
        assert_eq!(r.tensors["w"].data, vec![0.0, -4.0]);
        assert_eq!(r.tensors["bn.running_var"].data, vec![3.0]);
    }

    #[test]
    fn noise_has_the_global_tensors_scale_and_repeats_with_its_seed() {
        // global w: values ±1 → σ = 1; with scale 3 the noise's sample std is near 3
        let g: Vec<f32> = (0..20_000)
            .map(|i| if i % 2 == 0 { 1.0 } else { -1.0 })
            .collect();
        let global = ws(&[("w", &g), ("bn.running_mean", &[0.5])]);
        let trained = ws(&[("w", &vec![7.0; g.len()]), ("bn.running_mean", &[0.25])]);
        let r = corrupt(Attack::Noise, 3.0, &global, &trained, 11).unwrap();
        let sd = std_of(&r.tensors["w"].data);
        assert!((sd - 3.0).abs() < 0.1, "{sd}");
        let mean = r.tensors["w"].data.iter().map(|&v| v as f64).sum::<f64>() / g.len() as f64;
        assert!(mean.abs() < 0.1, "{mean}");
        assert_eq!(r.tensors["bn.running_mean"].data, vec![0.25]);
        assert_eq!(
            corrupt(Attack::Noise, 3.0, &global, &trained, 11).unwrap(),
            r
        );
        assert_ne!(
            corrupt(Attack::Noise, 3.0, &global, &trained, 12).unwrap(),
            r
        );
        assert_eq!(std_of(&[2.0, 4.0]), 1.0);
        let bad = ws(&[("v", &[1.0])]);
        assert!(corrupt(Attack::Noise, 1.0, &global, &bad, 0).is_err());
    }
}
