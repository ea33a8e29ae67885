//! Fixed-point encoding of updates for secure aggregation, in the ring `Z_{2^b}`.
//!
//! A value `x` is clipped to `[−c, c]` and mapped to the integer
//! `q = round((x + c) · R / (2c))` in `[0, R]` (round half away from zero; `R` the
//! quantisation range), so `|x̂ − clip(x)| ≤ c / R` with `x̂ = q · 2c/R − c`. A client
//! weighted by `n_k` sends `n_k · q` (mod `2^b`); the coordinator, from the ring sum
//! `Σ n_k q_k` and the public `N = Σ n_k`, recovers the weighted mean
//! `Σ n_k x̂_k / N = (Σ n_k q_k) · 2c/(R·N) − c`. Flower's SecAgg+ uses the same map with
//! `c = 8`, `R = 2²²`, `b = 32`.

use anyhow::{bail, ensure, Result};

/// How updates are encoded: clipping range `c`, quantisation range `R`, ring bits `b`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Quantizer {
    /// Clipping range `c` (values outside `[−c, c]` are clipped); positive, finite.
    pub clip: f32,
    /// Quantisation range `R`: `[−c, c]` maps onto the integers `0..=R`.
    pub range: u64,
    /// Ring bits `b` (32 or 64): arithmetic is mod `2^b`.
    pub bits: u32,
}

impl Default for Quantizer {
    /// Flower's SecAgg+ defaults: `c = 8`, `R = 2²²`, `b = 32`.
    fn default() -> Self {
        Self {
            clip: 8.0,
            range: 1 << 22,
            bits: 32,
        }
    }
}

impl Quantizer {
    /// Errors on a non-positive or non-finite `clip`, `range = 0`, `bits` other than 32 or
    /// 64, or `range ≥ 2^bits`.
    pub fn validate(&self) -> Result<()> {
        ensure!(
            self.clip.is_finite() && self.clip > 0.0,
            "federation.secure_aggregation.clip_range must be positive and finite, got {}",
            self.clip
        );
        ensure!(
            self.bits == 32 || self.bits == 64,
            "secure aggregation: the ring must have 32 or 64 bits, got {}",
            self.bits
        );
        ensure!(
            self.range > 0 && (self.bits == 64 || self.range < 1u64 << self.bits),
            "federation.secure_aggregation.quant_range must be in 1..2^{}, got {}",
            self.bits,
            self.range
        );
        Ok(())
    }

    /// `x mod 2^b`.
    pub fn reduce(&self, x: u64) -> u64 {
        if self.bits == 64 {
            x
        } else {
            x & ((1u64 << self.bits) - 1)
        }
    }

    /// The largest error of one value after the round trip, `c / R`.
    pub fn max_error(&self) -> f64 {
        self.clip as f64 / self.range as f64
    }

    /// `n_k · q(x)` mod `2^b` for every value of `x` `(P,)`. Errors on a non-finite value
    /// (naming its index): it has no fixed-point code.
    pub fn encode_weighted(&self, x: &[f32], weight: u64) -> Result<Vec<u64>> {
        let c = self.clip as f64;
        let scale = self.range as f64 / (2.0 * c);
        x.iter()
            .enumerate()
            .map(|(i, &v)| {
                if !v.is_finite() {
                    bail!("secure aggregation: value {i} of the update is {v}");
                }
                let q = ((v as f64).clamp(-c, c) + c) * scale;
                let q = (q.round() as u64).min(self.range);
                Ok(self.reduce(q.wrapping_mul(weight)))
            })
            .collect()
    }

    /// The weighted mean `Σ n_k x̂_k / N` from the ring sum `Σ n_k q_k` and `N = Σ n_k`.
    /// Errors when `N = 0` or `N · R ≥ 2^b` (the ring sum may have wrapped: the numbers say
    /// by how much to lower `R` or to raise `b`).
    pub fn decode_mean(&self, sum: &[u64], total_weight: u64) -> Result<Vec<f64>> {
        ensure!(
            total_weight > 0,
            "secure aggregation: the clients' total weight is 0"
        );
        let max = (total_weight as u128) * (self.range as u128);
        if max >= 1u128 << self.bits {
            bail!(
                "secure aggregation: total weight {total_weight} × federation.secure_aggregation.quant_range {} = {max} does not fit the 2^{} ring (the sum could wrap); {}",
                self.range,
                self.bits,
                if self.bits < 64 {
                    "a 64-bit ring would hold it"
                } else {
                    "lower quant_range"
                }
            );
        }
        let c = self.clip as f64;
        let step = 2.0 * c / self.range as f64;
        Ok(sum
            .iter()
            .map(|&s| s as f64 * step / total_weight as f64 - c)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_within_c_over_r_and_clipping() {
        let q = Quantizer::default();
        let x: Vec<f32> = (0..2001).map(|i| (i as f32 - 1000.0) * 0.0123).collect();
        let enc = q.encode_weighted(&x, 1).unwrap();
        let dec = q.decode_mean(&enc, 1).unwrap();
        for (a, b) in x.iter().zip(&dec) {
            let want = (*a as f64).clamp(-8.0, 8.0);
            assert!((want - b).abs() <= q.max_error() + 1e-12, "{a} -> {b}");
        }
        // known codes: −c → 0, 0 → R/2, c → R, beyond c clipped to R
        let e = q.encode_weighted(&[-8.0, 0.0, 8.0, 100.0], 1).unwrap();
        assert_eq!(e, vec![0, 1 << 21, 1 << 22, 1 << 22]);
        assert_eq!(q.max_error(), 8.0 / 4194304.0);
    }

    #[test]
    fn weighted_sum_decodes_to_the_weighted_mean() {
        let q = Quantizer::default();
        let (a, b) = ([1.0f32, -2.0, 0.5], [3.0f32, 2.0, -0.5]);
        let ea = q.encode_weighted(&a, 30).unwrap();
        let eb = q.encode_weighted(&b, 10).unwrap();
        let sum: Vec<u64> = ea.iter().zip(&eb).map(|(x, y)| q.reduce(x + y)).collect();
        let mean = q.decode_mean(&sum, 40).unwrap();
        let want = [1.5, -1.0, 0.25]; // (30 a + 10 b) / 40
        for (m, w) in mean.iter().zip(want) {
            assert!((m - w).abs() <= q.max_error(), "{m} vs {w}");
        }
    }

    #[test]
    fn a_sum_that_could_wrap_is_an_error_and_bad_settings_are_refused() {
        let q = Quantizer::default();
        // 1024 · 2^22 = 2^32: could wrap in the 32-bit ring
        let e = q.decode_mean(&[0], 1024).unwrap_err().to_string();
        assert!(
            e.contains("total weight 1024") && e.contains("a 64-bit ring would hold it"),
            "{e}"
        );
        assert!(q.decode_mean(&[0], 1023).is_ok());
        let wide = Quantizer { bits: 64, ..q };
        assert!(wide.decode_mean(&[0], 50_000).is_ok());
        assert!(Quantizer { clip: 0.0, ..q }.validate().is_err());
        assert!(Quantizer { bits: 16, ..q }.validate().is_err());
        assert!(Quantizer {
            range: 1 << 32,
            ..q
        }
        .validate()
        .is_err());
        let e = q
            .encode_weighted(&[0.0, f32::NAN], 1)
            .unwrap_err()
            .to_string();
        assert!(e.contains("value 1"), "{e}");
    }
}
