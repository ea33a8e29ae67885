//! Feature skew: a fixed per-client transform of a client's training images, applied once
//! when the client loads its data (NIID-Bench, Li et al. 2022, `noniid-#feature` /
//! "noise-based feature imbalance"; Hsieh et al. 2020 for the rotated and tinted variants).
//!
//! Design: feature skew is the scenario's own `[feature_skew]` table, not a `[partition]`
//! kind, so that it composes with every label split — "IID labels + per-client rotation"
//! is `[partition] kind = "iid"` with `[feature_skew] rotation = "quarter_turns"`,
//! "Dirichlet + noise" is `[partition] kind = "dirichlet"` with `[feature_skew] noise = 0.1`.
//! Every key defaults to off and then nothing is copied or drawn: runs without the table are
//! unchanged bit for bit. It travels to the clients in [`crate::protocol::RunInfo`]; the
//! coordinator's evaluation sets stay clean.
//!
//! Client `i` of `n` (its shard index; a client without a shard, its client id) gets, with
//! `t = i / (n − 1)` (0 for a single client), in this order:
//! 1. rotation: `quarter_turns`: `(i mod 4) · 90°` counter-clockwise; `spread`:
//!    `rotation_degrees · t` (bilinear, [`crate::image::rotate`]);
//! 2. Gaussian blur of `blur · t` pixels;
//! 3. brightness factor `1 + brightness · (2t − 1)` (from `1 − b` to `1 + b`);
//! 4. colour tint: channel `c` times `1 + tint · u_c`, `u_c ~ U(−1, 1)` from the seed
//!    stream [`crate::seed::FEATURE_TINT`] (index `i`);
//! 5. Gaussian noise `σ_i = noise · t` on the 0..1 scale (NIID-Bench's
//!    `noise / (n_parties − 1) · party_id`), fixed per image, drawn from
//!    [`crate::seed::FEATURE_NOISE`] (index `i`) image after image.
//!
//! The transforms themselves are in [`transforms`].

pub mod transforms;

use anyhow::{bail, Result};
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::data::ImageDataset;
use crate::seed;

/// How client images are rotated (`feature_skew.rotation`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RotationSkew {
    /// No rotation (default).
    #[default]
    None,
    /// Client `i`: `(i mod 4) · 90°` counter-clockwise, exact (square images).
    QuarterTurns,
    /// Client `i`: `rotation_degrees · i / (n − 1)` counter-clockwise, bilinear.
    Spread,
}

/// The scenario's `[feature_skew]`: every key off by default.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FeatureSkewConfig {
    /// Largest Gaussian noise σ (0..1 intensity scale), reached by the last client:
    /// `σ_i = noise · i / (n − 1)`; 0 = none. At most 1.
    pub noise: f64,
    /// Brightness spread `b` in `[0, 1)`: factors from `1 − b` (client 0) to `1 + b`.
    pub brightness: f64,
    /// Colour tint strength in `[0, 1)`: per-client channel gains `1 + tint · U(−1, 1)`.
    pub tint: f64,
    /// Largest Gaussian blur σ in pixels (the last client), at most 8; 0 = none.
    pub blur: f64,
    /// Per-client rotation.
    pub rotation: RotationSkew,
    /// The last client's angle in degrees for `rotation = "spread"` (in `(0, 360]`).
    pub rotation_degrees: f64,
}

/// What one client's images get ([`FeatureSkewConfig::for_client`]).
#[derive(Clone, Debug, PartialEq)]
pub struct ClientSkew {
    /// Quarter turns counter-clockwise (0..=3).
    pub quarter_turns: u8,
    /// Further rotation in degrees, counter-clockwise.
    pub degrees: f64,
    /// Blur σ in pixels.
    pub blur: f64,
    /// Brightness factor.
    pub brightness: f64,
    /// Per-channel gains.
    pub gains: [f64; 3],
    /// Noise σ on the 0..1 scale.
    pub noise: f64,
}

impl FeatureSkewConfig {
    /// Whether every transform is off (the default): no image is touched.
    pub fn is_off(&self) -> bool {
        self.noise == 0.0
            && self.brightness == 0.0
            && self.tint == 0.0
            && self.blur == 0.0
            && self.rotation == RotationSkew::None
    }

    /// Checks the ranges; the message names the `feature_skew.*` key.
    pub fn validate(&self) -> Result<()> {
        for (key, v, max, closed) in [
            ("noise", self.noise, 1.0, true),
            ("brightness", self.brightness, 1.0, false),
            ("tint", self.tint, 1.0, false),
            ("blur", self.blur, 8.0, true),
        ] {
            let ok = v.is_finite() && v >= 0.0 && (v < max || (closed && v == max));
            if !ok {
                let bound = if closed { "at most" } else { "below" };
                bail!("feature_skew.{key} must be a number from 0 to {bound} {max}, got {v}");
            }
        }
        let d = self.rotation_degrees;
        match self.rotation {
            RotationSkew::Spread if !(d > 0.0 && d <= 360.0) => {
                bail!("feature_skew.rotation_degrees must be in (0, 360] with rotation = \"spread\", got {d}")
            }
            RotationSkew::None | RotationSkew::QuarterTurns if d != 0.0 => {
                bail!("feature_skew.rotation_degrees is only read with rotation = \"spread\"")
            }
            _ => Ok(()),
        }
    }

    /// The transform of client `i` of `n` in a run with master seed `run_seed`.
    pub fn for_client(&self, run_seed: u64, i: u32, n: u32) -> ClientSkew {
        let t = if n <= 1 {
            0.0
        } else {
            i as f64 / (n - 1) as f64
        };
        let mut gains = [1.0; 3];
        if self.tint > 0.0 {
            let mut rng = seed::rng(run_seed, seed::FEATURE_TINT, i as u64);
            for g in gains.iter_mut() {
                *g = 1.0 + self.tint * rng.random_range(-1.0..=1.0);
            }
        }
        ClientSkew {
            quarter_turns: match self.rotation {
                RotationSkew::QuarterTurns => (i % 4) as u8,
                _ => 0,
            },
            degrees: match self.rotation {
                RotationSkew::Spread => self.rotation_degrees * t,
                _ => 0.0,
            },
            blur: self.blur * t,
            brightness: if self.brightness > 0.0 {
                1.0 + self.brightness * (2.0 * t - 1.0)
            } else {
                1.0
            },
            gains,
            noise: self.noise * t,
        }
    }

    /// `data` as client `i` of `n` sees it (see the module docs); `data` itself when the
    /// config is off. Errors when a rotation is asked of non-square images.
    pub fn apply(
        &self,
        data: &ImageDataset,
        run_seed: u64,
        i: u32,
        n: u32,
    ) -> Result<Option<ImageDataset>> {
        if self.is_off() {
            return Ok(None);
        }
        let (h, w, c) = (data.height, data.width, data.channels);
        if self.rotation != RotationSkew::None && h != w {
            bail!("feature_skew.rotation needs square images, these are {h}x{w}");
        }
        let s = self.for_client(run_seed, i, n);
        let mut rng = seed::rng(run_seed, seed::FEATURE_NOISE, i as u64);
        let mut out = data.clone();
        out.images.clear();
        for k in 0..data.len() {
            let img = client_image(data.image(k), h, w, c, &s, &mut rng);
            out.images.extend_from_slice(&img);
        }
        Ok(Some(out))
    }
}

/// One image through client skew `s` (the order of the module docs).
fn client_image(
    img: &[u8],
    h: usize,
    w: usize,
    c: usize,
    s: &ClientSkew,
    rng: &mut impl Rng,
) -> Vec<u8> {
    let mut v = crate::image::rotate90(img, h, w, c, s.quarter_turns);
    if s.degrees != 0.0 {
        v = crate::image::rotate(&v, h, w, c, s.degrees);
    }
    v = transforms::gaussian_blur(&v, h, w, c, s.blur);
    if s.brightness != 1.0 {
        v = transforms::brightness(&v, s.brightness);
    }
    if s.gains != [1.0; 3] {
        v = transforms::tint(&v, h, w, c, s.gains);
    }
    transforms::gaussian_noise(&v, s.noise, rng)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> ImageDataset {
        let mut d = crate::data::synthetic::generate(4, 0);
        // image 0: a 32×32 gradient, pixel (y, x) channel c = (y·8 + x + c) mod 256
        for y in 0..32 {
            for x in 0..32 {
                for ch in 0..3 {
                    d.images[(y * 32 + x) * 3 + ch] = ((y * 8 + x + ch) % 256) as u8;
                }
            }
        }
        d
    }

    #[test]
    fn off_by_default_and_the_same_seed_gives_the_same_bytes() {
        let d = tiny();
        let off = FeatureSkewConfig::default();
        assert!(off.is_off());
        assert_eq!(off.apply(&d, 0, 1, 4).unwrap(), None);
        let c = FeatureSkewConfig {
            noise: 0.1,
            tint: 0.3,
            brightness: 0.2,
            blur: 1.0,
            ..Default::default()
        };
        c.validate().unwrap();
        let a = c.apply(&d, 7, 2, 4).unwrap().unwrap();
        assert_eq!(a, c.apply(&d, 7, 2, 4).unwrap().unwrap());
        assert_ne!(a.images, c.apply(&d, 8, 2, 4).unwrap().unwrap().images);
        assert_ne!(a.images, c.apply(&d, 7, 3, 4).unwrap().unwrap().images);
        assert_eq!((a.len(), a.labels.clone()), (d.len(), d.labels.clone()));
    }

    #[test]
    fn client_i_of_n_gets_the_niid_bench_spread() {
        let c = FeatureSkewConfig {
            noise: 0.3,
            brightness: 0.5,
            blur: 2.0,
            rotation: RotationSkew::QuarterTurns,
            ..Default::default()
        };
        // n = 4: t = 0, 1/3, 2/3, 1
        let s0 = c.for_client(0, 0, 4);
        let s3 = c.for_client(0, 3, 4);
        let s2 = c.for_client(0, 2, 4);
        assert_eq!(
            (s0.noise, s0.blur, s0.brightness, s0.quarter_turns),
            (0.0, 0.0, 0.5, 0)
        );
        assert_eq!(
            (s3.noise, s3.blur, s3.brightness, s3.quarter_turns),
            (0.3, 2.0, 1.5, 3)
        );
        assert!((s2.noise - 0.2).abs() < 1e-12 && (s2.brightness - 1.0 - 1.0 / 6.0).abs() < 1e-12);
        assert_eq!(c.for_client(0, 5, 8).quarter_turns, 1);
        assert_eq!(c.for_client(0, 0, 1).noise, 0.0);
        let spread = FeatureSkewConfig {
            rotation: RotationSkew::Spread,
            rotation_degrees: 30.0,
            ..Default::default()
        };
        assert_eq!(spread.for_client(0, 1, 3).degrees, 15.0);
        assert_eq!(spread.for_client(0, 2, 3).degrees, 30.0);
    }

    #[test]
    fn a_quarter_turn_client_sees_its_images_turned() {
        let d = tiny();
        let c = FeatureSkewConfig {
            rotation: RotationSkew::QuarterTurns,
            ..Default::default()
        };
        // client 0 keeps its images; client 1 turns them 90° counter-clockwise:
        // out(y, x) = in(x, 31 − y)
        assert_eq!(c.apply(&d, 0, 0, 3).unwrap().unwrap().images, d.images);
        let r = c.apply(&d, 0, 1, 3).unwrap().unwrap();
        let px = |img: &[u8], y: usize, x: usize, ch: usize| img[(y * 32 + x) * 3 + ch];
        // in(0, 31) = 31 → out(0, 0); in(0, 0) = 0 → out(31, 0); in(31, 31) = 279 mod 256 =
        // 23 → out(0, 31); in(5, 2) + channel 1 = 43 → out(29, 5)
        assert_eq!(px(&r.images, 0, 0, 0), 31);
        assert_eq!(px(&r.images, 31, 0, 0), 0);
        assert_eq!(px(&r.images, 0, 31, 0), 23);
        assert_eq!(px(&r.images, 29, 5, 1), 43);
        // the other images turn too, by the same rule
        assert_eq!(
            r.image(2),
            crate::image::rotate90(d.image(2), 32, 32, 3, 1).as_slice()
        );
    }

    #[test]
    fn noise_of_the_last_client_is_measured() {
        let mut d = tiny();
        d.images.iter_mut().for_each(|v| *v = 100);
        let c = FeatureSkewConfig {
            noise: 0.04,
            ..Default::default()
        };
        // client 0 of 5: σ = 0; client 4: σ = 0.04 · 255 = 10.2
        assert_eq!(c.apply(&d, 1, 0, 5).unwrap().unwrap().images, d.images);
        let out = c.apply(&d, 1, 4, 5).unwrap().unwrap().images;
        let n = out.len() as f64;
        let sd = (out.iter().map(|&v| (v as f64 - 100.0).powi(2)).sum::<f64>() / n).sqrt();
        assert!((sd - 10.2).abs() < 0.3, "measured σ {sd}");
    }

    #[test]
    fn bad_settings_name_the_key() {
        for (toml_text, key) in [
            ("noise = -0.1", "feature_skew.noise"),
            ("brightness = 1.0", "feature_skew.brightness"),
            ("blur = 9", "feature_skew.blur"),
            ("rotation = \"spread\"", "feature_skew.rotation_degrees"),
            ("rotation_degrees = 10", "feature_skew.rotation_degrees"),
        ] {
            let c: FeatureSkewConfig = toml::from_str(toml_text).unwrap();
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(key), "{toml_text}: {e}");
        }
        assert!(toml::from_str::<FeatureSkewConfig>("sigma = 1").is_err());
        let c: FeatureSkewConfig =
            toml::from_str("rotation = \"quarter_turns\"\nnoise = 0.1").unwrap();
        assert_eq!(c.rotation, RotationSkew::QuarterTurns);
        c.validate().unwrap();
    }
}
