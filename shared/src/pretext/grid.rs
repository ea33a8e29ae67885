//! The 3×3 patch grid shared by the patch-based pretext tasks (relative patch position,
//! jigsaw): square patches of `patch` pixels laid out in a 3×3 grid with `gap` pixels between
//! neighbouring cells, each patch shifted by an independent random jitter of up to `jitter`
//! pixels along each axis (Doersch et al. 2015, §3; Noroozi & Favaro 2016, §3.2).
//!
//! Geometry along one axis of length `L`: the grid's footprint including the jitter margin is
//! `F = 3·patch + 2·gap + 2·jitter ≤ L`; it is centred, so the nominal (unjittered) top-left
//! corner of cell `k ∈ {0, 1, 2}` is `o + k·(patch + gap)` with
//! `o = jitter + ⌊(L − F)/2⌋`, and the sampled corner is that plus a jitter drawn uniformly in
//! `[−jitter, +jitter]`. Two neighbouring patches are therefore at least `gap − 2·jitter` and at
//! most `gap + 2·jitter` pixels apart, and every patch lies inside the image.

use anyhow::{bail, Result};
use rand::Rng;

/// Patch size, gap and jitter of a 3×3 grid, all in pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grid {
    /// Side of a square patch.
    pub patch: usize,
    /// Nominal gap between neighbouring patches.
    pub gap: usize,
    /// Largest shift of a patch from its nominal position, per axis.
    pub jitter: usize,
}

impl Grid {
    /// Pixels the grid needs along one axis: `3·patch + 2·gap + 2·jitter`.
    pub fn footprint(&self) -> usize {
        3 * self.patch + 2 * self.gap + 2 * self.jitter
    }

    /// Checks the parameters alone: `patch ≥ 1` and `gap ≥ 2·jitter` (so jittered patches
    /// never overlap). `key` is the scenario table named in the message, e.g.
    /// `pretext.jigsaw`.
    pub fn validate(&self, key: &str, patch_key: &str) -> Result<()> {
        if self.patch == 0 {
            bail!("{key}.{patch_key} must be at least 1");
        }
        if self.gap < 2 * self.jitter {
            bail!(
                "{key}.gap ({}) must be at least 2 × {key}.jitter ({}) so that jittered patches never overlap",
                self.gap,
                self.jitter
            );
        }
        Ok(())
    }

    /// Checks that the grid fits an `h × w` image; the message names `key`.
    pub fn check_fits(&self, h: usize, w: usize, key: &str, patch_key: &str) -> Result<()> {
        let f = self.footprint();
        if f > h || f > w {
            bail!(
                "{key}: 3×{patch_key} + 2×gap + 2×jitter = 3×{} + 2×{} + 2×{} = {f} px does not fit {h}x{w} images",
                self.patch,
                self.gap,
                self.jitter
            );
        }
        Ok(())
    }

    /// Nominal top-left coordinate of cell `k` (0, 1, 2) along an axis of `len` pixels
    /// (see the module docs). Requires `footprint() ≤ len`.
    pub fn nominal(&self, len: usize, k: usize) -> usize {
        self.jitter + (len - self.footprint()) / 2 + k * (self.patch + self.gap)
    }

    /// Samples the top-left corner `(y, x)` of the patch in cell `(row, col)` of an `h × w`
    /// image: the nominal corner plus independent jitters in `[−jitter, jitter]` (two
    /// `rng.random_range` draws, y first, none when `jitter = 0`).
    pub fn sample_corner(
        &self,
        h: usize,
        w: usize,
        row: usize,
        col: usize,
        rng: &mut impl Rng,
    ) -> (usize, usize) {
        let j = self.jitter as i64;
        let (dy, dx) = if j > 0 {
            (rng.random_range(-j..=j), rng.random_range(-j..=j))
        } else {
            (0, 0)
        };
        (
            (self.nominal(h, row) as i64 + dy) as usize,
            (self.nominal(w, col) as i64 + dx) as usize,
        )
    }
}

/// Copies the `p × p` patch with top-left corner `(y, x)` out of one `(H, W, C)` `u8` image of
/// width `w`, into `out` (appended, `(p, p, C)` order). Panics if the patch leaves the image.
pub fn crop_hwc(img: &[u8], w: usize, c: usize, y: usize, x: usize, p: usize, out: &mut Vec<u8>) {
    for r in y..y + p {
        let s = (r * w + x) * c;
        out.extend_from_slice(&img[s..s + p * c]);
    }
}

/// Resizes patches `x` `(N, C, p, p)` to `(N, C, s·p, s·p)` by bilinear interpolation
/// (`align_corners = false`, as PyTorch's default); `s = 1` returns `x` unchanged.
pub fn upscale(x: &candle_core::Tensor, s: usize) -> Result<candle_core::Tensor> {
    if s == 1 {
        return Ok(x.clone());
    }
    let (_, _, h, w) = x.dims4()?;
    Ok(x.upsample_bilinear2d(s * h, s * w, false)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn default_geometry_on_32_px() {
        // 3×8 + 2×3 + 2×1 = 32: nominal corners 1, 12, 23; jittered in [0,2], [11,13], [22,24].
        let g = Grid {
            patch: 8,
            gap: 3,
            jitter: 1,
        };
        assert_eq!(g.footprint(), 32);
        assert_eq!(
            (0..3).map(|k| g.nominal(32, k)).collect::<Vec<_>>(),
            vec![1, 12, 23]
        );
        let mut rng = StdRng::seed_from_u64(0);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..200 {
            let (y, x) = g.sample_corner(32, 32, 2, 0, &mut rng);
            assert!((22..=24).contains(&y) && x <= 2, "{y} {x}");
            assert!(y + 8 <= 32);
            seen.insert(y);
        }
        assert_eq!(seen.len(), 3);
        // centred: 30 px footprint on 32 leaves one spare pixel on each side
        let g = Grid {
            patch: 8,
            gap: 2,
            jitter: 1,
        };
        assert_eq!(g.nominal(32, 0), 2);
        assert!(g.check_fits(32, 32, "pretext.x", "patch_size").is_ok());
        let big = Grid {
            patch: 9,
            gap: 2,
            jitter: 1,
        };
        let e = big
            .check_fits(32, 32, "pretext.x", "patch_size")
            .unwrap_err()
            .to_string();
        assert!(e.contains("pretext.x") && e.contains("33"), "{e}");
        let overlap = Grid {
            patch: 8,
            gap: 1,
            jitter: 1,
        };
        assert!(overlap
            .validate("pretext.x", "patch_size")
            .unwrap_err()
            .to_string()
            .contains("pretext.x.gap"));
    }

    #[test]
    fn upscale_doubles_constant_and_keeps_mean() {
        let dev = candle_core::Device::Cpu;
        let x = candle_core::Tensor::new(&[[[[1f32, 3.0], [5.0, 7.0]]]], &dev).unwrap();
        assert_eq!(upscale(&x, 1).unwrap().dims(), &[1, 1, 2, 2]);
        let y = upscale(&x, 2).unwrap();
        assert_eq!(y.dims(), &[1, 1, 4, 4]);
        // half-pixel centres: the first row is 1, 1.5, 2.5, 3 (edge clamped)
        let r = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(&r[..4], &[1.0, 1.5, 2.5, 3.0]);
        assert_eq!(y.mean_all().unwrap().to_scalar::<f32>().unwrap(), 4.0);
    }

    #[test]
    fn crop_reads_the_right_pixels() {
        // 4×4 two-channel image, pixel (y, x) = (10y + x, 100 + 10y + x)
        let img: Vec<u8> = (0..4u8)
            .flat_map(|y| (0..4u8).flat_map(move |x| [10 * y + x, 100 + 10 * y + x]))
            .collect();
        let mut out = Vec::new();
        crop_hwc(&img, 4, 2, 1, 2, 2, &mut out);
        assert_eq!(out, vec![12, 112, 13, 113, 22, 122, 23, 123]);
    }
}
