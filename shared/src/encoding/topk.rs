//! `kind = "topk"`: the `k = ⌈fraction · P⌉` values of Δ largest in magnitude (at least one),
//! as `name/indices` `U32` `(k,)` (row-major positions, strictly increasing) and
//! `name/values` `F32` `(k,)`; the others decode as 0 (Aji & Heafield 2017, "Sparse
//! Communication for Distributed Gradient Descent"). 8 bytes a kept value. Ties in magnitude
//! go to the lower index, so the choice is a function of Δ alone.

use anyhow::{bail, Result};
use safetensors::{Dtype, SafeTensors};

use super::{check_finite, entry_bytes, f32_entry, read_f32, Entry, UpdateEncoding};

/// The top-k encoding.
pub struct TopK {
    /// Fraction of the values sent, in (0, 1].
    pub fraction: f64,
}

impl TopK {
    /// `k` for a tensor of `len` values.
    pub fn k(&self, len: usize) -> usize {
        ((self.fraction * len as f64).ceil() as usize).clamp(usize::from(len > 0), len)
    }
}

impl UpdateEncoding for TopK {
    fn encode(&self, name: &str, _shape: &[usize], delta: &[f32]) -> Result<Vec<Entry>> {
        check_finite(name, delta)?;
        let k = self.k(delta.len());
        let mut idx: Vec<u32> = (0..delta.len() as u32).collect();
        let by_size = |a: &u32, b: &u32| {
            delta[*b as usize]
                .abs()
                .total_cmp(&delta[*a as usize].abs())
                .then(a.cmp(b))
        };
        if k < idx.len() && k > 0 {
            idx.select_nth_unstable_by(k - 1, by_size);
        }
        idx.truncate(k);
        idx.sort_unstable();
        let values: Vec<f32> = idx.iter().map(|&i| delta[i as usize]).collect();
        Ok(vec![
            Entry {
                name: format!("{name}/indices"),
                dtype: Dtype::U32,
                shape: vec![k],
                bytes: idx.iter().flat_map(|i| i.to_le_bytes()).collect(),
            },
            f32_entry(format!("{name}/values"), vec![k], &values),
        ])
    }

    fn entry_names(&self, name: &str) -> Vec<String> {
        vec![format!("{name}/indices"), format!("{name}/values")]
    }

    fn decode(&self, name: &str, shape: &[usize], payload: &SafeTensors) -> Result<Vec<f32>> {
        let len: usize = shape.iter().product();
        let k = self.k(len);
        let ib = entry_bytes(payload, &format!("{name}/indices"), Dtype::U32, &[k])?;
        let values = read_f32(payload, &format!("{name}/values"), &[k])?;
        let mut out = vec![0f32; len];
        let mut prev: Option<u32> = None;
        for (c, v) in ib.chunks_exact(4).zip(values) {
            let i = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            if (i as usize) >= len || prev.is_some_and(|p| i <= p) {
                bail!("the update's `{name}/indices` are not increasing positions below {len} (got {i})");
            }
            prev = Some(i);
            out[i as usize] = v;
        }
        Ok(out)
    }
}
