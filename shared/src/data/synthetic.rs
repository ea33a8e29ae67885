//! A procedural 10-class image dataset (32×32 RGB) for tests, demos and machines without
//! CIFAR-10.
//!
//! Classes differ in shape and texture: disc, ring, square, triangle, cross, horizontal
//! stripes, vertical stripes, checkerboard, diagonal stripes and a soft gradient blob. Each
//! image draws its own object position, scale, stripe period/phase, foreground and background
//! colours, a vertical background shading ("light from above", an orientation cue as in
//! natural photos, so rotation prediction is learnable) and per-pixel noise. Classes are thus
//! learnable but not trivially separable by colour statistics.
//!
//! Everything is deterministic from the seed (`StdRng::seed_from_u64`).

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use super::ImageDataset;
use crate::seed::{derive, SYNTHETIC_DATA};

/// Side of the square images, in pixels.
pub const SIZE: usize = 32;

/// Synthetic training images of a run whose `data.train_images` is unset.
pub const DEFAULT_TRAIN_IMAGES: usize = 10_000;
/// Synthetic test images of a run whose `data.test_images` is unset.
pub const DEFAULT_TEST_IMAGES: usize = 2_000;

/// Class names, index = label.
pub const CLASS_NAMES: [&str; 10] = [
    "disc",
    "ring",
    "square",
    "triangle",
    "cross",
    "horizontal_stripes",
    "vertical_stripes",
    "checkerboard",
    "diagonal_stripes",
    "gradient_blob",
];

/// Generates `n` images of 32×32×3 with balanced labels (`n / 10` per class, the first
/// `n % 10` classes one more), in a seed-shuffled order. Mean and std are computed from the
/// generated pixels. Deterministic: the same `(n, seed)` gives identical bytes.
pub fn generate(n: usize, seed: u64) -> ImageDataset {
    generate_stream(n, derive(seed, SYNTHETIC_DATA, 0))
}

fn generate_stream(n: usize, stream_seed: u64) -> ImageDataset {
    let mut rng = StdRng::seed_from_u64(stream_seed);
    let mut labels: Vec<u32> = (0..n).map(|i| (i % 10) as u32).collect();
    labels.shuffle(&mut rng);
    let px = SIZE * SIZE * 3;
    let mut images = vec![0u8; n * px];
    for (img, &label) in images.chunks_exact_mut(px).zip(&labels) {
        draw(img, label, &mut rng);
    }
    let (mean, std) = ImageDataset::compute_mean_std(&images, 3);
    ImageDataset {
        images,
        labels,
        height: SIZE,
        width: SIZE,
        channels: 3,
        num_classes: 10,
        class_names: CLASS_NAMES.iter().map(|s| s.to_string()).collect(),
        mean,
        std,
        domains: Vec::new(),
        domain_names: Vec::new(),
    }
}

fn random_colour(rng: &mut StdRng) -> [f32; 3] {
    [
        rng.random::<f32>(),
        rng.random::<f32>(),
        rng.random::<f32>(),
    ]
}

/// Draws one image of class `label` into `img` (HWC bytes).
fn draw(img: &mut [u8], label: u32, rng: &mut StdRng) {
    let bg = random_colour(rng);
    // foreground far enough from the background to be visible
    let mut fg = random_colour(rng);
    for _ in 0..8 {
        let d: f32 = (0..3).map(|c| (fg[c] - bg[c]).abs()).sum();
        if d > 0.6 {
            break;
        }
        fg = random_colour(rng);
    }
    let cx = rng.random_range(10.0f32..22.0);
    let cy = rng.random_range(10.0f32..22.0);
    let r = rng.random_range(6.0f32..11.0);
    let period = rng.random_range(3.0f32..7.0);
    let phase = rng.random_range(0.0f32..std::f32::consts::TAU);
    let shade = rng.random_range(0.15f32..0.45); // top-to-bottom darkening of the background
    let noise = rng.random_range(0.02f32..0.12);
    let thick = (r * 0.3).max(1.5);
    let tex_half = r * 1.25; // textures fill a square patch around the centre
    let freq = std::f32::consts::TAU / period;

    for y in 0..SIZE {
        let fy = y as f32 + 0.5;
        let light = 1.0 - shade * (y as f32 / (SIZE - 1) as f32);
        for x in 0..SIZE {
            let fx = x as f32 + 0.5;
            let (dx, dy) = (fx - cx, fy - cy);
            let d = (dx * dx + dy * dy).sqrt();
            let in_patch = dx.abs() < tex_half && dy.abs() < tex_half;
            // alpha: how much foreground covers this pixel
            let alpha: f32 = match label {
                0 => (d < r) as u8 as f32,
                1 => ((d - r * 0.8).abs() < thick * 0.6) as u8 as f32,
                2 => (dx.abs().max(dy.abs()) < r * 0.8) as u8 as f32,
                3 => {
                    // upward triangle: apex at top (cy - r), base at cy + r*0.8
                    let t = (dy + r) / (1.8 * r); // 0 at apex, 1 at base
                    ((0.0..=1.0).contains(&t) && dx.abs() < t * r) as u8 as f32
                }
                4 => {
                    ((dx.abs() < thick && dy.abs() < r) || (dy.abs() < thick && dx.abs() < r)) as u8
                        as f32
                }
                5 => (in_patch && (fy * freq + phase).sin() > 0.0) as u8 as f32,
                6 => (in_patch && (fx * freq + phase).sin() > 0.0) as u8 as f32,
                7 => {
                    let p = period.max(3.0);
                    let a = ((fx - cx + 64.0 * p) / p).floor() as i64;
                    let b = ((fy - cy + 64.0 * p) / p).floor() as i64;
                    (in_patch && (a + b) % 2 == 0) as u8 as f32
                }
                8 => {
                    (in_patch
                        && ((fx + fy) * freq * std::f32::consts::FRAC_1_SQRT_2 + phase).sin() > 0.0)
                        as u8 as f32
                }
                _ => (-(d * d) / (2.0 * (r * 0.6) * (r * 0.6))).exp(),
            };
            let o = (y * SIZE + x) * 3;
            for c in 0..3 {
                let b = bg[c] * light;
                let v = b + alpha * (fg[c] - b) + rng.random_range(-noise..noise);
                img[o + c] = (v.clamp(0.0, 1.0) * 255.0 + 0.5) as u8;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_balanced_and_seed_dependent() {
        let a = generate(200, 5);
        let b = generate(200, 5);
        assert_eq!(a, b);
        let c = generate(200, 6);
        assert_ne!(a.images, c.images);
        assert_eq!(a.len(), 200);
        assert_eq!(a.images.len(), 200 * 32 * 32 * 3);
        assert_eq!(a.class_counts(), vec![20; 10]);
        assert_eq!(
            generate(13, 0).class_counts(),
            vec![2, 2, 2, 1, 1, 1, 1, 1, 1, 1]
        );
        assert_eq!(a.class_names.len(), 10);
        for c in 0..3 {
            assert!(a.mean[c] > 0.1 && a.mean[c] < 0.9, "{:?}", a.mean);
            assert!(a.std[c] > 0.05 && a.std[c] < 0.5, "{:?}", a.std);
        }
    }

    #[test]
    fn ten_thousand_images_are_fast() {
        let t = std::time::Instant::now();
        let ds = generate(10_000, 1);
        let s = t.elapsed().as_secs_f64();
        assert_eq!(ds.len(), 10_000);
        // opt-level 1 test builds; release is several times faster
        assert!(s < 5.0, "took {s} s");
    }
}
