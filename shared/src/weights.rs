//! Named weights: the one representation of a backbone that travels on the wire,
//! is aggregated by the coordinator and is written to disk.
//!
//! A [`WeightSet`] is a sorted map from parameter name (e.g. `stages.0.0.conv1.weight`)
//! to a dense row-major `f32` tensor. BatchNorm running statistics (`running_mean`,
//! `running_var`) are part of it: candle keeps them as `Var`s in the model's `VarMap`,
//! so they travel and are averaged like any parameter (as Flower's FedAvg does with a
//! PyTorch `state_dict`).
//!
//! The byte format is [safetensors](https://github.com/huggingface/safetensors) with
//! `F32` tensors and sorted names, so PyTorch's `safetensors.torch.load_file` reads it.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;

/// One dense tensor: its shape and its values in row-major order.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorData {
    /// Dimensions, outermost first, e.g. `(C_out, C_in, KH, KW)` for a convolution.
    pub shape: Vec<usize>,
    /// Values, row-major; `data.len() == shape.iter().product()`.
    pub data: Vec<f32>,
}

impl TensorData {
    /// Copies a candle tensor (any float dtype, any device) into host `f32`.
    pub fn from_tensor(t: &Tensor) -> Result<Self> {
        let shape = t.dims().to_vec();
        let data = t
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_device(&Device::Cpu)?
            .to_vec1::<f32>()?;
        Ok(Self { shape, data })
    }

    /// Builds a candle tensor of this shape on `device`.
    pub fn to_tensor(&self, device: &Device) -> Result<Tensor> {
        Ok(Tensor::from_slice(
            &self.data,
            self.shape.as_slice(),
            device,
        )?)
    }
}

/// A sorted set of named `f32` tensors (a model's `state_dict`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WeightSet {
    /// Tensors by name; the `BTreeMap` keeps names sorted, as the wire format requires.
    pub tensors: BTreeMap<String, TensorData>,
}

impl WeightSet {
    /// Snapshot of every variable in `varmap` (parameters and BatchNorm running statistics).
    pub fn from_varmap(varmap: &VarMap) -> Result<Self> {
        let data = varmap.data().lock().expect("VarMap lock poisoned");
        let mut tensors = BTreeMap::new();
        for (name, var) in data.iter() {
            tensors.insert(name.clone(), TensorData::from_tensor(var.as_tensor())?);
        }
        Ok(Self { tensors })
    }

    /// Errors, naming the tensor, unless these weights have exactly the names and shapes of
    /// the variables of `varmap`.
    pub fn check_fits_varmap(&self, varmap: &VarMap) -> Result<()> {
        let data = varmap.data().lock().expect("VarMap lock poisoned");
        for (name, var) in data.iter() {
            let t = self
                .tensors
                .get(name)
                .with_context(|| format!("weights lack tensor `{name}`"))?;
            if var.dims() != t.shape.as_slice() {
                bail!(
                    "tensor `{name}` has shape {:?}, the model expects {:?}",
                    t.shape,
                    var.dims()
                );
            }
        }
        if let Some(extra) = self.tensors.keys().find(|k| !data.contains_key(*k)) {
            bail!("weights hold tensor `{extra}`, which the model does not have");
        }
        Ok(())
    }

    /// Writes these weights into the variables of `varmap`.
    ///
    /// Errors, before anything is written (a bad set is never half-loaded), when a name of
    /// the varmap is missing here, a name here is unknown to the varmap, or a shape differs
    /// (see [`Self::check_fits_varmap`]).
    pub fn load_into_varmap(&self, varmap: &VarMap) -> Result<()> {
        self.check_fits_varmap(varmap)?;
        let data = varmap.data().lock().expect("VarMap lock poisoned");
        for (name, var) in data.iter() {
            let t = self.tensors[name].to_tensor(var.device())?;
            var.set(&t.to_dtype(var.dtype())?)?;
        }
        Ok(())
    }

    /// Splits into `(names starting with prefix, the rest)`, e.g. `"head."` separates shared
    /// pretext heads from the backbone.
    pub fn split_prefix(&self, prefix: &str) -> (WeightSet, WeightSet) {
        let (a, b) = self
            .tensors
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .partition(|(k, _)| k.starts_with(prefix));
        (WeightSet { tensors: a }, WeightSet { tensors: b })
    }

    /// Total number of scalar values.
    pub fn num_values(&self) -> usize {
        self.tensors.values().map(|t| t.data.len()).sum()
    }

    /// Errors unless `self` has exactly the names and shapes of `reference`.
    /// The message names the first offending tensor.
    pub fn check_same_layout(&self, reference: &WeightSet) -> Result<()> {
        for (name, r) in &reference.tensors {
            match self.tensors.get(name) {
                None => bail!("missing tensor `{name}`"),
                Some(t) if t.shape != r.shape => bail!(
                    "tensor `{name}` has shape {:?}, expected {:?}",
                    t.shape,
                    r.shape
                ),
                Some(_) => {}
            }
        }
        if let Some(extra) = self
            .tensors
            .keys()
            .find(|k| !reference.tensors.contains_key(*k))
        {
            bail!("unexpected tensor `{extra}`");
        }
        Ok(())
    }

    /// Errors if any value is NaN or infinite, naming the tensor and the flat index.
    pub fn check_finite(&self) -> Result<()> {
        for (name, t) in &self.tensors {
            if let Some(i) = t.data.iter().position(|v| !v.is_finite()) {
                bail!(
                    "tensor `{name}` holds a non-finite value ({}) at index {i}",
                    t.data[i]
                );
            }
        }
        Ok(())
    }

    /// Serialises to safetensors bytes (`F32`, names sorted).
    pub fn to_safetensors(&self) -> Result<Vec<u8>> {
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = self
            .tensors
            .iter()
            .map(|(name, t)| {
                let bytes: &[u8] = f32_as_bytes(&t.data);
                let view = safetensors::tensor::TensorView::new(
                    safetensors::Dtype::F32,
                    t.shape.clone(),
                    bytes,
                )
                .with_context(|| format!("tensor `{name}`: shape and data disagree"))?;
                Ok((name.clone(), view))
            })
            .collect::<Result<_>>()?;
        Ok(safetensors::serialize(views, None)?)
    }

    /// Parses safetensors bytes. Accepts `F32`, `F64`, `F16` and `BF16` tensors (converted
    /// to `f32`); errors on anything else or on malformed bytes.
    pub fn from_safetensors(bytes: &[u8]) -> Result<Self> {
        let st = safetensors::SafeTensors::deserialize(bytes)
            .map_err(|e| anyhow::anyhow!("not a valid safetensors buffer: {e}"))?;
        let mut tensors = BTreeMap::new();
        for (name, view) in st.tensors() {
            let shape = view.shape().to_vec();
            let data = float_values(&name, view.dtype(), &shape, view.data())?;
            tensors.insert(name, TensorData { shape, data });
        }
        Ok(Self { tensors })
    }

    /// Writes safetensors to `path` atomically (temporary file, then rename), so an
    /// interrupted write never leaves a half-written checkpoint.
    pub fn save(&self, path: &Path) -> Result<()> {
        let bytes = self.to_safetensors()?;
        write_atomic(path, &bytes)
    }

    /// Reads a safetensors file; errors name the file.
    pub fn load(path: &Path) -> Result<Self> {
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        Self::from_safetensors(&bytes).with_context(|| format!("in {}", path.display()))
    }
}

/// The values of tensor `name` of `dtype` and `shape` stored as `raw` little-endian bytes, as
/// `f32` (F32 as is; F64, F16 and BF16 converted). Errors on any other dtype.
pub(crate) fn float_values(
    name: &str,
    dtype: safetensors::Dtype,
    shape: &[usize],
    raw: &[u8],
) -> Result<Vec<f32>> {
    Ok(match dtype {
        safetensors::Dtype::F32 => raw
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        safetensors::Dtype::F64 => raw
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(std::array::from_fn(|i| b[i])) as f32)
            .collect(),
        safetensors::Dtype::F16 | safetensors::Dtype::BF16 => {
            let dt = if dtype == safetensors::Dtype::F16 {
                DType::F16
            } else {
                DType::BF16
            };
            let t = Tensor::from_raw_buffer(raw, dt, shape, &Device::Cpu)?;
            t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?
        }
        other => bail!("tensor `{name}` has dtype {other:?}; only float tensors are weights"),
    })
}

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    if let Err(e) = std::fs::rename(&tmp, path) {
        // never leave the temporary file behind (e.g. `path` is a folder)
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("cannot rename to {}", path.display()));
    }
    Ok(())
}

/// The bytes of `v`'s values, to be filled with little-endian `f32` values by a read (then
/// [`f32_from_le`]), without a second buffer.
pub(crate) fn f32_as_bytes_mut(v: &mut [f32]) -> &mut [u8] {
    // SAFETY: the slice covers exactly `v`'s initialised memory, every bit pattern is a
    // valid `f32`, and `v` is borrowed mutably for as long as the slice lives.
    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr().cast::<u8>(), std::mem::size_of_val(v)) }
}

/// Turns values read as little-endian bytes ([`f32_as_bytes_mut`]) into native ones (nothing
/// to do on a little-endian target).
pub(crate) fn f32_from_le(v: &mut [f32]) {
    if cfg!(target_endian = "big") {
        for x in v {
            *x = f32::from_bits(u32::from_le(x.to_bits()));
        }
    }
}

fn f32_as_bytes(v: &[f32]) -> &[u8] {
    // SAFETY: f32 has no padding and any byte pattern is a valid u8; the target is little-endian
    // on every platform candle supports, which is the byte order safetensors specifies.
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, std::mem::size_of_val(v)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> WeightSet {
        let mut w = WeightSet::default();
        w.tensors.insert(
            "b.weight".into(),
            TensorData {
                shape: vec![2, 3],
                data: vec![1., 2., 3., 4., 5., 6.],
            },
        );
        w.tensors.insert(
            "a.bias".into(),
            TensorData {
                shape: vec![1],
                data: vec![-0.5],
            },
        );
        w
    }

    #[test]
    fn safetensors_round_trip_keeps_names_shapes_values() {
        let w = sample();
        let bytes = w.to_safetensors().unwrap();
        let back = WeightSet::from_safetensors(&bytes).unwrap();
        assert_eq!(back, w);
        assert_eq!(back.num_values(), 7);
    }

    #[test]
    fn garbled_bytes_are_refused() {
        let mut bytes = sample().to_safetensors().unwrap();
        bytes.truncate(bytes.len() - 3);
        assert!(WeightSet::from_safetensors(&bytes).is_err());
        assert!(WeightSet::from_safetensors(b"hello").is_err());
    }

    #[test]
    fn layout_and_finiteness_checks_name_the_tensor() {
        let w = sample();
        let mut bad = w.clone();
        bad.tensors.get_mut("b.weight").unwrap().shape = vec![3, 2];
        let e = bad.check_same_layout(&w).unwrap_err().to_string();
        assert!(e.contains("b.weight"), "{e}");
        let mut nan = w.clone();
        nan.tensors.get_mut("a.bias").unwrap().data[0] = f32::NAN;
        let e = nan.check_finite().unwrap_err().to_string();
        assert!(e.contains("a.bias"), "{e}");
        assert!(w.check_finite().is_ok());
    }
}
