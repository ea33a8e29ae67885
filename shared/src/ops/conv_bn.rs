//! Inference-mode convolution with its BatchNorm folded in, and the residual add and ReLU that
//! follow it applied as each output element is produced: `relu(bn(conv(x, w)) + r)` in one
//! pass over the output instead of a convolution and a separate BatchNorm pass.
//!
//! With the running statistics, BatchNorm is the affine map `y·s + t` per channel, with
//! `s = γ / √(σ² + ε)` and `t = β − μ·s` (Ioffe & Szegedy 2015, §3.1), so
//! `bn(conv(x, w)) = conv(x, w·s) + t`: the scale goes into the kernel's rows, the shift, the
//! residual and the ReLU into the convolution's epilogue (`conv::Epilogue`), which runs on each
//! piece of the output while it is still in cache.
//!
//! For inference only (evaluation, feature extraction): the result is a plain tensor that
//! carries no gradient, like PyTorch's forward under `torch.no_grad()`. Training and anything
//! that differentiates use [`super::conv2d`] and [`super::batch_norm()`].

use candle_core::{DType, Result, Storage, Tensor};
use candle_nn::BatchNorm;

use super::{conv, f32_slice};

/// `relu?(bn(conv(x, w)) + residual?)` with BatchNorm in inference mode (running statistics):
/// `x (N, C_in, H, W)`, `w (C_out, C_in, KH, KW)`, `residual` (if any) shaped like the output
/// `(N, C_out, H_out, W_out)`. The result carries no gradient.
///
/// On the CPU with `f32` tensors this is one convolution with the epilogue fused; anything else
/// (another device or dtype, a BatchNorm without `f32` statistics) is the unfused composition of
/// [`super::conv2d`] and [`super::batch_norm()`] with the same result. Errors on mismatched
/// shapes, as those ops do.
pub fn conv2d_bn_inference(
    x: &Tensor,
    w: &Tensor,
    stride: usize,
    padding: usize,
    bn: &BatchNorm,
    residual: Option<&Tensor>,
    relu: bool,
) -> Result<Tensor> {
    let c_out = w.dim(0)?;
    let Some((scale, shift)) = folded(bn, c_out)? else {
        return unfused(x, w, stride, padding, bn, residual, relu);
    };
    if !conv::fast_path_applies(x, w, stride, padding)
        || residual.is_some_and(|r| r.dtype() != DType::F32 || !r.device().is_cpu())
    {
        return unfused(x, w, stride, padding, bn, residual, relu);
    }
    let x = x.contiguous()?;
    let w = w.contiguous()?;
    let residual = residual.map(|r| r.contiguous()).transpose()?;
    let (xs, xl) = x.storage_and_layout();
    let (ws, wl) = w.storage_and_layout();
    let (Storage::Cpu(xs), Storage::Cpu(ws)) = (&*xs, &*ws) else {
        candle_core::bail!("fedssl conv2d_bn_inference: expected CPU tensors")
    };
    let xv = f32_slice(xs, xl, "conv2d_bn_inference")?;
    let wv = f32_slice(ws, wl, "conv2d_bn_inference")?;
    // w·s: each output channel's kernel row scaled.
    let per_row = wv.len() / c_out.max(1);
    let w_scaled: Vec<f32> = wv
        .chunks_exact(per_row.max(1))
        .zip(&scale)
        .flat_map(|(row, &s)| row.iter().map(move |&v| v * s))
        .collect();
    let residual_guard = residual.as_ref().map(|r| r.storage_and_layout());
    let rv = match &residual_guard {
        Some((guard, rl)) => match &**guard {
            Storage::Cpu(rs) => Some(f32_slice(rs, rl, "conv2d_bn_inference")?),
            _ => candle_core::bail!("fedssl conv2d_bn_inference: expected a CPU residual"),
        },
        None => None,
    };
    let [n, _, oh, ow] = conv::output_dims(xl.dims(), wl.dims(), stride, padding)?;
    let plane = oh * ow;
    if let Some(r) = &residual {
        if r.dims() != [n, c_out, oh, ow] {
            candle_core::bail!(
                "fedssl conv2d_bn_inference: residual {:?} does not match the output ({n}, {c_out}, {oh}, {ow})",
                r.dims()
            )
        }
    }
    let epilogue = |p: usize, start: usize, vals: &mut [f32]| {
        let t = shift[p % c_out];
        match rv {
            Some(r) => {
                let r = &r[p * plane + start..p * plane + start + vals.len()];
                for (v, &rr) in vals.iter_mut().zip(r) {
                    let y = *v + t + rr;
                    *v = if relu { y.max(0.0) } else { y };
                }
            }
            None => {
                for v in vals.iter_mut() {
                    let y = *v + t;
                    *v = if relu { y.max(0.0) } else { y };
                }
            }
        }
    };
    let (out, shape) = conv::forward_with_epilogue(
        xl.dims(),
        wl.dims(),
        stride,
        padding,
        xv,
        &w_scaled,
        Some(&epilogue),
    )?;
    Tensor::from_vec(out, shape, x.device())
}

/// `(s, t)` of the module's inference-mode affine map, `C_out` each, or `None` where its
/// parameters are not `f32` vectors of that length.
fn folded(bn: &BatchNorm, c: usize) -> Result<Option<(Vec<f32>, Vec<f32>)>> {
    let (mean, var) = (bn.running_mean(), bn.running_var());
    if mean.dtype() != DType::F32 || var.dtype() != DType::F32 || mean.dims() != [c] {
        return Ok(None);
    }
    let (gamma, beta) = match bn.weight_and_bias() {
        Some((g, b)) if g.dtype() == DType::F32 && g.dims() == [c] && b.dims() == [c] => {
            (g.to_vec1::<f32>()?, b.to_vec1::<f32>()?)
        }
        Some(_) => return Ok(None),
        None => (vec![1.0; c], vec![0.0; c]),
    };
    let (mean, var) = (mean.to_vec1::<f32>()?, var.to_vec1::<f32>()?);
    let eps = bn.eps() as f32;
    let scale: Vec<f32> = gamma
        .iter()
        .zip(&var)
        .map(|(&g, &v)| g / (v + eps).sqrt())
        .collect();
    let shift = beta
        .iter()
        .zip(&mean)
        .zip(&scale)
        .map(|((&b, &m), &s)| b - m * s)
        .collect();
    Ok(Some((scale, shift)))
}

/// The same result from the unfused ops.
fn unfused(
    x: &Tensor,
    w: &Tensor,
    stride: usize,
    padding: usize,
    bn: &BatchNorm,
    residual: Option<&Tensor>,
    relu: bool,
) -> Result<Tensor> {
    let y = super::conv2d(x, w, stride, padding)?;
    let y = match (residual, relu) {
        (Some(r), true) => super::batch_norm_add_relu(bn, &y, r, false)?,
        (Some(r), false) => (super::batch_norm(bn, &y, false)? + r)?,
        (None, true) => super::batch_norm_relu(bn, &y, false)?,
        (None, false) => super::batch_norm(bn, &y, false)?,
    };
    Ok(y.detach())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::conv::tests::rand;
    use candle_core::Device;
    use candle_nn::{VarBuilder, VarMap};

    /// A BatchNorm with non-trivial γ, β and running statistics.
    fn bn(c: usize, vm: &VarMap) -> BatchNorm {
        let vb = VarBuilder::from_varmap(vm, DType::F32, &Device::Cpu);
        let bn = candle_nn::batch_norm(c, 1e-5, vb).unwrap();
        for (name, var) in vm.data().lock().unwrap().iter() {
            let seed = name.len() as u64;
            let v = (rand(&[c], seed).affine(0.5, 1.0)).unwrap(); // in [0.5, 1.5)
            var.set(&v).unwrap();
        }
        bn
    }

    #[allow(clippy::too_many_arguments)]
    fn check(
        n: usize,
        c: usize,
        h: usize,
        w: usize,
        o: usize,
        k: usize,
        stride: usize,
        pad: usize,
    ) {
        let vm = VarMap::new();
        let norm = bn(o, &vm);
        let x = rand(&[n, c, h, w], 1);
        let wt = rand(&[o, c, k, k], 2);
        let y = super::super::conv2d(&x, &wt, stride, pad).unwrap();
        let r = rand(y.dims(), 3);
        for (res, relu) in [
            (None, true),
            (Some(&r), true),
            (None, false),
            (Some(&r), false),
        ] {
            let ours = conv2d_bn_inference(&x, &wt, stride, pad, &norm, res, relu).unwrap();
            let want = unfused(&x, &wt, stride, pad, &norm, res, relu).unwrap();
            assert_eq!(ours.dims(), want.dims());
            let a = ours.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let b = want.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let scale = b.iter().fold(1f32, |m, v| m.max(v.abs()));
            for (i, (p, q)) in a.iter().zip(&b).enumerate() {
                assert!(
                    (p - q).abs() <= 1e-4 * scale,
                    "n{n} c{c} {h}x{w} o{o} k{k} s{stride} residual {} relu {relu}: {i}: {p} vs {q}",
                    res.is_some()
                );
            }
        }
    }

    #[test]
    fn matches_the_unfused_ops() {
        check(3, 4, 9, 7, 5, 3, 1, 1); // im2col, one image per tile
        check(2, 8, 5, 5, 6, 3, 2, 1); // strided, several images per tile
        check(2, 8, 6, 6, 16, 1, 1, 0); // pointwise
        check(2, 8, 6, 6, 16, 1, 2, 0); // strided 1×1 shortcut
        check(2, 32, 5, 32, 32, 3, 1, 1); // Winograd
        check(1, 64, 3, 17, 64, 3, 1, 1); // Winograd, odd sizes
    }

    #[test]
    fn folds_by_hand() {
        // One channel, 1×1 kernel 2: y = 2x; bn with γ 3, β 1, μ 0.5, σ² 4 − ε:
        // s = 3 / 2 = 1.5, t = 1 − 0.75 = 0.25, so out = relu(3x + 0.25 + r).
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        let norm = candle_nn::batch_norm(1, 1e-5, vb).unwrap();
        for (name, var) in vm.data().lock().unwrap().iter() {
            let v = match name.as_str() {
                "weight" => 3.0,
                "bias" => 1.0,
                "running_mean" => 0.5,
                _ => 4.0 - 1e-5,
            };
            var.set(&Tensor::new(&[v as f32], &Device::Cpu).unwrap())
                .unwrap();
        }
        let x = Tensor::new(&[[[[1f32, -1.0]]]], &Device::Cpu).unwrap();
        let w = Tensor::new(&[[[[2f32]]]], &Device::Cpu).unwrap();
        let r = Tensor::new(&[[[[0.5f32, 0.5]]]], &Device::Cpu).unwrap();
        let y = conv2d_bn_inference(&x, &w, 1, 0, &norm, Some(&r), true).unwrap();
        let v = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!((v[0] - 3.75).abs() < 1e-5 && v[1] == 0.0, "{v:?}");
    }

    #[test]
    fn refuses_a_residual_of_the_wrong_shape() {
        let vm = VarMap::new();
        let norm = bn(4, &vm);
        let x = rand(&[1, 4, 6, 6], 1);
        let w = rand(&[4, 4, 3, 3], 2);
        let r = rand(&[1, 4, 5, 6], 3);
        assert!(conv2d_bn_inference(&x, &w, 1, 1, &norm, Some(&r), true).is_err());
        // as many elements as the (1, 4, 6, 6) output, in another shape
        let r = rand(&[1, 4, 36, 1], 3);
        assert!(conv2d_bn_inference(&x, &w, 1, 1, &norm, Some(&r), true).is_err());
    }
}
