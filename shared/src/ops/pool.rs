//! 2×2 max-pooling with stride 2 (VGG's pooling) as a single-pass CPU custom op.
//!
//! candle 0.11 computes max-pool's gradient from a mask: it upsamples the output, compares it
//! with the input, converts the mask to `f32`, average-pools it to count ties, multiplies,
//! upsamples the gradient and multiplies again (eight passes over the full-resolution tensor,
//! about a fifth of a VGG-11-BN CPU training step). Here the backward is one pass: each
//! window's gradient goes to the window's first maximum in row-major order, PyTorch's rule
//! (candle splits it among tied maxima; after a ReLU the ties are zeros, whose gradient the
//! ReLU drops either way). A NaN counts as the maximum, so it propagates as in PyTorch.
//!
//! CPU `f32` only; anything else falls back to candle's `max_pool2d(2)`.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor};
use std::mem::MaybeUninit;

use super::f32_slice;

/// 2×2 max-pooling with stride 2: `x (N, C, H, W)` → `(N, C, ⌊H/2⌋, ⌊W/2⌋)` (an odd last row
/// or column is dropped, as in candle and PyTorch). Errors if `x` is not 4-d.
pub fn max_pool2x2(x: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == DType::F32 && x.rank() == 4 {
        x.contiguous()?.apply_op1(MaxPool)
    } else {
        x.max_pool2d(2)
    }
}

/// Writes the gradient of `plane (H, W)` into `gx (H, W)` (every element): each 2×2 window's
/// gradient from `g (H/2, W/2)` at the window's first maximum in row-major order (a NaN wins),
/// zeros elsewhere and in an odd last row or column.
#[inline]
fn grad_plane(plane: &[f32], h: usize, w: usize, g: &[f32], gx: &mut [MaybeUninit<f32>]) {
    let ow = w / 2;
    for oy in 0..h / 2 {
        let r0 = &plane[2 * oy * w..2 * oy * w + 2 * ow];
        let r1 = &plane[(2 * oy + 1) * w..(2 * oy + 1) * w + 2 * ow];
        let (d0, d1) = gx[2 * oy * w..(2 * oy + 2) * w].split_at_mut(w);
        let windows = r0.chunks_exact(2).zip(r1.chunks_exact(2));
        for (ox, ((a, b), gv)) in windows.zip(&g[oy * ow..(oy + 1) * ow]).enumerate() {
            let mut best = (a[0], 0u8);
            for (v, i) in [(a[1], 1u8), (b[0], 2), (b[1], 3)] {
                best = if beats(v, best.0) { (v, i) } else { best };
            }
            let at = |i: u8| if best.1 == i { *gv } else { 0.0 };
            d0[2 * ox].write(at(0));
            d0[2 * ox + 1].write(at(1));
            d1[2 * ox].write(at(2));
            d1[2 * ox + 1].write(at(3));
        }
        if w % 2 == 1 {
            d0[w - 1].write(0.0);
            d1[w - 1].write(0.0);
        }
    }
    if h % 2 == 1 {
        for v in &mut gx[(h - 1) * w..h * w] {
            v.write(0.0);
        }
    }
}

/// Whether `v`, coming after `best` in a window's row-major order, is the window's new
/// maximum: it is larger, or a NaN where `best` is not (the first maximum and the first NaN
/// win, PyTorch's rule).
#[inline]
fn beats(v: f32, best: f32) -> bool {
    v > best || (v.is_nan() && !best.is_nan())
}

/// The larger of `a` and then `b` by [`beats`].
#[inline]
fn max_nan(a: f32, b: f32) -> f32 {
    if beats(b, a) {
        b
    } else {
        a
    }
}

/// Writes `out (H/2, W/2)` (every element): the maximum of each 2×2 window of
/// `plane (H, W)` (a NaN wins).
#[inline]
fn pool_plane(plane: &[f32], h: usize, w: usize, out: &mut [MaybeUninit<f32>]) {
    let ow = w / 2;
    for (oy, o) in out.chunks_exact_mut(ow).enumerate().take(h / 2) {
        let r0 = &plane[2 * oy * w..2 * oy * w + 2 * ow];
        let r1 = &plane[(2 * oy + 1) * w..(2 * oy + 1) * w + 2 * ow];
        for ((o, a), b) in o.iter_mut().zip(r0.chunks_exact(2)).zip(r1.chunks_exact(2)) {
            o.write(max_nan(max_nan(a[0], a[1]), max_nan(b[0], b[1])));
        }
    }
}

/// Planes (of `plane` elements each) per parallel task: about 16 Ki input elements.
fn planes_per_task(plane: usize) -> usize {
    (16 * 1024 / plane.max(1)).max(1)
}

struct MaxPool;

impl CustomOp1 for MaxPool {
    fn name(&self) -> &'static str {
        "fedssl-max-pool2x2"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, "max_pool2x2")?;
        let (n, c, h, w) = l.shape().dims4()?;
        let (oh, ow) = (h / 2, w / 2);
        let k = planes_per_task(h * w);
        // SAFETY: `pool_plane` writes every element of each of a chunk's whole planes.
        let out = unsafe {
            super::par_build(n * c * oh * ow, k * oh * ow, |t, chunk| {
                let x = &x[t * k * h * w..];
                for (j, o) in chunk.chunks_exact_mut(oh * ow).enumerate() {
                    pool_plane(&x[j * h * w..(j + 1) * h * w], h, w, o);
                }
            })
        };
        Ok((CpuStorage::F32(out), Shape::from((n, c, oh, ow))))
    }
    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(
            grad.contiguous()?
                .apply_op2_no_bwd(&arg.contiguous()?, &MaxPoolGrad)?,
        ))
    }
}

/// `(grad (N, C, H/2, W/2), x (N, C, H, W))` → the gradient of `x`: each window's gradient at
/// its first maximum, zero elsewhere.
struct MaxPoolGrad;

impl CustomOp2 for MaxPoolGrad {
    fn name(&self) -> &'static str {
        "fedssl-max-pool2x2-grad"
    }
    fn cpu_fwd(
        &self,
        gs: &CpuStorage,
        gl: &Layout,
        xs: &CpuStorage,
        xl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = f32_slice(gs, gl, "max_pool2x2 backward")?;
        let x = f32_slice(xs, xl, "max_pool2x2 backward")?;
        let (n, c, h, w) = xl.shape().dims4()?;
        let (oh, ow) = (h / 2, w / 2);
        if gl.shape().dims() != [n, c, oh, ow] {
            candle_core::bail!(
                "fedssl max_pool2x2 backward: gradient {:?} for input {:?}",
                gl.shape().dims(),
                xl.shape().dims()
            )
        }
        let k = planes_per_task(h * w);
        // SAFETY: `grad_plane` writes every element of each of a chunk's whole planes.
        let gx = unsafe {
            super::par_build(n * c * h * w, k * h * w, |t, chunk| {
                let x = &x[t * k * h * w..];
                let g = &g[t * k * oh * ow..];
                for (j, gxp) in chunk.chunks_exact_mut(h * w).enumerate() {
                    let plane = &x[j * h * w..(j + 1) * h * w];
                    grad_plane(plane, h, w, &g[j * oh * ow..(j + 1) * oh * ow], gxp);
                }
            })
        };
        Ok((CpuStorage::F32(gx), xl.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn forward_and_gradient_by_hand() {
        // One 3×5 plane: the odd last row and column are dropped; window (0, 1) has a tie
        // (7 at (0, 3) and (1, 2)): the first in row-major order, (0, 3), gets the gradient.
        #[rustfmt::skip]
        let x = [
            1.0, 4.0, 2.0, 7.0, 9.0,
            3.0, 2.0, 7.0, 0.0, 9.0,
            9.0, 9.0, 9.0, 9.0, 9.0f32,
        ];
        let x =
            Var::from_tensor(&Tensor::from_slice(&x, (1, 1, 3, 5), &Device::Cpu).unwrap()).unwrap();
        let y = max_pool2x2(&x).unwrap();
        assert_eq!(y.dims(), [1, 1, 1, 2]);
        assert_eq!(
            y.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            [4.0, 7.0]
        );
        let w = Tensor::from_slice(&[10f32, 100.0], (1, 1, 1, 2), &Device::Cpu).unwrap();
        let grads = (y * w).unwrap().sum_all().unwrap().backward().unwrap();
        let gx = grads.get(&x).unwrap().flatten_all().unwrap();
        #[rustfmt::skip]
        let want = [
            0.0, 10.0, 0.0, 100.0, 0.0,
            0.0, 0.0, 0.0, 0.0, 0.0,
            0.0, 0.0, 0.0, 0.0, 0.0f32,
        ];
        assert_eq!(gx.to_vec1::<f32>().unwrap(), want);
    }

    #[test]
    fn matches_candle_forward_and_a_direct_loop_backward() {
        // Distinct values (a permutation), so the tie rule never applies.
        let (n, c, h, w) = (2, 3, 6, 4);
        let len = n * c * h * w;
        let v: Vec<f32> = (0..len).map(|i| ((i * 37) % len) as f32 - 60.0).collect();
        let x = Var::from_tensor(&Tensor::from_vec(v.clone(), (n, c, h, w), &Device::Cpu).unwrap())
            .unwrap();
        let (oh, ow) = (h / 2, w / 2);
        let gv: Vec<f32> = (0..n * c * oh * ow).map(|i| i as f32 * 0.5 + 1.0).collect();
        let g = Tensor::from_vec(gv.clone(), (n, c, oh, ow), &Device::Cpu).unwrap();
        let ours = max_pool2x2(&x).unwrap();
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(flat(&ours), flat(&x.max_pool2d(2).unwrap()));
        // d Σ(y·g) / dx: g of the window at the window's maximum, 0 elsewhere. (candle 0.11's
        // own max-pool gradient is a quarter of this: it multiplies by the average of the
        // maximum mask where it means to divide by the number of maxima.)
        let mut want = vec![0f32; len];
        for p in 0..n * c {
            for oy in 0..oh {
                for ox in 0..ow {
                    let idx = |dy: usize, dx: usize| p * h * w + (2 * oy + dy) * w + 2 * ox + dx;
                    let best = [idx(0, 0), idx(0, 1), idx(1, 0), idx(1, 1)]
                        .into_iter()
                        .max_by(|a, b| v[*a].total_cmp(&v[*b]))
                        .unwrap();
                    want[best] = gv[(p * oh + oy) * ow + ox];
                }
            }
        }
        let grads = (ours * &g).unwrap().sum_all().unwrap().backward().unwrap();
        assert_eq!(flat(grads.get(&x).unwrap()), want);
    }

    #[test]
    fn nan_is_the_maximum_and_other_inputs_fall_back() {
        let x =
            Tensor::from_slice(&[1.0f32, f32::NAN, 3.0, 2.0], (1, 1, 2, 2), &Device::Cpu).unwrap();
        assert!(max_pool2x2(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()[0]
            .is_nan());
        let x64 = Tensor::from_slice(&[1.0f64, 5.0, 3.0, 2.0], (1, 1, 2, 2), &Device::Cpu).unwrap();
        let y = max_pool2x2(&x64).unwrap();
        assert_eq!(y.flatten_all().unwrap().to_vec1::<f64>().unwrap(), [5.0]);
    }
}
