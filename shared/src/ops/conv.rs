//! 2-D convolution for CPU training: im2col + GEMM forward, GEMM + col2im backward.
//!
//! Stock candle 0.11 computes a conv's input gradient with a scalar `conv_transpose2d` loop,
//! which dominates CNN training time on the CPU. [`conv2d`] is a drop-in replacement for
//! `x.conv2d(w, padding, stride, 1, 1)` (dilation 1, groups 1) that runs as a candle
//! [`CustomOp2`], so autograd still works: its `bwd` returns the gradients of both the input and
//! the kernel.
//!
//! Layout: `x` is `(N, C_in, H, W)`, `w` is `(C_out, C_in, KH, KW)`, the output is
//! `(N, C_out, H_out, W_out)` with `H_out = (H + 2·padding − KH) / stride + 1`.
//!
//! How it works (all matrices row-major, `P = H_out·W_out`, `K = C_in·KH·KW`): the output
//! pixels are cut into tiles of about [`TILE_COLS`] columns — a band of output rows of one image
//! in the early, large stages, or several whole images in the late, small ones — so that a
//! tile's column matrix (`K × T`) stays in the L2 cache between being written and being read.
//! - forward: `col (K, T) = im2col(x)`, `out[:, tile] = w (C_out, K) · col`.
//! - weight gradient: `gw += gout[:, tile] · colᵀ`, one accumulator per thread, summed.
//! - input gradient: `dcol (K, T) = wᵀ · gout[:, tile]`, then `col2im` adds it into `gx`; for a
//!   stride-1 conv with a square kernel instead the forward above applied to `gout` with the
//!   flipped kernel (see `input_grad_geom`).
//! - a 1×1, stride-1, padding-0 conv needs no im2col: the image `(C_in, H·W)` is the column
//!   matrix.
//! - a stride-1 conv whose output is as wide as its input ("same" padding) builds each row of
//!   the column matrix with one contiguous copy of the shifted plane plus zeroed borders.
//! - a 3×3, stride-1, padding-1 conv with `min(C_in, C_out) · W ≥ 1024` (the forward, and so the
//!   input gradient of such a conv) runs Winograd's F(2×2, 3×3) instead (`super::winograd`):
//!   2.25× fewer multiplications, faster there than the GEMM. [`conv2d_with`] and
//!   `FEDSSL_CONV=im2col` turn it off for A/B runs.
//!
//! Threads: the batch is split into one contiguous range per thread of rayon's current pool
//! (the GEMMs then run single-threaded); when the batch is too small to split evenly, groups
//! run one after the other and each GEMM uses the whole pool instead. Run inside
//! `Device::Cpu.with_context(|| …)` to use candle's warm pool.
//!
//! Everything but CPU `f32` falls back to candle's `conv2d` (CUDA keeps cuDNN/candle kernels).
//! Setting the environment variable `FEDSSL_CONV=candle` forces that fallback everywhere (for
//! A/B comparisons).

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Storage, Tensor};

use super::{f32_slice, winograd};
use rayon::prelude::*;
use std::sync::OnceLock;

/// Target number of GEMM columns (output pixels) per tile.
pub const TILE_COLS: usize = 256;

/// 2-D convolution, dilation 1, groups 1: `x (N, C_in, H, W)` ⊛ `w (C_out, C_in, KH, KW)`.
///
/// On the CPU with `f32` tensors this runs the im2col + GEMM custom op (with backward); on any
/// other device or dtype it is exactly candle's `x.conv2d(w, padding, stride, 1, 1)`.
pub fn conv2d(x: &Tensor, w: &Tensor, stride: usize, padding: usize) -> Result<Tensor> {
    conv2d_with(x, w, stride, padding, ConvAlgorithm::Auto)
}

/// How [`conv2d_with`] computes a CPU `f32` convolution (and the forward convolution inside a
/// stride-1 conv's input gradient).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ConvAlgorithm {
    /// Winograd F(2×2, 3×3) where it is faster (a 3×3, stride-1, padding-1 conv with
    /// `min(C_in, C_out) · W ≥ 1024`, see `ops::winograd`), else im2col + GEMM.
    #[default]
    Auto,
    /// im2col + GEMM for every shape (for A/B comparisons; `FEDSSL_CONV=im2col` makes `Auto`
    /// do the same everywhere).
    Im2col,
}

/// [`conv2d`] with the CPU algorithm chosen: `x (N, C_in, H, W)` ⊛ `w (C_out, C_in, KH, KW)`
/// → `(N, C_out, H_out, W_out)`. Any other device or dtype is candle's conv2d, as in
/// [`conv2d`].
pub fn conv2d_with(
    x: &Tensor,
    w: &Tensor,
    stride: usize,
    padding: usize,
    algorithm: ConvAlgorithm,
) -> Result<Tensor> {
    if fast_path_applies(x, w, stride, padding) {
        let x = x.contiguous()?;
        let w = w.contiguous()?;
        x.apply_op2(
            &w,
            Conv2dOp {
                stride,
                padding,
                algorithm,
            },
        )
    } else {
        x.conv2d(w, padding, stride, 1, 1)
    }
}

fn forced_candle() -> bool {
    static FORCED: OnceLock<bool> = OnceLock::new();
    *FORCED.get_or_init(|| {
        std::env::var("FEDSSL_CONV")
            .map(|v| v.eq_ignore_ascii_case("candle"))
            .unwrap_or(false)
    })
}

/// `FEDSSL_CONV=im2col`: our im2col + GEMM for every shape, Winograd's included (for A/B
/// comparisons).
fn forced_im2col() -> bool {
    static FORCED: OnceLock<bool> = OnceLock::new();
    *FORCED.get_or_init(|| {
        std::env::var("FEDSSL_CONV")
            .map(|v| v.eq_ignore_ascii_case("im2col"))
            .unwrap_or(false)
    })
}

/// Whether the CPU kernels take these tensors (CPU, `f32`, a well-formed conv), else callers
/// use candle's ops.
pub(crate) fn fast_path_applies(x: &Tensor, w: &Tensor, stride: usize, padding: usize) -> bool {
    if forced_candle() || !x.device().is_cpu() || !w.device().is_cpu() {
        return false;
    }
    if x.dtype() != DType::F32 || w.dtype() != DType::F32 {
        return false;
    }
    // Anything malformed goes to candle, which reports the error in its own words.
    match (x.dims4(), w.dims4()) {
        (Ok((_, c, h, wd)), Ok((_, ci, kh, kw))) => {
            stride >= 1 && c == ci && h + 2 * padding >= kh && wd + 2 * padding >= kw
        }
        _ => false,
    }
}

/// Shapes of one convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Geom {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    o: usize,
    kh: usize,
    kw: usize,
    stride: usize,
    pad: usize,
    oh: usize,
    ow: usize,
}

impl Geom {
    fn new(x: &[usize], w: &[usize], stride: usize, pad: usize) -> Result<Self> {
        let (&[n, c, h, wd], &[o, ci, kh, kw]) = (x, w) else {
            candle_core::bail!("fedssl conv2d: expected 4-d x and w, got {x:?} and {w:?}")
        };
        if c != ci || stride == 0 || h + 2 * pad < kh || wd + 2 * pad < kw {
            candle_core::bail!(
                "fedssl conv2d: bad shapes x {x:?}, w {w:?}, stride {stride}, padding {pad}"
            )
        }
        Ok(Self {
            n,
            c,
            h,
            w: wd,
            o,
            kh,
            kw,
            stride,
            pad,
            oh: (h + 2 * pad - kh) / stride + 1,
            ow: (wd + 2 * pad - kw) / stride + 1,
        })
    }
    /// Output pixels per image.
    fn p(&self) -> usize {
        self.oh * self.ow
    }
    /// Rows of the column matrix: `C_in·KH·KW`.
    fn k(&self) -> usize {
        self.c * self.kh * self.kw
    }
    fn x_img(&self) -> usize {
        self.c * self.h * self.w
    }
    fn out_img(&self) -> usize {
        self.o * self.p()
    }
    /// 1×1, stride 1, no padding: the image itself is the column matrix.
    fn pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == 1 && self.pad == 0
    }
    /// Images per tile: several when an image has fewer than [`TILE_COLS`] output pixels.
    fn group(&self) -> usize {
        if self.pointwise() {
            1
        } else {
            TILE_COLS.div_ceil(self.p().max(1)).clamp(1, self.n.max(1))
        }
    }
    /// Output rows per tile: a band of rows when an image has at least [`TILE_COLS`] pixels.
    fn rows_per_tile(&self) -> usize {
        if self.pointwise() || self.p() < TILE_COLS {
            self.oh.max(1)
        } else {
            (TILE_COLS / self.ow.max(1)).clamp(1, self.oh.max(1))
        }
    }
    /// The tiles of `imgs` consecutive images: `(first image, images, first row, end row)`.
    fn tiles(&self, imgs: usize) -> impl Iterator<Item = (usize, usize, usize, usize)> + '_ {
        let (group, rows) = (self.group(), self.rows_per_tile());
        (0..imgs).step_by(group).flat_map(move |i0| {
            let gn = group.min(imgs - i0);
            (0..self.oh)
                .step_by(rows)
                .map(move |oy0| (i0, gn, oy0, (oy0 + rows).min(self.oh)))
        })
    }
    /// Columns of the largest tile.
    fn max_tile_cols(&self) -> usize {
        self.group() * self.rows_per_tile() * self.ow
    }
}

/// How the batch is spread over the pool: `(images per task, tasks, gemm parallelism)`.
#[allow(clippy::manual_is_multiple_of)] // `is_multiple_of` needs Rust 1.87
fn plan(g: &Geom) -> (usize, usize, gemm::Parallelism) {
    let threads = rayon::current_num_threads().max(1);
    let group = g.group();
    let n_groups = g.n.div_ceil(group);
    if threads > 1 && n_groups >= threads && (n_groups % threads == 0 || n_groups >= 4 * threads) {
        let per_task = n_groups.div_ceil(threads) * group;
        (per_task, g.n.div_ceil(per_task), gemm::Parallelism::None)
    } else if threads > 1 {
        (g.n.max(1), 1, gemm::Parallelism::Rayon(threads))
    } else {
        (g.n.max(1), 1, gemm::Parallelism::None)
    }
}

/// A row-major-or-strided matrix operand: pointer, row stride, column stride.
#[derive(Clone, Copy)]
struct M {
    ptr: *const f32,
    rs: usize,
    cs: usize,
}

// SAFETY: `M` only ever points into slices that outlive the parallel section that uses it, and
// it is only read through.
unsafe impl Send for M {}
unsafe impl Sync for M {}

/// `dst (m, n) = [dst +] lhs (m, k) · rhs (k, n)`.
///
/// # Safety
/// Every operand must cover its strided extent, and `dst` must not alias the inputs.
#[allow(clippy::too_many_arguments)]
unsafe fn matmul(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: usize,
    dst_cs: usize,
    accumulate: bool,
    lhs: M,
    rhs: M,
    par: gemm::Parallelism,
) {
    gemm::gemm(
        m,
        n,
        k,
        dst,
        dst_cs as isize,
        dst_rs as isize,
        accumulate,
        lhs.ptr,
        lhs.cs as isize,
        lhs.rs as isize,
        rhs.ptr,
        rhs.cs as isize,
        rhs.rs as isize,
        1.0f32,
        1.0f32,
        false,
        false,
        false,
        par,
    )
}

/// Output columns `[lo, hi)` whose input coordinate `o·stride + k − pad` lies in `[0, len)`.
#[inline]
fn valid_range(len: usize, out_len: usize, k: usize, stride: usize, pad: usize) -> (usize, usize) {
    let lo = if k >= pad {
        0
    } else {
        (pad - k).div_ceil(stride)
    };
    let hi = if len + pad <= k {
        0
    } else {
        ((len - 1 + pad - k) / stride + 1).min(out_len)
    };
    (lo.min(out_len), hi.max(lo.min(out_len)))
}

/// For a stride-1 conv whose output is as wide as its input, column-matrix row `(ki, kj)` is
/// the image plane shifted by `off = (ki − pad)·W + (kj − pad)`: `row[d] = plane[d + off]` at
/// every valid position, so it is one contiguous copy plus zeroed border columns. Returns
/// `off` and the range of `d` that stays inside the plane, clipped to rows `[ya, yb)`.
#[inline]
fn shifted_range(g: &Geom, ki: usize, kj: usize, ya: usize, yb: usize) -> (isize, usize, usize) {
    let off = (ki as isize - g.pad as isize) * g.w as isize + (kj as isize - g.pad as isize);
    let hw = (g.h * g.w) as isize;
    let d0 = (ya * g.ow) as isize;
    let d1 = (yb * g.ow) as isize;
    let d0 = d0.max(-off).clamp(0, d1);
    let d1 = d1.min(hw - off).max(d0);
    (off, d0 as usize, d1 as usize)
}

/// Writes output rows `[oy0, oy1)` of image `img (C, H, W)`'s column matrix into columns
/// `[off, off + (oy1 − oy0)·W_out)` of `col (K, ld)`.
#[allow(clippy::too_many_arguments)]
fn im2col(g: &Geom, img: &[f32], col: &mut [f32], ld: usize, off: usize, oy0: usize, oy1: usize) {
    let (s, ow) = (g.stride, g.ow);
    let tp = (oy1 - oy0) * ow;
    let base = oy0 * ow;
    let shifted = s == 1 && ow == g.w;
    for c in 0..g.c {
        let plane = &img[c * g.h * g.w..(c + 1) * g.h * g.w];
        for ki in 0..g.kh {
            let (y_lo, y_hi) = valid_range(g.h, g.oh, ki, s, g.pad);
            let ya = y_lo.clamp(oy0, oy1);
            let yb = y_hi.clamp(ya, oy1);
            for kj in 0..g.kw {
                let row = (c * g.kh + ki) * g.kw + kj;
                let dst = &mut col[row * ld + off..row * ld + off + tp];
                let (x_lo, x_hi) = valid_range(g.w, ow, kj, s, g.pad);
                dst[..(ya - oy0) * ow].fill(0.0);
                dst[(yb - oy0) * ow..].fill(0.0);
                if shifted {
                    let (sh, d0, d1) = shifted_range(g, ki, kj, ya, yb);
                    // an empty range can start before the plane (tiny maps, e.g. 1×1)
                    if d1 > d0 {
                        let src0 = (d0 as isize + sh) as usize;
                        dst[d0 - base..d1 - base].copy_from_slice(&plane[src0..src0 + (d1 - d0)]);
                    }
                    if x_lo > 0 || x_hi < ow {
                        for oy in ya..yb {
                            let d = &mut dst[(oy - oy0) * ow..(oy - oy0 + 1) * ow];
                            d[..x_lo].fill(0.0);
                            d[x_hi..].fill(0.0);
                        }
                    }
                    continue;
                }
                for oy in ya..yb {
                    let iy = oy * s + ki - g.pad;
                    let src = &plane[iy * g.w..(iy + 1) * g.w];
                    let d = &mut dst[(oy - oy0) * ow..(oy - oy0 + 1) * ow];
                    d[..x_lo].fill(0.0);
                    d[x_hi..].fill(0.0);
                    if x_lo < x_hi {
                        let ix0 = x_lo * s + kj - g.pad;
                        if s == 1 {
                            d[x_lo..x_hi].copy_from_slice(&src[ix0..ix0 + (x_hi - x_lo)]);
                        } else {
                            for (j, v) in d[x_lo..x_hi].iter_mut().enumerate() {
                                *v = src[ix0 + j * s];
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Adds columns `[off, off + (oy1 − oy0)·W_out)` of `col (K, ld)` — output rows `[oy0, oy1)`
/// — back into the image gradient `img (C, H, W)`. May zero entries of `col` that fall outside
/// the image (it is scratch).
#[allow(clippy::too_many_arguments)]
fn col2im(
    g: &Geom,
    col: &mut [f32],
    ld: usize,
    off: usize,
    img: &mut [f32],
    oy0: usize,
    oy1: usize,
) {
    let (s, ow) = (g.stride, g.ow);
    let tp = (oy1 - oy0) * ow;
    let base = oy0 * ow;
    let shifted = s == 1 && ow == g.w;
    for c in 0..g.c {
        let plane = &mut img[c * g.h * g.w..(c + 1) * g.h * g.w];
        for ki in 0..g.kh {
            let (y_lo, y_hi) = valid_range(g.h, g.oh, ki, s, g.pad);
            let ya = y_lo.clamp(oy0, oy1);
            let yb = y_hi.clamp(ya, oy1);
            for kj in 0..g.kw {
                let row = (c * g.kh + ki) * g.kw + kj;
                let src = &mut col[row * ld + off..row * ld + off + tp];
                let (x_lo, x_hi) = valid_range(g.w, ow, kj, s, g.pad);
                if x_lo >= x_hi {
                    continue;
                }
                if shifted {
                    if x_lo > 0 || x_hi < ow {
                        for oy in ya..yb {
                            let d = &mut src[(oy - oy0) * ow..(oy - oy0 + 1) * ow];
                            d[..x_lo].fill(0.0);
                            d[x_hi..].fill(0.0);
                        }
                    }
                    let (sh, d0, d1) = shifted_range(g, ki, kj, ya, yb);
                    if d1 > d0 {
                        let t0 = (d0 as isize + sh) as usize;
                        let sv = &src[d0 - base..d1 - base];
                        for (a, b) in plane[t0..t0 + sv.len()].iter_mut().zip(sv) {
                            *a += *b;
                        }
                    }
                    continue;
                }
                if x_lo >= x_hi {
                    continue;
                }
                let ix0 = x_lo * s + kj - g.pad;
                for oy in ya..yb {
                    let iy = oy * s + ki - g.pad;
                    let d = &mut plane[iy * g.w..(iy + 1) * g.w];
                    let r = (oy - oy0) * ow;
                    let sv = &src[r + x_lo..r + x_hi];
                    if s == 1 {
                        for (a, b) in d[ix0..ix0 + sv.len()].iter_mut().zip(sv) {
                            *a += *b;
                        }
                    } else {
                        for (j, b) in sv.iter().enumerate() {
                            d[ix0 + j * s] += *b;
                        }
                    }
                }
            }
        }
    }
}

/// Forward convolution of contiguous `x` and `w`; returns the contiguous output.
fn forward(g: &Geom, x: &[f32], w: &[f32], algorithm: ConvAlgorithm) -> Vec<f32> {
    forward_then(g, x, w, algorithm, None)
}

/// Runs on output elements right after they are computed, while they are in cache:
/// `f(plane, start, values)`, with `plane = image · C_out + channel` over the batch and `start`
/// the offset of `values[0]` within that `H_out · W_out` plane. Every output element is passed
/// exactly once.
pub(crate) type Epilogue<'a> = Option<&'a (dyn Fn(usize, usize, &mut [f32]) + Sync)>;

/// [`forward`], with `epilogue` applied to the output as it is produced.
fn forward_then(
    g: &Geom,
    x: &[f32],
    w: &[f32],
    algorithm: ConvAlgorithm,
    epilogue: Epilogue,
) -> Vec<f32> {
    if algorithm == ConvAlgorithm::Auto
        && !forced_im2col()
        && winograd::applies(g.c, g.o, g.w, g.kh, g.kw, g.stride, g.pad)
    {
        winograd::forward((g.n, g.c, g.h, g.w, g.o), x, w, epilogue)
    } else {
        forward_im2col(g, x, w, epilogue)
    }
}

/// The CPU `f32` forward convolution of contiguous `x (N, C_in, H, W)` and `w (C_out, C_in,
/// KH, KW)` with `epilogue` applied to each output element as it is produced: the `(N, C_out,
/// H_out, W_out)` output. Errors on shapes [`conv2d`] refuses.
pub(crate) fn forward_with_epilogue(
    x_dims: &[usize],
    w_dims: &[usize],
    stride: usize,
    padding: usize,
    x: &[f32],
    w: &[f32],
    epilogue: Epilogue,
) -> Result<(Vec<f32>, Shape)> {
    let g = Geom::new(x_dims, w_dims, stride, padding)?;
    let out = forward_then(&g, x, w, ConvAlgorithm::Auto, epilogue);
    Ok((out, Shape::from((g.n, g.o, g.oh, g.ow))))
}

/// The `(N, C_out, H_out, W_out)` output shape of a convolution of these shapes, or the error
/// [`conv2d`] gives them.
pub(crate) fn output_dims(
    x_dims: &[usize],
    w_dims: &[usize],
    stride: usize,
    padding: usize,
) -> Result<[usize; 4]> {
    let g = Geom::new(x_dims, w_dims, stride, padding)?;
    Ok([g.n, g.o, g.oh, g.ow])
}

/// [`forward`] by im2col + GEMM, for every shape.
fn forward_im2col(g: &Geom, x: &[f32], w: &[f32], epilogue: Epilogue) -> Vec<f32> {
    let (p, k, o) = (g.p(), g.k(), g.o);
    let total = g.n * g.out_img();
    let mut out: Vec<f32> = Vec::with_capacity(total);
    if total == 0 {
        return out;
    }
    let (per_task, _, par) = plan(g);
    let w_mat = M {
        ptr: w.as_ptr(),
        rs: k,
        cs: 1,
    };
    let max_cols = g.max_tile_cols();
    // Every element of `out` is written below (by a GEMM that does not read its destination,
    // or by the copy out of `tmp`), so it is never zero-filled.
    out.spare_capacity_mut()[..total]
        .par_chunks_mut(per_task * g.out_img())
        .enumerate()
        .for_each(|(t, out_chunk)| {
            let n0 = t * per_task;
            let imgs = out_chunk.len() / g.out_img();
            let out_ptr = out_chunk.as_mut_ptr() as *mut f32;
            let mut col = if g.pointwise() {
                Vec::new()
            } else {
                vec![0f32; k * max_cols]
            };
            let mut tmp = if g.group() > 1 {
                vec![0f32; o * max_cols]
            } else {
                Vec::new()
            };
            for (i0, gn, oy0, oy1) in g.tiles(imgs) {
                let x_img = |j: usize| &x[(n0 + i0 + j) * g.x_img()..(n0 + i0 + j + 1) * g.x_img()];
                // SAFETY (all GEMMs below): operands and destinations lie inside `x`, `w`,
                // `col`, `tmp` and this task's chunk of `out`, with the strides given.
                let out_img = unsafe { out_ptr.add(i0 * g.out_img()) };
                if g.pointwise() {
                    // out (O, P) = w (O, C) · x (C, P)
                    let x_mat = M {
                        ptr: x_img(0).as_ptr(),
                        rs: p,
                        cs: 1,
                    };
                    unsafe { matmul(o, p, k, out_img, p, 1, false, w_mat, x_mat, par) };
                    if let Some(f) = epilogue {
                        for oc in 0..o {
                            // SAFETY: channel oc of this image, just written.
                            let v =
                                unsafe { std::slice::from_raw_parts_mut(out_img.add(oc * p), p) };
                            f((n0 + i0) * o + oc, 0, v);
                        }
                    }
                    continue;
                }
                let tp = (oy1 - oy0) * g.ow;
                let ld = gn * tp;
                for j in 0..gn {
                    im2col(g, x_img(j), &mut col, ld, j * tp, oy0, oy1);
                }
                let col_mat = M {
                    ptr: col.as_ptr(),
                    rs: ld,
                    cs: 1,
                };
                if gn == 1 {
                    // out[:, rows] (O, tp), row stride P
                    let dst = unsafe { out_img.add(oy0 * g.ow) };
                    unsafe { matmul(o, tp, k, dst, p, 1, false, w_mat, col_mat, par) };
                    if let Some(f) = epilogue {
                        for oc in 0..o {
                            // SAFETY: rows [oy0, oy1) of channel oc of this image, just written.
                            let v = unsafe { std::slice::from_raw_parts_mut(dst.add(oc * p), tp) };
                            f((n0 + i0) * o + oc, oy0 * g.ow, v);
                        }
                    }
                } else {
                    let dst = tmp.as_mut_ptr();
                    unsafe { matmul(o, ld, k, dst, ld, 1, false, w_mat, col_mat, par) };
                    for j in 0..gn {
                        for oc in 0..o {
                            let src = &tmp[oc * ld + j * p..oc * ld + (j + 1) * p];
                            // SAFETY: image i0 + j of this chunk, channel oc: p elements.
                            unsafe {
                                std::ptr::copy_nonoverlapping(
                                    src.as_ptr(),
                                    out_img.add(j * o * p + oc * p),
                                    p,
                                )
                            };
                            if let Some(f) = epilogue {
                                // SAFETY: the plane just copied.
                                let v = unsafe {
                                    std::slice::from_raw_parts_mut(
                                        out_img.add(j * o * p + oc * p),
                                        p,
                                    )
                                };
                                f((n0 + i0 + j) * o + oc, 0, v);
                            }
                        }
                    }
                }
            }
        });
    // SAFETY: every one of the `total` elements was written above.
    unsafe { out.set_len(total) };
    out
}

/// Gradients of the convolution for the contiguous `x`, `w` and output gradient `gout`.
/// Returns `(gx, gw)`; each is computed only when asked for.
fn backward(
    g: &Geom,
    x: &[f32],
    w: &[f32],
    gout: &[f32],
    need_gx: bool,
    need_gw: bool,
) -> (Option<Vec<f32>>, Option<Vec<f32>>) {
    let (p, k, o) = (g.p(), g.k(), g.o);
    let mut gx = if need_gx {
        vec![0f32; g.n * g.x_img()]
    } else {
        Vec::new()
    };
    if (!need_gx && !need_gw) || g.n == 0 {
        return (need_gx.then_some(gx), need_gw.then(|| vec![0f32; o * k]));
    }
    let (per_task, tasks, par) = plan(g);
    let max_cols = g.max_tile_cols();
    let pw = g.pointwise();
    let gx_chunks: Vec<Option<&mut [f32]>> = if need_gx {
        gx.chunks_mut(per_task * g.x_img()).map(Some).collect()
    } else {
        (0..tasks).map(|_| None).collect()
    };
    let w_t = M {
        ptr: w.as_ptr(),
        rs: 1,
        cs: k,
    };
    let partials: Vec<Vec<f32>> = gx_chunks
        .into_par_iter()
        .enumerate()
        .map(|(t, mut gx_chunk)| {
            let n0 = t * per_task;
            let imgs = per_task.min(g.n - n0);
            // gw accumulator, stored transposed as (K, O) row-major: gemm runs 1.3-3× faster
            // on these shapes with a column-major destination.
            let mut gw = if need_gw {
                vec![0f32; o * k]
            } else {
                Vec::new()
            };
            let mut col = if !pw && need_gw {
                vec![0f32; k * max_cols]
            } else {
                Vec::new()
            };
            let mut dcol = if !pw && need_gx {
                vec![0f32; k * max_cols]
            } else {
                Vec::new()
            };
            let mut go_buf = if g.group() > 1 {
                vec![0f32; o * max_cols]
            } else {
                Vec::new()
            };
            for (i0, gn, oy0, oy1) in g.tiles(imgs) {
                let n = n0 + i0;
                let tp = (oy1 - oy0) * g.ow;
                let ld = gn * tp;
                // go (O, ld): the output gradient of the tile.
                let go_mat = if gn == 1 {
                    M {
                        ptr: gout[n * o * p + oy0 * g.ow..].as_ptr(),
                        rs: p,
                        cs: 1,
                    }
                } else {
                    for j in 0..gn {
                        for oc in 0..o {
                            let src = (n + j) * o * p + oc * p;
                            go_buf[oc * ld + j * p..oc * ld + (j + 1) * p]
                                .copy_from_slice(&gout[src..src + p]);
                        }
                    }
                    M {
                        ptr: go_buf.as_ptr(),
                        rs: ld,
                        cs: 1,
                    }
                };
                // SAFETY (all GEMMs below): operands and destinations lie inside `x`, `w`,
                // `gout`, the scratch buffers and this task's accumulators, with these strides.
                if need_gw {
                    // gw (O, K) += go (O, ld) · colᵀ, col (K, ld)
                    let col_t = if pw {
                        M {
                            ptr: x[n * g.x_img()..].as_ptr(),
                            rs: 1,
                            cs: p,
                        }
                    } else {
                        for j in 0..gn {
                            let img = &x[(n + j) * g.x_img()..(n + j + 1) * g.x_img()];
                            im2col(g, img, &mut col, ld, j * tp, oy0, oy1);
                        }
                        M {
                            ptr: col.as_ptr(),
                            rs: 1,
                            cs: ld,
                        }
                    };
                    let dst = gw.as_mut_ptr();
                    unsafe { matmul(o, k, ld, dst, 1, o, true, go_mat, col_t, par) };
                }
                if let Some(gx_chunk) = gx_chunk.as_deref_mut() {
                    // dcol (K, ld) = wᵀ (K, O) · go (O, ld)
                    let gx_grp = &mut gx_chunk[i0 * g.x_img()..(i0 + gn) * g.x_img()];
                    if pw {
                        let dst = gx_grp.as_mut_ptr();
                        unsafe { matmul(k, p, o, dst, p, 1, false, w_t, go_mat, par) };
                    } else {
                        let dst = dcol.as_mut_ptr();
                        unsafe { matmul(k, ld, o, dst, ld, 1, false, w_t, go_mat, par) };
                        for j in 0..gn {
                            let img = &mut gx_grp[j * g.x_img()..(j + 1) * g.x_img()];
                            col2im(g, &mut dcol, ld, j * tp, img, oy0, oy1);
                        }
                    }
                }
            }
            gw
        })
        .collect();
    let gw = need_gw.then(|| {
        let mut it = partials.into_iter();
        let mut acc = it.next().unwrap_or_else(|| vec![0f32; o * k]);
        for part in it {
            for (a, b) in acc.iter_mut().zip(&part) {
                *a += *b;
            }
        }
        // (K, O) → (O, K)
        let mut gw = vec![0f32; o * k];
        for (i, row) in acc.chunks_exact(o).enumerate() {
            for (oc, v) in row.iter().enumerate() {
                gw[oc * k + i] = *v;
            }
        }
        gw
    });
    (need_gx.then_some(gx), gw)
}

/// For a stride-1 convolution with a square kernel and `padding ≤ KH − 1` (not 1×1 pointwise,
/// whose input gradient is already one GEMM), the geometry of its input gradient computed as a
/// forward convolution: `gx = gout ⊛ flip(w)ᵀ` with padding `KH − 1 − padding`, where
/// `flip(w)ᵀ[c, o, i, j] = w[o, c, KH − 1 − i, KW − 1 − j]` (the transposed convolution of a
/// stride-1 conv is a conv). Its GEMM has the forward's shape (`K = C_out·KH·KW` deep) instead
/// of the `C_out`-deep GEMM plus scatter-adding `col2im` of the general path: about 5 % of a
/// small ResNet's training step. Not for fewer than 8 input channels, where that GEMM would be
/// a few rows tall (an RGB stem's input needs no gradient anyway).
fn input_grad_geom(g: &Geom) -> Option<Geom> {
    if g.stride != 1 || g.kh != g.kw || g.pad + 1 > g.kh || g.pointwise() || g.c < 8 {
        return None;
    }
    Geom::new(
        &[g.n, g.o, g.oh, g.ow],
        &[g.c, g.o, g.kh, g.kw],
        1,
        g.kh - 1 - g.pad,
    )
    .ok()
    .filter(|gt| gt.oh == g.h && gt.ow == g.w)
}

/// `flip(w)ᵀ (C_in, C_out, KH, KW)` of `w (C_out, C_in, KH, KW)`: channels swapped, kernel
/// rotated by 180°.
fn flip_kernel(g: &Geom, w: &[f32]) -> Vec<f32> {
    let (kh, kw) = (g.kh, g.kw);
    let mut out = vec![0f32; w.len()];
    for o in 0..g.o {
        for c in 0..g.c {
            for i in 0..kh {
                for j in 0..kw {
                    out[((c * g.o + o) * kh + kh - 1 - i) * kw + kw - 1 - j] =
                        w[((o * g.c + c) * kh + i) * kw + j];
                }
            }
        }
    }
    out
}

struct Conv2dOp {
    stride: usize,
    padding: usize,
    algorithm: ConvAlgorithm,
}

impl CustomOp2 for Conv2dOp {
    fn name(&self) -> &'static str {
        "fedssl-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = Geom::new(l1.dims(), l2.dims(), self.stride, self.padding)?;
        let out = forward(
            &g,
            f32_slice(s1, l1, "conv2d")?,
            f32_slice(s2, l2, "conv2d")?,
            self.algorithm,
        );
        Ok((CpuStorage::F32(out), Shape::from((g.n, g.o, g.oh, g.ow))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = Geom::new(x.dims(), w.dims(), self.stride, self.padding)?;
        let (need_gx, need_gw) = (x.track_op(), w.track_op());
        let grad = grad.contiguous()?;
        let (gx, gw) = {
            let (xs, xl) = x.storage_and_layout();
            let (ws, wl) = w.storage_and_layout();
            let (gs, gl) = grad.storage_and_layout();
            let (Storage::Cpu(xs), Storage::Cpu(ws), Storage::Cpu(gs)) = (&*xs, &*ws, &*gs) else {
                candle_core::bail!("fedssl conv2d: backward expects CPU tensors")
            };
            let (xv, wv, gv) = (
                f32_slice(xs, xl, "conv2d")?,
                f32_slice(ws, wl, "conv2d")?,
                f32_slice(gs, gl, "conv2d")?,
            );
            match input_grad_geom(&g).filter(|_| need_gx) {
                Some(gt) => {
                    let gx = forward(&gt, gv, &flip_kernel(&g, wv), self.algorithm);
                    (Some(gx), backward(&g, xv, wv, gv, false, need_gw).1)
                }
                None => backward(&g, xv, wv, gv, need_gx, need_gw),
            }
        };
        let gx = gx
            .map(|v| Tensor::from_vec(v, x.dims(), x.device()))
            .transpose()?;
        let gw = gw
            .map(|v| Tensor::from_vec(v, w.dims(), w.device()))
            .transpose()?;
        Ok((gx, gw))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    //! Values and gradients are compared with candle's own conv2d. Tolerance: every element
    //! within `1e-4 · max(1, max|reference|)` (f32 sums of up to a few hundred products, in a
    //! different order).
    use super::*;
    use candle_core::{Device, Var};

    /// Candle's own convolution, the reference of these tests.
    fn conv2d_candle(x: &Tensor, w: &Tensor, stride: usize, padding: usize) -> Result<Tensor> {
        x.conv2d(w, padding, stride, 1, 1)
    }

    pub(crate) fn rand(shape: &[usize], seed: u64) -> Tensor {
        // Deterministic values in [-1, 1) without depending on candle's RNG.
        let n: usize = shape.iter().product();
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let v: Vec<f32> = (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn assert_close(a: &Tensor, b: &Tensor, what: &str) {
        assert_eq!(a.dims(), b.dims(), "{what}: shapes");
        let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let scale = b.iter().fold(1f32, |m, v| m.max(v.abs()));
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            assert!(
                (x - y).abs() <= 1e-4 * scale,
                "{what}: element {i}: ours {x} vs candle {y} (scale {scale})"
            );
        }
    }

    /// Direct-loop reference in f64: the output and, for output gradient `gout`, the input
    /// and kernel gradients.
    #[allow(clippy::type_complexity)]
    fn reference(
        x: &Tensor,
        w: &Tensor,
        gout: &Tensor,
        s: usize,
        p: usize,
    ) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let (n, c, h, wd) = x.dims4().unwrap();
        let (o, _, kh, kw) = w.dims4().unwrap();
        let (oh, ow) = ((h + 2 * p - kh) / s + 1, (wd + 2 * p - kw) / s + 1);
        let xv = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let wv = w.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let gv = gout.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let (mut out, mut gx, mut gw) = (
            vec![0f64; n * o * oh * ow],
            vec![0f64; xv.len()],
            vec![0f64; wv.len()],
        );
        for b in 0..n {
            for oc in 0..o {
                for y in 0..oh {
                    for xx in 0..ow {
                        let oi = ((b * o + oc) * oh + y) * ow + xx;
                        for ci in 0..c {
                            for i in 0..kh {
                                for j in 0..kw {
                                    let (iy, ix) = (
                                        (y * s + i) as isize - p as isize,
                                        (xx * s + j) as isize - p as isize,
                                    );
                                    if iy < 0 || ix < 0 || iy >= h as isize || ix >= wd as isize {
                                        continue;
                                    }
                                    let xi = ((b * c + ci) * h + iy as usize) * wd + ix as usize;
                                    let wi = ((oc * c + ci) * kh + i) * kw + j;
                                    out[oi] += xv[xi] as f64 * wv[wi] as f64;
                                    gx[xi] += gv[oi] as f64 * wv[wi] as f64;
                                    gw[wi] += gv[oi] as f64 * xv[xi] as f64;
                                }
                            }
                        }
                    }
                }
            }
        }
        (out, gx, gw)
    }

    fn assert_close_ref(a: &Tensor, b: &[f64], what: &str) {
        let b = Tensor::from_vec(
            b.iter().map(|v| *v as f32).collect::<Vec<_>>(),
            a.dims(),
            &Device::Cpu,
        )
        .unwrap();
        assert_close(a, &b, what);
    }

    /// Forward values and both gradients against a direct-loop reference and against candle,
    /// through a loss that weights every output element differently.
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
        let what = format!("n{n} c{c} {h}x{w} o{o} k{k} s{stride} p{pad}");
        let x = Var::from_tensor(&rand(&[n, c, h, w], 1)).unwrap();
        let wt = Var::from_tensor(&rand(&[o, c, k, k], 2)).unwrap();
        let ours = conv2d(x.as_tensor(), wt.as_tensor(), stride, pad).unwrap();
        let theirs = conv2d_candle(x.as_tensor(), wt.as_tensor(), stride, pad).unwrap();
        assert_close(&ours, &theirs, &format!("{what} forward vs candle"));
        let weights = rand(theirs.dims(), 3);
        let g1 = (&ours * &weights)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let (gx, gw) = (
            g1.get(x.as_tensor()).unwrap(),
            g1.get(wt.as_tensor()).unwrap(),
        );
        let (r_out, r_gx, r_gw) = reference(x.as_tensor(), wt.as_tensor(), &weights, stride, pad);
        assert_close_ref(&ours, &r_out, &format!("{what} forward vs reference"));
        assert_close_ref(gx, &r_gx, &format!("{what} grad x vs reference"));
        assert_close_ref(gw, &r_gw, &format!("{what} grad w vs reference"));
        // Candle 0.11's own conv2d backward derives the transposed conv's output padding from
        // the height only, so it fails when H and W leave different remainders under the
        // stride (e.g. 7×10, stride 2); compare with it wherever it works.
        if let Ok(g2) = (theirs * &weights).unwrap().sum_all().unwrap().backward() {
            for (v, name) in [(&x, "grad x"), (&wt, "grad w")] {
                let a = g1.get(v.as_tensor()).expect("our grad");
                let b = g2.get(v.as_tensor()).expect("candle grad");
                assert_close(a, b, &format!("{what} {name} vs candle"));
            }
        } else {
            assert_ne!(
                (h + 2 * pad - k) % stride,
                (w + 2 * pad - k) % stride,
                "{what}"
            );
        }
    }

    #[test]
    fn matches_candle_3x3() {
        for &(n, stride, pad) in &[
            (1, 1, 1),
            (3, 1, 1),
            (3, 2, 1),
            (1, 2, 0),
            (3, 1, 0),
            (1, 3, 1),
        ] {
            check(n, 3, 7, 10, 5, 3, stride, pad);
        }
    }

    #[test]
    fn matches_candle_1x1() {
        for &(n, stride, pad) in &[(1, 1, 0), (3, 1, 0), (3, 2, 0), (1, 1, 1), (3, 2, 1)] {
            check(n, 3, 7, 10, 5, 1, stride, pad);
        }
    }

    #[test]
    fn matches_candle_resnet_like_shapes() {
        // Large enough to take the batch-parallel path and to group images per GEMM.
        check(8, 16, 8, 8, 32, 3, 1, 1);
        check(8, 16, 8, 8, 32, 3, 2, 1);
        check(8, 16, 8, 8, 32, 1, 2, 0);
        check(4, 8, 16, 16, 8, 1, 1, 0);
        check(2, 4, 5, 5, 3, 5, 1, 2); // 5×5 kernel
        check(1, 2, 2, 3, 2, 3, 1, 1); // kernel larger than the image's height
    }

    #[test]
    fn winograd_shapes_match_candle_and_reference() {
        // min(C_in, C_out) · W ≥ 1024: the forward and the input gradient (a forward conv with
        // the flipped kernel) run Winograd F(2×2, 3×3); the kernel gradient stays im2col.
        assert!(winograd::applies(32, 32, 32, 3, 3, 1, 1));
        check(2, 32, 5, 32, 32, 3, 1, 1);
        check(1, 64, 3, 17, 64, 3, 1, 1); // odd height and width
    }

    #[test]
    fn matches_reference_on_maps_smaller_than_the_kernel() {
        // the last stages of VGG and of patch-based tasks: 1×1, 2×2 and 1×3 maps, 3×3 kernels
        check(2, 3, 1, 1, 4, 3, 1, 1);
        check(2, 3, 2, 2, 4, 3, 1, 1);
        check(1, 2, 1, 3, 3, 3, 1, 1);
        check(2, 3, 1, 1, 4, 3, 2, 1);
        check(1, 2, 2, 2, 3, 5, 1, 2);
    }

    #[test]
    fn matches_reference_with_images_split_into_row_tiles() {
        // Images of at least TILE_COLS output pixels are cut into bands of rows, the last band
        // shorter than the others.
        check(2, 3, 20, 30, 4, 3, 1, 1);
        check(2, 3, 40, 37, 4, 3, 2, 1);
        check(2, 3, 20, 30, 4, 1, 1, 0);
        check(1, 2, 17, 40, 3, 5, 1, 2);
        check(2, 2, 23, 29, 3, 3, 1, 0); // valid padding: output narrower than the input
    }

    #[test]
    fn input_gradient_as_a_forward_conv_matches_reference() {
        // Stride 1 with at least 8 input channels: the input gradient runs as a forward conv of
        // the output gradient with the flipped kernel. Padding 0, 1 and 2, 3×3 and 5×5 kernels,
        // batch 1, non-square maps, maps smaller than the kernel, images cut into row tiles.
        for &(n, c, h, w, o, k, pad) in &[
            (1, 8, 7, 10, 5, 3, 1),
            (3, 8, 7, 10, 5, 3, 0),
            (2, 9, 9, 6, 4, 5, 2),
            (2, 8, 6, 9, 3, 5, 1),
            (2, 8, 1, 1, 4, 3, 1),
            (1, 8, 2, 3, 4, 3, 1),
            (2, 8, 20, 30, 4, 3, 1),
        ] {
            let g = Geom::new(&[n, c, h, w], &[o, c, k, k], 1, pad).unwrap();
            assert!(input_grad_geom(&g).is_some(), "{g:?} should take the path");
            check(n, c, h, w, o, k, 1, pad);
        }
        // not for strides above 1, 1×1 pointwise convs or few input channels
        for (x, w, s, p) in [
            ([2, 8, 8, 8], [4, 8, 3, 3], 2, 1),
            ([2, 8, 8, 8], [4, 8, 1, 1], 1, 0),
            ([2, 3, 8, 8], [4, 3, 3, 3], 1, 1),
        ] {
            assert!(input_grad_geom(&Geom::new(&x, &w, s, p).unwrap()).is_none());
        }
    }

    #[test]
    fn flip_kernel_swaps_channels_and_rotates() {
        // w (O=2, C=1, 2, 2) = [[1, 2], [3, 4]], [[5, 6], [7, 8]] → (C=1, O=2, 2, 2) rotated 180°
        let g = Geom::new(&[1, 1, 3, 3], &[2, 1, 2, 2], 1, 1).unwrap();
        let w: Vec<f32> = (1..=8).map(|v| v as f32).collect();
        assert_eq!(flip_kernel(&g, &w), [4., 3., 2., 1., 8., 7., 6., 5.]);
        // w (O=1, C=2, 1, 2): channel c's row [a, b] → out (C=2, O=1) reversed
        let g = Geom::new(&[1, 2, 3, 3], &[1, 2, 1, 2], 1, 0).unwrap();
        assert_eq!(flip_kernel(&g, &[1., 2., 3., 4.]), [2., 1., 4., 3.]);
    }

    #[test]
    fn input_without_grad_gets_none() {
        let x = rand(&[2, 3, 6, 6], 4);
        let w = Var::from_tensor(&rand(&[5, 3, 3, 3], 5)).unwrap();
        let y = conv2d(&x, w.as_tensor(), 1, 1).unwrap();
        let grads = y.sum_all().unwrap().backward().unwrap();
        assert!(grads.get(&x).is_none());
        let yc = conv2d_candle(&x, w.as_tensor(), 1, 1).unwrap();
        let gc = yc.sum_all().unwrap().backward().unwrap();
        assert_close(
            grads.get(w.as_tensor()).unwrap(),
            gc.get(w.as_tensor()).unwrap(),
            "gw",
        );
    }

    #[test]
    fn finite_difference_gradient() {
        // f32 op: central differences with eps 1e-2, tolerance 1e-2 (absolute, values O(1)).
        let (n, c, h, w, o, k, s, p) = (2, 2, 5, 4, 3, 3, 2, 1);
        let x = Var::from_tensor(&rand(&[n, c, h, w], 6)).unwrap();
        let wt = Var::from_tensor(&rand(&[o, c, k, k], 7)).unwrap();
        let out_dims = conv2d(x.as_tensor(), wt.as_tensor(), s, p)
            .unwrap()
            .dims()
            .to_vec();
        let weights = rand(&out_dims, 8);
        let loss = |xt: &Tensor, wt: &Tensor| -> f32 {
            let y = conv2d(xt, wt, s, p).unwrap();
            (y * &weights)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        let y = conv2d(x.as_tensor(), wt.as_tensor(), s, p).unwrap();
        let grads = (y * &weights)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let eps = 1e-2f32;
        for (var, other, is_x) in [(&x, &wt, true), (&wt, &x, false)] {
            let base = var
                .as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let analytic = grads.get(var.as_tensor()).unwrap().flatten_all().unwrap();
            let analytic = analytic.to_vec1::<f32>().unwrap();
            for i in 0..base.len() {
                let mut plus = base.clone();
                plus[i] += eps;
                let mut minus = base.clone();
                minus[i] -= eps;
                let tp = Tensor::from_vec(plus, var.dims(), &Device::Cpu).unwrap();
                let tm = Tensor::from_vec(minus, var.dims(), &Device::Cpu).unwrap();
                let (lp, lm) = if is_x {
                    (loss(&tp, other.as_tensor()), loss(&tm, other.as_tensor()))
                } else {
                    (loss(other.as_tensor(), &tp), loss(other.as_tensor(), &tm))
                };
                let numeric = (lp - lm) / (2.0 * eps);
                assert!(
                    (numeric - analytic[i]).abs() < 1e-2,
                    "{} element {i}: numeric {numeric} vs analytic {}",
                    if is_x { "x" } else { "w" },
                    analytic[i]
                );
            }
        }
    }

    #[test]
    fn non_contiguous_inputs_and_fallback_dtype() {
        // A transposed input goes through `contiguous()` first.
        let x = rand(&[1, 3, 10, 7], 9).transpose(2, 3).unwrap();
        let w = rand(&[5, 3, 3, 3], 10);
        assert_close(
            &conv2d(&x, &w, 1, 1).unwrap(),
            &conv2d_candle(&x, &w, 1, 1).unwrap(),
            "transposed x",
        );
        // f64 falls back to candle.
        let (x64, w64) = (
            x.to_dtype(DType::F64).unwrap(),
            w.to_dtype(DType::F64).unwrap(),
        );
        let y = conv2d(&x64, &w64, 2, 0).unwrap();
        assert_eq!(y.dtype(), DType::F64);
        assert_eq!(y.dims(), &[1, 5, 3, 4]);
    }

    #[test]
    fn runs_inside_a_single_thread_pool() {
        // The single-thread plan (no rayon parallelism) gives the same numbers.
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        pool.install(|| check(3, 3, 7, 10, 5, 3, 2, 1));
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        pool.install(|| check(3, 3, 7, 10, 5, 3, 1, 1));
    }
}
