//! Random image augmentations for the augmentation-based pretext tasks (SimCLR, Exemplar):
//! the random resized crop, colour jitter, grayscale, and the [`Pipeline`] that chains them
//! with the geometric operations of [`crate::image`].
//!
//! Every function works on one `(H, W, C)` `u8` image (row-major, channels last, the layout of
//! [`crate::data::ImageDataset::image`]) and returns a new `(H', W', C)` `u8` image, so the
//! result can go through [`crate::data::hwc_u8_to_tensor`] like any dataset image. Random
//! choices are drawn from the `&mut impl Rng` passed in, in the order each function documents,
//! so the same seed gives the same output.
//!
//! Colour operations follow torchvision's tensor definitions (the ones SimCLR's
//! `get_color_distortion(s)` uses): values are `f32` in `[0, 255]` between the steps of a
//! jitter, clamped after every step, and rounded (half away from zero) to `u8` once at the end.
//! Grey is ITU-R BT.601 luma `0.299·R + 0.587·G + 0.114·B`. Colour operations need `C = 3`;
//! on a one-channel image saturation, hue and grayscale are no-ops and brightness/contrast use
//! the single channel as grey.
//!
//! Functions panic if `img.len() != h*w*c` (a programming error, never user input).

use rand::seq::SliceRandom;
use rand::Rng;

use crate::image::{check, crop_resize, hflip, rotate, to_u8, CropBox};

/// ITU-R BT.601 luma weights for R, G, B.
pub const BT601: [f32; 3] = [0.299, 0.587, 0.114];

/// Draws the box of torchvision's `RandomResizedCrop.get_params` (the Inception crop SimCLR
/// uses) for an `h × w` image.
///
/// Up to 10 attempts: area fraction `a ~ U(scale.0, scale.1)`, aspect ratio
/// `r = exp(U(ln ratio.0, ln ratio.1))` (width / height), `width = round(√(a·h·w·r))`,
/// `height = round(√(a·h·w / r))`; the first attempt with `1 ≤ width ≤ w` and
/// `1 ≤ height ≤ h` is placed at `top ~ U{0..h−height}`, `left ~ U{0..w−width}`. If all fail,
/// the whole image is taken centrally, its aspect ratio clamped into `ratio`. The returned
/// box always lies inside the image. Requires `0 < scale.0 ≤ scale.1` and
/// `0 < ratio.0 ≤ ratio.1` (checked by the task configs).
pub fn random_resized_crop_box(
    h: usize,
    w: usize,
    scale: (f64, f64),
    ratio: (f64, f64),
    rng: &mut impl Rng,
) -> CropBox {
    let area = (h * w) as f64;
    let (lr0, lr1) = (ratio.0.ln(), ratio.1.ln());
    for _ in 0..10 {
        let target = area * uniform(rng, scale.0, scale.1);
        let aspect = uniform(rng, lr0, lr1).exp();
        let cw = (target * aspect).sqrt().round() as usize;
        let ch = (target / aspect).sqrt().round() as usize;
        if cw >= 1 && cw <= w && ch >= 1 && ch <= h {
            let top = rng.random_range(0..=h - ch);
            let left = rng.random_range(0..=w - cw);
            return CropBox {
                top,
                left,
                height: ch,
                width: cw,
            };
        }
    }
    let in_ratio = w as f64 / h as f64;
    let (cw, ch) = if in_ratio < ratio.0 {
        (w, ((w as f64 / ratio.0).round() as usize).clamp(1, h))
    } else if in_ratio > ratio.1 {
        (((h as f64 * ratio.1).round() as usize).clamp(1, w), h)
    } else {
        (w, h)
    };
    CropBox {
        top: (h - ch) / 2,
        left: (w - cw) / 2,
        height: ch,
        width: cw,
    }
}

/// `U(lo, hi)`; `lo` when the range is empty.
fn uniform(rng: &mut impl Rng, lo: f64, hi: f64) -> f64 {
    if hi > lo {
        rng.random_range(lo..hi)
    } else {
        lo
    }
}

/// Per-pixel `f32` working copy used by the colour operations.
fn to_f32(img: &[u8]) -> Vec<f32> {
    img.iter().map(|&v| v as f32).collect()
}

fn from_f32(px: &[f32]) -> Vec<u8> {
    px.iter().map(|&v| to_u8(v)).collect()
}

fn gray_of(px: &[f32], c: usize) -> impl Iterator<Item = f32> + '_ {
    px.chunks_exact(c).map(move |p| {
        if c == 3 {
            BT601[0] * p[0] + BT601[1] * p[1] + BT601[2] * p[2]
        } else {
            p[0]
        }
    })
}

fn brightness_f(px: &mut [f32], factor: f32) {
    px.iter_mut()
        .for_each(|v| *v = (*v * factor).clamp(0.0, 255.0));
}

fn contrast_f(px: &mut [f32], c: usize, factor: f32) {
    let n = (px.len() / c).max(1) as f32;
    let mean = gray_of(px, c).sum::<f32>() / n;
    px.iter_mut()
        .for_each(|v| *v = (factor * *v + (1.0 - factor) * mean).clamp(0.0, 255.0));
}

fn saturation_f(px: &mut [f32], c: usize, factor: f32) {
    if c != 3 {
        return;
    }
    for p in px.chunks_exact_mut(3) {
        let g = BT601[0] * p[0] + BT601[1] * p[1] + BT601[2] * p[2];
        p.iter_mut()
            .for_each(|v| *v = (factor * *v + (1.0 - factor) * g).clamp(0.0, 255.0));
    }
}

fn hue_f(px: &mut [f32], c: usize, shift: f32) {
    if c != 3 || shift == 0.0 {
        return;
    }
    for p in px.chunks_exact_mut(3) {
        let (r, g, b) = (p[0] / 255.0, p[1] / 255.0, p[2] / 255.0);
        let max = r.max(g).max(b);
        let min = r.min(g).min(b);
        let d = max - min;
        let v = max;
        let s = if max > 0.0 { d / max } else { 0.0 };
        let mut hh = if d == 0.0 {
            0.0
        } else if max == r {
            ((g - b) / d).rem_euclid(6.0) / 6.0
        } else if max == g {
            ((b - r) / d + 2.0) / 6.0
        } else {
            ((r - g) / d + 4.0) / 6.0
        };
        hh = (hh + shift).rem_euclid(1.0);
        let i = (hh * 6.0).floor();
        let f = hh * 6.0 - i;
        let (pp, q, t) = (v * (1.0 - s), v * (1.0 - s * f), v * (1.0 - s * (1.0 - f)));
        let (r2, g2, b2) = match (i as i32).rem_euclid(6) {
            0 => (v, t, pp),
            1 => (q, v, pp),
            2 => (pp, v, t),
            3 => (pp, q, v),
            4 => (t, pp, v),
            _ => (v, pp, q),
        };
        p[0] = (r2 * 255.0).clamp(0.0, 255.0);
        p[1] = (g2 * 255.0).clamp(0.0, 255.0);
        p[2] = (b2 * 255.0).clamp(0.0, 255.0);
    }
}

/// Replaces every pixel by its ITU-R BT.601 grey `round(0.299·R + 0.587·G + 0.114·B)` in all
/// three channels (pure red `(255, 0, 0)` → `round(76.245)` = 76). One-channel images are
/// returned unchanged.
pub fn to_grayscale(img: &[u8], h: usize, w: usize, c: usize) -> Vec<u8> {
    check(img, h, w, c);
    if c != 3 {
        return img.to_vec();
    }
    let px = to_f32(img);
    let mut out = Vec::with_capacity(img.len());
    for g in gray_of(&px, 3) {
        let g = to_u8(g);
        out.extend_from_slice(&[g, g, g]);
    }
    out
}

/// SimCLR's colour jitter `ColorJitter(0.8s, 0.8s, 0.8s, 0.2s)` (Chen et al. 2020, appendix
/// A, `get_color_distortion(s)`) applied unconditionally: brightness and contrast and
/// saturation factors `~ U(max(0, 1 − 0.8s), 1 + 0.8s)`, hue shift `~ U(−0.2s, 0.2s)` turns
/// (capped at ±0.5), applied in a random order as torchvision does.
///
/// Draws, in order: the permutation of the four operations (a shuffle of `[0, 1, 2, 3]`),
/// then the brightness, contrast, saturation and hue parameters. `s = 0` is the identity.
pub fn color_jitter(
    img: &[u8],
    h: usize,
    w: usize,
    c: usize,
    s: f32,
    rng: &mut impl Rng,
) -> Vec<u8> {
    check(img, h, w, c);
    let mut order = [0usize, 1, 2, 3];
    order.shuffle(rng);
    let f = |rng: &mut _, k: f32| uniform(rng, (1.0 - k as f64).max(0.0), 1.0 + k as f64) as f32;
    let b = f(rng, 0.8 * s);
    let ct = f(rng, 0.8 * s);
    let sat = f(rng, 0.8 * s);
    let hmax = (0.2 * s as f64).min(0.5);
    let hue = uniform(rng, -hmax, hmax) as f32;
    let mut px = to_f32(img);
    for op in order {
        match op {
            0 => brightness_f(&mut px, b),
            1 => contrast_f(&mut px, c, ct),
            2 => saturation_f(&mut px, c, sat),
            _ => hue_f(&mut px, c, hue),
        }
    }
    from_f32(&px)
}

/// One augmentation pipeline, in this order: random resized crop (back to the input size),
/// horizontal flip, rotation, colour jitter, random grayscale.
#[derive(Clone, Debug, PartialEq)]
pub struct Pipeline {
    /// Area fraction range of the random resized crop, e.g. `(0.08, 1.0)`; `(1, 1)` with
    /// ratio `(1, 1)` keeps the whole (square) image.
    pub crop_scale: (f64, f64),
    /// Aspect-ratio range (width / height) of the crop, torchvision's `(3/4, 4/3)`.
    pub crop_ratio: (f64, f64),
    /// Mirror left–right with probability ½.
    pub flip: bool,
    /// Rotate by an angle `~ U(−max_rotation_degrees, +max_rotation_degrees)`; 0 = never.
    pub max_rotation_degrees: f64,
    /// Colour-jitter strength `s` of [`color_jitter`]; 0 = never.
    pub jitter_strength: f32,
    /// Probability the colour jitter is applied (SimCLR: 0.8).
    pub jitter_prob: f64,
    /// Probability the view is converted to grey (SimCLR: 0.2).
    pub grayscale_prob: f64,
}

impl Pipeline {
    /// Applies the pipeline to one `(h, w, c)` image; the result has the same shape.
    ///
    /// Draws, in order: the crop box ([`random_resized_crop_box`]), the flip coin (if
    /// `flip`), the angle (if `max_rotation_degrees > 0`), the jitter coin and then the
    /// jitter's own draws (if `jitter_strength > 0`), the grayscale coin (if
    /// `grayscale_prob > 0`).
    pub fn apply(&self, img: &[u8], h: usize, w: usize, c: usize, rng: &mut impl Rng) -> Vec<u8> {
        let b = random_resized_crop_box(h, w, self.crop_scale, self.crop_ratio, rng);
        let mut x = crop_resize(img, h, w, c, b, h, w);
        if self.flip && rng.random_bool(0.5) {
            x = hflip(&x, h, w, c);
        }
        if self.max_rotation_degrees > 0.0 {
            let m = self.max_rotation_degrees;
            let a = uniform(rng, -m, m);
            x = rotate(&x, h, w, c, a);
        }
        if self.jitter_strength > 0.0 && rng.random_bool(self.jitter_prob.clamp(0.0, 1.0)) {
            x = color_jitter(&x, h, w, c, self.jitter_strength, rng);
        }
        if self.grayscale_prob > 0.0 && rng.random_bool(self.grayscale_prob.clamp(0.0, 1.0)) {
            x = to_grayscale(&x, h, w, c);
        }
        x
    }
}

/// Checks the ranges shared by the augmentation tables; `key` is the table (e.g.
/// `pretext.simclr`), named in the error.
pub fn validate_ranges(
    key: &str,
    crop_scale: (f64, f64),
    crop_ratio: (f64, f64),
    jitter_strength: f64,
    probs: &[(&str, f64)],
) -> anyhow::Result<()> {
    if !(crop_scale.0 > 0.0 && crop_scale.0 <= crop_scale.1 && crop_scale.1 <= 1.0) {
        anyhow::bail!(
            "{key}.crop_scale must be [lo, hi] with 0 < lo <= hi <= 1, got {crop_scale:?}"
        );
    }
    if !(crop_ratio.0 > 0.0 && crop_ratio.0 <= crop_ratio.1 && crop_ratio.1.is_finite()) {
        anyhow::bail!("{key}.crop_ratio must be [lo, hi] with 0 < lo <= hi, got {crop_ratio:?}");
    }
    if !(0.0..=10.0).contains(&jitter_strength) {
        anyhow::bail!("{key}.jitter_strength must be in [0, 10], got {jitter_strength}");
    }
    for (name, p) in probs {
        if !(0.0..=1.0).contains(p) {
            anyhow::bail!("{key}.{name} must be a probability in [0, 1], got {p}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    // The single colour operations of [`color_jitter`], one at a time.
    /// Multiplies every value by `factor` (torchvision `adjust_brightness`), clamped to
    /// `[0, 255]`. `factor = 1` is the identity; 0 gives black.
    fn adjust_brightness(img: &[u8], h: usize, w: usize, c: usize, factor: f32) -> Vec<u8> {
        check(img, h, w, c);
        let mut px = to_f32(img);
        brightness_f(&mut px, factor);
        from_f32(&px)
    }

    /// Blends every value with the image's mean BT.601 grey `m`: `factor·v + (1−factor)·m`,
    /// clamped (torchvision `adjust_contrast`). `factor = 1` is the identity; 0 gives a flat
    /// grey image.
    fn adjust_contrast(img: &[u8], h: usize, w: usize, c: usize, factor: f32) -> Vec<u8> {
        check(img, h, w, c);
        let mut px = to_f32(img);
        contrast_f(&mut px, c, factor);
        from_f32(&px)
    }

    /// Blends every pixel with its own BT.601 grey: `factor·v + (1−factor)·grey`, clamped
    /// (torchvision `adjust_saturation`). `factor = 1` is the identity; 0 is `to_grayscale`
    /// (up to rounding).
    fn adjust_saturation(img: &[u8], h: usize, w: usize, c: usize, factor: f32) -> Vec<u8> {
        check(img, h, w, c);
        let mut px = to_f32(img);
        saturation_f(&mut px, c, factor);
        from_f32(&px)
    }

    /// Shifts every pixel's hue by `shift` turns (in `[−0.5, 0.5]`; torchvision `adjust_hue`),
    /// through HSV. `shift = 0` is the identity.
    fn adjust_hue(img: &[u8], h: usize, w: usize, c: usize, shift: f32) -> Vec<u8> {
        check(img, h, w, c);
        let mut px = to_f32(img);
        hue_f(&mut px, c, shift);
        from_f32(&px)
    }

    fn img(seed: u64) -> Vec<u8> {
        crate::data::synthetic::generate(1, seed).image(0).to_vec()
    }

    #[test]
    fn identity_crop_returns_the_image() {
        let x = img(1);
        let full = CropBox {
            top: 0,
            left: 0,
            height: 32,
            width: 32,
        };
        assert_eq!(crop_resize(&x, 32, 32, 3, full, 32, 32), x);
        // scale (1, 1) and ratio (1, 1) always draw the whole square image
        let mut rng = StdRng::seed_from_u64(0);
        let b = random_resized_crop_box(32, 32, (1.0, 1.0), (1.0, 1.0), &mut rng);
        assert_eq!(b, full);
    }

    #[test]
    fn crop_box_always_inside_the_image() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut areas = Vec::new();
        for (h, w) in [(32, 32), (17, 40), (5, 3), (1, 1)] {
            for _ in 0..2000 {
                let b = random_resized_crop_box(h, w, (0.08, 1.0), (0.75, 4.0 / 3.0), &mut rng);
                assert!(b.height >= 1 && b.width >= 1, "{b:?}");
                assert!(
                    b.top + b.height <= h && b.left + b.width <= w,
                    "{b:?} in {h}x{w}"
                );
                if (h, w) == (32, 32) {
                    areas.push((b.height * b.width) as f64 / 1024.0);
                }
            }
        }
        // the area fraction roughly spans the requested range
        let min = areas.iter().cloned().fold(1.0, f64::min);
        let max = areas.iter().cloned().fold(0.0, f64::max);
        assert!(min < 0.12 && max > 0.9, "{min} {max}");
        // an extreme ratio forces the central fallback: whole height, width clamped by ratio
        let b = random_resized_crop_box(10, 10, (1.0, 1.0), (2.0, 2.0), &mut rng);
        assert_eq!(
            b,
            CropBox {
                top: 2,
                left: 0,
                height: 5,
                width: 10
            }
        );
    }

    #[test]
    fn grayscale_uses_bt601() {
        // pure red: 0.299·255 = 76.245 → 76; green 0.587·255 = 149.685 → 150; blue 29.07 → 29
        let x = [255u8, 0, 0, 0, 255, 0, 0, 0, 255, 10, 20, 30];
        let g = to_grayscale(&x, 2, 2, 3);
        // 0.299·10 + 0.587·20 + 0.114·30 = 2.99 + 11.74 + 3.42 = 18.15 → 18
        assert_eq!(g, vec![76, 76, 76, 150, 150, 150, 29, 29, 29, 18, 18, 18]);
        // saturation 0 equals grayscale up to rounding
        let s = adjust_saturation(&x, 2, 2, 3, 0.0);
        assert_eq!(s, g);
    }

    #[test]
    fn neutral_factors_are_identity() {
        let x = img(3);
        assert_eq!(adjust_brightness(&x, 32, 32, 3, 1.0), x);
        assert_eq!(adjust_contrast(&x, 32, 32, 3, 1.0), x);
        assert_eq!(adjust_saturation(&x, 32, 32, 3, 1.0), x);
        assert_eq!(adjust_hue(&x, 32, 32, 3, 0.0), x);
        assert_eq!(rotate(&x, 32, 32, 3, 0.0), x);
        let mut rng = StdRng::seed_from_u64(0);
        assert_eq!(color_jitter(&x, 32, 32, 3, 0.0, &mut rng), x);
    }

    #[test]
    fn colour_ops_known_values() {
        // brightness 0.5 of (200, 100, 7) → (100, 50, 3.5 → 4); 2.0 saturates at 255
        let x = [200u8, 100, 7];
        assert_eq!(adjust_brightness(&x, 1, 1, 3, 0.5), vec![100, 50, 4]);
        assert_eq!(adjust_brightness(&x, 1, 1, 3, 2.0), vec![255, 200, 14]);
        // contrast 0: every value becomes the mean grey of the image. Two pixels, grey
        // 0.299·255 = 76.245 and 0: mean 38.1225 → 38.
        let y = [255u8, 0, 0, 0, 0, 0];
        assert_eq!(adjust_contrast(&y, 1, 2, 3, 0.0), vec![38; 6]);
        // contrast 2 around mean 38.1225: 2·255 − 38.12 → 255, 2·0 − 38.12 → 0
        assert_eq!(adjust_contrast(&y, 1, 2, 3, 2.0), vec![255, 0, 0, 0, 0, 0]);
        // a hue shift of 1/3 turn maps red → green → blue
        assert_eq!(
            adjust_hue(&[255, 0, 0], 1, 1, 3, 1.0 / 3.0),
            vec![0, 255, 0]
        );
        assert_eq!(
            adjust_hue(&[0, 255, 0], 1, 1, 3, 1.0 / 3.0),
            vec![0, 0, 255]
        );
        // half a turn: (200, 100, 50) has hue 1/18, value 200, saturation 0.75 → (50, 150, 200)
        assert_eq!(
            adjust_hue(&[200, 100, 50], 1, 1, 3, 0.5),
            vec![50, 150, 200]
        );
    }

    #[test]
    fn pipeline_is_seeded() {
        let x = img(5);
        let p = Pipeline {
            crop_scale: (0.08, 1.0),
            crop_ratio: (0.75, 4.0 / 3.0),
            flip: true,
            max_rotation_degrees: 20.0,
            jitter_strength: 0.5,
            jitter_prob: 0.8,
            grayscale_prob: 0.2,
        };
        let run = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            (0..8)
                .map(|_| p.apply(&x, 32, 32, 3, &mut rng))
                .collect::<Vec<_>>()
        };
        let a = run(11);
        assert_eq!(a, run(11));
        assert_ne!(a, run(12));
        assert!(a.iter().all(|v| v.len() == x.len() && *v != x));
        // the neutral pipeline is the identity
        let id = Pipeline {
            crop_scale: (1.0, 1.0),
            crop_ratio: (1.0, 1.0),
            flip: false,
            max_rotation_degrees: 0.0,
            jitter_strength: 0.0,
            jitter_prob: 0.8,
            grayscale_prob: 0.0,
        };
        assert_eq!(id.apply(&x, 32, 32, 3, &mut StdRng::seed_from_u64(0)), x);
    }
}
