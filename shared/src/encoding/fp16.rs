//! `kind = "fp16"`: Δ as IEEE 754 binary16 (`half::f16`, round to nearest even), one entry
//! `name` of dtype `F16` and the tensor's shape: 2 bytes a value, relative error ≤ 2⁻¹¹ for
//! |Δ| in the normal range (≥ 6.1e-5; smaller values lose relative precision as subnormals).

use anyhow::{bail, Result};
use half::f16;
use safetensors::{Dtype, SafeTensors};

use super::{check_finite, entry_bytes, Entry, UpdateEncoding};

/// The fp16 encoding.
pub struct Fp16;

impl UpdateEncoding for Fp16 {
    fn encode(&self, name: &str, shape: &[usize], delta: &[f32]) -> Result<Vec<Entry>> {
        check_finite(name, delta)?;
        let mut bytes = Vec::with_capacity(delta.len() * 2);
        for (i, &d) in delta.iter().enumerate() {
            let h = f16::from_f32(d);
            if h.is_infinite() {
                bail!("fp16 update: `{name}`[{i}] = {d} is beyond fp16's range (65504)");
            }
            bytes.extend_from_slice(&h.to_le_bytes());
        }
        Ok(vec![Entry {
            name: name.to_string(),
            dtype: Dtype::F16,
            shape: shape.to_vec(),
            bytes,
        }])
    }

    fn entry_names(&self, name: &str) -> Vec<String> {
        vec![name.to_string()]
    }

    fn decode(&self, name: &str, shape: &[usize], payload: &SafeTensors) -> Result<Vec<f32>> {
        let b = entry_bytes(payload, name, Dtype::F16, shape)?;
        let v: Vec<f32> = b
            .chunks_exact(2)
            .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect();
        check_finite(name, &v)?;
        Ok(v)
    }
}
