//! Fused BatchNorm for CPU training, usable with a `candle_nn::BatchNorm`'s own parameters.
//!
//! candle-nn 0.11's training-mode BatchNorm is a chain of a transpose, a contiguous copy,
//! means, broadcast subtract/divide/multiply/add and a transpose back, and its backward is the
//! same chain's autograd: about a third of a small ResNet's CPU training step. [`batch_norm`]
//! computes the same thing as one custom op: one pass for the per-channel statistics, one for
//! the output; in backward one pass for the two per-channel sums and one for the input
//! gradient. It updates the module's running statistics exactly as candle-nn does
//! (`running = (1 − momentum)·running + momentum·batch`, the variance unbiased by `M/(M − 1)`
//! with `M = N·H·W`), so the module, its `VarMap` names and its saved weights are unchanged.
//!
//! CPU `f32` only; anything else falls back to `bn.forward_t(x, train)`.

use candle_core::{
    CpuStorage, CustomOp3, DType, Layout, ModuleT, Result, Shape, Storage, Tensor, Var,
};
use rayon::prelude::*;
use std::sync::{Arc, Mutex};

/// `bn.forward_t(x, train)` for `x` of shape `(N, C, …)`, fused on the CPU.
///
/// Training mode normalises with the batch statistics and updates `bn`'s running mean and
/// variance; eval mode normalises with the running statistics. Gradients flow to `x` and to
/// the module's weight and bias (when they are `Var`s).
pub fn batch_norm(bn: &candle_nn::BatchNorm, x: &Tensor, train: bool) -> Result<Tensor> {
    if !x.device().is_cpu() || x.dtype() != DType::F32 || x.rank() < 2 {
        return bn.forward_t(x, train);
    }
    let c = x.dim(1)?;
    let (weight, bias) = match bn.weight_and_bias() {
        Some((w, b)) => (w.clone(), b.clone()),
        None => (
            Tensor::ones(c, DType::F32, x.device())?,
            Tensor::zeros(c, DType::F32, x.device())?,
        ),
    };
    let running = (bn.running_mean(), bn.running_var());
    if weight.dtype() != DType::F32 || running.0.dtype() != DType::F32 || weight.dims() != [c] {
        return bn.forward_t(x, train);
    }
    let saved = Arc::new(Mutex::new(None));
    let op = BnOp {
        eps: bn.eps(),
        eval_stats: if train {
            None
        } else {
            Some((running.0.to_vec1::<f32>()?, running.1.to_vec1::<f32>()?))
        },
        saved: saved.clone(),
    };
    let y = x.contiguous()?.apply_op3(&weight, &bias, op)?;
    if train {
        let guard = saved.lock().unwrap();
        let Some(stats) = guard.as_ref() else {
            candle_core::bail!("fedssl batch_norm: forward kept no statistics")
        };
        let m = x.elem_count() / c;
        let momentum = bn.momentum() as f32;
        let unbias = if m > 1 {
            m as f32 / (m as f32 - 1.0)
        } else {
            1.0
        };
        let rm = running.0.to_vec1::<f32>()?;
        let rv = running.1.to_vec1::<f32>()?;
        let new_mean: Vec<f32> = (0..c)
            .map(|i| (1.0 - momentum) * rm[i] + momentum * stats.mean[i])
            .collect();
        let new_var: Vec<f32> = (0..c)
            .map(|i| (1.0 - momentum) * rv[i] + momentum * stats.var[i] * unbias)
            .collect();
        drop(guard);
        // The running statistics are `Var`s inside the module: `from_tensor` shares their
        // storage, so `set` updates the module in place.
        Var::from_tensor(running.0)?.set(&Tensor::from_vec(new_mean, c, x.device())?)?;
        Var::from_tensor(running.1)?.set(&Tensor::from_vec(new_var, c, x.device())?)?;
    }
    Ok(y)
}

/// Per-channel statistics of the normalisation actually applied.
struct Stats {
    mean: Vec<f32>,
    /// Biased variance (the one used to normalise).
    var: Vec<f32>,
    invstd: Vec<f32>,
}

struct BnOp {
    eps: f64,
    /// `Some((mean, var))` in eval mode: normalise with these instead of the batch's.
    eval_stats: Option<(Vec<f32>, Vec<f32>)>,
    /// Filled by the forward pass: the wrapper reads the batch statistics from it, and the
    /// backward pass the mean and inverse standard deviation.
    saved: Arc<Mutex<Option<Stats>>>,
}

fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        candle_core::bail!("fedssl batch_norm: expected f32")
    };
    if !l.is_contiguous() {
        candle_core::bail!("fedssl batch_norm: expected a contiguous tensor")
    }
    Ok(&v[l.start_offset()..l.start_offset() + l.shape().elem_count()])
}

/// `(N, C, S)` of a tensor `(N, C, …)`.
fn ncs(dims: &[usize]) -> (usize, usize, usize) {
    (dims[0], dims[1], dims[2..].iter().product())
}

/// Sum and sum of squares of `v − shift`, with eight lanes so the compiler vectorises.
fn sums(v: &[f32], shift: f32) -> (f64, f64) {
    let mut s = [0f32; 8];
    let mut q = [0f32; 8];
    let chunks = v.chunks_exact(8);
    let rest = chunks.remainder();
    for ch in chunks {
        for i in 0..8 {
            let d = ch[i] - shift;
            s[i] += d;
            q[i] += d * d;
        }
    }
    let (mut s1, mut q1) = (0f64, 0f64);
    for i in 0..8 {
        s1 += s[i] as f64;
        q1 += q[i] as f64;
    }
    for &x in rest {
        let d = (x - shift) as f64;
        s1 += d;
        q1 += d * d;
    }
    (s1, q1)
}

/// `Σ g` and `Σ g·(x − mean)` over one plane.
fn grad_sums(g: &[f32], x: &[f32], mean: f32) -> (f64, f64) {
    let mut s = [0f32; 8];
    let mut p = [0f32; 8];
    let (gc, xc) = (g.chunks_exact(8), x.chunks_exact(8));
    let (gr, xr) = (gc.remainder(), xc.remainder());
    for (a, b) in gc.zip(xc) {
        for i in 0..8 {
            s[i] += a[i];
            p[i] += a[i] * (b[i] - mean);
        }
    }
    let (mut s1, mut p1) = (0f64, 0f64);
    for i in 0..8 {
        s1 += s[i] as f64;
        p1 += p[i] as f64;
    }
    for (a, b) in gr.iter().zip(xr) {
        s1 += *a as f64;
        p1 += (*a * (b - mean)) as f64;
    }
    (s1, p1)
}

impl CustomOp3 for BnOp {
    fn name(&self) -> &'static str {
        "fedssl-batch-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, gamma, beta) = (f32_slice(s1, l1)?, f32_slice(s2, l2)?, f32_slice(s3, l3)?);
        let (n, c, s) = ncs(l1.dims());
        let m = (n * s).max(1);
        let (mean, var): (Vec<f32>, Vec<f32>) = match &self.eval_stats {
            Some((mean, var)) => (mean.clone(), var.clone()),
            None => (0..c)
                .into_par_iter()
                .map(|ch| {
                    let shift = if x.is_empty() { 0.0 } else { x[ch * s] };
                    let (mut sum, mut sq) = (0f64, 0f64);
                    for b in 0..n {
                        let (a, q) = sums(&x[(b * c + ch) * s..(b * c + ch + 1) * s], shift);
                        sum += a;
                        sq += q;
                    }
                    let mu = sum / m as f64;
                    (
                        (shift as f64 + mu) as f32,
                        (sq / m as f64 - mu * mu).max(0.0) as f32,
                    )
                })
                .unzip(),
        };
        let invstd: Vec<f32> = var
            .iter()
            .map(|v| (1.0 / (*v as f64 + self.eps).sqrt()) as f32)
            .collect();
        let scale: Vec<f32> = (0..c).map(|i| gamma[i] * invstd[i]).collect();
        let shift: Vec<f32> = (0..c).map(|i| beta[i] - mean[i] * scale[i]).collect();
        // SAFETY: each plane writes all of its elements.
        let out = unsafe {
            super::par_build(x.len(), s, |i, o| {
                let (a, b) = (scale[i % c], shift[i % c]);
                for (o, x) in o.iter_mut().zip(&x[i * s..]) {
                    o.write(x * a + b);
                }
            })
        };
        *self.saved.lock().unwrap() = Some(Stats { mean, var, invstd });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (n, c, s) = ncs(x.dims());
        let m = (n * s).max(1) as f64;
        let (mean, invstd) = {
            let saved = self.saved.lock().unwrap();
            let Some(st) = saved.as_ref() else {
                candle_core::bail!("fedssl batch_norm: backward before forward")
            };
            (st.mean.clone(), st.invstd.clone())
        };
        let gamma_v = gamma.to_vec1::<f32>()?;
        let grad = grad.contiguous()?;
        let (gx, dgamma, dbeta) = {
            let (xs, xl) = x.storage_and_layout();
            let (gs, gl) = grad.storage_and_layout();
            let (Storage::Cpu(xs), Storage::Cpu(gs)) = (&*xs, &*gs) else {
                candle_core::bail!("fedssl batch_norm: backward expects CPU tensors")
            };
            let (xv, gv) = (f32_slice(xs, xl)?, f32_slice(gs, gl)?);
            // Per channel: Σ g and Σ g·x̂.
            let (sum_g, sum_gx): (Vec<f64>, Vec<f64>) = (0..c)
                .into_par_iter()
                .map(|ch| {
                    let (mut a, mut b) = (0f64, 0f64);
                    for bi in 0..n {
                        let r = (bi * c + ch) * s..(bi * c + ch + 1) * s;
                        let (p, q) = grad_sums(&gv[r.clone()], &xv[r], mean[ch]);
                        a += p;
                        b += q;
                    }
                    (a, b * invstd[ch] as f64)
                })
                .unzip();
            let gx = if x.track_op() && s > 0 {
                let train = self.eval_stats.is_none();
                // SAFETY: each plane writes all of its elements.
                let gx = unsafe {
                    super::par_build(xv.len(), s, |i, d| {
                        let (g, xx) = (&gv[i * s..(i + 1) * s], &xv[i * s..(i + 1) * s]);
                        let ch = i % c;
                        let k = gamma_v[ch] * invstd[ch];
                        if train {
                            // dx = γ·σ⁻¹·(g − mean(g) − x̂·mean(g·x̂))
                            let mg = (sum_g[ch] / m) as f32;
                            let mgx = (sum_gx[ch] / m) as f32;
                            let (mu, is) = (mean[ch], invstd[ch]);
                            for ((d, g), x) in d.iter_mut().zip(g).zip(xx) {
                                d.write(k * (g - mg - (x - mu) * is * mgx));
                            }
                        } else {
                            for (d, g) in d.iter_mut().zip(g) {
                                d.write(k * g);
                            }
                        }
                    })
                };
                Some(gx)
            } else if x.track_op() {
                Some(vec![0f32; xv.len()])
            } else {
                None
            };
            let f = |v: Vec<f64>| v.into_iter().map(|a| a as f32).collect::<Vec<f32>>();
            (gx, f(sum_gx), f(sum_g))
        };
        let dev = x.device();
        let gx = gx.map(|v| Tensor::from_vec(v, x.dims(), dev)).transpose()?;
        let dgamma = gamma
            .track_op()
            .then(|| Tensor::from_vec(dgamma, c, dev))
            .transpose()?;
        let dbeta = beta
            .track_op()
            .then(|| Tensor::from_vec(dbeta, c, dev))
            .transpose()?;
        Ok((gx, dgamma, dbeta))
    }
}

#[cfg(test)]
mod tests {
    //! Against candle-nn's own BatchNorm: outputs, running statistics, and the gradients of
    //! the input, weight and bias. Tolerance `1e-4 · max(1, max|reference|)`.
    use super::*;
    use candle_core::Device;
    use candle_nn::{VarBuilder, VarMap};

    fn rand(shape: &[usize], seed: u64, scale: f32, offset: f32) -> Tensor {
        let n: usize = shape.iter().product();
        let mut st = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
        let v: Vec<f32> = (0..n)
            .map(|_| {
                st ^= st << 13;
                st ^= st >> 7;
                st ^= st << 17;
                ((st >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale + offset
            })
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn close(a: &Tensor, b: &Tensor, what: &str) {
        let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(a.len(), b.len(), "{what}");
        let scale = b.iter().fold(1f32, |m, v| m.max(v.abs()));
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            assert!((x - y).abs() <= 1e-4 * scale, "{what}[{i}]: {x} vs {y}");
        }
    }

    /// Two identical modules (weight and bias perturbed from their init so they matter).
    fn modules(c: usize) -> [(VarMap, candle_nn::BatchNorm); 2] {
        let make = || {
            let vm = VarMap::new();
            let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
            let bn = candle_nn::batch_norm(c, 1e-5, vb).unwrap();
            for (name, var) in vm.data().lock().unwrap().iter() {
                if name == "weight" || name == "bias" {
                    let seed = name.len() as u64;
                    var.set(&rand(&[c], seed, 0.5, 1.0)).unwrap();
                }
            }
            (vm, bn)
        };
        [make(), make()]
    }

    fn check(dims: &[usize], offset: f32) {
        let c = dims[1];
        let [(vm1, bn1), (vm2, bn2)] = modules(c);
        let x = Var::from_tensor(&rand(dims, 11, 2.0, offset)).unwrap();
        let weights = rand(dims, 12, 1.0, 0.0);
        for train in [true, false] {
            let what = format!("{dims:?} offset {offset} train {train}");
            let ours = batch_norm(&bn1, x.as_tensor(), train).unwrap();
            let theirs = bn2.forward_t(x.as_tensor(), train).unwrap();
            close(&ours, &theirs, &format!("{what} forward"));
            close(
                bn1.running_mean(),
                bn2.running_mean(),
                &format!("{what} running mean"),
            );
            close(
                bn1.running_var(),
                bn2.running_var(),
                &format!("{what} running var"),
            );
            let g1 = (ours * &weights)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let g2 = (theirs * &weights)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            close(
                g1.get(x.as_tensor()).unwrap(),
                g2.get(x.as_tensor()).unwrap(),
                &format!("{what} grad x"),
            );
            let (d1, d2) = (vm1.data().lock().unwrap(), vm2.data().lock().unwrap());
            for name in ["weight", "bias"] {
                let (v1, v2) = (&d1[name], &d2[name]);
                close(
                    g1.get(v1.as_tensor()).unwrap(),
                    g2.get(v2.as_tensor()).unwrap(),
                    &format!("{what} grad {name}"),
                );
            }
        }
    }

    #[test]
    fn matches_candle_nn_batch_norm() {
        check(&[3, 5, 7, 10], 0.0);
        check(&[2, 4, 3, 3], 5.0); // a large mean relative to the spread
        check(&[16, 8, 4, 4], -1.0);
        check(&[6, 5], 0.5); // (N, C) input
    }

    #[test]
    fn running_stats_accumulate_over_steps() {
        let [(_vm1, bn1), (_vm2, bn2)] = modules(4);
        for step in 0..3 {
            let x = rand(&[4, 4, 5, 5], 20 + step, 1.5, step as f32);
            batch_norm(&bn1, &x, true).unwrap();
            bn2.forward_t(&x, true).unwrap();
        }
        close(bn1.running_mean(), bn2.running_mean(), "running mean");
        close(bn1.running_var(), bn2.running_var(), "running var");
    }
}
