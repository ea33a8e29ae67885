//! The image transforms of feature skew, one function each, on one `(H, W, C)` `u8` image
//! (the layout of [`crate::data::ImageDataset::image`]); intensities on the 0..1 scale are
//! `u8 / 255`. Results are rounded half away from zero and clamped to `0..=255`. The
//! rotations are [`crate::image::rotate90`] and [`crate::image::rotate`].
//!
//! Functions panic if `img.len() != h*w*c` (a programming error, never user input).

use rand::Rng;
use rand_distr::{Distribution, StandardNormal};

use crate::image::{check, to_u8};

/// Adds independent Gaussian noise `N(0, σ²)` to every value, `sigma` on the 0..1 scale
/// (so `σ · 255` in `u8` units), drawn from `rng` in memory order (NIID-Bench's
/// `AddGaussianNoise`, there on tensors). `sigma = 0` returns the image unchanged and draws
/// nothing.
pub fn gaussian_noise(img: &[u8], sigma: f64, rng: &mut impl Rng) -> Vec<u8> {
    if sigma == 0.0 {
        return img.to_vec();
    }
    let s = sigma * 255.0;
    img.iter()
        .map(|&v| {
            let z: f64 = StandardNormal.sample(rng);
            to_u8((v as f64 + s * z) as f32)
        })
        .collect()
}

/// Multiplies every value by `factor` (≥ 0): torchvision's `adjust_brightness`.
pub fn brightness(img: &[u8], factor: f64) -> Vec<u8> {
    img.iter()
        .map(|&v| to_u8((v as f64 * factor) as f32))
        .collect()
}

/// Multiplies channel `ch` of every pixel by `gains[ch]` (a colour cast); `c ≤ 3`.
pub fn tint(img: &[u8], h: usize, w: usize, c: usize, gains: [f64; 3]) -> Vec<u8> {
    check(img, h, w, c);
    img.iter()
        .enumerate()
        .map(|(i, &v)| to_u8((v as f64 * gains[i % c]) as f32))
        .collect()
}

/// The normalised 1-D Gaussian kernel of `sigma` pixels, radius `ceil(3σ)` (at least 1).
pub fn gaussian_kernel(sigma: f64) -> Vec<f64> {
    let r = (3.0 * sigma).ceil().max(1.0) as i64;
    let k: Vec<f64> = (-r..=r)
        .map(|x| (-(x * x) as f64 / (2.0 * sigma * sigma)).exp())
        .collect();
    let sum: f64 = k.iter().sum();
    k.into_iter().map(|v| v / sum).collect()
}

/// Gaussian blur of `sigma` pixels: the separable [`gaussian_kernel`] along rows then
/// columns, edges clamped (replicated), one rounding at the end. `sigma = 0` returns the
/// image unchanged.
pub fn gaussian_blur(img: &[u8], h: usize, w: usize, c: usize, sigma: f64) -> Vec<u8> {
    check(img, h, w, c);
    if sigma == 0.0 {
        return img.to_vec();
    }
    let k = gaussian_kernel(sigma);
    let r = (k.len() / 2) as i64;
    let clamp = |v: i64, n: usize| v.clamp(0, n as i64 - 1) as usize;
    let mut rows = vec![0f64; img.len()];
    for y in 0..h {
        for x in 0..w {
            for ch in 0..c {
                rows[(y * w + x) * c + ch] = k
                    .iter()
                    .enumerate()
                    .map(|(t, kv)| {
                        kv * img[(y * w + clamp(x as i64 + t as i64 - r, w)) * c + ch] as f64
                    })
                    .sum();
            }
        }
    }
    let mut out = vec![0u8; img.len()];
    for y in 0..h {
        for x in 0..w {
            for ch in 0..c {
                let v: f64 = k
                    .iter()
                    .enumerate()
                    .map(|(t, kv)| kv * rows[(clamp(y as i64 + t as i64 - r, h) * w + x) * c + ch])
                    .sum();
                out[(y * w + x) * c + ch] = to_u8(v as f32);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn noise_sigma_is_measured_on_a_constant_image() {
        let img = vec![128u8; 32 * 32 * 3 * 20];
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let out = gaussian_noise(&img, 0.05, &mut rng);
        let n = out.len() as f64;
        let mean = out.iter().map(|&v| v as f64).sum::<f64>() / n;
        let sd = (out.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n).sqrt();
        // σ = 0.05 · 255 = 12.75 (rounding adds 1/12 to the variance: √(12.75² + 1/12) = 12.753)
        assert!((sd - 12.75).abs() < 0.15, "measured σ {sd}");
        assert!((mean - 128.0).abs() < 0.2, "mean {mean}");
        assert_eq!(gaussian_noise(&img, 0.0, &mut rng), img);
    }

    #[test]
    fn brightness_tint_and_blur_known_answers() {
        assert_eq!(brightness(&[100, 200, 0], 1.5), vec![150, 255, 0]);
        assert_eq!(brightness(&[101], 0.5), vec![51]); // 50.5 rounds away from zero
                                                       // a 1×2 RGB image, gains (0.5, 1, 2)
        assert_eq!(
            tint(&[100, 100, 100, 10, 20, 30], 1, 2, 3, [0.5, 1.0, 2.0]),
            vec![50, 100, 200, 5, 20, 60]
        );
        // kernel of σ = 1: radius 3, symmetric, sums to 1, centre e⁰ / Σ = 0.39905
        let k = gaussian_kernel(1.0);
        assert_eq!(k.len(), 7);
        assert!((k.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        assert!((k[3] - 0.399050).abs() < 1e-5, "{}", k[3]);
        // a constant image stays constant; a single bright pixel spreads, its centre
        // keeping k[3]² of it: 255 · 0.39905² = 40.6 → 41
        assert_eq!(gaussian_blur(&[77u8; 7 * 7], 7, 7, 1, 1.0), vec![77u8; 49]);
        let mut dot = vec![0u8; 49];
        dot[24] = 255;
        let b = gaussian_blur(&dot, 7, 7, 1, 1.0);
        assert_eq!(b[24], 41);
        assert_eq!(b[23], b[25]);
        assert_eq!(b[17], b[31]);
        assert!(b[23] > 0 && b[23] < b[24]);
    }
}
