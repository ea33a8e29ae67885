//! End-to-end: secure aggregation (`[federation.secure_aggregation]`) over loopback QUIC on
//! tiny synthetic data — the unmasked mean equals plain FedAvg's within the quantisation
//! error, also with a client that leaves before masking and one that leaves after; fewer
//! survivors than the threshold fail the round, nothing aggregated; the combinations it
//! cannot serve are refused when the scenario loads.

// A test file: a failed unwrap is a failed test, in helpers as in `#[test]` functions.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use fedssl_coordinator::run::job::{run_job, Job, Mode};
use fedssl_coordinator::run::outputs::Summary;
use fedssl_shared::config::Scenario;
use fedssl_shared::weights::WeightSet;
use fedssl_tests::tiny;
use serde_json::Value;

async fn run(sc: Scenario, out: &Path) -> anyhow::Result<Summary> {
    run_job(Job {
        scenario: sc,
        out: out.to_path_buf(),
        mode: Mode::Simulate,
        progress: false,
        resume: false,
    })
    .await
}

fn lines(out: &Path) -> Vec<Value> {
    std::fs::read_to_string(out.join("rounds.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn ids(v: &Value) -> Vec<u64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect()
}

/// One round of 5 clients; client 1 disconnects in it (plain: its update never comes;
/// secure: after the shares, before masking, so its pairwise masks are removed from the
/// survivors' shares of its mask key) and, under secure aggregation, client 3 leaves after
/// sending its masked vector (its self mask removed from the survivors' shares of its seed).
/// Both runs aggregate clients 0, 2, 3 and 4.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secure_fedavg_equals_plain_fedavg_within_the_quantisation_error() {
    let dir = tempfile::tempdir().unwrap();
    let base = [
        "federation.clients=5",
        "federation.rounds=1",
        "eval.enabled=false",
    ];
    let plain_dir = dir.path().join("plain");
    let mut plain = base.to_vec();
    plain.push("simulation.faults=[{client = 1, round = 1, kind = \"disconnect\"}]");
    let s = run(tiny(&plain), &plain_dir).await.unwrap();
    assert!(!s.secure_aggregation);

    let secure_dir = dir.path().join("secure");
    let mut secure = base.to_vec();
    secure.push("simulation.faults=[{client = 1, round = 1, kind = \"disconnect\"}, {client = 3, round = 1, kind = \"drop_after_masking\"}]");
    secure.push("federation.secure_aggregation={enabled = true, threshold = 3}");
    let sc = tiny(&secure);
    let (c, r) = (
        sc.federation.secure_aggregation.clip_range as f64,
        sc.federation.secure_aggregation.quant_range as f64,
    );
    let s = run(sc, &secure_dir).await.unwrap();
    assert!(s.secure_aggregation);
    assert_eq!(s.rounds_completed, 1);
    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(secure_dir.join("summary.json")).unwrap())
            .unwrap();
    assert_eq!(summary["secure_aggregation"], Value::Bool(true));

    let (p, q) = (&lines(&plain_dir)[0], &lines(&secure_dir)[0]);
    assert_eq!(ids(&p["clients"]), vec![0, 2, 3, 4]);
    assert_eq!(ids(&q["clients"]), vec![0, 2, 3, 4]);
    assert_eq!(ids(&q["dropped"]), vec![1]);
    assert_eq!(q["samples"], p["samples"]);
    let sa = &q["secure_aggregation"];
    assert_eq!(sa["threshold"], 3);
    // 240 images in all: 240 · 2²² < 2³², so the 32-bit ring
    assert_eq!(sa["bits"], 32);
    assert_eq!(ids(&sa["advertised"]), vec![0, 1, 2, 3, 4]);
    assert_eq!(ids(&sa["shared"]), vec![0, 1, 2, 3, 4]);
    assert_eq!(ids(&sa["masked"]), vec![0, 2, 3, 4]);
    assert_eq!(ids(&sa["survivors"]), vec![0, 2, 4]);
    let after = sa["dropped_after_masking"].as_object().unwrap();
    assert_eq!(after.keys().collect::<Vec<_>>(), vec!["3"]);
    for phase in ["keys", "shares", "masked_upload", "unmasking"] {
        let ph = &sa["phases"][phase];
        assert!(ph["bytes_received"].as_u64().unwrap() > 0, "{phase}: {ph}");
        assert!(ph["seconds"].as_f64().unwrap() >= 0.0, "{phase}: {ph}");
    }
    assert!(sa["phases"]["keys"]["bytes_sent"].as_u64().unwrap() > 0);
    assert!(sa["phases"]["shares"]["bytes_sent"].as_u64().unwrap() > 0);
    assert!(sa["phases"]["unmasking"]["bytes_sent"].as_u64().unwrap() > 0);

    // The mean of Δ = w_k − w_global errs by at most c/R per value (quantize.rs); adding it
    // to w_global and rounding to f32 adds at most one ulp of |w| on each side (plain FedAvg
    // rounds its f64 mean once, the secure run its f64 sum once), and Δ itself was an f32
    // difference (half an ulp of |w| more).
    let w = |d: &Path| WeightSet::load(&d.join("final.safetensors")).unwrap();
    let (wp, ws) = (w(&plain_dir), w(&secure_dir));
    assert_eq!(
        wp.tensors.keys().collect::<Vec<_>>(),
        ws.tensors.keys().collect::<Vec<_>>()
    );
    let mut worst: f64 = 0.0;
    let mut changed = 0usize;
    let initial = WeightSet::load(&secure_dir.join("checkpoints/round-0001.safetensors")).unwrap();
    assert!(initial == ws);
    for (name, tp) in &wp.tensors {
        let ts = &ws.tensors[name.as_str()];
        for (a, b) in tp.data.iter().zip(&ts.data) {
            let ulp = (a.abs().max(b.abs()) as f64) * f32::EPSILON as f64;
            let bound = c / r * 1.0001 + 2.5 * ulp + 1e-12;
            let d = (*a as f64 - *b as f64).abs();
            assert!(
                d <= bound,
                "{name}: plain {a}, secure {b}, |Δ| {d} > {bound}"
            );
            worst = worst.max(d);
            changed += usize::from(a != b);
        }
    }
    eprintln!(
        "max |secure − plain| = {worst:e} (c/R = {:e}); {changed} of {} values differ",
        c / r,
        wp.num_values()
    );
}

/// Five clients, the default threshold ⌈2·5/3⌉ = 4: two leaving after masking in round 2
/// leave 3 survivors, too few to unmask; the round fails, nothing aggregated, round 1's
/// checkpoint the last.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fewer_survivors_than_the_threshold_fail_the_round_and_keep_the_weights() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let sc = tiny(&[
        "federation.clients=5",
        "eval.enabled=false",
        "federation.secure_aggregation.enabled=true",
        "simulation.faults=[{client = 3, round = 2, kind = \"drop_after_masking\"}, {client = 4, round = 2, kind = \"drop_after_masking\"}]",
    ]);
    let e = format!("{:#}", run(sc, &out).await.unwrap_err());
    assert!(
        e.contains("round 2")
            && e.contains("3 survivor(s) answered the unmasking, the threshold is 4; clients 3, 4 left after masking")
            && e.contains("nothing was aggregated"),
        "{e}"
    );
    let l = lines(&out);
    assert_eq!(l.len(), 2);
    assert!(l[0].get("failed").is_none());
    assert_eq!(l[0]["secure_aggregation"]["threshold"], 4);
    let failed = l[1]["failed"].as_str().unwrap();
    assert!(failed.contains("threshold is 4"), "{failed}");
    assert_eq!(ids(&l[1]["secure_aggregation"]["survivors"]), vec![0, 1, 2]);
    assert!(out.join("checkpoints/round-0001.safetensors").exists());
    assert!(!out.join("checkpoints/round-0002.safetensors").exists());
    assert!(!out.join("final.safetensors").exists());
}

#[test]
fn what_secure_aggregation_cannot_serve_is_refused_when_the_scenario_loads() {
    let on = "federation.secure_aggregation.enabled=true".to_string();
    for s in ["median", "trimmed_mean", "krum", "bulyan", "ldawa"] {
        let mut sets = vec![on.clone(), format!("federation.strategy=\"{s}\"")];
        if matches!(s, "krum" | "bulyan") {
            sets.push("federation.clients=7".into());
            sets.push("federation.min_clients=7".into());
        }
        let e = format!("{:#}", Scenario::from_toml_str("", &sets).unwrap_err());
        assert!(
            e.contains(&format!("`{s}`")) && e.contains("secure aggregation"),
            "{s}: {e}"
        );
    }
    let e = format!(
        "{:#}",
        Scenario::from_toml_str("", &[on.clone(), "federation.compression=\"int8\"".into()])
            .unwrap_err()
    );
    assert!(
        e.contains("federation.compression") && e.contains("secure_aggregation"),
        "{e}"
    );
    let e = format!(
        "{:#}",
        Scenario::from_toml_str(
            "",
            &["simulation.faults=[{client = 0, round = 1, kind = \"drop_after_masking\"}]".into()]
        )
        .unwrap_err()
    );
    assert!(
        e.contains("drop_after_masking") && e.contains("secure_aggregation"),
        "{e}"
    );
    // the scenario file reads
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let sc = Scenario::load(&root.join("scenarios/privacy/secure-aggregation.toml"), &[]).unwrap();
    assert!(sc.federation.secure_aggregation.enabled);
}

/// SecAgg+'s k-regular graph (`graph = "k_regular"`, k = 4 of 7 clients): client 1 leaves
/// before masking (its masks with its four neighbours removed through their shares of its
/// key) and client 4 after (its self mask rebuilt from its neighbours' shares). The masks
/// cancel exactly, so the weights are the same bytes as the complete graph's, and each
/// client sealed 4 share boxes instead of 6.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_k_regular_graph_gives_the_complete_graphs_weights_with_fewer_shares() {
    let dir = tempfile::tempdir().unwrap();
    let run_with = |graph: &'static str, out: std::path::PathBuf| async move {
        let sets = [
            "federation.clients=7",
            "federation.min_clients=5",
            "federation.rounds=1",
            "eval.enabled=false",
            "simulation.faults=[{client = 1, round = 1, kind = \"disconnect\"}, {client = 4, round = 1, kind = \"drop_after_masking\"}]",
            graph,
        ];
        run(tiny(&sets), &out).await.unwrap();
        out
    };
    let complete = run_with(
        "federation.secure_aggregation={enabled = true, threshold = 3}",
        dir.path().join("complete"),
    )
    .await;
    let sparse = run_with(
        "federation.secure_aggregation={enabled = true, threshold = 3, graph = \"k_regular\", k = 4}",
        dir.path().join("sparse"),
    )
    .await;
    let bytes = |d: &Path| std::fs::read(d.join("final.safetensors")).unwrap();
    assert!(
        bytes(&complete) == bytes(&sparse),
        "the k-regular run's weights differ from the complete graph's"
    );
    let (c, s) = (&lines(&complete)[0], &lines(&sparse)[0]);
    assert_eq!(ids(&s["clients"]), vec![0, 2, 3, 4, 5, 6]);
    assert_eq!(
        ids(&s["secure_aggregation"]["survivors"]),
        vec![0, 2, 3, 5, 6]
    );
    let shares = |r: &Value| {
        r["secure_aggregation"]["phases"]["shares"]["bytes_received"]
            .as_u64()
            .unwrap()
    };
    // 7 clients × 6 boxes against 7 × 4 (plus the same framing per message)
    assert!(
        shares(s) * 10 < shares(c) * 8,
        "k-regular shares {} B, complete {} B",
        shares(s),
        shares(c)
    );
}
