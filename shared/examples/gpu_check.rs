//! Checks that training on a device computes what training on the CPU computes, then runs
//! one local round of every pretext task there (issue 18).
//!
//! ```text
//! cargo run --release -p fedssl-shared --features cuda --example gpu_check -- --device cuda --out gpu_check.json
//! cargo run --release -p fedssl-shared --example gpu_check      # the same on the CPU
//! ```
//!
//! 1. **Ops.** fedssl's CPU kernels (`fedssl_shared::ops`: im2col + GEMM convolution, fused
//!    BatchNorm, BatchNorm + ReLU and BatchNorm + residual add + ReLU, ReLU, add + ReLU) run on
//!    the CPU; candle's own ops (`conv2d`, `candle_nn::BatchNorm::forward_t`, `relu`, `+`) run
//!    on the chosen device on the same inputs. Compared: the output, the gradient of every
//!    input and weight under the loss `Σ y·g` (a fixed random `g`), and for training-mode
//!    BatchNorm the updated running mean and variance. Convolutions: 3×3 and 1×1 kernels,
//!    stride 1 and 2, padding 0 and 1, non-square maps, ≥ 8 input channels (where our input
//!    gradient is a forward conv with the flipped kernel) and a batch large enough for the
//!    batch-parallel path. BatchNorm: training and eval mode (eval with non-trivial running
//!    statistics), on `(N, C, H, W)` maps and on `(N, C)` rows (VGG's hidden BN1d).
//!    Off the CPU the check also runs `fedssl_shared::ops` itself on the device — what the
//!    backbones call — against candle's op there, under the same tolerance (the ops fall back
//!    to candle's off the CPU, so the difference is expected to be 0).
//!
//!    Tolerance, per tensor: `max |ours − device| ≤ 1e-4 · max(max |device|, 1e-3)`. Both
//!    sides are `f32` and differ only in summation order (GEMM blocking and cuBLAS's
//!    reductions, BatchNorm's per-channel sums over `N·H·W` elements, one pass or two): that
//!    leaves relative differences of order 1e-6 (measured on the CPU against candle's CPU ops).
//!    A wrong index, a missing term or a dropped gradient is off by order 1, and TF32 matrix
//!    products (10-bit mantissa, about 5e-4 relative) would fail too: candle keeps cuBLAS in
//!    full `f32` unless told otherwise, and so must training.
//!
//! 2. **One local round of every pretext task** (rotation, relative_patch, jigsaw, exemplar,
//!    simclr; mae with the ViT) on the device: `train_local` over a tiny synthetic shard
//!    (`--images`, default 32; batch `--batch`, default 16; one epoch) with a small ResNet
//!    (stem 8, stages 8/16, one block each) or a small ViT (dim 32, depth 2). Printed: the
//!    round's mean loss, pretext accuracy, seconds (the device's first round includes loading
//!    and JIT-compiling its kernels). Off the CPU the same round also runs on the CPU (same
//!    seeds: every random draw is on the CPU) and the relative difference of the two losses is
//!    reported; it is information, not a failure (a loss with discrete choices, e.g. the
//!    semi-hard triplets, may flip on a tie).
//!
//! Exits non-zero when an op is outside the tolerance, a task fails or gives a non-finite
//! loss. `--out FILE` writes everything as JSON. Flags: `--device cpu|cuda|cuda:N` (cpu),
//! `--images N`, `--batch B`, `--no-tasks`, `--out FILE`.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, ModuleT, Tensor, Var};
use candle_nn::{BatchNorm, VarBuilder, VarMap};
use fedssl_shared::data::synthetic;
use fedssl_shared::model::{BackboneKind, ModelConfig, ResNetConfig, VitConfig};
use fedssl_shared::ops;
use fedssl_shared::pretext::{PretextConfig, PretextKind};
use fedssl_shared::train::{train_local, LocalModel, LocalTrainConfig};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

/// Relative tolerance against the largest magnitude of the device's tensor.
const REL_TOL: f32 = 1e-4;
/// Floor of that magnitude, so that an all-but-zero tensor is not held to 1e-4 of nothing.
const MAG_FLOOR: f32 = 1e-3;

struct Args {
    device: String,
    images: usize,
    batch: usize,
    tasks: bool,
    out: Option<String>,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        device: "cpu".into(),
        images: 32,
        batch: 16,
        tasks: true,
        out: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--device" => a.device = val()?,
            "--images" => a.images = val()?.parse()?,
            "--batch" => a.batch = val()?.parse()?,
            "--no-tasks" => a.tasks = false,
            "--out" => a.out = Some(val()?),
            "-h" | "--help" => {
                println!(
                    "gpu_check [--device cpu|cuda|cuda:N] [--images N] [--batch B] [--no-tasks] [--out FILE]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown flag {other}"),
        }
    }
    if a.images < 2 || a.batch < 2 {
        bail!("--images and --batch must be at least 2");
    }
    Ok(a)
}

/// Deterministic values in [-1, 1) of the given shape, on the CPU.
fn rand_t(dims: &[usize], seed: u64) -> Result<Tensor> {
    let mut rng = StdRng::seed_from_u64(seed);
    let n: usize = dims.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect();
    Ok(Tensor::from_vec(v, dims, &Device::Cpu)?)
}

fn host(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.to_device(&Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?)
}

/// One compared tensor.
struct Cmp {
    case: String,
    what: String,
    max_abs_diff: f32,
    max_ref: f32,
    limit: f32,
}

impl Cmp {
    fn ok(&self) -> bool {
        self.max_abs_diff <= self.limit && self.max_abs_diff.is_finite()
    }
}

/// Compares `ours` with `theirs` (any device) under the tolerance.
fn compare(case: &str, what: &str, ours: &Tensor, theirs: &Tensor) -> Result<Cmp> {
    let (a, b) = (host(ours)?, host(theirs)?);
    if a.len() != b.len() || ours.dims() != theirs.dims() {
        bail!(
            "{case} {what}: shapes differ, {:?} vs {:?}",
            ours.dims(),
            theirs.dims()
        );
    }
    let max_ref = b.iter().fold(0f32, |m, v| m.max(v.abs()));
    let mut max_abs_diff = 0f32;
    for (x, y) in a.iter().zip(&b) {
        let d = (x - y).abs();
        // NaN anywhere is a failure
        max_abs_diff = if d.is_nan() {
            f32::NAN
        } else {
            max_abs_diff.max(d)
        };
        if max_abs_diff.is_nan() {
            break;
        }
    }
    let limit = REL_TOL * max_ref.max(MAG_FLOOR);
    Ok(Cmp {
        case: case.into(),
        what: what.into(),
        max_abs_diff,
        max_ref,
        limit,
    })
}

/// `(output, gradients of the inputs in order)` of `f` on `inputs` (copied to `dev` as
/// variables) under the loss `Σ f(inputs) · g`.
fn run_with_grads(
    dev: &Device,
    inputs: &[Tensor],
    g: &Tensor,
    f: &dyn Fn(&[Tensor]) -> candle_core::Result<Tensor>,
) -> Result<(Tensor, Vec<Tensor>)> {
    let vars: Vec<Var> = inputs
        .iter()
        .map(|t| Var::from_tensor(&t.to_device(dev)?))
        .collect::<candle_core::Result<_>>()?;
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let y = f(&ts)?;
    let grads = (&y * g.to_device(dev)?)?.sum_all()?.backward()?;
    let gs = vars
        .iter()
        .enumerate()
        .map(|(i, v)| {
            grads
                .get(v.as_tensor())
                .cloned()
                .with_context(|| format!("input {i} received no gradient"))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((y, gs))
}

/// Conv cases: `(n, c_in, h, w, c_out, k, stride, padding)`. Non-square maps keep H and W's
/// remainders under the stride equal: candle 0.11's own conv backward (the device side here)
/// derives the transposed conv's output padding from the height only.
type ConvCase = (usize, usize, usize, usize, usize, usize, usize, usize);
const CONVS: &[ConvCase] = &[
    (2, 3, 8, 8, 4, 3, 1, 1),     // stem: 3 input channels
    (2, 8, 9, 7, 8, 3, 1, 1),     // stride 1, ≥ 8 channels: flipped-kernel input gradient
    (2, 8, 9, 7, 16, 3, 2, 1),    // stride 2, padding 1: GEMM + col2im input gradient
    (2, 4, 6, 8, 5, 3, 1, 0),     // padding 0
    (2, 4, 7, 9, 5, 3, 2, 0),     // stride 2, padding 0
    (2, 8, 5, 6, 6, 1, 1, 0),     // pointwise 1×1
    (2, 8, 8, 8, 16, 1, 2, 0),    // ResNet shortcut: 1×1 stride 2
    (2, 8, 4, 4, 8, 1, 1, 1),     // 1×1 with padding 1
    (8, 16, 16, 16, 32, 3, 1, 1), // batch-parallel path, row tiles
    (8, 16, 16, 16, 32, 3, 2, 1),
];

fn conv_checks(dev: &Device, out: &mut Vec<Cmp>) -> Result<()> {
    for (i, &(n, c, h, w, o, k, s, p)) in CONVS.iter().enumerate() {
        let case = format!("conv n{n} c{c} {h}x{w} o{o} k{k} s{s} p{p}");
        let x = rand_t(&[n, c, h, w], 10 + i as u64)?;
        let wt = (rand_t(&[o, c, k, k], 100 + i as u64)? * 0.5)?;
        let oh = (h + 2 * p - k) / s + 1;
        let ow = (w + 2 * p - k) / s + 1;
        let g = rand_t(&[n, o, oh, ow], 200 + i as u64)?;
        let inputs = [x, wt];
        let (y0, g0) = run_with_grads(&Device::Cpu, &inputs, &g, &|t| {
            ops::conv2d(&t[0], &t[1], s, p)
        })?;
        let (y1, g1) = run_with_grads(dev, &inputs, &g, &|t| t[0].conv2d(&t[1], p, s, 1, 1))?;
        out.push(compare(&case, "output", &y0, &y1)?);
        out.push(compare(&case, "grad x", &g0[0], &g1[0])?);
        out.push(compare(&case, "grad w", &g0[1], &g1[1])?);
        if !dev.is_cpu() {
            let (y2, g2) = run_with_grads(dev, &inputs, &g, &|t| ops::conv2d(&t[0], &t[1], s, p))?;
            out.push(compare(&case, "ops on device = candle", &y2, &y1)?);
            out.push(compare(
                &case,
                "ops on device = candle (grad x)",
                &g2[0],
                &g1[0],
            )?);
        }
    }
    Ok(())
}

#[derive(Clone, Copy, PartialEq)]
enum BnKind {
    Plain,
    Relu,
    AddRelu,
}

impl BnKind {
    fn name(self) -> &'static str {
        match self {
            BnKind::Plain => "batch_norm",
            BnKind::Relu => "batch_norm+relu",
            BnKind::AddRelu => "batch_norm+add+relu",
        }
    }
}

/// A BatchNorm of `c` channels on `dev` with the given weight, bias and running statistics.
fn make_bn(dev: &Device, c: usize, vals: &[Tensor; 4]) -> Result<(BatchNorm, VarMap)> {
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, dev);
    let bn = candle_nn::batch_norm(c, 1e-5, vb)?;
    {
        let data = vm.data().lock().expect("VarMap lock");
        for (name, v) in ["weight", "bias", "running_mean", "running_var"]
            .iter()
            .zip(vals)
        {
            data.get(*name)
                .with_context(|| format!("BatchNorm has no `{name}`"))?
                .set(&v.to_device(dev)?)?;
        }
    }
    Ok((bn, vm))
}

fn var_tensor(vm: &VarMap, name: &str) -> Result<Tensor> {
    let data = vm.data().lock().expect("VarMap lock");
    Ok(data
        .get(name)
        .with_context(|| format!("no `{name}`"))?
        .as_tensor()
        .clone())
}

/// The inputs of one BatchNorm case, on the CPU: `x`, the residual `r`, the loss weights `g`
/// and the module's weight, bias, running mean and running variance.
struct BnInputs {
    x: Tensor,
    r: Tensor,
    g: Tensor,
    vals: [Tensor; 4],
}

/// `(output, grads of x [, residual], weight, bias, running mean, running var)`.
fn bn_run(
    dev: &Device,
    kind: BnKind,
    train: bool,
    fedssl: bool,
    inp: &BnInputs,
) -> Result<(Tensor, Vec<Tensor>, Tensor, Tensor)> {
    let BnInputs { x, r, g, vals } = inp;
    let c = x.dim(1)?;
    let (bn, vm) = make_bn(dev, c, vals)?;
    let xv = Var::from_tensor(&x.to_device(dev)?)?;
    let rv = Var::from_tensor(&r.to_device(dev)?)?;
    let (xt, rt) = (xv.as_tensor(), rv.as_tensor());
    let y = match (kind, fedssl) {
        (BnKind::Plain, true) => ops::batch_norm(&bn, xt, train)?,
        (BnKind::Relu, true) => ops::batch_norm_relu(&bn, xt, train)?,
        (BnKind::AddRelu, true) => ops::batch_norm_add_relu(&bn, xt, rt, train)?,
        (BnKind::Plain, false) => bn.forward_t(xt, train)?,
        (BnKind::Relu, false) => bn.forward_t(xt, train)?.relu()?,
        (BnKind::AddRelu, false) => (bn.forward_t(xt, train)? + rt)?.relu()?,
    };
    let grads = (&y * g.to_device(dev)?)?.sum_all()?.backward()?;
    let mut gs = vec![grads.get(xt).cloned().context("x received no gradient")?];
    if kind == BnKind::AddRelu {
        gs.push(
            grads
                .get(rt)
                .cloned()
                .context("residual received no gradient")?,
        );
    }
    for name in ["weight", "bias"] {
        let t = var_tensor(&vm, name)?;
        gs.push(
            grads
                .get(&t)
                .cloned()
                .with_context(|| format!("BatchNorm {name} received no gradient"))?,
        );
    }
    Ok((
        y,
        gs,
        var_tensor(&vm, "running_mean")?,
        var_tensor(&vm, "running_var")?,
    ))
}

fn bn_checks(dev: &Device, out: &mut Vec<Cmp>) -> Result<()> {
    let shapes: &[&[usize]] = &[&[4, 8, 6, 6], &[2, 16, 5, 3], &[16, 12]];
    let mut seed = 1000u64;
    for dims in shapes {
        let c = dims[1];
        for kind in [BnKind::Plain, BnKind::Relu, BnKind::AddRelu] {
            for train in [true, false] {
                seed += 10;
                let case = format!(
                    "{} {} {dims:?}",
                    kind.name(),
                    if train { "train" } else { "eval" }
                );
                // inputs off-centre and scaled, so the statistics matter
                let x = ((rand_t(dims, seed)? * 2.0)? + 0.5)?;
                let r = rand_t(dims, seed + 1)?;
                let g = rand_t(dims, seed + 2)?;
                let vals = [
                    ((rand_t(&[c], seed + 3)? * 0.5)? + 1.0)?,
                    (rand_t(&[c], seed + 4)? * 0.5)?,
                    (rand_t(&[c], seed + 5)? * 0.3)?,
                    (rand_t(&[c], seed + 6)?.abs()? + 0.5)?,
                ];
                let inp = BnInputs { x, r, g, vals };
                let (y0, g0, m0, v0) = bn_run(&Device::Cpu, kind, train, true, &inp)?;
                let (y1, g1, m1, v1) = bn_run(dev, kind, train, false, &inp)?;
                out.push(compare(&case, "output", &y0, &y1)?);
                let names: &[&str] = if kind == BnKind::AddRelu {
                    &["grad x", "grad residual", "grad weight", "grad bias"]
                } else {
                    &["grad x", "grad weight", "grad bias"]
                };
                for ((a, b), n) in g0.iter().zip(&g1).zip(names) {
                    out.push(compare(&case, n, a, b)?);
                }
                out.push(compare(&case, "running mean", &m0, &m1)?);
                out.push(compare(&case, "running var", &v0, &v1)?);
                if !dev.is_cpu() {
                    let (y2, g2, m2, _) = bn_run(dev, kind, train, true, &inp)?;
                    out.push(compare(&case, "ops on device = candle", &y2, &y1)?);
                    out.push(compare(
                        &case,
                        "ops on device = candle (grad x)",
                        &g2[0],
                        &g1[0],
                    )?);
                    out.push(compare(
                        &case,
                        "ops on device = candle (running mean)",
                        &m2,
                        &m1,
                    )?);
                }
            }
        }
    }
    Ok(())
}

fn act_checks(dev: &Device, out: &mut Vec<Cmp>) -> Result<()> {
    let dims = [4, 8, 6, 6];
    let (a, b, g) = (rand_t(&dims, 7)?, rand_t(&dims, 8)?, rand_t(&dims, 9)?);
    let (y0, g0) = run_with_grads(&Device::Cpu, std::slice::from_ref(&a), &g, &|t| {
        ops::relu(&t[0])
    })?;
    let (y1, g1) = run_with_grads(dev, std::slice::from_ref(&a), &g, &|t| t[0].relu())?;
    out.push(compare("relu [4, 8, 6, 6]", "output", &y0, &y1)?);
    out.push(compare("relu [4, 8, 6, 6]", "grad x", &g0[0], &g1[0])?);
    let inputs = [a, b];
    let (y0, g0) = run_with_grads(&Device::Cpu, &inputs, &g, &|t| ops::add_relu(&t[0], &t[1]))?;
    let (y1, g1) = run_with_grads(dev, &inputs, &g, &|t| (&t[0] + &t[1])?.relu())?;
    let case = "add+relu [4, 8, 6, 6]";
    out.push(compare(case, "output", &y0, &y1)?);
    out.push(compare(case, "grad a", &g0[0], &g1[0])?);
    out.push(compare(case, "grad b", &g0[1], &g1[1])?);
    Ok(())
}

/// The small backbone a task's round runs with.
fn task_model(kind: PretextKind) -> ModelConfig {
    match kind.required_backbone() {
        Some(BackboneKind::Vit) => ModelConfig {
            backbone: BackboneKind::Vit,
            vit: VitConfig {
                patch_size: 4,
                dim: 32,
                depth: 2,
                heads: 2,
                mlp_ratio: 2,
            },
            ..ModelConfig::default()
        },
        _ => ModelConfig {
            resnet: ResNetConfig {
                stem_width: 8,
                widths: vec![8, 16],
                blocks: vec![1, 1],
                widen: 1,
            },
            ..ModelConfig::default()
        },
    }
}

/// `(loss, accuracy, steps, seconds)` of one local round of `kind` on `dev`.
fn task_round(kind: PretextKind, dev: &Device, a: &Args) -> Result<(f64, Option<f64>, usize, f64)> {
    let model = task_model(kind);
    let pretext = PretextConfig {
        task: kind,
        ..PretextConfig::default()
    };
    pretext.check_image_size(synthetic::SIZE, model.vit.patch_size)?;
    let shard = synthetic::generate(a.images, 5).unlabelled();
    let cfg = LocalTrainConfig {
        local_epochs: 1,
        batch_size: a.batch,
        ..LocalTrainConfig::default()
    };
    let t = Instant::now();
    let mut m = LocalModel::new(&model, &pretext, 1, 101, dev)?;
    let stats = train_local(&mut m, &shard, &cfg, 0.0, 7, &mut |_, _, _| {})?;
    // the round's result back on the host, as a client sends it
    let w = m.federated_weights()?;
    if w.tensors.is_empty() {
        bail!("no federated weights after the round");
    }
    if dev.is_cuda() {
        dev.synchronize()?;
    }
    Ok((
        stats.loss,
        stats.accuracy,
        stats.steps,
        t.elapsed().as_secs_f64(),
    ))
}

fn main() -> Result<()> {
    let a = parse_args()?;
    ops::tune_allocator();
    let dev = fedssl_shared::device::parse_device(&a.device)?;
    let dev_name = if dev.is_cpu() {
        "cpu".to_string()
    } else {
        a.device.clone()
    };
    println!(
        "gpu_check: fedssl's CPU ops against candle's ops on {dev_name}; tolerance max|diff| <= {REL_TOL:e} x max(max|ref|, {MAG_FLOOR:e}) per tensor"
    );
    let t0 = Instant::now();
    let mut cmps = Vec::new();
    let mut op_error = None;
    let ops_result = Device::Cpu.with_context(|| -> Result<()> {
        conv_checks(&dev, &mut cmps)?;
        bn_checks(&dev, &mut cmps)?;
        act_checks(&dev, &mut cmps)
    });
    if let Err(e) = ops_result {
        println!("  op check stopped: {e:#}");
        op_error = Some(format!("{e:#}"));
    }
    let ops_s = t0.elapsed().as_secs_f64();
    // one line per case: its worst tensor relative to its limit
    let mut cases: Vec<&str> = Vec::new();
    for c in &cmps {
        if !cases.contains(&c.case.as_str()) {
            cases.push(&c.case);
        }
    }
    println!(
        "  {:<42} {:>8} {:>12} {:>12}  worst tensor",
        "case", "tensors", "max|diff|", "max|ref|"
    );
    for case in &cases {
        let of: Vec<&Cmp> = cmps.iter().filter(|c| c.case == *case).collect();
        let worst = of
            .iter()
            .max_by(|x, y| {
                let r = |c: &Cmp| {
                    if c.ok() {
                        c.max_abs_diff / c.limit.max(f32::MIN_POSITIVE)
                    } else {
                        f32::INFINITY
                    }
                };
                r(x).total_cmp(&r(y))
            })
            .expect("a case has tensors");
        let bad: Vec<&&Cmp> = of.iter().filter(|c| !c.ok()).collect();
        println!(
            "  {:<42} {:>8} {:>12.3e} {:>12.3e}  {}{}",
            case,
            of.len(),
            worst.max_abs_diff,
            worst.max_ref,
            worst.what,
            if bad.is_empty() {
                String::new()
            } else {
                format!(
                    "  FAIL: {}",
                    bad.iter()
                        .map(|c| format!("{} {:.3e} > {:.3e}", c.what, c.max_abs_diff, c.limit))
                        .collect::<Vec<_>>()
                        .join("; ")
                )
            }
        );
    }
    let ops_failed = cmps.iter().filter(|c| !c.ok()).count();
    println!(
        "  ops: {} tensors compared in {} cases, {} outside the tolerance ({ops_s:.1} s)",
        cmps.len(),
        cases.len(),
        ops_failed
    );

    let mut tasks = Vec::new();
    let mut tasks_failed = 0;
    if a.tasks {
        println!(
            "one local round per pretext task on {dev_name}: {} synthetic images, batch {}",
            a.images, a.batch
        );
        println!(
            "  {:<16} {:>10} {:>9} {:>6} {:>9} {:>14}",
            "task", "loss", "accuracy", "steps", "seconds", "vs cpu (rel)"
        );
        for &kind in PretextKind::all() {
            let r = task_round(kind, &dev, &a);
            let cpu = if dev.is_cpu() {
                None
            } else {
                Some(Device::Cpu.with_context(|| task_round(kind, &Device::Cpu, &a)))
            };
            match r {
                Ok((loss, acc, steps, secs)) if loss.is_finite() => {
                    let (cpu_loss, rel) = match &cpu {
                        Some(Ok((l, ..))) => {
                            (Some(*l), Some((loss - l).abs() / l.abs().max(1e-12)))
                        }
                        _ => (None, None),
                    };
                    println!(
                        "  {:<16} {:>10.4} {:>9} {:>6} {:>9.2} {:>14}",
                        kind.name(),
                        loss,
                        acc.map_or("-".into(), |a| format!("{a:.3}")),
                        steps,
                        secs,
                        rel.map_or("-".into(), |r| format!("{r:.2e}"))
                    );
                    tasks.push(json!({
                        "task": kind.name(), "ok": true, "loss": loss, "accuracy": acc,
                        "steps": steps, "seconds": secs, "cpu_loss": cpu_loss,
                        "loss_rel_diff_vs_cpu": rel,
                        "cpu_error": match &cpu { Some(Err(e)) => Some(format!("{e:#}")), _ => None },
                    }));
                }
                Ok((loss, ..)) => {
                    tasks_failed += 1;
                    println!("  {:<16} FAIL: non-finite loss {loss}", kind.name());
                    tasks.push(json!({"task": kind.name(), "ok": false, "error": format!("non-finite loss {loss}")}));
                }
                Err(e) => {
                    tasks_failed += 1;
                    println!("  {:<16} FAIL: {e:#}", kind.name());
                    tasks
                        .push(json!({"task": kind.name(), "ok": false, "error": format!("{e:#}")}));
                }
            }
        }
    }
    let ok = ops_failed == 0 && op_error.is_none() && tasks_failed == 0;
    if let Some(path) = &a.out {
        let report = json!({
            "device": dev_name,
            "ok": ok,
            "tolerance": {
                "rule": "per tensor: max |ours_cpu - candle_device| <= rel * max(max |candle_device|, floor); off the CPU also fedssl's ops on the device against candle's op there (expected 0)",
                "rel": REL_TOL, "floor": MAG_FLOOR,
                "why": "both f32, only the summation order differs (GEMM blocking, cuBLAS reductions, BatchNorm sums): ~1e-6 relative; a wrong index is O(1), TF32 ~5e-4",
            },
            "ops_seconds": ops_s,
            "ops_error": op_error,
            "ops_failed": ops_failed,
            "ops": cmps.iter().map(|c| json!({
                "case": c.case, "tensor": c.what, "max_abs_diff": c.max_abs_diff,
                "max_ref": c.max_ref, "limit": c.limit, "ok": c.ok(),
            })).collect::<Vec<_>>(),
            "tasks_failed": tasks_failed,
            "tasks": tasks,
            "task_setup": {"images": a.images, "batch": a.batch, "local_epochs": 1,
                "resnet": "stem 8, widths [8, 16], blocks [1, 1]", "vit": "patch 4, dim 32, depth 2, heads 2, mlp 2"},
        });
        std::fs::write(path, serde_json::to_string_pretty(&report)? + "\n")?;
        println!("wrote {path}");
    }
    if !ok {
        bail!(
            "gpu_check failed: {ops_failed} op tensor(s) outside the tolerance{}, {tasks_failed} task(s) failed",
            if op_error.is_some() { " (op checks stopped early)" } else { "" }
        );
    }
    println!("gpu_check passed on {dev_name}");
    Ok(())
}
