//! Test fixtures of the probes: Gaussian clusters and noise as `(N, D)` tensors, and their
//! host features.

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use rand::{rngs::StdRng, Rng, SeedableRng};

use crate::eval::features::HostFeatures;

/// A standard normal draw (Box–Muller).
pub(crate) fn gaussian(rng: &mut StdRng) -> f32 {
    // Box–Muller; 1 - u keeps the logarithm's argument in (0, 1].
    let u: f64 = 1.0 - rng.random::<f64>();
    let v: f64 = rng.random::<f64>();
    ((-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()) as f32
}

/// `n` points of `k` isotropic unit-variance Gaussian clusters in `d`
/// dimensions whose centres lie at distance `radius` from the origin along
/// the first `k` axes (pairwise distance `radius * sqrt 2`), labels cycling.
pub(crate) fn clusters(n: usize, d: usize, k: usize, radius: f32, seed: u64) -> (Tensor, Vec<u32>) {
    assert!(k <= d);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut data = Vec::with_capacity(n * d);
    let labels: Vec<u32> = (0..n).map(|i| (i % k) as u32).collect();
    for &y in &labels {
        for j in 0..d {
            let centre = if j == y as usize { radius } else { 0.0 };
            data.push(centre + gaussian(&mut rng));
        }
    }
    (
        Tensor::from_vec(data, (n, d), &Device::Cpu).unwrap(),
        labels,
    )
}

/// `n` points of standard normal noise in `d` dimensions with uniformly random labels.
pub(crate) fn noise(n: usize, d: usize, k: usize, seed: u64) -> (Tensor, Vec<u32>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let data: Vec<f32> = (0..n * d).map(|_| gaussian(&mut rng)).collect();
    let labels: Vec<u32> = (0..n).map(|_| rng.random_range(0..k as u32)).collect();
    (
        Tensor::from_vec(data, (n, d), &Device::Cpu).unwrap(),
        labels,
    )
}

/// The host features of a `(N, D)` tensor of any float dtype, named `what` in errors (a
/// non-finite value is refused, naming the row and the column).
pub(crate) fn features(x: &Tensor, what: &str) -> Result<HostFeatures> {
    let (rows, dim) = x.dims2()?;
    let data = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    HostFeatures::new(rows, dim, data, what)
}

/// [`features`] of a tensor known to be finite.
pub(crate) fn host(x: &Tensor) -> HostFeatures {
    features(x, "x").unwrap()
}
