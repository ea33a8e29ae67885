//! `[federation.compression]` end to end: real tiny `simulate` runs (the default ResNet-8,
//! 78k weights, so the safetensors header is small beside the data) with every update
//! encoding; the bytes the coordinator received per round shrink as each encoding states
//! and the one-round global backbone stays close to the uncompressed run's.

// A test file: a failed unwrap is a failed test, in helpers as in `#[test]` functions.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use fedssl_coordinator::run::job::{run_job, Job, Mode};
use fedssl_shared::weights::WeightSet;
use fedssl_tests::tiny;
use serde_json::Value;

/// One round of the tiny scenario with the default backbone and `compression` (a TOML
/// value) into `out`; returns the bytes received in the round and the final weights.
async fn one_round(compression: &str, out: &Path) -> (u64, WeightSet) {
    let set = [
        "model.resnet.stem_width=16".to_string(),
        "model.resnet.widths=[16, 32, 64]".to_string(),
        "model.resnet.blocks=[1, 1, 1]".to_string(),
        "federation.rounds=1".to_string(),
        "data.train_images=120".to_string(),
        format!("federation.compression={compression}"),
    ];
    let refs: Vec<&str> = set.iter().map(String::as_str).collect();
    run_job(Job {
        scenario: tiny(&refs),
        out: out.to_path_buf(),
        mode: Mode::Simulate,
        progress: false,
        resume: false,
    })
    .await
    .unwrap();
    let line = std::fs::read_to_string(out.join("rounds.jsonl")).unwrap();
    let r: Value = serde_json::from_str(line.lines().next().unwrap()).unwrap();
    assert_eq!(
        r["dropped"].as_array().unwrap().len(),
        0,
        "{compression}: {r}"
    );
    let w = WeightSet::load(&out.join("final.safetensors")).unwrap();
    (r["bytes_received"].as_u64().unwrap(), w)
}

fn max_diff(a: &WeightSet, b: &WeightSet) -> f32 {
    let mut m = 0f32;
    for (name, t) in &a.tensors {
        for (x, y) in t.data.iter().zip(&b.tensors[name].data) {
            m = m.max((x - y).abs());
        }
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_encoding_shrinks_the_update_and_keeps_the_weights_close() {
    let dir = tempfile::tempdir().unwrap();
    let (none_bytes, none) = one_round("\"none\"", &dir.path().join("none")).await;
    let (default_bytes, default) = one_round("{kind = \"none\"}", &dir.path().join("n2")).await;
    assert_eq!((default_bytes, &default), (none_bytes, &none));
    let cases = [
        // measured: 1.2e-6, 8.5e-6, 1.6e-5, 2.6e-3 (the bounds leave 5-8× room)
        ("\"fp16\"", 1.9, 1e-5),
        ("\"bf16\"", 1.9, 5e-5),
        ("\"int8\"", 3.5, 1e-4),
        ("{kind = \"topk\", fraction = 0.1}", 4.0, 2e-2),
    ];
    for (cfg, min_ratio, tol) in cases {
        let name = cfg.replace(['"', '{', '}', ' ', '=', ',', '.'], "");
        let (bytes, w) = one_round(cfg, &dir.path().join(name)).await;
        let ratio = none_bytes as f64 / bytes as f64;
        let d = max_diff(&w, &none);
        println!("{cfg}: {bytes} bytes received ({ratio:.2}× fewer than {none_bytes}), max |w − w_none| {d:.2e}");
        assert!(ratio >= min_ratio, "{cfg}: only {ratio:.2}× fewer bytes");
        assert!(d <= tol, "{cfg}: weights {d} from the uncompressed run's");
        // BatchNorm running statistics travel exactly: a one-round global mean of exact
        // statistics equals the uncompressed run's up to the f64 sum's rounding
        let rv = "stem.bn.running_var";
        for (x, y) in w.tensors[rv].data.iter().zip(&none.tensors[rv].data) {
            assert!((x - y).abs() <= 1e-6, "{cfg}: {rv} {x} vs {y}");
        }
    }
}
