//! Large backbones through files instead of memory (`federation.spool_above_bytes`, on by
//! default above 256 MiB, for uncompressed updates without secure aggregation).
//!
//! Held in memory, a round of a model of M bytes costs the coordinator the global weights
//! (M), the `f64` running sum (2 M) and the update being added (M): 4 M, 4.4× with what
//! else a process holds, for a 1 GB backbone. Spooled, the round's global weights are
//! written once to `<out>/spool/global-rNNNN.safetensors`, sent to every client from that
//! file in [`SEND_CHUNK`] pieces, and dropped from memory until the server step; each update
//! is written to `<out>/spool/rNNNN-client-K.safetensors` as it arrives (its CRC-32 checked
//! on the way), then checked and added to the running sum one tensor at a time
//! ([`crate::strategy::RoundAggregator::add_file`]) and deleted. What remains is the sum
//! (2 M) and bounded buffers: one tensor, the QUIC windows, the send chunks in flight. The
//! page cache holds the files; it is the kernel's, reclaimable, and not the process's.
//! The round's result is the same, bit for bit, as the in-memory path's.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use fedssl_shared::protocol::read_weights_header;
use fedssl_shared::weights::WeightSet;
use fedssl_shared::weights_file::WeightsFile;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use crate::server::client_round::GlobalPayload;

/// Bytes of a global payload read from its file and handed to a client's stream at once.
pub const SEND_CHUNK: usize = 4 << 20;

/// Bytes of an arriving update read from the stream and written to its file at once.
const RECEIVE_CHUNK: usize = 1 << 20;

/// A run's spool folder, `<out>/spool`: removed with everything in it when dropped.
pub struct Spool {
    dir: PathBuf,
}

impl Spool {
    /// Creates `<out>/spool`, emptied of what an interrupted run left there. Errors name
    /// the folder.
    pub fn create(out: &Path) -> Result<Self> {
        Self::remove_stale(out)?;
        let dir = out.join("spool");
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(Self { dir })
    }

    /// Removes `<out>/spool`, what an interrupted spooled run left, for a run that does not
    /// spool (so that the folder never holds two runs' files). Errors name the folder.
    pub fn remove_stale(out: &Path) -> Result<()> {
        let dir = out.join("spool");
        if dir.is_dir() {
            std::fs::remove_dir_all(&dir)
                .with_context(|| format!("cannot remove {}", dir.display()))?;
        }
        Ok(())
    }

    /// The file of round `round`'s global weights.
    fn global_path(&self, round: u32) -> PathBuf {
        self.dir.join(format!("global-r{round:04}.safetensors"))
    }

    /// Writes `global`, the weights round `round` (0-based) starts from, to the spool and
    /// returns the payload that sends them from there. Memory: the weights and their
    /// serialised bytes, until this returns.
    pub fn global_payload(&self, round: u32, global: &WeightSet) -> Result<GlobalPayload> {
        GlobalPayload::in_file(&self.global_path(round), global)
    }

    /// Round `round`'s global weights, read back from the spool (for a server step that
    /// reads them, [`crate::strategy::Strategy::apply_reads_global`]).
    pub fn global(&self, round: u32) -> Result<WeightSet> {
        WeightsFile::open(&self.global_path(round))?.load()
    }

    /// Deletes round `round`'s global weights file (clients still reading it keep it open).
    pub fn end_round(&self, round: u32) {
        let _ = std::fs::remove_file(self.global_path(round));
    }

    /// Reads client `id`'s weights payload of round `round` (at most `max_bytes`) from `r`
    /// into a spool file, checking its CRC-32 as the bytes arrive, and opens it. Returns the
    /// update and the bytes read. Errors: the payload is too large, the stream ends early, the
    /// checksum differs, the bytes are not a valid safetensors layout, the disk refuses the
    /// file; the file is then deleted.
    pub async fn receive<R: AsyncRead + Unpin>(
        &self,
        r: &mut R,
        max_bytes: u64,
        round: u32,
        id: u32,
    ) -> Result<(SpooledUpdate, u64)> {
        let (len, crc) = read_weights_header(r, max_bytes).await?;
        let path = self
            .dir
            .join(format!("r{round:04}-client-{id}.safetensors"));
        let guard = Removed(path.clone());
        let mut file = tokio::fs::File::create(&path)
            .await
            .with_context(|| format!("cannot create {}", path.display()))?;
        let mut hasher = crc32fast::Hasher::new();
        let mut buf = vec![0u8; RECEIVE_CHUNK.min(len as usize)];
        let mut left = len;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            r.read_exact(&mut buf[..n])
                .await
                .context("connection lost inside the weights")?;
            hasher.update(&buf[..n]);
            file.write_all(&buf[..n])
                .await
                .with_context(|| format!("cannot write {}", path.display()))?;
            left -= n as u64;
        }
        file.flush()
            .await
            .with_context(|| format!("cannot write {}", path.display()))?;
        drop(file);
        let got = hasher.finalize();
        if got != crc {
            bail!("weights checksum mismatch (announced {crc:08x}, computed {got:08x})");
        }
        let file = WeightsFile::open(&path)?;
        Ok((
            SpooledUpdate {
                file,
                _removed: guard,
            },
            12 + len,
        ))
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A path deleted when this is dropped.
struct Removed(PathBuf);

impl Drop for Removed {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// An update spooled to disk whose CRC and layout passed; its file is deleted when this is
/// dropped.
pub struct SpooledUpdate {
    file: WeightsFile,
    _removed: Removed,
}

impl SpooledUpdate {
    /// The update's file, to be read tensor by tensor.
    pub fn file(&self) -> &WeightsFile {
        &self.file
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fedssl_shared::protocol::weights_header;
    use fedssl_shared::weights::TensorData;

    fn weights() -> WeightSet {
        let mut w = WeightSet::default();
        for (name, n) in [("a.weight", 6usize), ("b.bias", 1)] {
            w.tensors.insert(
                name.into(),
                TensorData {
                    shape: vec![n],
                    data: (0..n).map(|i| i as f32 * 0.75 - 1.0).collect(),
                },
            );
        }
        w
    }

    fn payload(w: &WeightSet) -> Vec<u8> {
        let bytes = w.to_safetensors().unwrap();
        [&weights_header(&bytes)[..], &bytes].concat()
    }

    #[tokio::test]
    async fn an_update_is_spooled_whole_then_deleted_and_the_folder_with_the_spool() {
        let out = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(out.path().join("spool/stale")).unwrap();
        Spool::remove_stale(out.path()).unwrap();
        assert!(!out.path().join("spool").exists());
        std::fs::create_dir_all(out.path().join("spool/stale")).unwrap();
        let spool = Spool::create(out.path()).unwrap();
        assert!(!out.path().join("spool/stale").exists());
        let w = weights();
        let p = payload(&w);
        let mut r = &p[..];
        let (u, n) = spool.receive(&mut r, 1 << 20, 3, 7).await.unwrap();
        assert_eq!(n, p.len() as u64);
        let path = out.path().join("spool/r0003-client-7.safetensors");
        assert_eq!(u.file().path(), path);
        assert_eq!(u.file().load().unwrap(), w);
        drop(u);
        assert!(!path.exists());
        // the global weights: written, read back, deleted at the round's end
        let g = spool.global_payload(3, &w).unwrap();
        assert_eq!(g.len(), p.len() - 12);
        assert_eq!(spool.global(3).unwrap(), w);
        spool.end_round(3);
        assert!(spool.global(3).is_err());
        drop(spool);
        assert!(!out.path().join("spool").exists());
    }

    #[tokio::test]
    async fn a_corrupted_short_or_oversized_update_leaves_no_file() {
        let out = tempfile::tempdir().unwrap();
        let spool = Spool::create(out.path()).unwrap();
        let good = payload(&weights());
        let mut flipped = good.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        let short = &good[..good.len() - 3];
        for (bytes, max, want) in [
            (&flipped[..], 1 << 20, "checksum mismatch"),
            (short, 1 << 20, "connection lost inside the weights"),
            (&good[..], 10, "the limit is 10"),
        ] {
            let mut r = bytes;
            let e = spool.receive(&mut r, max, 0, 1).await.err().unwrap();
            assert!(format!("{e:#}").contains(want), "{e:#}");
            assert_eq!(
                std::fs::read_dir(out.path().join("spool")).unwrap().count(),
                0
            );
        }
    }
}
