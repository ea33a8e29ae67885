//! Update encodings (`[federation.compression]`, [`CompressionConfig`]): how a client's
//! trained weights travel back to the coordinator, one file per encoding implementing
//! [`UpdateEncoding`].
//!
//! With `"none"` the payload is the trained weights as `F32` safetensors, as always. With any
//! other kind it is the update Δ = w_k − w_global of every tensor, each encoded by the kind
//! ([`fp16`], [`bf16`], [`int8`], [`topk`]), except the BatchNorm running statistics
//! (`*.running_mean`, `*.running_var`), which travel as exact `F32` values (they are not
//! trained by the gradient, and a quantised variance could go negative). The safetensors
//! metadata `fedssl.update` names the kind; the coordinator decodes w_k = w_global + Δ̂
//! ([`decode_update`]) before the update is validated and aggregated, so every strategy
//! works unchanged.
//!
//! Error feedback (Seide et al. 2014; Stich, Cordonnier & Jaggi 2018, "Sparsified SGD with
//! Memory"): the client keeps the residual e (what the encoding lost) and sends
//! encode(Δ + e), then e ← (Δ + e) − decode(encode(Δ + e)) ([`encode_update`]).

pub mod bf16;
pub mod fp16;
pub mod int8;
pub mod topk;

use std::collections::{BTreeMap, HashMap};

use anyhow::{bail, ensure, Context, Result};
use safetensors::{Dtype, SafeTensors};

use crate::config::CompressionConfig;
use crate::weights::{TensorData, WeightSet};

/// Metadata key naming the encoding of an update payload.
pub const METADATA_KEY: &str = "fedssl.update";

/// One safetensors entry of an encoded tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    /// Entry name: the tensor's name, or the tensor's name plus a `/part` suffix.
    pub name: String,
    /// Element type.
    pub dtype: Dtype,
    /// Shape.
    pub shape: Vec<usize>,
    /// Little-endian bytes.
    pub bytes: Vec<u8>,
}

/// An encoding of one tensor's update Δ.
pub trait UpdateEncoding {
    /// Encodes `delta` (`shape.iter().product()` values, row-major) of tensor `name` into
    /// entries named `name` or `name/<part>`. Errors on a non-finite value, naming it.
    fn encode(&self, name: &str, shape: &[usize], delta: &[f32]) -> Result<Vec<Entry>>;

    /// The entry names [`UpdateEncoding::encode`] writes for tensor `name`.
    fn entry_names(&self, name: &str) -> Vec<String>;

    /// Decodes tensor `name` of `shape` from `payload`. Errors, naming the tensor, on a
    /// missing entry, a wrong dtype or shape, or a value that cannot be (non-finite, an index
    /// out of range).
    fn decode(&self, name: &str, shape: &[usize], payload: &SafeTensors) -> Result<Vec<f32>>;
}

/// The encoding of `cfg`, or `None` for `"none"`.
pub fn encoding_of(cfg: &CompressionConfig) -> Option<Box<dyn UpdateEncoding + Send + Sync>> {
    match cfg {
        CompressionConfig::None(_) => None,
        CompressionConfig::Fp16(_) => Some(Box::new(fp16::Fp16)),
        CompressionConfig::Bf16(_) => Some(Box::new(bf16::Bf16)),
        CompressionConfig::Int8(c) => Some(Box::new(int8::Int8 {
            per_channel: c.per_channel,
        })),
        CompressionConfig::TopK(c) => Some(Box::new(topk::TopK {
            fraction: c.fraction,
        })),
    }
}

/// True for the tensors sent exactly (`F32` values, not Δ): BatchNorm running statistics.
pub fn is_exact(name: &str) -> bool {
    name.ends_with("running_mean") || name.ends_with("running_var")
}

/// The payload of a client's update under `cfg`: for `"none"` the `trained` weights'
/// safetensors; otherwise Δ = trained − global encoded (module docs), with `residual` (error
/// feedback, same names as `trained`, zero at first) added before and updated after.
/// Errors when `trained` and `global` do not hold the same tensors, naming one.
pub fn encode_update(
    cfg: &CompressionConfig,
    global: &WeightSet,
    trained: &WeightSet,
    residual: Option<&mut WeightSet>,
) -> Result<Vec<u8>> {
    let Some(enc) = encoding_of(cfg) else {
        return trained.to_safetensors();
    };
    let mut entries = Vec::new();
    let mut residual = residual;
    for (name, t) in &trained.tensors {
        let g = global
            .tensors
            .get(name)
            .with_context(|| format!("update encoding: `{name}` is not in the global weights"))?;
        ensure!(
            g.shape == t.shape,
            "update encoding: `{name}` has shape {:?}, the global one {:?}",
            t.shape,
            g.shape
        );
        if is_exact(name) {
            entries.push(f32_entry(name.clone(), t.shape.clone(), &t.data));
            continue;
        }
        let mut delta: Vec<f32> = t.data.iter().zip(&g.data).map(|(a, b)| a - b).collect();
        if let Some(r) = residual.as_deref_mut() {
            let e = r.tensors.entry(name.clone()).or_insert_with(|| TensorData {
                shape: t.shape.clone(),
                data: vec![0.0; t.data.len()],
            });
            for (d, v) in delta.iter_mut().zip(&e.data) {
                *d += v;
            }
        }
        let out = enc.encode(name, &t.shape, &delta)?;
        if let Some(r) = residual.as_deref_mut() {
            let sent = decode_entries(enc.as_ref(), name, &t.shape, &out)?;
            let e = r.tensors.get_mut(name).context("residual vanished")?;
            for ((v, d), s) in e.data.iter_mut().zip(&delta).zip(&sent) {
                *v = d - s;
            }
        }
        entries.extend(out);
    }
    serialize(&entries, cfg.name())
}

/// Decodes `entries` of one tensor as the coordinator would (the client's error feedback).
fn decode_entries(
    enc: &dyn UpdateEncoding,
    name: &str,
    shape: &[usize],
    entries: &[Entry],
) -> Result<Vec<f32>> {
    let bytes = serialize(entries, "local")?;
    let st = SafeTensors::deserialize(&bytes)?;
    enc.decode(name, shape, &st)
}

/// Safetensors bytes of `entries` with the metadata naming `kind`.
fn serialize(entries: &[Entry], kind: &str) -> Result<Vec<u8>> {
    let meta = HashMap::from([(METADATA_KEY.to_string(), kind.to_string())]);
    serialize_entries(entries, meta)
}

/// Safetensors bytes of `entries` (any dtypes) with `meta` as the file's metadata. Errors,
/// naming the entry, when an entry's bytes do not fit its dtype and shape.
pub fn serialize_entries(entries: &[Entry], meta: HashMap<String, String>) -> Result<Vec<u8>> {
    let views = entries
        .iter()
        .map(|e| {
            let v = safetensors::tensor::TensorView::new(e.dtype, e.shape.clone(), &e.bytes)
                .with_context(|| format!("entry `{}`: shape and bytes disagree", e.name))?;
            Ok((e.name.clone(), v))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(safetensors::serialize(views, Some(meta))?)
}

/// The client's weights w_k = w_global + Δ̂ from an update `payload` encoded with `cfg`
/// (for `"none"`: the payload's weights as they are). Errors — the update is then refused,
/// never aggregated — when the payload is not valid safetensors, its metadata names another
/// encoding, a tensor of `global` is missing or malformed, or the payload holds entries no
/// tensor of `global` uses.
pub fn decode_update(
    cfg: &CompressionConfig,
    global: &WeightSet,
    payload: &[u8],
) -> Result<WeightSet> {
    let Some(enc) = encoding_of(cfg) else {
        return WeightSet::from_safetensors(payload);
    };
    let st = SafeTensors::deserialize(payload)
        .map_err(|e| anyhow::anyhow!("not a valid safetensors update: {e}"))?;
    let (_, meta) = SafeTensors::read_metadata(payload)
        .map_err(|e| anyhow::anyhow!("not a valid safetensors update: {e}"))?;
    let kind = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get(METADATA_KEY).cloned())
        .unwrap_or_else(|| "none".into());
    if kind != cfg.name() {
        bail!(
            "the update is encoded as `{kind}`, the run uses federation.compression `{}`",
            cfg.name()
        );
    }
    let mut used = 0usize;
    let mut tensors = BTreeMap::new();
    for (name, g) in &global.tensors {
        let data = if is_exact(name) {
            used += 1;
            read_f32(&st, name, &g.shape)?
        } else {
            used += enc.entry_names(name).len();
            let d = enc.decode(name, &g.shape, &st)?;
            g.data.iter().zip(&d).map(|(a, b)| a + b).collect()
        };
        tensors.insert(
            name.clone(),
            TensorData {
                shape: g.shape.clone(),
                data,
            },
        );
    }
    if st.len() != used {
        let known: std::collections::BTreeSet<String> = global
            .tensors
            .keys()
            .flat_map(|n| {
                if is_exact(n) {
                    vec![n.clone()]
                } else {
                    enc.entry_names(n)
                }
            })
            .collect();
        let extra: Vec<String> = st
            .names()
            .into_iter()
            .filter(|n| !known.contains(*n))
            .map(|n| n.to_string())
            .collect();
        bail!("the update holds entries of no backbone tensor: {extra:?}");
    }
    Ok(WeightSet { tensors })
}

/// An `F32` entry.
pub fn f32_entry(name: String, shape: Vec<usize>, v: &[f32]) -> Entry {
    Entry {
        name,
        dtype: Dtype::F32,
        shape,
        bytes: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
    }
}

/// The raw bytes of entry `name`, checked to have `dtype` and `shape`.
pub fn entry_bytes<'a>(
    st: &'a SafeTensors,
    name: &str,
    dtype: Dtype,
    shape: &[usize],
) -> Result<&'a [u8]> {
    let t = st
        .tensor(name)
        .map_err(|_| anyhow::anyhow!("the update has no entry `{name}`"))?;
    ensure!(
        t.dtype() == dtype && t.shape() == shape,
        "the update's `{name}` is {:?} {:?}, expected {dtype:?} {shape:?}",
        t.dtype(),
        t.shape()
    );
    Ok(t.data())
}

/// Entry `name` as finite `f32` values of `shape`.
pub fn read_f32(st: &SafeTensors, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
    let b = entry_bytes(st, name, Dtype::F32, shape)?;
    let v: Vec<f32> = b
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    check_finite(name, &v)?;
    Ok(v)
}

/// Errors, naming the entry and index, on a non-finite value.
pub fn check_finite(name: &str, v: &[f32]) -> Result<()> {
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        bail!("the update's `{name}` holds {} at index {i}", v[i]);
    }
    Ok(())
}

#[cfg(test)]
mod tests;
