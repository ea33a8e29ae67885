//! TensorBoard event files of a run (`[logging] tensorboard = true` or `--tensorboard DIR`):
//! the per-round scalars of `rounds.jsonl` and the final probe accuracies, readable by
//! `tensorboard --logdir DIR`.
//!
//! No maintained Rust writer exists on crates.io (`tensorboard-rs` was last released in 2020,
//! on protobuf 2), so this file writes TensorFlow's documented record format itself: each
//! record is `u64` length (little-endian), masked CRC-32C of those 8 bytes, the data, masked
//! CRC-32C of the data (mask: `((crc >> 15) | (crc << 17)) + 0xa282ead8`). The data is a
//! protobuf `tensorflow.Event` (`wall_time` = 1 double, `step` = 2 int64, `file_version` = 3
//! string, `summary` = 5), the first record holding `file_version = "brain.Event:2"`, the
//! others a `Summary` (`value` = 1) of `Summary.Value`s (`tag` = 1 string, `simple_value` =
//! 2 float).
//!
//! Tags: `loss/mean`, `loss/client_K`, `accuracy/client_K` (pretext accuracy, when the task
//! has one), `knn/top1` (monitored rounds), `bytes/sent`, `bytes/received`, `round/seconds`,
//! `round/lr`, `clients/aggregated`, `clients/dropped`, the step being the 1-based round; and
//! after the evaluation `eval/linear_top1`, `eval/linear_top5`, `eval/mlp_top1`,
//! `eval/mlp_top5`, `eval/random_init_linear_top1`, `eval/random_init_mlp_top1`, at the
//! step of the last round. Accuracies are fractions in [0, 1].

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};

use crate::eval::suite::EvalSummary;
use crate::server::records::RoundRecord;

/// One event file being written.
pub struct EventWriter {
    file: BufWriter<File>,
    path: PathBuf,
}

impl EventWriter {
    /// Creates `<dir>/events.out.tfevents.<unix seconds>.<host>.<pid>.<part>` (the folder
    /// too) and writes its `file_version` record; `part` tells apart the files of one
    /// process (`rounds`, `eval`). Errors name the file.
    pub fn create(dir: &Path, part: &str) -> Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let secs = now().floor() as u64;
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "fedssl".into());
        let name = format!(
            "events.out.tfevents.{secs}.{host}.{}.{part}",
            std::process::id()
        );
        let path = dir.join(name);
        let file =
            File::create(&path).with_context(|| format!("cannot write {}", path.display()))?;
        let mut w = Self {
            file: BufWriter::new(file),
            path,
        };
        let mut ev = event_header(now(), 0);
        put_bytes(&mut ev, 3, b"brain.Event:2");
        w.record(&ev)?;
        w.flush()?;
        Ok(w)
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes one event at `step` holding the scalars `(tag, value)` (not yet flushed).
    pub fn scalars(&mut self, step: i64, values: &[(String, f64)]) -> Result<()> {
        let mut summary = Vec::new();
        for (tag, v) in values {
            let mut value = Vec::new();
            put_bytes(&mut value, 1, tag.as_bytes());
            value.push(0x15); // field 2, fixed32
            value.extend_from_slice(&(*v as f32).to_le_bytes());
            put_bytes(&mut summary, 1, &value);
        }
        let mut ev = event_header(now(), step);
        put_bytes(&mut ev, 5, &summary);
        self.record(&ev)
    }

    /// Writes the scalars of a round's record at its round number, and flushes.
    pub fn round(&mut self, rec: &RoundRecord) -> Result<()> {
        self.scalars(rec.round as i64, &round_scalars(rec))?;
        self.flush()
    }

    /// Writes the final probe accuracies of `e` at step `round` (the last round), and flushes.
    pub fn eval(&mut self, round: usize, e: &EvalSummary) -> Result<()> {
        self.scalars(round as i64, &eval_scalars(e))?;
        self.flush()
    }

    /// Flushes the buffered records to the file.
    pub fn flush(&mut self) -> Result<()> {
        self.file
            .flush()
            .with_context(|| format!("cannot write {}", self.path.display()))
    }

    /// Frames `data` as one record.
    fn record(&mut self, data: &[u8]) -> Result<()> {
        let len = (data.len() as u64).to_le_bytes();
        let mut buf = Vec::with_capacity(data.len() + 16);
        buf.extend_from_slice(&len);
        buf.extend_from_slice(&masked_crc(&len).to_le_bytes());
        buf.extend_from_slice(data);
        buf.extend_from_slice(&masked_crc(data).to_le_bytes());
        self.file
            .write_all(&buf)
            .with_context(|| format!("cannot write {}", self.path.display()))
    }
}

/// The scalars of one round: mean and per-client loss, pretext accuracy, k-NN top-1, bytes,
/// seconds, learning rate, clients aggregated and dropped.
pub fn round_scalars(rec: &RoundRecord) -> Vec<(String, f64)> {
    let mut v = Vec::new();
    if let Some(l) = rec.mean_loss {
        v.push(("loss/mean".to_string(), l));
    }
    for (id, l) in &rec.loss {
        v.push((format!("loss/client_{id}"), *l));
    }
    for (id, a) in &rec.accuracy {
        v.push((format!("accuracy/client_{id}"), *a));
    }
    if let Some(k) = rec.knn_top1 {
        v.push(("knn/top1".to_string(), k));
    }
    v.push(("bytes/sent".to_string(), rec.bytes_sent as f64));
    v.push(("bytes/received".to_string(), rec.bytes_received as f64));
    v.push(("round/seconds".to_string(), rec.seconds));
    v.push(("round/lr".to_string(), rec.lr));
    v.push(("clients/aggregated".to_string(), rec.clients.len() as f64));
    v.push(("clients/dropped".to_string(), rec.dropped.len() as f64));
    v
}

/// The final probe accuracies of an evaluation (fractions in [0, 1]).
pub fn eval_scalars(e: &EvalSummary) -> Vec<(String, f64)> {
    let mut v = vec![
        ("eval/linear_top1".to_string(), e.linear.top1),
        ("eval/linear_top5".to_string(), e.linear.top5),
    ];
    if let Some(m) = &e.mlp {
        v.push(("eval/mlp_top1".to_string(), m.top1));
        v.push(("eval/mlp_top5".to_string(), m.top5));
    }
    if let Some(r) = &e.random_init {
        v.push(("eval/random_init_linear_top1".to_string(), r.linear.top1));
        if let Some(m) = &r.mlp {
            v.push(("eval/random_init_mlp_top1".to_string(), m.top1));
        }
    }
    v
}

/// The masked CRC-32C TensorFlow records carry.
pub fn masked_crc(data: &[u8]) -> u32 {
    let crc = crc32c::crc32c(data);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// An `Event` message's `wall_time` (seconds since the Unix epoch) and `step` fields.
fn event_header(wall_time: f64, step: i64) -> Vec<u8> {
    let mut ev = vec![0x09]; // field 1, fixed64
    ev.extend_from_slice(&wall_time.to_le_bytes());
    ev.push(0x10); // field 2, varint
    put_varint(&mut ev, step as u64);
    ev
}

/// Appends field `field` as a length-delimited value.
fn put_bytes(buf: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_varint(buf, u64::from(field << 3 | 2));
    put_varint(buf, bytes.len() as u64);
    buf.extend_from_slice(bytes);
}

/// Appends `v` as a protobuf base-128 varint.
fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

/// Seconds since the Unix epoch.
fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masked_crc_of_known_inputs() {
        // CRC-32C("123456789") = 0xE3069283 (RFC 3720's check value); masked by hand:
        // rotr15 = 0x2507C60D, + 0xA282EAD8 = 0xC78AB0E5.
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(masked_crc(b"123456789"), 0xC78A_B0E5);
    }

    #[test]
    fn varints_and_fields_are_protobuf() {
        let mut b = Vec::new();
        put_varint(&mut b, 300);
        assert_eq!(b, [0xAC, 0x02]);
        let mut b = Vec::new();
        put_bytes(&mut b, 3, b"ab");
        assert_eq!(b, [0x1A, 2, b'a', b'b']);
    }
}
