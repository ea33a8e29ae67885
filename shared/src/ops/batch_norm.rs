//! Fused BatchNorm for CPU training, usable with a `candle_nn::BatchNorm`'s own parameters,
//! optionally fused with the ReLU (and the residual add) that follows it.
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
//! [`batch_norm_relu`] and [`batch_norm_add_relu`] also apply `max(·, 0)` (after adding a
//! residual) in the same output pass, and fold the ReLU's mask into the backward passes: the
//! separate ReLU and add ops, their passes over memory and the gradient buffers candle's
//! autograd allocates, zero-fills and accumulates for every intermediate tensor are gone.
//! The ReLU's gradient is PyTorch's convention: `[y > 0]` (0 at exactly 0).
//!
//! CPU `f32` only; anything else falls back to the candle ops they replace.

use candle_core::{
    CpuStorage, CustomOp3, DType, Layout, ModuleT, Result, Shape, Storage, Tensor, Var,
};

use super::f32_slice;
use rayon::prelude::*;
use std::mem::MaybeUninit;
use std::sync::{Arc, Mutex, PoisonError};

/// `bn.forward_t(x, train)` for `x` of shape `(N, C, …)`, fused on the CPU.
///
/// Training mode normalises with the batch statistics and updates `bn`'s running mean and
/// variance; eval mode normalises with the running statistics. Gradients flow to `x` and to
/// the module's weight and bias (when they are `Var`s).
pub fn batch_norm(bn: &candle_nn::BatchNorm, x: &Tensor, train: bool) -> Result<Tensor> {
    fused(bn, x, None, false, train)
}

/// `relu(bn.forward_t(x, train))` for `x` of shape `(N, C, …)`, one fused op on the CPU (the
/// conv-BN-ReLU unit of He et al. 2016). Same running-statistics update as [`batch_norm`].
pub fn batch_norm_relu(bn: &candle_nn::BatchNorm, x: &Tensor, train: bool) -> Result<Tensor> {
    fused(bn, x, None, true, train)
}

/// `relu(bn.forward_t(x, train) + residual)`, the end of a ResNet BasicBlock (He et al. 2016,
/// Fig. 2), one fused op on the CPU. `residual` has `x`'s shape `(N, C, …)`; gradients flow to
/// `x`, `residual` and the module's weight and bias. Errors when the shapes differ.
pub fn batch_norm_add_relu(
    bn: &candle_nn::BatchNorm,
    x: &Tensor,
    residual: &Tensor,
    train: bool,
) -> Result<Tensor> {
    if residual.dims() != x.dims() {
        candle_core::bail!(
            "fedssl batch_norm_add_relu: residual {:?} does not match input {:?}",
            residual.dims(),
            x.dims()
        )
    }
    fused(bn, x, Some(residual), true, train)
}

fn candle_fallback(
    bn: &candle_nn::BatchNorm,
    x: &Tensor,
    residual: Option<&Tensor>,
    relu: bool,
    train: bool,
) -> Result<Tensor> {
    let mut y = bn.forward_t(x, train)?;
    if let Some(r) = residual {
        y = (y + r)?;
    }
    if relu {
        y = y.relu()?;
    }
    Ok(y)
}

fn fused(
    bn: &candle_nn::BatchNorm,
    x: &Tensor,
    residual: Option<&Tensor>,
    relu: bool,
    train: bool,
) -> Result<Tensor> {
    let cpu_f32 = |t: &Tensor| t.device().is_cpu() && t.dtype() == DType::F32;
    if !cpu_f32(x) || x.rank() < 2 || !residual.is_none_or(cpu_f32) {
        return candle_fallback(bn, x, residual, relu, train);
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
        return candle_fallback(bn, x, residual, relu, train);
    }
    let saved = Arc::new(Mutex::new(None));
    let op = BnOp {
        eps: bn.eps(),
        eval_stats: if train {
            None
        } else {
            Some((running.0.to_vec1::<f32>()?, running.1.to_vec1::<f32>()?))
        },
        relu,
        saved: saved.clone(),
    };
    let x = x.contiguous()?;
    let y = match residual {
        None => x.apply_op3(&weight, &bias, op)?,
        // Weight and bias travel as one `(2C)` tensor so the residual fits a three-input op;
        // the concatenation's backward splits their gradients again.
        Some(r) => {
            let wb = Tensor::cat(&[&weight, &bias], 0)?;
            x.apply_op3(&wb, &r.contiguous()?, BnAddReluOp(op))?
        }
    };
    if train {
        let guard = saved.lock().unwrap_or_else(PoisonError::into_inner);
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
    /// Apply `max(·, 0)` to the output (after the residual, if any).
    relu: bool,
    /// Filled by the forward pass: the wrapper reads the batch statistics from it, and the
    /// backward pass the mean and inverse standard deviation. A poisoned lock is read
    /// through: the statistics are written in one assignment, so they are never half-made.
    saved: Arc<Mutex<Option<Stats>>>,
}

/// [`BnOp`] with `relu` over inputs `(x, [γ; β], residual)`.
struct BnAddReluOp(BnOp);

/// `(N, C, S)` of a tensor `(N, C, …)`.
fn ncs(dims: &[usize]) -> (usize, usize, usize) {
    (dims[0], dims[1], dims[2..].iter().product())
}

/// Sum and sum of squares of `v − shift`, in eight lanes of fixed-size arrays so that the
/// compiler vectorises the loop.
fn sums(v: &[f32], shift: f32) -> (f64, f64) {
    let mut s = [0f32; 8];
    let mut q = [0f32; 8];
    let (chunks, rest) = v.as_chunks::<8>();
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

/// `g` where `y > 0`, else 0: a multiplication by 1 or 0 rather than a select, which LLVM would
/// turn into a branch per element around the load of `g` instead of vectorising.
#[inline(always)]
fn masked(g: f32, y: f32) -> f32 {
    g * f32::from(u8::from(y > 0.0))
}

/// `Σ g'` and `Σ g'·(x − mean)` over one plane, where `g' = g·[y > 0]` when `y` (the output of a
/// fused ReLU) is given and `g' = g` otherwise. Vectorised by hand on x86_64 (the compiler turns
/// the masked loop into a branch per element).
fn grad_sums(g: &[f32], x: &[f32], y: Option<&[f32]>, mean: f32) -> (f64, f64) {
    let x = &x[..g.len()];
    let y = y.map(|y| &y[..g.len()]);
    #[cfg(target_arch = "x86_64")]
    let (head, (mut s1, mut p1)) = {
        let head = g.len() / 8 * 8;
        // SAFETY: SSE2 is part of x86_64; the slices all hold at least `head` elements.
        (head, unsafe { grad_sums_sse2(head, g, x, y, mean) })
    };
    #[cfg(not(target_arch = "x86_64"))]
    let (head, (mut s1, mut p1)) = (0, (0f64, 0f64));
    for i in head..g.len() {
        let a = y.map_or(g[i], |y| masked(g[i], y[i]));
        s1 += a as f64;
        p1 += (a * (x[i] - mean)) as f64;
    }
    (s1, p1)
}

/// [`grad_sums`] over the first `len` elements (a multiple of 8) with SSE2: eight lanes in two
/// registers per sum, the mask as a compare and an `and`.
///
/// # Safety
/// `g`, `x` and `y` must hold at least `len` elements.
#[cfg(target_arch = "x86_64")]
unsafe fn grad_sums_sse2(
    len: usize,
    g: &[f32],
    x: &[f32],
    y: Option<&[f32]>,
    mean: f32,
) -> (f64, f64) {
    use std::arch::x86_64::*;
    let (gp, xp) = (g.as_ptr(), x.as_ptr());
    let (mut s0, mut s1, mut p0, mut p1) = (
        _mm_setzero_ps(),
        _mm_setzero_ps(),
        _mm_setzero_ps(),
        _mm_setzero_ps(),
    );
    let mv = _mm_set1_ps(mean);
    let zero = _mm_setzero_ps();
    let mut i = 0;
    while i < len {
        // SAFETY: `i + 8 <= len`, within every slice.
        let (mut a0, mut a1) = unsafe { (_mm_loadu_ps(gp.add(i)), _mm_loadu_ps(gp.add(i + 4))) };
        if let Some(y) = y {
            let yp = y.as_ptr();
            // SAFETY: as above.
            let (y0, y1) = unsafe { (_mm_loadu_ps(yp.add(i)), _mm_loadu_ps(yp.add(i + 4))) };
            a0 = _mm_and_ps(a0, _mm_cmpgt_ps(y0, zero));
            a1 = _mm_and_ps(a1, _mm_cmpgt_ps(y1, zero));
        }
        // SAFETY: as above.
        let (x0, x1) = unsafe { (_mm_loadu_ps(xp.add(i)), _mm_loadu_ps(xp.add(i + 4))) };
        s0 = _mm_add_ps(s0, a0);
        s1 = _mm_add_ps(s1, a1);
        p0 = _mm_add_ps(p0, _mm_mul_ps(a0, _mm_sub_ps(x0, mv)));
        p1 = _mm_add_ps(p1, _mm_mul_ps(a1, _mm_sub_ps(x1, mv)));
        i += 8;
    }
    let lanes = |v: __m128| {
        let mut out = [0f32; 4];
        // SAFETY: `out` holds four floats.
        unsafe { _mm_storeu_ps(out.as_mut_ptr(), v) };
        out.iter().map(|v| *v as f64).sum::<f64>()
    };
    (lanes(s0) + lanes(s1), lanes(p0) + lanes(p1))
}

/// Two `Vec<f32>` of length `n` built without zero-filling: `fill(i, a, b)` runs in parallel
/// on the `i`-th chunks of `chunk_len` elements of both and must write every element of both.
///
/// # Safety
/// `fill` must initialise every element it is given.
unsafe fn par_build2(
    n: usize,
    chunk_len: usize,
    fill: impl Fn(usize, &mut [MaybeUninit<f32>], &mut [MaybeUninit<f32>]) + Sync + Send,
) -> (Vec<f32>, Vec<f32>) {
    let (mut a, mut b): (Vec<f32>, Vec<f32>) = (Vec::with_capacity(n), Vec::with_capacity(n));
    if n > 0 {
        a.spare_capacity_mut()[..n]
            .par_chunks_mut(chunk_len.max(1))
            .zip(b.spare_capacity_mut()[..n].par_chunks_mut(chunk_len.max(1)))
            .enumerate()
            .for_each(|(i, (ca, cb))| fill(i, ca, cb));
    }
    // SAFETY: the caller guarantees that `fill` wrote all `n` elements of both.
    unsafe {
        a.set_len(n);
        b.set_len(n);
    }
    (a, b)
}

impl BnOp {
    /// The forward pass over contiguous `x (N, C, S)`: batch (or running) statistics, then
    /// `y = max(x·scale + shift [+ residual], 0)` with the ReLU only when `self.relu`.
    fn forward(
        &self,
        x: &[f32],
        dims: &[usize],
        gamma: &[f32],
        beta: &[f32],
        residual: Option<&[f32]>,
    ) -> Vec<f32> {
        let (n, c, s) = ncs(dims);
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
        let floor = if self.relu { 0.0 } else { f32::NEG_INFINITY };
        // SAFETY: each plane writes all of its elements.
        let out = unsafe {
            super::par_build(x.len(), s, |i, o| {
                let (a, b) = (scale[i % c], shift[i % c]);
                let xs = &x[i * s..(i + 1) * s];
                match residual {
                    None => {
                        for (o, x) in o.iter_mut().zip(xs) {
                            o.write((x * a + b).max(floor));
                        }
                    }
                    Some(r) => {
                        for ((o, x), r) in o.iter_mut().zip(xs).zip(&r[i * s..]) {
                            o.write((x * a + b + r).max(floor));
                        }
                    }
                }
            })
        };
        *self.saved.lock().unwrap_or_else(PoisonError::into_inner) =
            Some(Stats { mean, var, invstd });
        out
    }

    /// The backward pass: from the output gradient `grad`, the input `x`, the output `y` (the
    /// ReLU's mask, used when `self.relu`) and `γ`, the gradients `(dx, dγ, dβ, d residual)`.
    /// `dx` is `None` unless `want_x`, `d residual` unless `want_residual`.
    #[allow(clippy::type_complexity)]
    fn backward(
        &self,
        x: &Tensor,
        y: &Tensor,
        grad: &Tensor,
        gamma_v: &[f32],
        want_x: bool,
        want_residual: bool,
    ) -> Result<(Option<Tensor>, Vec<f32>, Vec<f32>, Option<Tensor>)> {
        let (n, c, s) = ncs(x.dims());
        let m = (n * s).max(1) as f64;
        let (mean, invstd) = {
            let saved = self.saved.lock().unwrap_or_else(PoisonError::into_inner);
            let Some(st) = saved.as_ref() else {
                candle_core::bail!("fedssl batch_norm: backward before forward")
            };
            (st.mean.clone(), st.invstd.clone())
        };
        let grad = grad.contiguous()?;
        let (xs, xl) = x.storage_and_layout();
        let (gs, gl) = grad.storage_and_layout();
        let (ys, yl) = y.storage_and_layout();
        let (Storage::Cpu(xs), Storage::Cpu(gs), Storage::Cpu(ys)) = (&*xs, &*gs, &*ys) else {
            candle_core::bail!("fedssl batch_norm: backward expects CPU tensors")
        };
        let (xv, gv) = (
            f32_slice(xs, xl, "batch_norm")?,
            f32_slice(gs, gl, "batch_norm")?,
        );
        let yv = if self.relu {
            Some(f32_slice(ys, yl, "batch_norm")?)
        } else {
            None
        };
        // Per channel: Σ g' and Σ g'·x̂ (g' the gradient after the ReLU's mask).
        let (sum_g, sum_gx): (Vec<f64>, Vec<f64>) = (0..c)
            .into_par_iter()
            .map(|ch| {
                let (mut a, mut b) = (0f64, 0f64);
                for bi in 0..n {
                    let r = (bi * c + ch) * s..(bi * c + ch + 1) * s;
                    let (p, q) =
                        grad_sums(&gv[r.clone()], &xv[r.clone()], yv.map(|y| &y[r]), mean[ch]);
                    a += p;
                    b += q;
                }
                (a, b * invstd[ch] as f64)
            })
            .unzip();
        let train = self.eval_stats.is_none();
        // dx = γ·σ⁻¹·(g' − mean(g') − x̂·mean(g'·x̂)) in training mode, γ·σ⁻¹·g' in eval mode.
        let plane = |i: usize, d: &mut [MaybeUninit<f32>], r: Option<&mut [MaybeUninit<f32>]>| {
            let (g, xx) = (&gv[i * s..(i + 1) * s], &xv[i * s..(i + 1) * s]);
            let ch = i % c;
            let k = gamma_v[ch] * invstd[ch];
            let (mg, mgx) = if train {
                ((sum_g[ch] / m) as f32, (sum_gx[ch] / m) as f32)
            } else {
                (0.0, 0.0)
            };
            let (mu, is) = (mean[ch], invstd[ch]);
            match (yv, r) {
                (Some(y), Some(r)) => {
                    let y = &y[i * s..(i + 1) * s];
                    for ((((d, r), g), x), y) in d.iter_mut().zip(r).zip(g).zip(xx).zip(y) {
                        let g = masked(*g, *y);
                        r.write(g);
                        d.write(k * (g - mg - (x - mu) * is * mgx));
                    }
                }
                (Some(y), None) => {
                    let y = &y[i * s..(i + 1) * s];
                    for (((d, g), x), y) in d.iter_mut().zip(g).zip(xx).zip(y) {
                        let g = masked(*g, *y);
                        d.write(k * (g - mg - (x - mu) * is * mgx));
                    }
                }
                (None, _) => {
                    for ((d, g), x) in d.iter_mut().zip(g).zip(xx) {
                        d.write(k * (g - mg - (x - mu) * is * mgx));
                    }
                }
            }
        };
        let (gx, gr) = if s == 0 {
            (
                want_x.then(|| vec![0f32; xv.len()]),
                want_residual.then(|| vec![0f32; xv.len()]),
            )
        } else if want_residual {
            // SAFETY: each plane writes all of its elements of both.
            let (gx, gr) = unsafe { par_build2(xv.len(), s, |i, d, r| plane(i, d, Some(r))) };
            (want_x.then_some(gx), Some(gr))
        } else if want_x {
            // SAFETY: each plane writes all of its elements.
            let gx = unsafe { super::par_build(xv.len(), s, |i, d| plane(i, d, None)) };
            (Some(gx), None)
        } else {
            (None, None)
        };
        let dev = x.device();
        let to_t = |v: Vec<f32>| Tensor::from_vec(v, x.dims(), dev);
        let f = |v: Vec<f64>| v.into_iter().map(|a| a as f32).collect::<Vec<f32>>();
        Ok((
            gx.map(to_t).transpose()?,
            f(sum_gx),
            f(sum_g),
            gr.map(to_t).transpose()?,
        ))
    }
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
        let (x, gamma, beta) = (
            f32_slice(s1, l1, "batch_norm")?,
            f32_slice(s2, l2, "batch_norm")?,
            f32_slice(s3, l3, "batch_norm")?,
        );
        let out = self.forward(x, l1.dims(), gamma, beta, None);
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let c = x.dim(1)?;
        let gamma_v = gamma.to_vec1::<f32>()?;
        let (gx, dgamma, dbeta, _) = self.backward(x, res, grad, &gamma_v, x.track_op(), false)?;
        let dev = x.device();
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

impl CustomOp3 for BnAddReluOp {
    fn name(&self) -> &'static str {
        "fedssl-batch-norm-add-relu"
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
        let (x, wb, r) = (
            f32_slice(s1, l1, "batch_norm")?,
            f32_slice(s2, l2, "batch_norm")?,
            f32_slice(s3, l3, "batch_norm")?,
        );
        let c = wb.len() / 2;
        let out = self.0.forward(x, l1.dims(), &wb[..c], &wb[c..], Some(r));
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        wb: &Tensor,
        r: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let c = x.dim(1)?;
        let wb_v = wb.to_vec1::<f32>()?;
        let (gx, mut dgamma, dbeta, gr) =
            self.0
                .backward(x, res, grad, &wb_v[..c], x.track_op(), r.track_op())?;
        let dwb = if wb.track_op() {
            dgamma.extend(dbeta);
            Some(Tensor::from_vec(dgamma, 2 * c, x.device())?)
        } else {
            None
        };
        Ok((gx, dwb, gr))
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

    /// What follows the BatchNorm in the op under test.
    #[derive(Clone, Copy, Debug)]
    enum Tail {
        None,
        Relu,
        AddRelu,
    }

    fn check(dims: &[usize], offset: f32) {
        for tail in [Tail::None, Tail::Relu, Tail::AddRelu] {
            check_tail(dims, offset, tail);
        }
    }

    /// Our fused op against candle-nn's BatchNorm followed by candle's add and ReLU: the
    /// output, the running statistics and the gradients of the input, weight, bias and
    /// residual, in training and eval mode.
    fn check_tail(dims: &[usize], offset: f32, tail: Tail) {
        let c = dims[1];
        let [(vm1, bn1), (vm2, bn2)] = modules(c);
        let x = Var::from_tensor(&rand(dims, 11, 2.0, offset)).unwrap();
        let r = Var::from_tensor(&rand(dims, 13, 1.0, 0.0)).unwrap();
        let weights = rand(dims, 12, 1.0, 0.0);
        for train in [true, false] {
            let what = format!("{dims:?} offset {offset} {tail:?} train {train}");
            let (xt, rt) = (x.as_tensor(), r.as_tensor());
            let ours = match tail {
                Tail::None => batch_norm(&bn1, xt, train),
                Tail::Relu => batch_norm_relu(&bn1, xt, train),
                Tail::AddRelu => batch_norm_add_relu(&bn1, xt, rt, train),
            }
            .unwrap();
            let theirs = bn2.forward_t(xt, train).unwrap();
            let theirs = match tail {
                Tail::None => theirs,
                Tail::Relu => theirs.relu().unwrap(),
                Tail::AddRelu => (theirs + rt).unwrap().relu().unwrap(),
            };
            close(&ours, &theirs, &format!("{what} forward"));
            // In training mode the outputs straddle 0, so the mask is exercised both ways.
            if train && !matches!(tail, Tail::None) {
                let negative = theirs.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                let zeros = negative.iter().filter(|v| **v == 0.0).count();
                assert!(
                    zeros > 0 && zeros < negative.len(),
                    "{what}: the ReLU must clip some but not all outputs ({zeros} zeros)"
                );
            }
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
                g1.get(xt).unwrap(),
                g2.get(xt).unwrap(),
                &format!("{what} grad x"),
            );
            if matches!(tail, Tail::AddRelu) {
                close(
                    g1.get(rt).unwrap(),
                    g2.get(rt).unwrap(),
                    &format!("{what} grad residual"),
                );
            }
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
    fn gradients_match_finite_differences() {
        // Central differences of L = Σ y·w through each fused op in training mode (the batch
        // statistics depend on every input), against the op's own backward. Inputs whose
        // perturbation moves some output across the ReLU's kink are skipped; most are not.
        let dims = [2, 3, 3, 3];
        let eps = 1e-2f32;
        for tail in [Tail::None, Tail::Relu, Tail::AddRelu] {
            let [(_vm, bn), _] = modules(3);
            let x0 = rand(&dims, 31, 2.0, 0.3)
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let r = rand(&dims, 32, 1.0, 0.0);
            let w = rand(&dims, 33, 1.0, 0.0);
            let forward = |x: &[f32]| -> (f32, Vec<f32>) {
                let x = Tensor::from_vec(x.to_vec(), &dims[..], &Device::Cpu).unwrap();
                let y = match tail {
                    Tail::None => batch_norm(&bn, &x, true),
                    Tail::Relu => batch_norm_relu(&bn, &x, true),
                    Tail::AddRelu => batch_norm_add_relu(&bn, &x, &r, true),
                }
                .unwrap();
                let l = (&y * &w)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap();
                (l, y.flatten_all().unwrap().to_vec1::<f32>().unwrap())
            };
            let xv = Var::from_vec(x0.clone(), &dims[..], &Device::Cpu).unwrap();
            let y = match tail {
                Tail::None => batch_norm(&bn, xv.as_tensor(), true),
                Tail::Relu => batch_norm_relu(&bn, xv.as_tensor(), true),
                Tail::AddRelu => batch_norm_add_relu(&bn, xv.as_tensor(), &r, true),
            }
            .unwrap();
            let grads = (&y * &w).unwrap().sum_all().unwrap().backward().unwrap();
            let g = grads.get(xv.as_tensor()).unwrap();
            let g = g.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let active = |y: &[f32]| y.iter().map(|v| *v > 0.0).collect::<Vec<_>>();
            let (_, y0) = forward(&x0);
            let mut checked = 0;
            for i in 0..x0.len() {
                let (mut up, mut down) = (x0.clone(), x0.clone());
                up[i] += eps;
                down[i] -= eps;
                let ((lu, yu), (ld, yd)) = (forward(&up), forward(&down));
                if !matches!(tail, Tail::None)
                    && (active(&yu) != active(&y0) || active(&yd) != active(&y0))
                {
                    continue;
                }
                let fd = (lu - ld) / (2.0 * eps);
                assert!(
                    (fd - g[i]).abs() <= 2e-2 * (1.0 + g[i].abs()),
                    "{tail:?} x[{i}]: finite difference {fd} vs backward {}",
                    g[i]
                );
                checked += 1;
            }
            assert!(
                checked >= x0.len() / 2,
                "{tail:?}: only {checked} inputs checked"
            );
        }
    }

    #[test]
    fn add_relu_refuses_a_mismatched_residual() {
        let [(_vm, bn), _] = modules(3);
        let x = rand(&[2, 3, 4, 4], 1, 1.0, 0.0);
        let r = rand(&[2, 3, 4, 5], 2, 1.0, 0.0);
        let err = batch_norm_add_relu(&bn, &x, &r, true)
            .unwrap_err()
            .to_string();
        assert!(err.contains("residual [2, 3, 4, 5]"), "{err}");
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
