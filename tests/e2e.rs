//! End-to-end: the real coordinator and clients over loopback QUIC, on tiny synthetic data.

// A test file: a failed unwrap is a failed test, in helpers as in `#[test]` functions.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use fedssl_coordinator::run::job::{run_job, Job, Mode};
use fedssl_shared::config::Scenario;
use fedssl_shared::weights::WeightSet;
use fedssl_tests::{tiny as scenario, TINY};
use serde_json::Value;

/// Runs `sc` as `fedssl-coordinator simulate` would, into `out`, without progress bars.
async fn simulate(
    sc: Scenario,
    out: &Path,
) -> anyhow::Result<fedssl_coordinator::run::outputs::Summary> {
    run(sc, out, false).await
}

/// `simulate`, or `simulate --resume` when `resume`.
async fn run(
    sc: Scenario,
    out: &Path,
    resume: bool,
) -> anyhow::Result<fedssl_coordinator::run::outputs::Summary> {
    run_job(Job {
        scenario: sc,
        out: out.to_path_buf(),
        mode: Mode::Simulate,
        progress: false,
        resume,
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

/// `federation.spool_above_bytes = 0` puts every round through the spool (the global
/// weights sent from a file and dropped from memory, each update written to disk and added
/// tensor by tensor): the weights are the in-memory run's, bit for bit, with FedAvg and with
/// FedAdam (whose server step reads the global weights back from the spool); every round
/// says it was spooled, and no spool folder is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spooled_run_gives_the_in_memory_runs_weights_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    for strategy in ["\"fedavg\"", "{kind=\"fedadam\",server_lr=0.01}"] {
        let mut finals = Vec::new();
        for spool in [256u64 << 20, 0] {
            let out = dir.path().join(format!("{}-{spool}", strategy.len()));
            // what an interrupted spooled run left: removed by a run that spools and by one
            // that does not
            std::fs::create_dir_all(out.join("spool")).unwrap();
            std::fs::write(out.join("spool/global-r0000.safetensors"), b"stale").unwrap();
            let sets = [
                "eval.enabled=false".to_string(),
                format!("federation.strategy={strategy}"),
                format!("federation.spool_above_bytes={spool}"),
            ];
            let sets: Vec<&str> = sets.iter().map(String::as_str).collect();
            let s = simulate(scenario(&sets), &out).await.unwrap();
            assert_eq!(s.rounds_completed, 2);
            let spooled: Vec<bool> = read_rounds(&out)
                .iter()
                .map(|r| r["spooled"] == Value::Bool(true))
                .collect();
            assert_eq!(spooled, [spool == 0; 2], "{strategy}, spool above {spool}");
            assert!(!out.join("spool").exists());
            finals.push(std::fs::read(out.join("final.safetensors")).unwrap());
        }
        assert!(
            finals[0] == finals[1],
            "{strategy}: the spooled run differs"
        );
    }
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
    // partition.json: every client's shard, whose class counts add up to its images
    let p: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("partition.json")).unwrap())
            .unwrap();
    let clients = p["clients"].as_array().unwrap();
    assert_eq!(clients.len(), 3);
    let mut total = 0;
    for (k, c) in clients.iter().enumerate() {
        assert_eq!(c["client"].as_u64().unwrap(), k as u64);
        let counts: Vec<u64> = serde_json::from_value(c["class_counts"].clone()).unwrap();
        assert_eq!(counts.iter().sum::<u64>(), c["images"].as_u64().unwrap());
        total += c["images"].as_u64().unwrap();
    }
    assert_eq!(total, 240);
    // ... with the heterogeneity figures and the heat map (3 clients: 150 + 3 · 24 px high)
    assert_eq!(p["summary"]["images"], 240);
    assert!(p["summary"]["mean_emd"].as_f64().unwrap() >= 0.0);
    let png = std::fs::read(out.join("partition.png")).unwrap();
    assert_eq!(&png[12..24], b"IHDR\0\0\x03\x84\0\0\0\xde");
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
    // the failed round's line says so: its two valid updates, their loss, nothing aggregated
    let rounds = read_rounds(&out);
    assert_eq!(rounds.len(), 2);
    assert!(rounds[0].get("failed").is_none());
    assert_eq!(rounds[1]["clients"], serde_json::json!([0, 1]));
    assert_eq!(rounds[1]["dropped"], serde_json::json!([2]));
    let failed = rounds[1]["failed"].as_str().unwrap();
    assert!(failed.contains("only 2 valid update(s)"), "{failed}");
    let ln = |c: &str| {
        (
            rounds[1]["loss"][c].as_f64().unwrap(),
            rounds[1]["samples"][c].as_f64().unwrap(),
        )
    };
    let ((l0, n0), (l1, n1)) = (ln("0"), ln("1"));
    let mean = rounds[1]["mean_loss"].as_f64().unwrap();
    assert!(l0 > 0.0 && l1 > 0.0);
    assert!(
        (mean - (l0 * n0 + l1 * n1) / (n0 + n1)).abs() < 1e-9,
        "{mean}"
    );
}

/// With shared heads the whole client state lives in the checkpoint, so stopping after round 1
/// and resuming to round 2 gives exactly the weights of an uninterrupted 2-round run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_run_continues_from_its_checkpoint_and_matches_an_uninterrupted_one() {
    let dir = tempfile::tempdir().unwrap();
    let base = ["pretext.share_heads=true", "eval.enabled=false"];
    let whole = dir.path().join("whole");
    simulate(scenario(&base), &whole).await.unwrap();

    let part = dir.path().join("part");
    let mut first = base.to_vec();
    first.push("federation.rounds=1");
    simulate(scenario(&first), &part).await.unwrap();
    assert_eq!(read_rounds(&part).len(), 1);

    // a changed scenario is refused, naming the key, and nothing is touched
    let e = run(scenario(&[base[0], base[1], "train.lr=0.3"]), &part, true)
        .await
        .unwrap_err();
    assert!(format!("{e:#}").contains("train.lr"), "{e:#}");
    assert_eq!(read_rounds(&part).len(), 1);

    let s = run(scenario(&base), &part, true).await.unwrap();
    assert_eq!(s.rounds_completed, 2);
    assert_eq!(s.resumed_after_round, Some(1));
    let rounds = read_rounds(&part);
    assert_eq!(
        rounds
            .iter()
            .map(|r| r["round"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        vec![1, 2]
    );
    let w = |d: &Path, f: &str| WeightSet::load(&d.join(f)).unwrap();
    assert!(w(&whole, "final.safetensors")
        .tensors
        .contains_key("head.weight"));
    assert_eq!(
        w(&part, "final.safetensors"),
        w(&whole, "final.safetensors")
    );
    assert_eq!(
        w(&part, "checkpoints/round-0001.safetensors"),
        w(&whole, "checkpoints/round-0001.safetensors")
    );

    // a run that fails before it starts (no CIFAR-10 folder) leaves the previous run intact
    let before = w(&part, "final.safetensors");
    let e = simulate(
        scenario(&[base[0], base[1], "data.dataset=\"cifar10\""]),
        &part,
    )
    .await
    .unwrap_err();
    assert!(format!("{e:#}").contains("data-dir"), "{e:#}");
    assert_eq!(w(&part, "final.safetensors"), before);
    assert_eq!(read_rounds(&part).len(), 2);
    // ... and so does one whose partition the data cannot satisfy (more clients than images)
    let e = simulate(
        scenario(&[
            base[0],
            base[1],
            "federation.clients=300",
            "federation.min_clients=2",
        ]),
        &part,
    )
    .await
    .unwrap_err();
    assert!(format!("{e:#}").contains("300 clients"), "{e:#}");
    assert_eq!(w(&part, "final.safetensors"), before);
    assert_eq!(read_rounds(&part).len(), 2);
    assert!(part.join("summary.json").is_file());
    // a run refused before it starts creates no folder; a file in the folder's place is refused
    let fresh = dir.path().join("never");
    simulate(
        scenario(&[base[0], base[1], "data.dataset=\"cifar10\""]),
        &fresh,
    )
    .await
    .unwrap_err();
    assert!(!fresh.exists());
    let file = part.join("final.safetensors");
    let e = simulate(scenario(&base), &file).await.unwrap_err();
    assert!(format!("{e:#}").contains("is a file"), "{e:#}");
    assert_eq!(w(&part, "final.safetensors"), before);
    // so is a file where the run's spool folder goes, before the previous run is touched
    std::fs::write(part.join("spool"), b"not a folder").unwrap();
    let e = simulate(scenario(&base), &part).await.unwrap_err();
    assert!(format!("{e:#}").contains("spool folder"), "{e:#}");
    assert_eq!(w(&part, "final.safetensors"), before);
    std::fs::remove_file(part.join("spool")).unwrap();

    // a folder without a run cannot be resumed
    let e = run(scenario(&base), &dir.path().join("empty"), true)
        .await
        .unwrap_err();
    assert!(format!("{e:#}").contains("scenario.json"), "{e:#}");
}

/// With local heads and FedBN the clients' state is not in the checkpoint: `simulate --resume`
/// reads each virtual client's state back from `<run>/clients/`, so stopping after round 1 and
/// resuming to round 2 still gives exactly the weights of an uninterrupted 2-round run — and
/// a client state started afresh would not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_simulation_restores_each_clients_local_state() {
    let dir = tempfile::tempdir().unwrap();
    let base = ["federation.batch_norm=\"local\"", "eval.enabled=false"];
    let whole = dir.path().join("whole");
    simulate(scenario(&base), &whole).await.unwrap();
    let part = dir.path().join("part");
    simulate(scenario(&[base[0], base[1], "federation.rounds=1"]), &part)
        .await
        .unwrap();
    let kept = |d: &Path| {
        let mut v: Vec<String> = std::fs::read_dir(d.join("clients"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    let after_1: Vec<String> = (0..3)
        .map(|k| format!("{k}.after-round-0001.safetensors"))
        .collect();
    assert_eq!(kept(&part), after_1);
    // the same first round, saved aside to start a second resume afresh
    let fresh = dir.path().join("fresh");
    std::fs::create_dir_all(fresh.join("checkpoints")).unwrap();
    for f in [
        "scenario.json",
        "rounds.jsonl",
        "checkpoints/round-0001.safetensors",
    ] {
        std::fs::copy(part.join(f), fresh.join(f)).unwrap();
    }

    let s = run(scenario(&base), &part, true).await.unwrap();
    assert_eq!(s.resumed_after_round, Some(1));
    let w = |d: &Path| std::fs::read(d.join("final.safetensors")).unwrap();
    assert!(w(&part) == w(&whole), "the resumed run differs");
    // at most two states per client: the one round 2 started from, and its own
    let mut both = after_1.clone();
    both.extend((0..3).map(|k| format!("{k}.after-round-0002.safetensors")));
    both.sort();
    assert_eq!(kept(&part), both);

    // the control: the same resume without the clients' states is another run
    run(scenario(&base), &fresh, true).await.unwrap();
    assert!(
        w(&fresh) != w(&whole),
        "the clients' state made no difference"
    );
}

/// FedEMA (Zhuang et al. ICLR 2022) is not tied to BYOL: under SimCLR each client keeps its
/// backbone and, from its second round on, starts local training from μ·own + (1 − μ)·global.
/// Round 1 (no state yet) is plain FedAvg's bit for bit; round 2 departs from it; and a
/// `simulate --resume` after round 1 ends on the uninterrupted run's weights (the state is read
/// back from `<run>/clients/`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fedema_runs_with_simclr_and_resumes_bit_identically() {
    let dir = tempfile::tempdir().unwrap();
    let plain = ["pretext.task=\"simclr\"", "eval.enabled=false"];
    let fedema = [
        plain[0],
        plain[1],
        "federation.local_update={kind=\"fedema\",tau=0.7}",
    ];
    let w = |d: &Path, f: &str| std::fs::read(d.join(f)).unwrap();
    let fedavg = dir.path().join("fedavg");
    simulate(scenario(&plain), &fedavg).await.unwrap();
    let whole = dir.path().join("whole");
    let s = simulate(scenario(&fedema), &whole).await.unwrap();
    assert_eq!((s.pretext.as_str(), s.rounds_completed), ("simclr", 2));
    assert_eq!(
        w(&whole, "checkpoints/round-0001.safetensors"),
        w(&fedavg, "checkpoints/round-0001.safetensors"),
        "FedEMA changed round 1, where no client has a state yet"
    );
    assert!(
        w(&whole, "final.safetensors") != w(&fedavg, "final.safetensors"),
        "FedEMA's round 2 is FedAvg's"
    );
    let part = dir.path().join("part");
    let mut one = fedema.to_vec();
    one.push("federation.rounds=1");
    simulate(scenario(&one), &part).await.unwrap();
    let s = run(scenario(&fedema), &part, true).await.unwrap();
    assert_eq!(s.resumed_after_round, Some(1));
    assert!(
        w(&part, "final.safetensors") == w(&whole, "final.safetensors"),
        "the resumed FedEMA run differs"
    );
}

/// A strategy with server state (FedAdam's moments, FedAvgM's momentum) checkpoints it next to
/// each checkpoint: stopping after round 1 and resuming to round 2 gives exactly the weights and
/// state of an uninterrupted 2-round run, and a step that differs from FedAvg's. FedProx with
/// μ = 0 gives FedAvg's weights bit for bit, and the median (a buffered strategy) runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_run_with_server_state_matches_an_uninterrupted_one() {
    let dir = tempfile::tempdir().unwrap();
    let w = |d: &Path, f: &str| WeightSet::load(&d.join(f)).unwrap();
    let fedavg = dir.path().join("fedavg");
    let plain = ["pretext.share_heads=true", "eval.enabled=false"];
    simulate(scenario(&plain), &fedavg).await.unwrap();
    // FedProx with μ = 0 trains and aggregates exactly as FedAvg; a buffered strategy runs
    // through the same rounds
    for (set, name) in [
        ("federation.strategy={kind=\"fedprox\",mu=0.0}", "fedprox"),
        ("federation.strategy=\"median\"", "median"),
    ] {
        let out = dir.path().join(name);
        let s = simulate(scenario(&[plain[0], plain[1], set]), &out)
            .await
            .unwrap();
        assert_eq!((s.strategy.as_str(), s.rounds_completed), (name, 2));
        let same = w(&out, "final.safetensors") == w(&fedavg, "final.safetensors");
        assert_eq!(same, name == "fedprox", "{name}");
    }
    for (kind, setting) in [
        ("fedadam", "federation.strategy.server_lr=0.01"),
        ("fedavgm", "federation.strategy.momentum=0.5"),
    ] {
        let strategy = format!("federation.strategy.kind=\"{kind}\"");
        let base = [plain[0], plain[1], strategy.as_str(), setting];
        let whole = dir.path().join(format!("{kind}-whole"));
        let s = simulate(scenario(&base), &whole).await.unwrap();
        assert_eq!(s.strategy, kind);
        let part = dir.path().join(format!("{kind}-part"));
        let mut first = base.to_vec();
        first.push("federation.rounds=1");
        simulate(scenario(&first), &part).await.unwrap();
        assert!(part
            .join("checkpoints/round-0001.state.safetensors")
            .is_file());
        let s = run(scenario(&base), &part, true).await.unwrap();
        assert_eq!(s.resumed_after_round, Some(1));
        for f in [
            "final.safetensors",
            "checkpoints/round-0001.safetensors",
            "checkpoints/round-0001.state.safetensors",
            "checkpoints/round-0002.state.safetensors",
        ] {
            assert!(w(&part, f) == w(&whole, f), "{kind}: {f} differs");
        }
        // the state covers the learnable tensors only, not the BN statistics
        let state = w(&whole, "checkpoints/round-0002.state.safetensors");
        assert!(state.tensors.keys().all(|k| !k.ends_with("running_mean")));
        assert!(w(&whole, "final.safetensors") != w(&fedavg, "final.safetensors"));
    }
}

/// The whole evaluation suite at the end of a run, then `fedssl-coordinator eval` on the
/// run's `final.safetensors`: the same numbers (eval.json equal but for the wall seconds),
/// and the k-NN monitor in every round's line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eval_on_the_final_checkpoint_repeats_the_end_of_run_evaluation() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let sc = scenario(&[
        "eval.per_layer=true",
        "eval.mlp_hidden=32",
        "eval.mlp_epochs=3",
        "eval.labels_per_class=[2, 5]",
        "eval.label_seeds=2",
        "eval.weight_decays=[0.0, 0.01]",
        "eval.knn_every=1",
        "eval.knn_train=100",
        "eval.knn_test=50",
        "eval.knn_k=5",
    ]);
    let summary = simulate(sc.clone(), &out).await.unwrap();
    let e = summary.eval.clone().unwrap();
    assert!(e.mlp.is_some());
    assert_eq!(
        e.per_layer
            .iter()
            .map(|l| l.layer.as_str())
            .collect::<Vec<_>>(),
        ["stage1", "stage2", "pre_logits"]
    );
    assert_eq!(e.per_layer.last().unwrap().probe, e.linear);
    assert_eq!(e.linear.val_top1.len(), 2);
    let labels: Vec<&str> = e.few_labels.iter().map(|f| f.label.as_str()).collect();
    assert_eq!(labels, ["2/class", "5/class", "all"]);
    assert_eq!(e.few_labels[0].seeds, 2);
    let ri = e.random_init.as_ref().unwrap();
    assert_eq!(ri.few_labels.len(), 3);
    for r in read_rounds(&out) {
        let k = r["knn_top1"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&k), "{k}");
    }
    // summary.json keeps the contract's keys and adds the MLP
    let s: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert!(s["eval"]["linear"]["top1"].is_f64());
    assert!(s["eval"]["random_init"]["linear"]["top1"].is_f64());
    assert!(s["eval"]["mlp"]["top5"].is_f64());

    let run_eval: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("eval.json")).unwrap()).unwrap();
    let again_dir = dir.path().join("again");
    let again = tokio::task::spawn_blocking({
        let (sc, ck, o) = (sc.clone(), out.join("final.safetensors"), again_dir.clone());
        move || fedssl_coordinator::run::checkpoint_eval::eval_checkpoint(&sc, &ck, &o)
    })
    .await
    .unwrap()
    .unwrap();
    let strip = |mut v: Value| {
        v.as_object_mut().unwrap().remove("seconds");
        v
    };
    let ck_eval: Value =
        serde_json::from_str(&std::fs::read_to_string(again_dir.join("eval.json")).unwrap())
            .unwrap();
    assert_eq!(strip(ck_eval), strip(run_eval));
    assert_eq!(again.linear, e.linear);
    assert_eq!(again.few_labels, e.few_labels);
    // `eval` without --scenario finds the run's scenario.json (next to final.safetensors or
    // above checkpoints/), which loads back to the scenario the run was made with
    for ck in [
        out.join("final.safetensors"),
        out.join("checkpoints").join("round-0001.safetensors"),
    ] {
        let found = fedssl_coordinator::run::checkpoint_eval::run_scenario_of(&ck).unwrap();
        assert_eq!(Scenario::load(&found, &[]).unwrap(), sc);
    }
    let e = fedssl_coordinator::run::checkpoint_eval::run_scenario_of(
        &dir.path().join("x.safetensors"),
    )
    .unwrap_err();
    assert!(e.to_string().contains("no --scenario"), "{e}");

    // a checkpoint that does not fit the scenario's backbone is refused with the file named
    let vgg = scenario(&["model.backbone=\"vgg_bn\""]);
    let err = fedssl_coordinator::run::checkpoint_eval::eval_checkpoint(
        &vgg,
        &out.join("final.safetensors"),
        &dir.path().join("bad"),
    )
    .unwrap_err();
    assert!(format!("{err:#}").contains("final.safetensors"), "{err:#}");

    // one NaN in a backbone weight: refused, naming the file and the tensor, nothing written
    let mut w = WeightSet::load(&out.join("final.safetensors")).unwrap();
    let name = w
        .tensors
        .keys()
        .find(|k| !k.starts_with("head."))
        .unwrap()
        .clone();
    w.tensors.get_mut(&name).unwrap().data[0] = f32::NAN;
    let nan = dir.path().join("nan.safetensors");
    w.save(&nan).unwrap();
    let nan_out = dir.path().join("nan-eval");
    let err =
        fedssl_coordinator::run::checkpoint_eval::eval_checkpoint(&sc, &nan, &nan_out).unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("nan.safetensors") && msg.contains(&name) && msg.contains("non-finite"),
        "{msg}"
    );
    assert!(!nan_out.join("eval.json").exists());
}

/// One federated round of every pretext task on tiny synthetic data, through the real
/// client/coordinator path: summary and rounds name the task, losses are finite and
/// accuracies (for tasks that have one) are fractions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_pretext_task_runs_one_federated_round() {
    let dir = tempfile::tempdir().unwrap();
    for &kind in fedssl_shared::pretext::PretextKind::all() {
        let task = kind.name();
        let out = dir.path().join(task);
        let mut set = vec![
            format!("pretext.task=\"{task}\""),
            "federation.rounds=1".into(),
            "federation.clients=2".into(),
            "data.train_images=32".into(),
            "data.test_images=16".into(),
            "train.batch_size=8".into(),
            "eval.epochs=2".into(),
            "pretext.exemplar.views=3".into(),
            "pretext.jigsaw.permutations=10".into(),
            "pretext.jigsaw.permutations_per_image=4".into(),
            "model.vit.dim=32".into(),
            "model.vit.depth=1".into(),
            "model.vit.heads=2".into(),
            "pretext.mae.decoder_dim=16".into(),
            "pretext.mae.decoder_heads=2".into(),
        ];
        if let Some(b) = kind.required_backbone() {
            set.push(format!("model.backbone=\"{}\"", b.name()));
        }
        let set: Vec<&str> = set.iter().map(|s| s.as_str()).collect();
        let summary = simulate(scenario(&set), &out).await.unwrap();
        assert_eq!(summary.rounds_completed, 1, "{task}");
        let s: Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap())
                .unwrap();
        assert_eq!(s["pretext"], task);
        let rounds = read_rounds(&out);
        assert_eq!(rounds.len(), 1, "{task}");
        for c in ["0", "1"] {
            let loss = rounds[0]["loss"][c].as_f64().unwrap();
            assert!(loss.is_finite() && loss > 0.0, "{task}: {loss}");
            if let Some(acc) = rounds[0]["accuracy"].get(c) {
                let acc = acc.as_f64().unwrap();
                assert!((0.0..=1.0).contains(&acc), "{task}: {acc}");
            }
        }
        if task == "mae" || task == "byol" {
            assert_eq!(
                rounds[0]["accuracy"],
                serde_json::json!({}),
                "{task} has no accuracy"
            );
        } else {
            assert_eq!(
                rounds[0]["accuracy"].as_object().unwrap().len(),
                2,
                "{task}"
            );
        }
        // only the backbone travels: no pretext head (`head.*`) in the global weights, but
        // BYOL's online projector and predictor (`pretext.byol.travel = "online"`, the default;
        // its EMA target never travels)
        let fin = WeightSet::load(&out.join("final.safetensors")).unwrap();
        let travelling = |k: &str| {
            task == "byol" && (k.starts_with("head.projector.") || k.starts_with("head.predictor."))
        };
        assert!(
            fin.tensors
                .keys()
                .all(|k| !k.starts_with("head.") || travelling(k)),
            "{task}"
        );
        if task == "byol" {
            assert!(fin.tensors.keys().any(|k| k.starts_with("head.predictor.")));
            assert!(fin.tensors.keys().all(|k| !k.contains("target")), "{task}");
        }
    }
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

/// `compare-pretexts` on a tiny budget: one run per task, the table, the CSV and the chart,
/// and `--reuse` keeps finished runs of the same scenario (same numbers, no new run).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_pretexts_writes_the_table_and_reuses_finished_runs() {
    use fedssl_coordinator::experiments::pretext_compare::compare_pretexts;
    use fedssl_shared::pretext::PretextKind;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("cmp");
    let base = scenario(&[
        "federation.rounds=1",
        "federation.clients=2",
        "data.train_images=32",
        "data.test_images=16",
        "train.batch_size=8",
        "eval.epochs=2",
    ]);
    let tasks = [PretextKind::Rotation, PretextKind::Jigsaw];
    let rows = compare_pretexts(&base, &tasks, &out, false, false)
        .await
        .unwrap();
    assert_eq!(
        rows.iter().map(|r| r.task.as_str()).collect::<Vec<_>>(),
        ["rotation", "jigsaw"]
    );
    let md = std::fs::read_to_string(out.join("compare.md")).unwrap();
    assert!(
        md.contains("| rotation | resnet | whole |")
            && md.contains("| jigsaw | resnet | patch grid |")
    );
    assert_eq!(
        std::fs::read_to_string(out.join("compare.csv"))
            .unwrap()
            .lines()
            .count(),
        3
    );
    let png = std::fs::read(out.join("compare.png")).unwrap();
    assert_eq!(&png[1..4], b"PNG");
    let first = std::fs::metadata(out.join("rotation/summary.json"))
        .unwrap()
        .modified()
        .unwrap();
    let again = compare_pretexts(&base, &tasks, &out, false, true)
        .await
        .unwrap();
    assert_eq!(
        std::fs::metadata(out.join("rotation/summary.json"))
            .unwrap()
            .modified()
            .unwrap(),
        first,
        "a reusable run was run again"
    );
    for (a, b) in rows.iter().zip(&again) {
        assert_eq!((a.top1, a.random_init_top1), (b.top1, b.random_init_top1));
    }
}

/// A simulated byzantine client sending Gaussian noise (client 6 of 7, 10× the global
/// tensors' std) moves FedAvg's global model far from the honest run's, and the median's and
/// Bulyan's hardly at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_noise_client_moves_fedavg_and_not_the_robust_rules() {
    let dir = tempfile::tempdir().unwrap();
    let base = [
        "federation.clients=7",
        "federation.min_clients=7",
        "federation.rounds=1",
        "eval.enabled=false",
    ];
    let noise = "simulation.byzantine={kind=\"noise\",clients=[6],scale=10.0}";
    let mut moved = vec![];
    for kind in ["fedavg", "median", "bulyan"] {
        let strategy = format!("federation.strategy=\"{kind}\"");
        let mut finals = vec![];
        for attack in [None, Some(noise)] {
            let mut set = base.to_vec();
            set.push(&strategy);
            set.extend(attack);
            let out = dir.path().join(format!("{kind}-{}", attack.is_some()));
            simulate(scenario(&set), &out).await.unwrap();
            finals.push(WeightSet::load(&out.join("final.safetensors")).unwrap());
        }
        // distance between the honest and the attacked run's learnable weights
        let d2: f64 = finals[0]
            .tensors
            .iter()
            .filter(|(n, _)| !n.contains("running_"))
            .flat_map(|(n, t)| t.data.iter().zip(&finals[1].tensors[n].data))
            .map(|(&a, &b)| (a as f64 - b as f64).powi(2))
            .sum();
        moved.push(d2.sqrt());
    }
    assert!(moved[0] > 5.0 * moved[1], "{moved:?}");
    assert!(moved[0] > 5.0 * moved[2], "{moved:?}");
}

/// The strategy scenarios in `scenarios/strategies/` read, and name the strategy they say;
/// so do the CIFAR-10 comparison rows in `scenarios/strategies/cifar10/`.
#[test]
fn the_strategy_scenarios_read() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios/strategies");
    let rows = dir.join("cifar10");
    let mut row_kinds = vec![];
    for entry in std::fs::read_dir(&rows).unwrap() {
        let path = entry.unwrap().path();
        let sc = Scenario::load(&path, &[]).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
        assert_eq!(
            (sc.federation.clients, sc.data.train_images),
            (8, Some(4000))
        );
        row_kinds.push(sc.federation.strategy.name());
    }
    for kind in ["fedavg", "bulyan", "ldawa", "median", "krum"] {
        assert!(row_kinds.contains(&kind), "{kind}: {row_kinds:?}");
    }
    let mut kinds = vec![];
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            // cifar10/: the CIFAR-10 comparison rows
            continue;
        }
        let sc = Scenario::load(&path, &[]).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
        kinds.push(sc.federation.strategy.name());
        // the alternatives their comments give read too
        let alternatives: &[&str] = match sc.federation.strategy.name() {
            "fedadam" => &[
                "federation.strategy.kind=\"fedyogi\"",
                "federation.strategy.kind=\"fedadagrad\"",
            ],
            "trimmed_mean" => &[
                "federation.strategy=\"median\"",
                "federation.strategy=\"krum\"",
                "federation.strategy=\"multi_krum\"",
            ],
            _ => &["federation.strategy=\"fedavg\""],
        };
        for set in alternatives {
            Scenario::load(&path, &[set.to_string()])
                .unwrap_or_else(|e| panic!("{} with {set}: {e:#}", path.display()));
        }
    }
    kinds.sort_unstable();
    // byol, fedbn, fedema, fedu: client-side methods on FedAvg
    assert_eq!(
        kinds,
        [
            "bulyan",
            "fedadam",
            "fedavg",
            "fedavg",
            "fedavg",
            "fedavg",
            "fedavgm",
            "ldawa",
            "trimmed_mean"
        ]
    );
}

/// A TensorBoard folder that cannot be made fails the run before the previous run in `--out`
/// is touched: its results stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_tensorboard_folder_leaves_the_previous_run_intact() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    simulate(scenario(&["eval.enabled=false"]), &out)
        .await
        .unwrap();
    let before = std::fs::read(out.join("final.safetensors")).unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let tb = format!("logging.tensorboard_dir={:?}", file.to_str().unwrap());
    let e = simulate(
        scenario(&["eval.enabled=false", "logging.tensorboard=true", &tb]),
        &out,
    )
    .await
    .unwrap_err();
    assert!(
        format!("{e:#}").contains("logging.tensorboard_dir"),
        "{e:#}"
    );
    assert_eq!(
        std::fs::read(out.join("final.safetensors")).unwrap(),
        before
    );
    assert!(out.join("summary.json").is_file());
}
