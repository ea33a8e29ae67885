//! ReLU and the residual `relu(a + b)` as single-pass CPU custom ops.
//!
//! candle 0.11's ReLU backward builds `x >= 0` as a mask, converts it to `f32` and multiplies:
//! three passes and three allocations. Here the forward is one pass and the backward one pass
//! (`grad · [y > 0]`, PyTorch's convention: the gradient at exactly 0 is 0). `add_relu` also
//! saves the separate add of a residual block.
//!
//! CPU `f32` only; anything else falls back to candle's `relu` (and `+`).

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor};

use super::f32_slice;

/// Elements per parallel task.
const CHUNK: usize = 1 << 15;

fn fast(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32
}

/// `max(x, 0)`.
pub fn relu(x: &Tensor) -> Result<Tensor> {
    if fast(x) {
        x.contiguous()?.apply_op1(Relu)
    } else {
        x.relu()
    }
}

/// `max(a + b, 0)` for two tensors of the same shape (a residual connection).
pub fn add_relu(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if fast(a) && fast(b) && a.dims() == b.dims() {
        a.contiguous()?.apply_op2(&b.contiguous()?, AddRelu)
    } else {
        (a + b)?.relu()
    }
}

struct Relu;

impl CustomOp1 for Relu {
    fn name(&self) -> &'static str {
        "fedssl-relu"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, "relu")?;
        // SAFETY: each chunk writes all of its elements.
        let out = unsafe {
            super::par_build(x.len(), CHUNK, |i, o| {
                for (o, x) in o.iter_mut().zip(&x[i * CHUNK..]) {
                    o.write(x.max(0.0));
                }
            })
        };
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }
    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op2_no_bwd(res, &ReluGrad)?))
    }
}

struct AddRelu;

impl CustomOp2 for AddRelu {
    fn name(&self) -> &'static str {
        "fedssl-add-relu"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (a, b) = (f32_slice(s1, l1, "relu")?, f32_slice(s2, l2, "relu")?);
        // SAFETY: each chunk writes all of its elements.
        let out = unsafe {
            super::par_build(a.len(), CHUNK, |i, o| {
                let (a, b) = (&a[i * CHUNK..], &b[i * CHUNK..]);
                for ((o, a), b) in o.iter_mut().zip(a).zip(b) {
                    o.write((a + b).max(0.0));
                }
            })
        };
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = grad.contiguous()?.apply_op2_no_bwd(res, &ReluGrad)?;
        Ok((a.track_op().then(|| g.clone()), b.track_op().then_some(g)))
    }
}

/// `(grad, y) ↦ grad · [y > 0]`.
struct ReluGrad;

impl CustomOp2 for ReluGrad {
    fn name(&self) -> &'static str {
        "fedssl-relu-grad"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (g, y) = (f32_slice(s1, l1, "relu")?, f32_slice(s2, l2, "relu")?);
        // SAFETY: each chunk writes all of its elements.
        let out = unsafe {
            super::par_build(g.len(), CHUNK, |i, o| {
                let (g, y) = (&g[i * CHUNK..], &y[i * CHUNK..]);
                // Branch-free so that it vectorises: keep g's bits where y > 0.
                for ((o, g), y) in o.iter_mut().zip(g).zip(y) {
                    let keep = ((*y > 0.0) as u32).wrapping_neg();
                    o.write(f32::from_bits(g.to_bits() & keep));
                }
            })
        };
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn data(n: usize, seed: f32) -> Vec<f32> {
        // No exact zeros, where candle (x ≥ 0) and PyTorch (x > 0) conventions differ.
        (0..n)
            .map(|i| ((i as f32 * 0.731 + seed).sin() * 3.0) + 0.001)
            .collect()
    }

    #[test]
    fn relu_and_add_relu_match_candle() {
        let dims = [3, 4, 70_000 / 12 + 1];
        let n: usize = dims.iter().product();
        let a = Var::from_vec(data(n, 0.1), &dims[..], &Device::Cpu).unwrap();
        let b = Var::from_vec(data(n, 2.3), &dims[..], &Device::Cpu).unwrap();
        let w = Tensor::from_vec(data(n, 4.0), &dims[..], &Device::Cpu).unwrap();
        let ours = relu(a.as_tensor()).unwrap();
        let theirs = a.as_tensor().relu().unwrap();
        assert_eq!(
            ours.to_vec3::<f32>().unwrap(),
            theirs.to_vec3::<f32>().unwrap()
        );
        let g1 = (ours * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = (theirs * &w)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let (x1, x2) = (
            g1.get(a.as_tensor()).unwrap(),
            g2.get(a.as_tensor()).unwrap(),
        );
        assert_eq!(x1.to_vec3::<f32>().unwrap(), x2.to_vec3::<f32>().unwrap());

        let ours = add_relu(a.as_tensor(), b.as_tensor()).unwrap();
        let theirs = (a.as_tensor() + b.as_tensor()).unwrap().relu().unwrap();
        assert_eq!(
            ours.to_vec3::<f32>().unwrap(),
            theirs.to_vec3::<f32>().unwrap()
        );
        let g1 = (ours * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = (theirs * &w)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for v in [&a, &b] {
            let (x1, x2) = (
                g1.get(v.as_tensor()).unwrap(),
                g2.get(v.as_tensor()).unwrap(),
            );
            assert_eq!(x1.to_vec3::<f32>().unwrap(), x2.to_vec3::<f32>().unwrap());
        }
    }
}
