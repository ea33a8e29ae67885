//! `kind = "bf16"`: Δ as bfloat16 (`half::bf16`, round to nearest even: the upper 16 bits
//! of the `f32`), one entry `name` of dtype `BF16`: 2 bytes a value, `f32`'s exponent range,
//! relative error ≤ 2⁻⁸.

use anyhow::Result;
use half::bf16;
use safetensors::{Dtype, SafeTensors};

use super::{check_finite, entry_bytes, Entry, UpdateEncoding};

/// The bf16 encoding.
pub struct Bf16;

impl UpdateEncoding for Bf16 {
    fn encode(&self, name: &str, shape: &[usize], delta: &[f32]) -> Result<Vec<Entry>> {
        check_finite(name, delta)?;
        let bytes = delta
            .iter()
            .flat_map(|&d| bf16::from_f32(d).to_le_bytes())
            .collect();
        Ok(vec![Entry {
            name: name.to_string(),
            dtype: Dtype::BF16,
            shape: shape.to_vec(),
            bytes,
        }])
    }

    fn entry_names(&self, name: &str) -> Vec<String> {
        vec![name.to_string()]
    }

    fn decode(&self, name: &str, shape: &[usize], payload: &SafeTensors) -> Result<Vec<f32>> {
        let b = entry_bytes(payload, name, Dtype::BF16, shape)?;
        let v: Vec<f32> = b
            .chunks_exact(2)
            .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect();
        check_finite(name, &v)?;
        Ok(v)
    }
}
