//! A weight set as the flat vector secure aggregation masks, and back.
//!
//! The vector is the update Δ = w_k − w_global of every tensor of the global weights, in the
//! weight set's (sorted) name order, each tensor's values row-major: `(P,)` `f32`, `P` the
//! model's value count. Quantising Δ rather than w_k keeps the values small (BatchNorm
//! running variances, for one, can exceed the clipping range; their change in a round does
//! not). On the wire a ring vector is `b/8` little-endian bytes per value.

use anyhow::{bail, ensure, Result};

use crate::weights::{TensorData, WeightSet};

/// Δ = `trained − global` flattened in `global`'s name order, `(P,)`. Errors, naming the
/// tensor, when `trained` lacks one of `global`'s tensors, holds another or a differently
/// shaped one.
pub fn flat_delta(global: &WeightSet, trained: &WeightSet) -> Result<Vec<f32>> {
    trained.check_same_layout(global)?;
    let mut out = Vec::with_capacity(global.num_values());
    for (name, g) in &global.tensors {
        let t = &trained.tensors[name.as_str()];
        ensure!(
            t.data.len() == g.data.len(),
            "secure aggregation: tensor `{name}` holds {} values, the global one {}",
            t.data.len(),
            g.data.len()
        );
        out.extend(t.data.iter().zip(&g.data).map(|(a, b)| a - b));
    }
    Ok(out)
}

/// `global + mean`, `mean` `(P,)` in [`flat_delta`]'s order, computed in `f64` and stored
/// as `f32`. Errors when `mean` does not have `global`'s value count.
pub fn add_flat(global: &WeightSet, mean: &[f64]) -> Result<WeightSet> {
    ensure!(
        mean.len() == global.num_values(),
        "secure aggregation: the mean has {} values, the model {}",
        mean.len(),
        global.num_values()
    );
    let mut out = WeightSet::default();
    let mut at = 0;
    for (name, g) in &global.tensors {
        let n = g.data.len();
        let data = g
            .data
            .iter()
            .zip(&mean[at..at + n])
            .map(|(&w, &d)| (w as f64 + d) as f32)
            .collect();
        at += n;
        out.tensors.insert(
            name.clone(),
            TensorData {
                shape: g.shape.clone(),
                data,
            },
        );
    }
    Ok(out)
}

/// A ring vector as bytes: `bits / 8` little-endian bytes per value (`bits` 32 or 64).
pub fn ring_to_bytes(v: &[u64], bits: u32) -> Vec<u8> {
    if bits == 64 {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    } else {
        v.iter().flat_map(|&x| (x as u32).to_le_bytes()).collect()
    }
}

/// The ring vector of `len` values in `bytes` ([`ring_to_bytes`]). Errors, with both
/// counts, when `bytes` holds another number of values.
pub fn ring_from_bytes(bytes: &[u8], bits: u32, len: usize) -> Result<Vec<u64>> {
    let width = (bits / 8) as usize;
    if bytes.len() != len * width {
        bail!(
            "the masked vector holds {} bytes, the model's {len} values at {bits} bits take {}",
            bytes.len(),
            len * width
        );
    }
    Ok(if bits == 64 {
        bytes
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(std::array::from_fn(|i| c[i])))
            .collect()
    } else {
        bytes
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(std::array::from_fn(|i| c[i])) as u64)
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ws(a: &[f32], b: &[f32]) -> WeightSet {
        let mut w = WeightSet::default();
        for (n, v) in [("a", a), ("b", b)] {
            w.tensors.insert(
                n.into(),
                TensorData {
                    shape: vec![v.len()],
                    data: v.to_vec(),
                },
            );
        }
        w
    }

    #[test]
    fn delta_and_back_in_name_order() {
        let g = ws(&[1.0, 2.0], &[3.0]);
        let t = ws(&[1.5, 1.0], &[5.0]);
        let d = flat_delta(&g, &t).unwrap();
        assert_eq!(d, vec![0.5, -1.0, 2.0]);
        let back = add_flat(&g, &[0.5, -1.0, 2.0]).unwrap();
        assert_eq!(back, t);
        assert!(add_flat(&g, &[0.0]).is_err());
        let mut other = t.clone();
        other.tensors.remove("b");
        assert!(flat_delta(&g, &other).is_err());
    }

    #[test]
    fn ring_bytes_round_trip_and_length_is_checked() {
        let v = vec![0, 1, u32::MAX as u64, 7];
        for bits in [32, 64] {
            let b = ring_to_bytes(&v, bits);
            assert_eq!(b.len(), 4 * bits as usize / 8);
            assert_eq!(ring_from_bytes(&b, bits, 4).unwrap(), v);
            let e = ring_from_bytes(&b, bits, 5).unwrap_err().to_string();
            assert!(e.contains("5 values"), "{e}");
        }
    }
}
