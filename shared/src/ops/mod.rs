//! Fast CPU kernels for the hot operations of CNN training, written as candle custom ops so
//! candle's autograd keeps working (issue 3: stock candle 0.11 CPU CNN training runs ~10×
//! slower than PyTorch, see huggingface/candle#2144 and #1383).
//!
//! | op | replaces | forward | backward |
//! |---|---|---|---|
//! | [`conv2d`]`(x, w, stride, padding)` | `x.conv2d(w, padding, stride, 1, 1)` | im2col + GEMM; Winograd F(2×2, 3×3) for a 3×3 stride-1 conv on many channels and wide maps | stride 1: a forward conv with the flipped kernel; else GEMM + col2im; GEMM for the kernel |
//! | [`batch_norm()`]`(&bn, x, train)` | `bn.forward_t(x, train)` (a `candle_nn::BatchNorm`) | 2 passes | 2 passes |
//! | [`batch_norm_relu`]`(&bn, x, train)` | `bn.forward_t(x, train)?.relu()` | 2 passes | 2 passes |
//! | [`batch_norm_add_relu`]`(&bn, x, r, train)` | `(bn.forward_t(x, train)? + r)?.relu()` | 2 passes | 2 passes |
//! | [`conv2d_bn_inference`]`(x, w, s, p, &bn, r, relu)` | `relu(bn.forward_t(conv(x, w), false) + r)` | the conv, BatchNorm folded in, shift/residual/ReLU as each output tile is made | none (inference only) |
//! | [`relu`]`(x)` | `x.relu()` | 1 pass | 1 pass |
//! | [`add_relu`]`(a, b)` | `(a + b)?.relu()` | 1 pass | 1 pass |
//! | [`max_pool2x2`]`(x)` | `x.max_pool2d(2)` | 1 pass | 1 pass |
//!
//! Every op takes and returns ordinary candle tensors. On the CPU with `f32` inputs it runs our
//! kernels; on any other device or dtype it is exactly the candle call it replaces, so CUDA
//! keeps candle's kernels and the `cuda` feature builds unchanged. `batch_norm` updates the
//! module's running statistics the way candle-nn does, so names and saved weights are the same.
//!
//! Measured with `cargo run --release -p fedssl-shared --example bench_conv` (small CIFAR
//! ResNet, batch 128, 2 threads): see that example's header and `bench/pytorch_bench.py`.
//!
//! Threading: the kernels use rayon's *current* pool. Run training inside
//! `Device::Cpu.with_context(|| …)` (candle's warm pool, sized by `RAYON_NUM_THREADS` /
//! candle's `utils::get_num_threads`) or inside your own `ThreadPool::install` to bound it.

/// Keeps freed heap memory in the process for reuse instead of returning it to the kernel, so
/// that the many large, short-lived tensors of a training step (activations and their
/// gradients, up to tens of MiB each) are not fresh pages that fault on first touch.
///
/// With glibc's defaults the heap top is trimmed back to the kernel whenever more than a few
/// hundred KiB of it is free, so every step maps, faults in (4 KiB at a time, zeroed by the
/// kernel) and unmaps the same memory again. This sets (`mallopt(3)`) `M_TOP_PAD` to 256 MiB,
/// so the heap grows and shrinks in 256 MiB steps and keeps that much slack, and
/// `M_MMAP_THRESHOLD` to 32 MiB (glibc's largest), so buffers up to 32 MiB come from the heap.
/// On a small ResNet's CPU training step this is about 6 % faster
/// (`examples/bench_conv --malloc-defaults` runs without it); peak memory is unchanged.
///
/// Call it once at the start of a program, before the first large allocation. It does nothing
/// off Linux with glibc; it returns whether both settings were accepted.
pub fn tune_allocator() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: `mallopt` only changes allocator parameters; it is safe to call at any time.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20) == 1
                && libc::mallopt(libc::M_TOP_PAD, 256 << 20) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// Returns the heap's free memory to the kernel (glibc's `malloc_trim(0)`), undoing for the
/// moment what [`tune_allocator`] keeps. Benchmarks call it before measuring a peak resident
/// set, so that memory freed by an earlier measurement does not count. Does nothing off Linux
/// with glibc.
pub fn trim_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `malloc_trim` only releases free memory; it is safe to call at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

pub mod act;
pub mod batch_norm;
pub mod conv;
pub mod conv_bn;
pub mod pool;
mod winograd;

pub use act::{add_relu, relu};
pub use batch_norm::{batch_norm, batch_norm_add_relu, batch_norm_relu};
pub use conv::{conv2d, conv2d_with, ConvAlgorithm};
pub use conv_bn::conv2d_bn_inference;
pub use pool::max_pool2x2;

use rayon::prelude::*;
use std::mem::MaybeUninit;

/// The contiguous `f32` data behind a CPU storage and layout; `op` names the op in the error
/// (another dtype, or a strided layout: the ops' wrappers make their inputs contiguous).
pub(crate) fn f32_slice<'a>(
    s: &'a candle_core::CpuStorage,
    l: &candle_core::Layout,
    op: &str,
) -> candle_core::Result<&'a [f32]> {
    let candle_core::CpuStorage::F32(v) = s else {
        candle_core::bail!("fedssl {op}: expected f32, got another dtype")
    };
    if !l.is_contiguous() {
        candle_core::bail!("fedssl {op}: expected a contiguous tensor")
    }
    let start = l.start_offset();
    Ok(&v[start..start + l.shape().elem_count()])
}

/// A `Vec<f32>` of length `n` built without zero-filling: `fill(i, chunk)` runs in parallel
/// on the disjoint chunks of `chunk_len` elements (`i` is the chunk's index) and must write
/// every element of its chunk.
///
/// # Safety
/// `fill` must initialise every element it is given; the vector is then read as initialised.
pub(crate) unsafe fn par_build(
    n: usize,
    chunk_len: usize,
    fill: impl Fn(usize, &mut [MaybeUninit<f32>]) + Sync + Send,
) -> Vec<f32> {
    let mut v: Vec<f32> = Vec::with_capacity(n);
    if n > 0 {
        v.spare_capacity_mut()[..n]
            .par_chunks_mut(chunk_len.max(1))
            .enumerate()
            .for_each(|(i, c)| fill(i, c));
    }
    // SAFETY: the caller guarantees that `fill` wrote all `n` elements.
    unsafe { v.set_len(n) };
    v
}

#[cfg(test)]
mod tests {
    //! The ops composed into a residual block give the same loss and gradients as candle's.
    use super::*;
    use candle_core::{DType, Device, ModuleT, Tensor};
    use candle_nn::{VarBuilder, VarMap};

    fn block(fast: bool) -> (f32, Vec<(String, Vec<f32>)>) {
        let dev = Device::Cpu;
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &dev);
        let init = |i: usize, n: usize| -> Vec<f32> {
            (0..n)
                .map(|j| ((i * 131 + j * 17) % 23) as f32 / 23.0 - 0.45)
                .collect()
        };
        let w1 = vb
            .get_with_hints((4, 3, 3, 3), "w1", candle_nn::Init::Const(0.))
            .unwrap();
        let w2 = vb
            .get_with_hints((4, 4, 3, 3), "w2", candle_nn::Init::Const(0.))
            .unwrap();
        let ws = vb
            .get_with_hints((4, 3, 1, 1), "ws", candle_nn::Init::Const(0.))
            .unwrap();
        let bn1 = candle_nn::batch_norm(4, 1e-5, vb.pp("bn1")).unwrap();
        let bn2 = candle_nn::batch_norm(4, 1e-5, vb.pp("bn2")).unwrap();
        for (name, var) in vm.data().lock().unwrap().iter() {
            if name.starts_with('w') {
                let i = name.bytes().map(|b| b as usize).sum();
                let t = Tensor::from_vec(init(i, var.elem_count()), var.dims(), &dev).unwrap();
                var.set(&t).unwrap();
            }
        }
        let x = Tensor::from_vec(init(99, 2 * 3 * 9 * 7), (2, 3, 9, 7), &dev).unwrap();
        let y = if fast {
            let a = relu(&batch_norm(&bn1, &conv2d(&x, &w1, 2, 1).unwrap(), true).unwrap());
            let b = batch_norm(&bn2, &conv2d(&a.unwrap(), &w2, 1, 1).unwrap(), true).unwrap();
            add_relu(&b, &conv2d(&x, &ws, 2, 0).unwrap()).unwrap()
        } else {
            let a = bn1
                .forward_t(&x.conv2d(&w1, 1, 2, 1, 1).unwrap(), true)
                .unwrap();
            let a = a.relu().unwrap();
            let b = bn2
                .forward_t(&a.conv2d(&w2, 1, 1, 1, 1).unwrap(), true)
                .unwrap();
            (b + x.conv2d(&ws, 0, 2, 1, 1).unwrap())
                .unwrap()
                .relu()
                .unwrap()
        };
        let loss = (y.sqr().unwrap().mean_all().unwrap() + y.mean_all().unwrap()).unwrap();
        let grads = loss.backward().unwrap();
        let data = vm.data().lock().unwrap();
        let mut names: Vec<_> = data.keys().cloned().collect();
        names.sort();
        let g = names
            .into_iter()
            .map(|n| {
                let t = grads
                    .get(data[&n].as_tensor())
                    .map(|t| t.flatten_all().unwrap().to_vec1::<f32>().unwrap())
                    .unwrap_or_default();
                (n, t)
            })
            .collect();
        (loss.to_scalar::<f32>().unwrap(), g)
    }

    #[test]
    fn residual_block_matches_candle() {
        // 9×7 input, stride 2: H and W leave the same remainder, where candle's own conv
        // backward is right.
        let (l1, g1) = block(true);
        let (l2, g2) = block(false);
        assert!((l1 - l2).abs() < 1e-5, "loss {l1} vs {l2}");
        for ((n1, a), (_, b)) in g1.iter().zip(&g2) {
            assert_eq!(a.len(), b.len(), "{n1}");
            for (x, y) in a.iter().zip(b) {
                assert!((x - y).abs() < 1e-4, "{n1}: {x} vs {y}");
            }
        }
    }
}
