//! Known answers and round trips of the update encodings.

use std::collections::BTreeMap;

use safetensors::SafeTensors;

use super::*;
use crate::config::compression::{Int8Config, LossyConfig, TopKConfig};

fn one(enc: &dyn UpdateEncoding, shape: &[usize], delta: &[f32]) -> (Vec<Entry>, Vec<f32>) {
    let entries = enc.encode("w", shape, delta).unwrap();
    let back = decode_entries(enc, "w", shape, &entries).unwrap();
    (entries, back)
}

#[test]
fn fp16_and_bf16_known_bits_and_error() {
    let (e, back) = one(&fp16::Fp16, &[3], &[1.0, -2.5, 0.1]);
    assert_eq!(&e[0].bytes[..2], &0x3C00u16.to_le_bytes());
    assert_eq!(back[..2], [1.0, -2.5]);
    assert!((back[2] - 0.1).abs() <= 0.1 * 2f32.powi(-11));
    let err = fp16::Fp16
        .encode("w", &[1], &[1e5])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`w`[0] = 100000") && err.contains("65504"),
        "{err}"
    );
    let (e, back) = one(&bf16::Bf16, &[2], &[1.0, 3.0e30]);
    assert_eq!(&e[0].bytes[..2], &0x3F80u16.to_le_bytes());
    assert!((back[1] - 3.0e30).abs() <= 3.0e30 * 2f32.powi(-8));
}

#[test]
fn int8_per_channel_known_codes() {
    let enc = int8::Int8 { per_channel: true };
    let d = [1.0, -2.0, 0.5, 0.0, 0.0, 0.0];
    let (e, back) = one(&enc, &[2, 3], &d);
    // row 0: s = 2/127; 1/s = 63.5 → 64, −2/s = −127, 0.5/s = 31.75 → 32; row 1: s = 0
    assert_eq!(e[0].bytes, vec![64u8, (-127i8) as u8, 32, 0, 0, 0]);
    assert_eq!(e[1].shape, vec![2]);
    let s = 2.0f32 / 127.0;
    for (a, b) in d.iter().zip(&back) {
        assert!((a - b).abs() <= s / 2.0 + 1e-7, "{a} vs {b}");
    }
    let per_tensor = int8::Int8 { per_channel: false };
    let (e, _) = one(&per_tensor, &[2, 3], &d);
    assert_eq!(e[1].shape, vec![1]);
}

#[test]
fn topk_keeps_the_largest_ties_to_lower_index() {
    let enc = topk::TopK { fraction: 0.4 };
    let (e, back) = one(&enc, &[5], &[0.1, -3.0, 2.0, 0.5, -2.0]);
    assert_eq!(
        e[0].bytes,
        [1u32, 2]
            .iter()
            .flat_map(|i| i.to_le_bytes())
            .collect::<Vec<_>>()
    );
    assert_eq!(back, vec![0.0, -3.0, 2.0, 0.0, 0.0]);
    assert_eq!(topk::TopK { fraction: 0.001 }.k(10), 1);
    assert_eq!(topk::TopK { fraction: 1.0 }.k(10), 10);
}

fn weights() -> (WeightSet, WeightSet) {
    let mut g = BTreeMap::new();
    let mut t = BTreeMap::new();
    let conv: Vec<f32> = (0..64).map(|i| (i as f32 * 0.37).sin()).collect();
    let trained: Vec<f32> = conv
        .iter()
        .enumerate()
        .map(|(i, v)| v + ((i * 7 % 13) as f32 - 6.0) * 0.01)
        .collect();
    g.insert(
        "c.weight".to_string(),
        TensorData {
            shape: vec![4, 16],
            data: conv,
        },
    );
    t.insert(
        "c.weight".to_string(),
        TensorData {
            shape: vec![4, 16],
            data: trained,
        },
    );
    g.insert(
        "bn.running_var".to_string(),
        TensorData {
            shape: vec![2],
            data: vec![1.0, 1.0],
        },
    );
    t.insert(
        "bn.running_var".to_string(),
        TensorData {
            shape: vec![2],
            data: vec![0.123_456_79, 7.5],
        },
    );
    (WeightSet { tensors: g }, WeightSet { tensors: t })
}

fn kinds() -> Vec<CompressionConfig> {
    vec![
        CompressionConfig::Fp16(LossyConfig::default()),
        CompressionConfig::Bf16(LossyConfig::default()),
        CompressionConfig::Int8(Int8Config::default()),
        CompressionConfig::TopK(TopKConfig {
            fraction: 1.0,
            error_feedback: false,
        }),
    ]
}

#[test]
fn every_kind_round_trips_with_exact_batchnorm_statistics() {
    let (g, t) = weights();
    let none = encode_update(&CompressionConfig::default(), &g, &t, None).unwrap();
    assert_eq!(none, t.to_safetensors().unwrap());
    assert_eq!(
        decode_update(&CompressionConfig::default(), &g, &none).unwrap(),
        t
    );
    for cfg in kinds() {
        let p = encode_update(&cfg, &g, &t, None).unwrap();
        let w = decode_update(&cfg, &g, &p).unwrap();
        assert_eq!(
            w.tensors["bn.running_var"],
            t.tensors["bn.running_var"],
            "{}",
            cfg.name()
        );
        let err = w.tensors["c.weight"]
            .data
            .iter()
            .zip(&t.tensors["c.weight"].data)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        // the largest Δ is 0.06: int8's error ≤ 0.06/254; fp16/bf16 relative to Δ
        assert!(err <= 3e-4, "{}: {err}", cfg.name());
    }
}

#[test]
fn payload_sizes_shrink_as_stated() {
    let (g, t) = weights();
    let size = |cfg: &CompressionConfig| encode_update(cfg, &g, &t, None).unwrap().len();
    let none = size(&CompressionConfig::default());
    let int8 = size(&CompressionConfig::Int8(Int8Config::default()));
    // 64 conv values: 256 bytes as f32, 64 + 16 (scales) as int8; the header dominates here,
    // so compare the data parts through the headers' difference
    assert!(int8 < none, "{int8} vs {none}");
}

#[test]
fn wrong_kind_missing_extra_and_bad_entries_are_refused() {
    let (g, t) = weights();
    let fp16 = CompressionConfig::Fp16(LossyConfig::default());
    let int8 = CompressionConfig::Int8(Int8Config::default());
    let p = encode_update(&fp16, &g, &t, None).unwrap();
    let e = decode_update(&int8, &g, &p).unwrap_err().to_string();
    assert!(
        e.contains("encoded as `fp16`") && e.contains("`int8`"),
        "{e}"
    );
    // a global tensor the update lacks
    let mut g2 = g.clone();
    g2.tensors.insert(
        "extra.weight".into(),
        TensorData {
            shape: vec![1],
            data: vec![0.0],
        },
    );
    let e = decode_update(&fp16, &g2, &p).unwrap_err().to_string();
    assert!(e.contains("no entry `extra.weight`"), "{e}");
    // an entry no tensor uses
    let mut smaller = g.clone();
    smaller.tensors.remove("c.weight");
    let e = decode_update(&fp16, &smaller, &p).unwrap_err().to_string();
    assert!(
        e.contains("entries of no backbone tensor") && e.contains("c.weight"),
        "{e}"
    );
    // top-k indices out of order
    let enc = topk::TopK { fraction: 0.5 };
    let mut entries = enc.encode("w", &[4], &[1.0, 2.0, 3.0, 4.0]).unwrap();
    entries[0].bytes = [3u32, 2].iter().flat_map(|i| i.to_le_bytes()).collect();
    let bytes = serialize(&entries, "topk").unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let e = enc.decode("w", &[4], &st).unwrap_err().to_string();
    assert!(e.contains("not increasing"), "{e}");
    assert!(decode_update(&fp16, &g, b"garbage").is_err());
}

#[test]
fn error_feedback_sends_everything_eventually() {
    // two rounds of the same Δ with top-50 %: what was sent plus the residual is exactly 2Δ
    let (g, t) = weights();
    let cfg = CompressionConfig::TopK(TopKConfig {
        fraction: 0.5,
        error_feedback: true,
    });
    let mut residual = WeightSet {
        tensors: BTreeMap::new(),
    };
    let mut sent = vec![0f64; 64];
    for _ in 0..2 {
        let p = encode_update(&cfg, &g, &t, Some(&mut residual)).unwrap();
        let w = decode_update(&cfg, &g, &p).unwrap();
        for (i, (a, b)) in w.tensors["c.weight"]
            .data
            .iter()
            .zip(&g.tensors["c.weight"].data)
            .enumerate()
        {
            sent[i] += (a - b) as f64;
        }
    }
    let delta: Vec<f64> = t.tensors["c.weight"]
        .data
        .iter()
        .zip(&g.tensors["c.weight"].data)
        .map(|(a, b)| (a - b) as f64)
        .collect();
    for i in 0..64 {
        let total = sent[i] + residual.tensors["c.weight"].data[i] as f64;
        assert!(
            (total - 2.0 * delta[i]).abs() < 1e-6,
            "{i}: {total} vs {}",
            2.0 * delta[i]
        );
    }
    assert!(
        !residual.tensors.contains_key("bn.running_var"),
        "exact tensors keep no residual"
    );
}
