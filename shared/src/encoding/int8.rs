//! `kind = "int8"`: Δ as symmetric 8-bit integers (Jacob et al. 2018's symmetric
//! quantisation): each row r (the output channel — the first dimension — of a tensor with
//! two or more dimensions when `per_channel`, else the whole tensor) has the scale
//! `s_r = max |Δ_r| / 127`, and each value is sent as `q = round(Δ / s_r)` in `[−127, 127]`
//! (round half away from zero), decoded as `q · s_r`; the error of a value is ≤ `s_r / 2`.
//! Entries: `name` `I8` with the tensor's shape, `name/scale` `F32` `(rows,)`. 1 byte a value
//! plus 4 a row.

use anyhow::{bail, Result};
use safetensors::{Dtype, SafeTensors};

use super::{check_finite, entry_bytes, f32_entry, read_f32, Entry, UpdateEncoding};

/// The int8 encoding.
pub struct Int8 {
    /// One scale per output channel (else one per tensor).
    pub per_channel: bool,
}

impl Int8 {
    /// Rows (scales) of a tensor of `shape` with `len` values.
    fn rows(&self, shape: &[usize], len: usize) -> usize {
        if self.per_channel && shape.len() >= 2 && shape[0] > 0 {
            shape[0]
        } else {
            usize::from(len > 0)
        }
    }
}

impl UpdateEncoding for Int8 {
    fn encode(&self, name: &str, shape: &[usize], delta: &[f32]) -> Result<Vec<Entry>> {
        check_finite(name, delta)?;
        let rows = self.rows(shape, delta.len());
        let mut scales = Vec::with_capacity(rows);
        let mut bytes = Vec::with_capacity(delta.len());
        if let Some(per_row) = delta.len().checked_div(rows) {
            for row in delta.chunks(per_row.max(1)) {
                let max = row.iter().fold(0f32, |m, v| m.max(v.abs()));
                let s = max / 127.0;
                scales.push(s);
                for &v in row {
                    let q = if s > 0.0 {
                        (v / s).round().clamp(-127.0, 127.0)
                    } else {
                        0.0
                    };
                    bytes.push(q as i8 as u8);
                }
            }
        }
        Ok(vec![
            Entry {
                name: name.to_string(),
                dtype: Dtype::I8,
                shape: shape.to_vec(),
                bytes,
            },
            f32_entry(format!("{name}/scale"), vec![rows], &scales),
        ])
    }

    fn entry_names(&self, name: &str) -> Vec<String> {
        vec![name.to_string(), format!("{name}/scale")]
    }

    fn decode(&self, name: &str, shape: &[usize], payload: &SafeTensors) -> Result<Vec<f32>> {
        let q = entry_bytes(payload, name, Dtype::I8, shape)?;
        let rows = self.rows(shape, q.len());
        let scales = read_f32(payload, &format!("{name}/scale"), &[rows])?;
        if let Some(s) = scales.iter().find(|s| **s < 0.0) {
            bail!("the update's `{name}/scale` holds a negative scale {s}");
        }
        if rows == 0 {
            return Ok(Vec::new());
        }
        let per_row = q.len() / rows;
        Ok(q.iter()
            .enumerate()
            .map(|(i, &b)| (b as i8) as f32 * scales[i / per_row])
            .collect())
    }
}
