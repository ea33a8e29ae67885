//! Seeded, deterministic initialisation of candle variables (candle's own RNG cannot be
//! seeded), following torchvision's ResNet initialisation.

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, StandardNormal};

use super::resnet::{ResNet, ResNetConfig};

/// Builds a [`ResNet`] with `f32` variables in a fresh `VarMap` on `device`, then
/// re-initialises every variable with [`seeded_init`]`(varmap, seed)`. The same config and
/// seed give bit-identical weights. Errors on an invalid config.
pub fn build_resnet(cfg: &ResNetConfig, seed: u64, device: &Device) -> Result<(ResNet, VarMap)> {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, device);
    let net = ResNet::new(cfg, vb)?;
    seeded_init(&varmap, seed)?;
    Ok((net, varmap))
}

/// Re-initialises every variable of `varmap` from `StdRng::seed_from_u64(seed)`, visiting
/// the names in sorted order (deterministic), as torchvision initialises a ResNet:
///
/// * `*.running_mean` → 0, `*.running_var` → 1 (BatchNorm running statistics);
/// * 1-D `*.weight` / `*.bias` with a sibling `running_mean` (BatchNorm γ, β) → 1 / 0;
/// * 4-D weights (convolutions `(C_out, C_in, K, K)`): Kaiming-normal, `fan_out` mode, ReLU
///   gain: `N(0, 2 / (C_out·K·K))` (He et al., "Delving Deep into Rectifiers", 2015);
/// * 2-D weights (linear `(out, in)`) and their biases: `U(−1/√in, 1/√in)` (PyTorch's
///   `nn.Linear` default); a conv bias uses `in = C_in·K·K`;
/// * other 1-D `*.weight` (e.g. LayerNorm) → 1, and a 1-D `*.bias` whose sibling weight is
///   1-D (LayerNorm β) → 0;
/// * `*.mask_token` (MAE's learned mask token, any shape) → `N(0, 0.02²)` as MAE.
///
/// Errors, naming the variable, on one that matches none of these rules.
pub fn seeded_init(varmap: &VarMap, seed: u64) -> Result<()> {
    let data = varmap.data().lock().expect("VarMap lock poisoned");
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    let mut rng = StdRng::seed_from_u64(seed);
    let sibling = |name: &str, leaf: &str| -> Option<Vec<usize>> {
        let prefix = name.rsplit_once('.').map(|(p, _)| p).unwrap_or("");
        let key = if prefix.is_empty() {
            leaf.to_string()
        } else {
            format!("{prefix}.{leaf}")
        };
        data.get(&key).map(|v| v.dims().to_vec())
    };
    for name in names {
        let var = &data[name];
        let dims = var.dims().to_vec();
        let n: usize = dims.iter().product();
        let leaf = name.rsplit('.').next().unwrap_or(name);
        let values: Vec<f32> = if leaf == "running_mean" {
            vec![0.0; n]
        } else if leaf == "running_var" {
            vec![1.0; n]
        } else if dims.len() == 1 && sibling(name, "running_mean").is_some() {
            match leaf {
                "weight" => vec![1.0; n],
                "bias" => vec![0.0; n],
                _ => bail!("cannot initialise BatchNorm variable `{name}`"),
            }
        } else if dims.len() == 4 && leaf == "weight" {
            let fan_out = dims[0] * dims[2] * dims[3];
            let std = (2.0 / fan_out as f64).sqrt();
            (0..n)
                .map(|_| {
                    let z: f64 = StandardNormal.sample(&mut rng);
                    (z * std) as f32
                })
                .collect()
        } else if dims.len() == 2 && leaf == "weight" {
            uniform(&mut rng, n, dims[1])
        } else if leaf == "mask_token" {
            (0..n)
                .map(|_| {
                    let z: f64 = StandardNormal.sample(&mut rng);
                    (z * 0.02) as f32
                })
                .collect()
        } else if dims.len() == 1
            && leaf == "bias"
            && sibling(name, "weight").is_some_and(|w| w.len() == 1)
        {
            vec![0.0; n]
        } else if dims.len() == 1 && leaf == "bias" {
            let fan_in = match sibling(name, "weight") {
                Some(w) if w.len() >= 2 => w[1..].iter().product(),
                _ => bail!("cannot initialise bias `{name}`: no sibling weight gives its fan-in"),
            };
            uniform(&mut rng, n, fan_in)
        } else if dims.len() == 1 && leaf == "weight" {
            vec![1.0; n]
        } else {
            bail!("no initialisation rule for variable `{name}` of shape {dims:?}");
        };
        let t = Tensor::from_vec(values, dims.as_slice(), var.device())?.to_dtype(var.dtype())?;
        var.set(&t)?;
    }
    Ok(())
}

fn uniform(rng: &mut StdRng, n: usize, fan_in: usize) -> Vec<f32> {
    let bound = 1.0 / (fan_in.max(1) as f64).sqrt();
    (0..n)
        .map(|_| rng.random_range(-bound..bound) as f32)
        .collect()
}
