//! A safetensors file read one tensor at a time, by positioned reads (no memory map, whose
//! pages would count in the process's resident set): what lets the coordinator check an
//! update spooled to disk and fold it into its running sum holding one tensor of it in
//! memory, never the whole model.
//!
//! The file is accepted as [`WeightSet::from_safetensors`] accepts a buffer: a header of at
//! most 100 MB whose tensors tile the data exactly; float tensors (F32, F64, F16, BF16) are
//! read as `f32`, any other dtype is an error when read.

use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::weights::{f32_as_bytes_mut, f32_from_le, float_values, TensorData, WeightSet};
use crate::weights_stream::{tensor_layout, MAX_HEADER_BYTES};

/// Values [`WeightsFile::read_chunks`] reads at once: 1 Mi (4 MiB of F32).
pub const CHUNK_VALUES: usize = 1 << 20;

/// One tensor of a [`WeightsFile`]: its shape, dtype and where its bytes lie.
#[derive(Clone, Debug)]
struct Entry {
    shape: Vec<usize>,
    dtype: safetensors::Dtype,
    /// Byte offset of its first byte in the file.
    at: u64,
    /// Bytes.
    len: u64,
}

/// An open safetensors file whose layout has been checked.
#[derive(Debug)]
pub struct WeightsFile {
    path: PathBuf,
    file: std::fs::File,
    tensors: BTreeMap<String, Entry>,
}

impl WeightsFile {
    /// Opens `path` and checks its header against the file's length. Errors name the file:
    /// it cannot be read, is shorter than its header says, or its tensors do not tile its
    /// data ([`tensor_layout`]).
    pub fn open(path: &Path) -> Result<Self> {
        let cx = || format!("in {}", path.display());
        let file =
            std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
        let size = file.metadata().with_context(cx)?.len();
        let mut n = [0u8; 8];
        file.read_exact_at(&mut n, 0)
            .context("not a valid safetensors file: shorter than 8 bytes")
            .with_context(cx)?;
        let n = u64::from_le_bytes(n);
        if n > MAX_HEADER_BYTES || n > size - 8 {
            return Err(anyhow::anyhow!(
                "not a valid safetensors buffer: a header of {n} bytes"
            ))
            .with_context(cx);
        }
        let mut header = vec![0u8; n as usize];
        file.read_exact_at(&mut header, 8).with_context(cx)?;
        let data_start = 8 + n;
        let tensors = tensor_layout(&header, size - data_start)
            .with_context(cx)?
            .into_iter()
            .map(|(name, info)| {
                let (start, end) = info.data_offsets;
                let entry = Entry {
                    shape: info.shape,
                    dtype: info.dtype,
                    at: data_start + start as u64,
                    len: (end - start) as u64,
                };
                (name, entry)
            })
            .collect();
        Ok(Self {
            path: path.to_path_buf(),
            file,
            tensors,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Each tensor's name and shape, by name.
    pub fn shapes(&self) -> impl Iterator<Item = (&str, &[usize])> {
        self.tensors
            .iter()
            .map(|(n, e)| (n.as_str(), e.shape.as_slice()))
    }

    /// The shape of tensor `name`, if the file holds it.
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.tensors.get(name).map(|e| e.shape.as_slice())
    }

    /// The values of tensor `name`, as `f32` (row-major; shape [`Self::shape`]). Errors: the
    /// file holds no such tensor, a read fails, or the dtype is not a float.
    pub fn read(&self, name: &str) -> Result<Vec<f32>> {
        let e = self.entry(name)?;
        if e.dtype == safetensors::Dtype::F32 {
            let mut data = vec![0f32; (e.len / 4) as usize];
            self.read_f32(name, e.at, &mut data)?;
            return Ok(data);
        }
        let cx = || format!("cannot read tensor `{name}` of {}", self.path.display());
        let mut raw = vec![0u8; e.len as usize];
        self.file.read_exact_at(&mut raw, e.at).with_context(cx)?;
        float_values(name, e.dtype, &e.shape, &raw).with_context(cx)
    }

    /// Tensor `name`'s entry; errors when the file holds no such tensor.
    fn entry(&self, name: &str) -> Result<&Entry> {
        self.tensors
            .get(name)
            .with_context(|| format!("{} holds no tensor `{name}`", self.path.display()))
    }

    /// Fills `values` with the F32 values at byte offset `at` of the file (part of tensor
    /// `name`, which errors name).
    fn read_f32(&self, name: &str, at: u64, values: &mut [f32]) -> Result<()> {
        self.file
            .read_exact_at(f32_as_bytes_mut(values), at)
            .with_context(|| format!("cannot read tensor `{name}` of {}", self.path.display()))?;
        f32_from_le(values);
        Ok(())
    }

    /// Calls `f(start, values)` on the values of tensor `name` in order, [`CHUNK_VALUES`] at
    /// a time (`start`: the row-major index of `values[0]`), through one buffer of that
    /// size: memory holds a few MiB of the tensor, however large it is (a tensor stored as
    /// another float dtype than F32 is read whole). Stops at the first `Err` of `f` and
    /// returns it as the inner result. Errors (outer): the file holds no such tensor, a
    /// read fails, or the dtype is not a float.
    pub fn read_chunks<E>(
        &self,
        name: &str,
        mut f: impl FnMut(usize, &[f32]) -> std::result::Result<(), E>,
    ) -> Result<std::result::Result<(), E>> {
        let e = self.entry(name)?;
        if e.dtype != safetensors::Dtype::F32 {
            return Ok(f(0, &self.read(name)?));
        }
        let values = (e.len / 4) as usize;
        let mut buf = vec![0f32; values.min(CHUNK_VALUES)];
        let mut start = 0;
        while start < values {
            let n = (values - start).min(buf.len());
            let chunk = &mut buf[..n];
            self.read_f32(name, e.at + start as u64 * 4, chunk)?;
            if let Err(stop) = f(start, chunk) {
                return Ok(Err(stop));
            }
            start += n;
        }
        Ok(Ok(()))
    }

    /// Every tensor, read into a [`WeightSet`] (memory: the weights, once).
    pub fn load(&self) -> Result<WeightSet> {
        let mut w = WeightSet::default();
        for (name, e) in &self.tensors {
            let data = self.read(name)?;
            w.tensors.insert(
                name.clone(),
                TensorData {
                    shape: e.shape.clone(),
                    data,
                },
            );
        }
        Ok(w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights_stream::tests::{f16_safetensors, weights};

    #[test]
    fn reads_each_tensor_as_saved_and_loads_the_whole_set() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        let w = weights();
        w.save(&path).unwrap();
        let f = WeightsFile::open(&path).unwrap();
        let shapes: Vec<_> = f
            .shapes()
            .map(|(n, s)| (n.to_string(), s.to_vec()))
            .collect();
        assert_eq!(
            shapes,
            [
                ("a.weight".to_string(), vec![2, 3]),
                ("b.bias".to_string(), vec![1])
            ]
        );
        assert_eq!(f.read("a.weight").unwrap(), w.tensors["a.weight"].data);
        assert_eq!(f.read("b.bias").unwrap(), vec![7.0]);
        assert_eq!(f.shape("b.bias"), Some(&[1usize][..]));
        assert_eq!(f.load().unwrap(), w);
        // chunk by chunk: the same values, each chunk's start its index
        let mut got = Vec::new();
        let done = f.read_chunks("a.weight", |start, v| {
            assert_eq!(start, got.len());
            got.extend_from_slice(v);
            Ok::<(), ()>(())
        });
        assert_eq!(
            (done.unwrap(), got),
            (Ok(()), w.tensors["a.weight"].data.clone())
        );
        let stopped = f.read_chunks("a.weight", |_, _| Err("stop"));
        assert_eq!(stopped.unwrap(), Err("stop"));
        // a tensor of 2 chunks and 3 values comes in 3 pieces
        let mut big = WeightSet::default();
        let n = 2 * CHUNK_VALUES + 3;
        big.tensors.insert(
            "big".into(),
            TensorData {
                shape: vec![n],
                data: (0..n).map(|i| i as f32).collect(),
            },
        );
        let bp = dir.path().join("big.safetensors");
        big.save(&bp).unwrap();
        let (mut starts, mut got) = (Vec::new(), Vec::new());
        WeightsFile::open(&bp)
            .unwrap()
            .read_chunks("big", |start, v| {
                starts.push((start, v.len()));
                got.extend_from_slice(v);
                Ok::<(), ()>(())
            })
            .unwrap()
            .unwrap();
        let c = CHUNK_VALUES;
        assert_eq!(starts, [(0, c), (c, c), (2 * c, 3)]);
        assert!(got == big.tensors["big"].data);
        let e = f.read("c").unwrap_err().to_string();
        assert!(e.contains("holds no tensor `c`"), "{e}");
        // an F16 tensor is widened as from_safetensors widens it
        let f16 = f16_safetensors();
        let hp = dir.path().join("h.safetensors");
        std::fs::write(&hp, &f16).unwrap();
        assert_eq!(
            WeightsFile::open(&hp).unwrap().read("h").unwrap(),
            vec![1.5, -0.25]
        );
    }

    #[test]
    fn a_truncated_or_malformed_file_is_refused_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = weights().to_safetensors().unwrap();
        let cases: [(&str, Vec<u8>, &str); 4] = [
            ("short", bytes[..bytes.len() - 4].to_vec(), "do not fit"),
            ("tiny", bytes[..5].to_vec(), "shorter than 8 bytes"),
            (
                "huge",
                [&(1u64 << 40).to_le_bytes()[..], &bytes[8..]].concat(),
                "a header of",
            ),
            (
                "json",
                [&bytes[..8], &b"{".repeat(bytes.len() - 8)[..]].concat(),
                "not a valid safetensors buffer",
            ),
        ];
        for (name, b, want) in cases {
            let p = dir.path().join(name);
            std::fs::write(&p, b).unwrap();
            let e = format!("{:#}", WeightsFile::open(&p).unwrap_err());
            assert!(e.contains(want) && e.contains(name), "{name}: {e}");
        }
        let e = WeightsFile::open(&dir.path().join("absent")).unwrap_err();
        assert!(e.to_string().starts_with("cannot read"), "{e}");
    }
}
