//! 3×3, stride-1, padding-1 convolution by Winograd's minimal filtering F(2×2, 3×3) (Lavin &
//! Gray, "Fast Algorithms for Convolutional Neural Networks", CVPR 2016, §4, eq. 7–9).
//!
//! Every 2×2 output tile of channel `o` is `Y = Aᵀ [ Σ_c (G g_oc Gᵀ) ⊙ (Bᵀ d_c B) ] A`, with
//! `d_c` the 4×4 input patch of channel `c` under the tile and `g_oc` the 3×3 kernel:
//!
//! ```text
//!      ⎡1  0 −1  0⎤        ⎡ 1    0    0 ⎤
//! Bᵀ = ⎢0  1  1  0⎥    G = ⎢1/2  1/2  1/2⎥    Aᵀ = ⎡1 1  1  0⎤
//!      ⎢0 −1  1  0⎥        ⎢1/2 −1/2  1/2⎥         ⎣0 1 −1 −1⎦
//!      ⎣0  1  0 −1⎦        ⎣ 0    0    1 ⎦
//! ```
//!
//! The sum over `c` is, for each of the 16 positions `ξ` of the 4×4 transformed tile, one
//! matrix product `M_ξ (C_out, T) = U_ξ (C_out, C_in) · V_ξ (C_in, T)` over `T` tiles: 16
//! multiplications per tile and channel pair instead of the 36 of the direct 2×2 outputs, so
//! 2.25× fewer floating-point operations than im2col + GEMM. The transforms add and subtract
//! only (and halve, for `G`), so the result differs from the direct sum by rounding alone.
//!
//! Layout: `x (N, C_in, H, W)`, `w (C_out, C_in, 3, 3)`, output `(N, C_out, H, W)`, all
//! contiguous row-major `f32`. The batch's tile rows (2 output rows each) are cut into blocks
//! of about [`block_tiles`] tiles whose transformed input and products stay in the L2 cache;
//! blocks run in parallel on rayon's current pool, and each block's arithmetic does not depend
//! on how they are spread, so the result is the same for every number of threads.
//!
//! The products run an AVX2 + FMA micro-kernel of 4 output channels × 16 tiles (8
//! accumulators) where the CPU has them (checked at run time), else the same loop in portable
//! Rust.

use super::conv::Epilogue;
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Output channels per micro-kernel call.
const MR: usize = 4;
/// Tiles per micro-kernel call (two 8-lane vectors). Three would make 12 accumulators, which
/// with the loaded vectors and the broadcast need all 16 AVX2 registers, and LLVM then spills
/// one accumulator to the stack in the inner loop (measured 2× slower).
const NR: usize = 16;

/// Elements (one 64-byte cache line) between consecutive positions' planes of the scratch.
const SKEW: usize = 16;

/// Whether a convolution of this shape runs here: a 3×3 kernel, stride 1, padding 1, and
/// `min(C_in, C_out) · W ≥ 1024`.
///
/// The transforms cost in proportion to `C_in + C_out` per tile and the products to
/// `C_in · C_out`, and the transforms are vectorised along a row of tiles, so Winograd wins on
/// many channels and wide maps. Measured at commit `692c6ba` (forward only, 128 images,
/// `C_in = C_out`, 2 threads, best of 5, against `conv`'s im2col + GEMM; a timing harness since
/// replaced by `BENCH_CONV_LAYERS=1 bench_conv --breakdown`): 32 ch 32×32 27.9 ms against 35.6,
/// 64 ch 16×16 24.2 against 30.3, 128 ch 8×8 19.4 against 24.9, where the rule holds; 64 ch 8×8
/// 8.2 against 8.3, 32 ch 16×16 9.2 against 8.4, 16 ch 32×32 11.6 against 9.6, where it does
/// not.
pub(crate) fn applies(
    c: usize,
    o: usize,
    w: usize,
    kh: usize,
    kw: usize,
    stride: usize,
    pad: usize,
) -> bool {
    kh == 3 && kw == 3 && stride == 1 && pad == 1 && c.min(o) * w >= 1024
}

/// Tiles per block: the 16 transformed input planes (`C_in` deep) and the 16 products
/// (`C_out` deep) of a block take about 400 KiB, within a 512 KiB L2 cache; a multiple of
/// [`NR`], at least one micro-kernel wide.
fn block_tiles(c: usize, o: usize) -> usize {
    ((6400 / (c + o).max(1)) / NR * NR).max(NR)
}

/// A raw output pointer shared by the blocks, which write disjoint elements.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: blocks write disjoint output rows (see `forward`), and the buffer outlives them.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// The pointer (a method, so closures capture the whole `Send` wrapper).
    fn at(self, i: usize) -> *mut f32 {
        self.0.wrapping_add(i)
    }
}

/// `x (N, C, H, W)` ⊛ `w (O, C, 3, 3)`, stride 1, padding 1, with the shape given as
/// `(N, C, H, W, O)`: the `(N, O, H, W)` output, `epilogue` applied to it as it is produced.
///
/// `x` and `w` must hold exactly `N·C·H·W` and `O·C·9` elements (callers pass the shapes they
/// were validated with).
pub(crate) fn forward(
    (n, c, h, w, o): (usize, usize, usize, usize, usize),
    x: &[f32],
    k: &[f32],
    epilogue: Epilogue,
) -> Vec<f32> {
    assert_eq!(x.len(), n * c * h * w, "winograd: input size");
    assert_eq!(k.len(), o * c * 9, "winograd: kernel size");
    let total = n * o * h * w;
    let mut out: Vec<f32> = Vec::with_capacity(total);
    if total == 0 {
        return out;
    }
    let (th, tw) = (h.div_ceil(2), w.div_ceil(2));
    let op = o.div_ceil(MR) * MR;
    let u = transform_kernel(o, op, c, k);
    let rows_per_block = (block_tiles(c, o) / tw).max(1);
    let tile_rows = n * th;
    let blocks = tile_rows.div_ceil(rows_per_block);
    let threads = rayon::current_num_threads().max(1);
    let tasks = blocks.min(4 * threads);
    let plan = Plan {
        c,
        h,
        w,
        o,
        op,
        th,
        tw,
        rows_per_block,
        tile_rows,
        blocks,
        tasks,
        x,
        u: &u,
        out: OutPtr(out.spare_capacity_mut().as_mut_ptr() as *mut f32),
        epilogue,
    };
    let simd = Kernel::detect();
    (0..tasks).into_par_iter().for_each(|t| match simd {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX2 and FMA (checked in `detect`).
        Kernel::Avx2Fma => unsafe { run_task_avx2(&plan, t) },
        Kernel::Portable => run_task::<false>(&plan, t),
    });
    // SAFETY: every output pixel lies in exactly one tile, and every tile row was written.
    unsafe { out.set_len(total) };
    out
}

/// What every task of one [`forward`] shares.
struct Plan<'a> {
    c: usize,
    h: usize,
    w: usize,
    o: usize,
    /// `O` rounded up to a multiple of [`MR`].
    op: usize,
    /// Tile rows and tiles per row of one image: `⌈H/2⌉`, `⌈W/2⌉`.
    th: usize,
    tw: usize,
    rows_per_block: usize,
    /// `N·th`, the batch's tile rows.
    tile_rows: usize,
    blocks: usize,
    tasks: usize,
    x: &'a [f32],
    /// The transformed kernels (see [`transform_kernel`]).
    u: &'a [f32],
    out: OutPtr,
    epilogue: Epilogue<'a>,
}

/// Task `t`'s blocks, compiled for AVX2 + FMA: the transforms are plain loops that LLVM
/// vectorises 8 lanes wide here instead of SSE2's 4.
///
/// # Safety
/// The CPU must have AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn run_task_avx2(p: &Plan, t: usize) {
    run_task::<true>(p, t)
}

/// Task `t`'s blocks (`SIMD`: call the AVX2 micro-kernel, only from [`run_task_avx2`]).
#[inline(always)]
fn run_task<const SIMD: bool>(p: &Plan, t: usize) {
    let Plan {
        c,
        h,
        w,
        o,
        op,
        th,
        tw,
        rows_per_block,
        tile_rows,
        blocks,
        tasks,
        x,
        u,
        out: ptr,
        epilogue,
    } = *p;
    let ntp = (rows_per_block * tw).div_ceil(NR) * NR;
    // One position ξ's plane of the transformed input (C rows of `ntp`) and of the products
    // (`op` rows), each followed by one cache line: planes a multiple of 4 KiB apart would map
    // the 16 positions that a transform writes together onto the same L1 cache set.
    let (sv, sm) = (c * ntp + SKEW, op * ntp + SKEW);
    let mut v = vec![0f32; 16 * sv];
    let mut m = vec![0f32; 16 * sm];
    let mut hbuf = vec![0f32; 5 * (2 * tw + 2)];
    let (b0, b1) = (t * blocks / tasks, (t + 1) * blocks / tasks);
    for b in b0..b1 {
        let r0 = b * rows_per_block;
        let r1 = (r0 + rows_per_block).min(tile_rows);
        let nt = (r1 - r0) * tw;
        let ntb = nt.div_ceil(NR) * NR;
        for r in r0..r1 {
            let (img, ty) = (r / th, r % th);
            let col0 = (r - r0) * tw;
            let xi = &x[img * c * h * w..(img + 1) * c * h * w];
            for ci in 0..c {
                let plane = &xi[ci * h * w..(ci + 1) * h * w];
                transform_input_row::<SIMD>(
                    plane,
                    (h, w, ty),
                    &mut hbuf,
                    &mut v,
                    sv,
                    ci * ntp + col0,
                );
            }
        }
        for xi_ in 0..16 {
            let ux = &u[xi_ * op * c..(xi_ + 1) * op * c];
            let vx = &v[xi_ * sv..(xi_ + 1) * sv];
            let mx = &mut m[xi_ * sm..(xi_ + 1) * sm];
            for j0 in (0..ntb).step_by(NR) {
                for ob in 0..op / MR {
                    // SAFETY: `ux` holds `C·MR` packed weights per output block, `vx` has
                    // `C` rows of `ntp ≥ j0 + NR` columns, `mx` `op` rows of `ntp`.
                    unsafe {
                        kernel::<SIMD>(
                            c,
                            ux[ob * c * MR..].as_ptr(),
                            vx[j0..].as_ptr(),
                            ntp,
                            mx[ob * MR * ntp + j0..].as_mut_ptr(),
                            ntp,
                        )
                    };
                }
            }
        }
        for r in r0..r1 {
            let (img, ty) = (r / th, r % th);
            let col0 = (r - r0) * tw;
            for oc in 0..o {
                let base = ((img * o + oc) * h + 2 * ty) * w;
                // SAFETY: output rows 2·ty and 2·ty + 1 (if < H) of image `img`, channel
                // `oc`: within `total`, and written by this tile row only.
                let n_rows = if 2 * ty + 1 < h { 2 } else { 1 };
                let rows = unsafe {
                    std::slice::from_raw_parts_mut(
                        ptr.at(base) as *mut MaybeUninit<f32>,
                        n_rows * w,
                    )
                };
                transform_output_row::<SIMD>(&m, (oc * ntp + col0, sm), tw, w, rows);
                if let Some(f) = epilogue {
                    // SAFETY: the same rows, now written.
                    let rows = unsafe { std::slice::from_raw_parts_mut(ptr.at(base), n_rows * w) };
                    f(img * o + oc, 2 * ty * w, rows);
                }
            }
        }
    }
}

/// `U_ξ = G g Gᵀ` for every kernel, packed for the micro-kernel as `[ξ][O/MR][C][MR]`, with
/// output channels `O..op` zero.
fn transform_kernel(o: usize, op: usize, c: usize, k: &[f32]) -> Vec<f32> {
    let mut u = vec![0f32; 16 * op * c];
    for oc in 0..o {
        for ci in 0..c {
            let g = &k[(oc * c + ci) * 9..(oc * c + ci) * 9 + 9];
            // t = G g (4×3)
            let mut t = [[0f32; 3]; 4];
            for j in 0..3 {
                let (g0, g1, g2) = (g[j], g[3 + j], g[6 + j]);
                t[0][j] = g0;
                t[1][j] = 0.5 * (g0 + g1 + g2);
                t[2][j] = 0.5 * (g0 - g1 + g2);
                t[3][j] = g2;
            }
            for (i, ti) in t.iter().enumerate() {
                let row = [
                    ti[0],
                    0.5 * (ti[0] + ti[1] + ti[2]),
                    0.5 * (ti[0] - ti[1] + ti[2]),
                    ti[2],
                ];
                for (j, val) in row.into_iter().enumerate() {
                    let xi_ = i * 4 + j;
                    u[((xi_ * (op / MR) + oc / MR) * c + ci) * MR + oc % MR] = val;
                }
            }
        }
    }
    u
}

/// `Bᵀ d B` of the tiles of tile row `ty` of one input plane `(H, W)`, zero-padded by one pixel:
/// writes position `ξ`'s `⌈W/2⌉` values (tiles left to right) to `v[ξ·stride + off..]`.
/// `scratch` holds at least `5·(2·⌈W/2⌉ + 2)` elements.
#[inline(always)]
fn transform_input_row<const SIMD: bool>(
    plane: &[f32],
    (h, w, ty): (usize, usize, usize),
    scratch: &mut [f32],
    v: &mut [f32],
    stride: usize,
    off: usize,
) {
    let tw = w.div_ceil(2);
    let pw = 2 * tw + 2;
    let (zero, t) = scratch[..5 * pw].split_at_mut(pw);
    zero.fill(0.0);
    // Input rows 2·ty − 1 … 2·ty + 2, zero outside the plane.
    let d: [&[f32]; 4] = std::array::from_fn(|r| {
        let y = (2 * ty + r) as isize - 1;
        if y < 0 || y as usize >= h {
            &zero[..w]
        } else {
            &plane[y as usize * w..(y as usize + 1) * w]
        }
    });
    // Vertical: t_i = row i of Bᵀ d = (d0 − d2, d1 + d2, d2 − d1, d1 − d3), each stored as
    // P with P[0] = 0 (the left padding), P[1 + x] = t_i[x], zeros past the row.
    for (i, ti) in t.chunks_exact_mut(pw).enumerate() {
        let (pad_l, rest) = ti.split_at_mut(1);
        let (body, pad_r) = rest.split_at_mut(w);
        pad_l[0] = 0.0;
        pad_r.fill(0.0);
        let (a, b) = match i {
            0 => (d[0], d[2]),
            1 => (d[2], d[1]),
            2 => (d[2], d[1]),
            _ => (d[1], d[3]),
        };
        if i == 1 {
            for ((o, &p), &q) in body.iter_mut().zip(a).zip(b) {
                *o = p + q;
            }
        } else {
            for ((o, &p), &q) in body.iter_mut().zip(a).zip(b) {
                *o = p - q;
            }
        }
    }
    // Horizontal: tile tx reads a b c d = P[2tx … 2tx+3] → (a − c, b + c, c − b, b − d).
    for (i, ti) in t.chunks_exact(pw).enumerate() {
        let (_, rest) = v.split_at_mut(4 * i * stride + off);
        let (v0, rest) = rest.split_at_mut(stride);
        let (v1, rest) = rest.split_at_mut(stride);
        let (v2, v3) = rest.split_at_mut(stride);
        let (v0, v1, v2, v3) = (&mut v0[..tw], &mut v1[..tw], &mut v2[..tw], &mut v3[..tw]);
        let mut tx = 0;
        #[cfg(target_arch = "x86_64")]
        if SIMD {
            use std::arch::x86_64::*;
            // Eight tiles at once: the even and odd elements of P[2tx … 2tx+16) and of
            // P[2tx+2 … 2tx+18) are a, b and c, d (the last chunk ends at P's end, 2tw + 2).
            while tx + 8 <= tw {
                // SAFETY: P[2tx + 17] is in bounds (2tx + 18 ≤ 2tw + 2), so are v_j[tx + 7];
                // the caller has AVX2 (`SIMD`).
                unsafe {
                    let pp = ti.as_ptr().add(2 * tx);
                    // Even and odd lanes of lo ++ hi (a macro: a closure would not inherit
                    // the caller's AVX2 and would call each intrinsic out of line).
                    macro_rules! split {
                        ($lo:expr, $hi:expr) => {{
                            let (lo, hi) = ($lo, $hi);
                            let ev = _mm256_shuffle_ps::<0b10_00_10_00>(lo, hi);
                            let od = _mm256_shuffle_ps::<0b11_01_11_01>(lo, hi);
                            (
                                _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(
                                    _mm256_castps_pd(ev),
                                )),
                                _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(
                                    _mm256_castps_pd(od),
                                )),
                            )
                        }};
                    }
                    let (a, b) = split!(_mm256_loadu_ps(pp), _mm256_loadu_ps(pp.add(8)));
                    let (c, d) = split!(_mm256_loadu_ps(pp.add(2)), _mm256_loadu_ps(pp.add(10)));
                    _mm256_storeu_ps(v0.as_mut_ptr().add(tx), _mm256_sub_ps(a, c));
                    _mm256_storeu_ps(v1.as_mut_ptr().add(tx), _mm256_add_ps(b, c));
                    _mm256_storeu_ps(v2.as_mut_ptr().add(tx), _mm256_sub_ps(c, b));
                    _mm256_storeu_ps(v3.as_mut_ptr().add(tx), _mm256_sub_ps(b, d));
                }
                tx += 8;
            }
        }
        for tx in tx..tw {
            let (a, b, c, d) = (ti[2 * tx], ti[2 * tx + 1], ti[2 * tx + 2], ti[2 * tx + 3]);
            v0[tx] = a - c;
            v1[tx] = b + c;
            v2[tx] = c - b;
            v3[tx] = b - d;
        }
    }
}

/// `Aᵀ M A` of the tiles of one tile row and output channel: position `ξ`'s `⌈W/2⌉` products
/// (tiles left to right) are `m[at + ξ·stride..][..⌈W/2⌉]`; writes output rows `2·ty` and, if
/// present, `2·ty + 1` (`rows`, one or two rows of `W`).
#[inline(always)]
fn transform_output_row<const SIMD: bool>(
    m: &[f32],
    (at, stride): (usize, usize),
    tw: usize,
    w: usize,
    rows: &mut [MaybeUninit<f32>],
) {
    assert!(at + 15 * stride + tw <= m.len() && (rows.len() == w || rows.len() == 2 * w));
    let n_rows = rows.len() / w;
    let mut tx = 0;
    #[cfg(target_arch = "x86_64")]
    if SIMD {
        use std::arch::x86_64::*;
        // Eight tiles at once, 16 output pixels of each row, while they lie inside the row.
        while tx + 8 <= tw && 2 * tx + 16 <= w {
            // SAFETY: the assert above bounds every load (tx + 8 ≤ tw) and the loop condition
            // every store; the caller has AVX2 (`SIMD`).
            unsafe {
                // Macros, not closures: a closure would not inherit the caller's AVX2 and
                // would call each intrinsic out of line.
                macro_rules! q {
                    ($xi:expr) => {
                        _mm256_loadu_ps(m.as_ptr().add(at + $xi * stride + tx))
                    };
                }
                for a in 0..n_rows {
                    macro_rules! s {
                        ($j:expr) => {
                            if a == 0 {
                                _mm256_add_ps(_mm256_add_ps(q!($j), q!(4 + $j)), q!(8 + $j))
                            } else {
                                _mm256_sub_ps(_mm256_sub_ps(q!(4 + $j), q!(8 + $j)), q!(12 + $j))
                            }
                        };
                    }
                    let (s0, s1, s2, s3) = (s!(0), s!(1), s!(2), s!(3));
                    let e = _mm256_add_ps(_mm256_add_ps(s0, s1), s2);
                    let o = _mm256_sub_ps(_mm256_sub_ps(s1, s2), s3);
                    let lo = _mm256_unpacklo_ps(e, o); // e0 o0 e1 o1 | e4 o4 e5 o5
                    let hi = _mm256_unpackhi_ps(e, o); // e2 o2 e3 o3 | e6 o6 e7 o7
                    let dst = rows.as_mut_ptr().add(a * w + 2 * tx) as *mut f32;
                    _mm256_storeu_ps(dst, _mm256_permute2f128_ps::<0x20>(lo, hi));
                    _mm256_storeu_ps(dst.add(8), _mm256_permute2f128_ps::<0x31>(lo, hi));
                }
            }
            tx += 8;
        }
    }
    let q = |xi_: usize, t: usize| m[at + xi_ * stride + t];
    for t in tx..tw {
        for a in 0..n_rows {
            // s_j = row a of Aᵀ down column j: (m0j + m1j + m2j) or (m1j − m2j − m3j)
            let s = |j: usize| {
                if a == 0 {
                    q(j, t) + q(4 + j, t) + q(8 + j, t)
                } else {
                    q(4 + j, t) - q(8 + j, t) - q(12 + j, t)
                }
            };
            let (s0, s1, s2, s3) = (s(0), s(1), s(2), s(3));
            rows[a * w + 2 * t].write(s0 + s1 + s2);
            if 2 * t + 1 < w {
                rows[a * w + 2 * t + 1].write(s1 - s2 - s3);
            }
        }
    }
}

/// The micro-kernel chosen for this CPU.
#[derive(Clone, Copy)]
enum Kernel {
    #[cfg(target_arch = "x86_64")]
    Avx2Fma,
    Portable,
}

impl Kernel {
    fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return Kernel::Avx2Fma;
        }
        Kernel::Portable
    }
}

/// `m (MR, NR) = u (C, MR)ᵀ · v (C, NR)`: `u` packed `[C][MR]`, `v` rows `ldv` apart, `m` rows
/// `ldm` apart; `SIMD` runs [`kernel_avx2`].
///
/// # Safety
/// `u` must hold `C·MR` elements, `v` `C` rows of `NR`, `m` `MR` rows of `NR`; with `SIMD` the
/// CPU must have AVX2 and FMA.
#[inline(always)]
unsafe fn kernel<const SIMD: bool>(
    c: usize,
    u: *const f32,
    v: *const f32,
    ldv: usize,
    m: *mut f32,
    ldm: usize,
) {
    #[cfg(target_arch = "x86_64")]
    if SIMD {
        // SAFETY: the caller's contract.
        return unsafe { kernel_avx2(c, u, v, ldv, m, ldm) };
    }
    // SAFETY: the caller's contract.
    unsafe { kernel_portable(c, u, v, ldv, m, ldm) }
}

/// The portable micro-kernel (see [`kernel`]).
///
/// # Safety
/// As [`kernel`].
#[inline(always)]
unsafe fn kernel_portable(
    c: usize,
    u: *const f32,
    v: *const f32,
    ldv: usize,
    m: *mut f32,
    ldm: usize,
) {
    let mut acc = [[0f32; NR]; MR];
    for k in 0..c {
        // SAFETY: row `k < C` of `v` and of `u` (caller's contract).
        let (vr, ur) = unsafe {
            (
                std::slice::from_raw_parts(v.add(k * ldv), NR),
                std::slice::from_raw_parts(u.add(k * MR), MR),
            )
        };
        for (a, &uu) in acc.iter_mut().zip(ur) {
            for (s, &vv) in a.iter_mut().zip(vr) {
                *s += uu * vv;
            }
        }
    }
    for (r, a) in acc.iter().enumerate() {
        // SAFETY: row `r < MR` of `m` (caller's contract).
        unsafe { std::ptr::copy_nonoverlapping(a.as_ptr(), m.add(r * ldm), NR) };
    }
}

/// The AVX2 + FMA micro-kernel (see [`kernel`]): 8 accumulators (as many as FMA's
/// latency × throughput), per input channel two vector loads and four broadcasts.
///
/// # Safety
/// As [`kernel`], and the CPU must have AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn kernel_avx2(c: usize, u: *const f32, v: *const f32, ldv: usize, m: *mut f32, ldm: usize) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm256_setzero_ps(); 2]; MR];
    for k in 0..c {
        // SAFETY: row `k < C` of `v` (NR = 16 elements) and of `u` (MR elements).
        unsafe {
            let vp = v.add(k * ldv);
            let v0 = _mm256_loadu_ps(vp);
            let v1 = _mm256_loadu_ps(vp.add(8));
            let up = u.add(k * MR);
            for (r, a) in acc.iter_mut().enumerate() {
                let b = _mm256_broadcast_ss(&*up.add(r));
                a[0] = _mm256_fmadd_ps(b, v0, a[0]);
                a[1] = _mm256_fmadd_ps(b, v1, a[1]);
            }
        }
    }
    for (r, a) in acc.iter().enumerate() {
        // SAFETY: row `r < MR` of `m`, NR = 16 elements.
        unsafe {
            let mp = m.add(r * ldm);
            _mm256_storeu_ps(mp, a[0]);
            _mm256_storeu_ps(mp.add(8), a[1]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values in [-1, 1).
    fn rand(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// Direct 3×3, stride 1, padding 1 correlation in f64.
    fn direct(n: usize, c: usize, h: usize, w: usize, o: usize, x: &[f32], k: &[f32]) -> Vec<f64> {
        let mut out = vec![0f64; n * o * h * w];
        for i in 0..n {
            for oc in 0..o {
                for y in 0..h {
                    for xx in 0..w {
                        let mut s = 0f64;
                        for ci in 0..c {
                            for ki in 0..3 {
                                for kj in 0..3 {
                                    let (iy, ix) = (y + ki, xx + kj);
                                    if iy == 0 || ix == 0 || iy > h || ix > w {
                                        continue;
                                    }
                                    s += x[((i * c + ci) * h + iy - 1) * w + ix - 1] as f64
                                        * k[((oc * c + ci) * 3 + ki) * 3 + kj] as f64;
                                }
                            }
                        }
                        out[((i * o + oc) * h + y) * w + xx] = s;
                    }
                }
            }
        }
        out
    }

    fn check(n: usize, c: usize, h: usize, w: usize, o: usize) {
        let x = rand(n * c * h * w, (n * 1000 + c * 100 + h * 10 + w) as u64);
        let k = rand(o * c * 9, (o * 7 + c) as u64);
        let got = forward((n, c, h, w, o), &x, &k, None);
        let want = direct(n, c, h, w, o, &x, &k);
        assert_eq!(got.len(), want.len());
        // sums of 9·C products of values in [-1, 1): f32 rounding stays far below 1e-4·√(9C)
        let tol = 1e-4 * ((9 * c) as f64).sqrt();
        for (i, (a, b)) in got.iter().zip(&want).enumerate() {
            assert!(
                (*a as f64 - b).abs() <= tol,
                "n{n} c{c} {h}×{w} o{o}: element {i}: {a} vs {b}"
            );
        }
    }

    #[test]
    fn matches_direct_convolution() {
        check(2, 16, 32, 32, 32); // several blocks per image
        check(3, 17, 7, 5, 6); // odd sizes, output channels not a multiple of 4
        check(5, 16, 8, 8, 128); // several images per block
        check(1, 20, 1, 1, 3); // a map of one pixel
        check(2, 16, 2, 3, 9);
        check(1, 64, 16, 16, 64);
    }

    #[test]
    fn one_tile_by_hand() {
        // 2×2 image, all-ones kernel, one channel copied 16 times: each output is the sum of
        // the whole image (every pixel is a neighbour of every other) times 16.
        let x: Vec<f32> = (0..16).flat_map(|_| [1.0, 2.0, 3.0, 4.0]).collect();
        let k = vec![1f32; 16 * 9];
        let y = forward((1, 16, 2, 2, 1), &x, &k, None);
        assert_eq!(y, vec![160.0; 4]);
    }

    #[test]
    fn same_for_every_thread_count() {
        let (n, c, h, w, o) = (4, 16, 12, 10, 8);
        let x = rand(n * c * h * w, 3);
        let k = rand(o * c * 9, 4);
        let one = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let three = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        let a = one.install(|| forward((n, c, h, w, o), &x, &k, None));
        let b = three.install(|| forward((n, c, h, w, o), &x, &k, None));
        assert_eq!(a, b);
    }

    #[test]
    fn portable_kernel_matches_the_simd_one() {
        let c = 19;
        let u = rand(c * MR, 5);
        let v = rand(c * 30, 6);
        let mut a = vec![0f32; MR * 26];
        let mut b = vec![0f32; MR * 26];
        // SAFETY: u is C·MR, v is C rows of 30 ≥ NR, the outputs MR rows of 26 ≥ NR.
        unsafe {
            kernel_portable(c, u.as_ptr(), v.as_ptr(), 30, a.as_mut_ptr(), 26);
            match Kernel::detect() {
                #[cfg(target_arch = "x86_64")]
                Kernel::Avx2Fma => kernel_avx2(c, u.as_ptr(), v.as_ptr(), 30, b.as_mut_ptr(), 26),
                Kernel::Portable => {
                    kernel_portable(c, u.as_ptr(), v.as_ptr(), 30, b.as_mut_ptr(), 26)
                }
            }
        }
        for r in 0..MR {
            for j in 0..NR {
                let want: f64 = (0..c)
                    .map(|k| u[k * MR + r] as f64 * v[k * 30 + j] as f64)
                    .sum();
                assert!((a[r * 26 + j] as f64 - want).abs() < 1e-5);
                assert!((b[r * 26 + j] as f64 - want).abs() < 1e-5);
            }
            assert!(a[r * 26 + NR..(r + 1) * 26].iter().all(|&z| z == 0.0));
        }
    }
}
