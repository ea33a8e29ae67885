//! End-to-end: the real coordinator and clients over loopback QUIC, on tiny synthetic data.

use std::path::Path;

use fedssl_coordinator::job::{run_job, Job, Mode};
use fedssl_shared::scenario::Scenario;
use fedssl_shared::weights::WeightSet;
use serde_json::Value;

const TINY: &str = r#"
name = "tiny"
seed = 3
[data]
dataset = "synthetic"
train_images = 240
test_images = 120
[partition]
kind = "dirichlet"
alpha = 1.0
[model.resnet]
stem_width = 4
widths = [4, 8]
blocks = [1, 1]
[train]
batch_size = 16
[federation]
clients = 3
min_clients = 2
rounds = 2
round_deadline_seconds = 120
idle_timeout_seconds = 5
[eval]
epochs = 20
"#;

fn scenario(extra: &[&str]) -> Scenario {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FEDSSL_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
    let overrides: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    Scenario::from_toml_str(TINY, &overrides).unwrap()
}

/// Runs `sc` as `fedssl-coordinator simulate` would, into `out`, without progress bars.
async fn simulate(sc: Scenario, out: &Path) -> anyhow::Result<fedssl_coordinator::job::Summary> {
    run_job(Job {
        scenario: sc,
        out: out.to_path_buf(),
        mode: Mode::Simulate,
        progress: false,
    })
    .await
}

fn read_rounds(out: &Path) -> Vec<Value> {
    std::fs::read_to_string(out.join("rounds.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulate_three_clients_two_rounds_writes_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let summary = simulate(scenario(&[]), &out).await.unwrap();
    assert_eq!(summary.rounds_completed, 2);

    let s: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(s["scenario"], "tiny");
    assert_eq!(s["seed"], 3);
    assert_eq!(s["rounds_completed"], 2);
    assert_eq!(s["clients"], 3);
    assert_eq!(s["pretext"], "rotation");
    assert_eq!(s["backbone"], "resnet");
    assert_eq!(s["strategy"], "fedavg");
    assert!(s["wall_seconds"].as_f64().unwrap() > 0.0);
    let (sent, recv) = (
        s["bytes_sent"].as_u64().unwrap(),
        s["bytes_received"].as_u64().unwrap(),
    );
    // Each round sends the backbone to 3 clients and receives 3 back: at least 6 × 2 payloads.
    let backbone_bytes = 4 * s["backbone_values"].as_u64().unwrap();
    assert!(
        sent >= 6 * backbone_bytes && recv >= 6 * backbone_bytes,
        "sent {sent}, received {recv}"
    );
    for key in ["top1", "top5"] {
        for v in [
            &s["eval"]["linear"][key],
            &s["eval"]["random_init"]["linear"][key],
        ] {
            let v = v.as_f64().unwrap();
            assert!((0.0..=1.0).contains(&v), "{key} = {v}");
        }
    }
    assert!(s["eval"]["linear"]["top5"].as_f64() >= s["eval"]["linear"]["top1"].as_f64());
    assert_eq!(s["eval"]["linear"]["train_labels"], 240);
    assert_eq!(s["eval"]["linear"]["test_images"], 120);

    let rounds = read_rounds(&out);
    assert_eq!(rounds.len(), 2);
    for (i, r) in rounds.iter().enumerate() {
        assert_eq!(r["round"], i as u64 + 1);
        assert_eq!(r["clients"], serde_json::json!([0, 1, 2]));
        assert_eq!(r["dropped"], serde_json::json!([]));
        for c in ["0", "1", "2"] {
            let loss = r["loss"][c].as_f64().unwrap();
            assert!(loss.is_finite() && loss > 0.0);
            let acc = r["accuracy"][c].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&acc));
        }
        let samples: u64 = ["0", "1", "2"]
            .iter()
            .map(|c| r["samples"][*c].as_u64().unwrap())
            .sum();
        assert_eq!(
            samples, 240,
            "every training image belongs to exactly one client"
        );
        assert!(r["seconds"].as_f64().unwrap() > 0.0);
        assert!(r["bytes_sent"].as_u64().unwrap() > 0 && r["bytes_received"].as_u64().unwrap() > 0);
    }

    let r1 = WeightSet::load(&out.join("checkpoints/round-0001.safetensors")).unwrap();
    let r2 = WeightSet::load(&out.join("checkpoints/round-0002.safetensors")).unwrap();
    let fin = WeightSet::load(&out.join("final.safetensors")).unwrap();
    assert_eq!(
        fin, r2,
        "final.safetensors is the last round's global backbone"
    );
    assert_ne!(r1, r2, "the backbone changed between rounds");
    r1.check_same_layout(&r2).unwrap();
    assert!(
        fin.tensors.keys().any(|k| k.ends_with("running_mean")),
        "BN statistics travel"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_seed_same_weights() {
    let dir = tempfile::tempdir().unwrap();
    let mut finals = Vec::new();
    for i in 0..2 {
        let out = dir.path().join(format!("run{i}"));
        let sc = scenario(&["federation.rounds=1", "eval.enabled=false"]);
        simulate(sc, &out).await.unwrap();
        finals.push(WeightSet::load(&out.join("final.safetensors")).unwrap());
    }
    assert_eq!(finals[0], finals[1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_mid_round_is_dropped_and_the_run_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let sc = scenario(&[
        "eval.enabled=false",
        "simulation.faults=[{client = 1, round = 2, kind = \"disconnect\"}]",
    ]);
    let summary = simulate(sc, &out).await.unwrap();
    assert_eq!(summary.rounds_completed, 2);
    let rounds = read_rounds(&out);
    assert_eq!(rounds[0]["clients"], serde_json::json!([0, 1, 2]));
    assert_eq!(rounds[1]["clients"], serde_json::json!([0, 2]));
    assert_eq!(rounds[1]["dropped"], serde_json::json!([1]));
    let samples: u64 = ["0", "2"]
        .iter()
        .map(|c| rounds[1]["samples"][*c].as_u64().unwrap())
        .sum();
    assert!(samples < 240);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_client_misses_the_deadline_and_the_round_completes() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let sc = scenario(&[
        "eval.enabled=false",
        "federation.rounds=1",
        "data.train_images=48",
        "federation.round_deadline_seconds=60",
        "simulation.faults=[{client = 0, round = 1, kind = \"stall\"}]",
    ]);
    let summary = simulate(sc, &out).await.unwrap();
    assert_eq!(summary.rounds_completed, 1);
    let rounds = read_rounds(&out);
    assert_eq!(rounds[0]["clients"], serde_json::json!([1, 2]));
    assert_eq!(rounds[0]["dropped"], serde_json::json!([0]));
    assert!(rounds[0]["dropped_reasons"]["0"]
        .as_str()
        .unwrap()
        .contains("deadline"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_few_survivors_fail_the_run_but_keep_completed_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let sc = scenario(&[
        "eval.enabled=false",
        "federation.min_clients=3",
        "simulation.faults=[{client = 2, round = 2, kind = \"disconnect\"}]",
    ]);
    let err = simulate(sc, &out).await.unwrap_err();
    assert!(format!("{err:#}").contains("min_clients"), "{err:#}");
    assert!(out.join("checkpoints/round-0001.safetensors").exists());
    assert!(!out.join("checkpoints/round-0002.safetensors").exists());
    assert!(!out.join("final.safetensors").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_round_of_mae_on_a_tiny_vit() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let sc = scenario(&[
        "model.backbone=\"vit\"",
        "model.vit.dim=32",
        "model.vit.depth=1",
        "model.vit.heads=2",
        "pretext.task=\"mae\"",
        "pretext.mae.decoder_dim=16",
        "pretext.mae.decoder_heads=2",
        "federation.rounds=1",
        "eval.epochs=5",
    ]);
    let summary = simulate(sc, &out).await.unwrap();
    assert_eq!(summary.rounds_completed, 1);
    let s: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(s["pretext"], "mae");
    assert_eq!(s["backbone"], "vit");
    assert_eq!(s["rounds_completed"], 1);
    let top1 = s["eval"]["linear"]["top1"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&top1));
    let rounds = read_rounds(&out);
    assert_eq!(rounds.len(), 1);
    assert_eq!(
        rounds[0]["accuracy"],
        serde_json::json!({}),
        "MAE has no accuracy"
    );
    for c in ["0", "1", "2"] {
        let loss = rounds[0]["loss"][c].as_f64().unwrap();
        assert!(loss.is_finite() && loss > 0.0);
    }
    // only the encoder travels: no decoder (`head.*`) in the global weights
    let fin = WeightSet::load(&out.join("final.safetensors")).unwrap();
    assert!(fin.tensors.keys().all(|k| !k.starts_with("head.")));
    assert!(fin.tensors.contains_key("blocks.0.attn.qkv.weight"));
}

#[test]
fn mae_without_the_vit_backbone_is_refused_naming_both_keys() {
    let overrides = vec!["pretext.task=\"mae\"".to_string()];
    let err = Scenario::from_toml_str(TINY, &overrides)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("pretext.task") && err.contains("model.backbone"),
        "{err}"
    );
}
