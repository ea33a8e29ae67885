//! A weights payload's safetensors bytes read from a stream straight into a [`WeightSet`],
//! tensor by tensor, so that receiving a model of N bytes holds N bytes of `f32` values, not
//! the payload and then its parsed copy (2 N): what lets the coordinator hold a 1 GB update
//! as 1 GB.
//!
//! The safetensors layout (<https://github.com/huggingface/safetensors>, "Format"): `u64`
//! little-endian header size n, n bytes of JSON (`name → {dtype, shape, data_offsets}`,
//! optionally `__metadata__`), then the tensors' bytes. Accepted as
//! [`WeightSet::from_safetensors`] accepts it: float tensors (F32, F64, F16, BF16), offsets
//! that tile the data exactly, a size that fits the payload. The payload's CRC-32 is
//! computed as the bytes arrive and checked at the end; a payload that fails a check (its
//! layout, or the checksum; the checksum's error wins, since it explains the other) yields
//! no weights.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use safetensors::tensor::TensorInfo;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::weights::{f32_as_bytes_mut, f32_from_le, float_values, TensorData, WeightSet};

/// Largest safetensors header accepted, in bytes (the safetensors crate's own limit).
pub(crate) const MAX_HEADER_BYTES: u64 = 100_000_000;

/// Reads `len` bytes of safetensors from `r` into a [`WeightSet`] and checks them against
/// `crc` (CRC-32, IEEE). Errors: the stream ends early; the bytes are not a valid
/// safetensors buffer of float tensors; the checksum differs.
pub(crate) async fn read_weight_set<R: AsyncRead + Unpin>(
    r: &mut R,
    len: u64,
    crc: u32,
) -> Result<WeightSet> {
    let mut reader = Counted {
        r,
        left: len,
        hasher: crc32fast::Hasher::new(),
    };
    let parsed = parse(&mut reader).await;
    // Whatever the layout, the rest of the payload is read and the checksum checked first: a
    // corrupted payload is named as such, and the stream stays in step.
    reader.drain().await?;
    let got = reader.hasher.finalize();
    if got != crc {
        bail!("weights checksum mismatch (announced {crc:08x}, computed {got:08x})");
    }
    parsed
}

/// A reader of one payload: reads at most `left` more bytes and hashes what it reads.
struct Counted<'a, R> {
    r: &'a mut R,
    left: u64,
    hasher: crc32fast::Hasher,
}

impl<R: AsyncRead + Unpin> Counted<'_, R> {
    /// Fills `buf` from the payload; errors past its end or when the stream ends.
    async fn read(&mut self, buf: &mut [u8]) -> Result<()> {
        if buf.len() as u64 > self.left {
            bail!("not a valid safetensors buffer: it runs past the payload's end");
        }
        self.r
            .read_exact(buf)
            .await
            .context("connection lost inside the weights")?;
        self.hasher.update(buf);
        self.left -= buf.len() as u64;
        Ok(())
    }

    /// Reads (and hashes) what is left of the payload, 1 MiB at a time.
    async fn drain(&mut self) -> Result<()> {
        let mut buf = vec![0u8; self.left.min(1 << 20) as usize];
        while self.left > 0 {
            let n = self.left.min(buf.len() as u64) as usize;
            self.read(&mut buf[..n]).await?;
        }
        Ok(())
    }
}

/// The header's tensors, in the order of their bytes.
async fn parse<R: AsyncRead + Unpin>(reader: &mut Counted<'_, R>) -> Result<WeightSet> {
    let mut n = [0u8; 8];
    reader.read(&mut n).await?;
    let n = u64::from_le_bytes(n);
    if n > MAX_HEADER_BYTES || n > reader.left {
        bail!("not a valid safetensors buffer: a header of {n} bytes");
    }
    let mut header = vec![0u8; n as usize];
    reader.read(&mut header).await?;
    let layout = tensor_layout(&header, reader.left)?;
    let mut tensors = BTreeMap::new();
    for (name, info) in layout {
        let size = (info.data_offsets.1 - info.data_offsets.0) as u64;
        let data = if info.dtype == safetensors::Dtype::F32 {
            read_f32(reader, size).await?
        } else {
            let mut raw = vec![0u8; size as usize];
            reader.read(&mut raw).await?;
            float_values(&name, info.dtype, &info.shape, &raw)?
        };
        tensors.insert(
            name,
            TensorData {
                shape: info.shape,
                data,
            },
        );
    }
    Ok(WeightSet { tensors })
}

/// The tensors a safetensors `header` (its JSON, without the size in front) describes, in
/// the order of their bytes, checked against `data_bytes`, the bytes that follow the
/// header: float or not, each tensor's bytes follow the previous one's exactly and fit its
/// dtype and shape, and together they tile the data. Errors (`not a valid safetensors
/// buffer: …`) name the first tensor that fails.
pub(crate) fn tensor_layout(header: &[u8], data_bytes: u64) -> Result<Vec<(String, TensorInfo)>> {
    let mut entries: BTreeMap<String, serde_json::Value> = serde_json::from_slice(header)
        .map_err(|e| anyhow::anyhow!("not a valid safetensors buffer: {e}"))?;
    entries.remove("__metadata__");
    let mut layout: Vec<(String, TensorInfo)> = entries
        .into_iter()
        .map(|(name, v)| {
            let info: TensorInfo = serde_json::from_value(v)
                .map_err(|e| anyhow::anyhow!("not a valid safetensors buffer: `{name}`: {e}"))?;
            Ok((name, info))
        })
        .collect::<Result<_>>()?;
    layout.sort_by_key(|(_, i)| i.data_offsets);
    let mut at = 0u64;
    for (name, info) in &layout {
        let (start, end) = (info.data_offsets.0 as u64, info.data_offsets.1 as u64);
        let size = info
            .shape
            .iter()
            .try_fold(info.dtype.bitsize() as u64, |a, &d| a.checked_mul(d as u64))
            .map(|bits| bits / 8)
            .context("not a valid safetensors buffer: a shape too large")?;
        if start != at || end < start || end - start != size || end > data_bytes {
            bail!(
                "not a valid safetensors buffer: tensor `{name}`'s bytes {start}..{end} do not follow {at} or do not fit its {:?} {:?}",
                info.dtype,
                info.shape
            );
        }
        at = end;
    }
    if at != data_bytes {
        bail!("not a valid safetensors buffer: {data_bytes} bytes of data, tensors for {at}");
    }
    Ok(layout)
}

/// `size` bytes of little-endian `f32` values read straight into their vector.
async fn read_f32<R: AsyncRead + Unpin>(
    reader: &mut Counted<'_, R>,
    size: u64,
) -> Result<Vec<f32>> {
    let mut data = vec![0f32; (size / 4) as usize];
    reader.read(f32_as_bytes_mut(&mut data)).await?;
    f32_from_le(&mut data);
    Ok(data)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::protocol::weights_header;

    /// Two tensors whose values include a subnormal and a large one.
    pub(crate) fn weights() -> WeightSet {
        let mut w = WeightSet::default();
        w.tensors.insert(
            "a.weight".into(),
            TensorData {
                shape: vec![2, 3],
                data: vec![1.0, -2.5, 3.25, 0.0, f32::MIN_POSITIVE, 1e30],
            },
        );
        w.tensors.insert(
            "b.bias".into(),
            TensorData {
                shape: vec![1],
                data: vec![7.0],
            },
        );
        w
    }

    /// Safetensors bytes of one F16 tensor `h` = [1.5, −0.25].
    pub(crate) fn f16_safetensors() -> Vec<u8> {
        let half: Vec<u8> = [1.5f32, -0.25]
            .iter()
            .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
            .collect();
        let view =
            safetensors::tensor::TensorView::new(safetensors::Dtype::F16, vec![2], &half).unwrap();
        safetensors::serialize([("h", view)], None).unwrap()
    }

    async fn read(bytes: &[u8], crc: u32) -> Result<WeightSet> {
        let mut r = bytes;
        let w = read_weight_set(&mut r, bytes.len() as u64, crc).await;
        assert!(r.is_empty() || w.is_err(), "{} bytes left unread", r.len());
        w
    }

    #[tokio::test]
    async fn reads_what_from_safetensors_reads_and_consumes_exactly_the_payload() {
        let w = weights();
        let bytes = w.to_safetensors().unwrap();
        let crc = crc32fast::hash(&bytes);
        assert_eq!(read(&bytes, crc).await.unwrap(), w);
        // followed by more bytes on the stream: exactly `len` are read
        let mut stream = bytes.clone();
        stream.extend_from_slice(b"next");
        let mut r = &stream[..];
        read_weight_set(&mut r, bytes.len() as u64, crc)
            .await
            .unwrap();
        assert_eq!(r, b"next");
        // an F16 tensor is widened as from_safetensors widens it
        let f16 = f16_safetensors();
        let got = read(&f16, crc32fast::hash(&f16)).await.unwrap();
        assert_eq!(got, WeightSet::from_safetensors(&f16).unwrap());
        assert_eq!(got.tensors["h"].data, vec![1.5, -0.25]);
    }

    #[tokio::test]
    async fn a_corrupted_or_malformed_payload_yields_no_weights() {
        let bytes = weights().to_safetensors().unwrap();
        let crc = crc32fast::hash(&bytes);
        // a flipped bit, in the header or in the data: the checksum names it
        for at in [9, bytes.len() - 2] {
            let mut bad = bytes.clone();
            bad[at] ^= 0x10;
            let e = read(&bad, crc).await.unwrap_err().to_string();
            assert!(e.starts_with("weights checksum mismatch"), "{e}");
        }
        // a layout that does not tile the data, with a matching checksum
        let mut short = bytes.clone();
        short.truncate(bytes.len() - 4);
        let e = read(&short, crc32fast::hash(&short)).await.unwrap_err();
        assert!(e.to_string().contains("do not fit"), "{e}");
        // a header size past the payload
        let mut huge = bytes.clone();
        huge[..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
        let e = read(&huge, crc32fast::hash(&huge)).await.unwrap_err();
        assert!(e.to_string().contains("a header of"), "{e}");
        // not float
        let ints = [1u8, 0, 0, 0];
        let view =
            safetensors::tensor::TensorView::new(safetensors::Dtype::I32, vec![1], &ints).unwrap();
        let i32s = safetensors::serialize([("i", view)], None).unwrap();
        let e = read(&i32s, crc32fast::hash(&i32s)).await.unwrap_err();
        assert!(e.to_string().contains("only float tensors"), "{e}");
        // the header of the protocol frames the same bytes
        assert_eq!(weights_header(&bytes)[8..], crc.to_le_bytes());
    }
}
