//! `python/fedssl_torch` against fedssl: for each of the three backbones a real tiny
//! `simulate` run (one round), `features` on its first 100 test images (CIFAR-10 from
//! `../shared/data/cifar10` where present, synthetic images otherwise), then the Python
//! module built from the run's `scenario.json` and loaded strictly from its
//! `final.safetensors` must give the same pre-logits and stage maps within 1e-4 (max
//! absolute difference), and its strict-load unit tests must pass. Runs where
//! `FEDSSL_PYTHON` (or `python3`) imports torch and safetensors; skipped with the printed
//! reason elsewhere.

// A test file: a failed unwrap is a failed test, in helpers as in `#[test]` functions.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use fedssl_coordinator::run::features_export::export_features;
use fedssl_coordinator::run::job::{run_job, Job, Mode};
use fedssl_tests::tiny;

/// The repository's root (this crate's parent folder).
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The python that imports torch and safetensors, or why there is none.
fn python() -> Result<String, String> {
    let python = std::env::var("FEDSSL_PYTHON").unwrap_or_else(|_| "python3".into());
    match Command::new(&python)
        .args(["-c", "import torch, safetensors"])
        .output()
    {
        Ok(r) if r.status.success() => Ok(python),
        Ok(r) => Err(format!(
            "{python} cannot import torch and safetensors: {}",
            String::from_utf8_lossy(&r.stderr)
                .lines()
                .last()
                .unwrap_or("")
        )),
        Err(e) => Err(format!("cannot run {python}: {e}")),
    }
}

/// Runs `args` with `python`, `PYTHONPATH=python/`; returns stdout, panicking with both
/// streams on failure.
fn run_python(python: &str, args: &[&str]) -> String {
    let out = Command::new(python)
        .args(args)
        .env("PYTHONPATH", repo().join("python"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{python} {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// One round of the tiny scenario with `backbone` into `out`, on CIFAR-10 when `cifar` is
/// given.
async fn train(backbone: &str, cifar: Option<&Path>, out: &Path) {
    let mut set = vec![
        format!("model.backbone=\"{backbone}\""),
        "federation.rounds=1".to_string(),
    ];
    if cifar.is_some() {
        set.push("data.dataset=\"cifar10\"".into());
        set.push("data.train_images=300".into());
        set.push("data.test_images=100".into());
    }
    let refs: Vec<&str> = set.iter().map(String::as_str).collect();
    let mut sc = tiny(&refs);
    sc.data.path = cifar.map(Path::to_path_buf);
    run_job(Job {
        scenario: sc,
        out: out.to_path_buf(),
        mode: Mode::Simulate,
        progress: false,
        resume: false,
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torch_module_matches_fedssl_for_every_backbone() {
    let python = match python() {
        Ok(p) => p,
        Err(why) => {
            println!("skipped: {why} (set FEDSSL_PYTHON to a python with torch)");
            return;
        }
    };
    let data = repo().join("../shared/data/cifar10");
    let cifar = data.join("cifar-10-batches-bin").is_dir().then_some(data);
    if cifar.is_none() {
        println!("no CIFAR-10 at ../shared/data/cifar10: comparing on synthetic images");
    }
    let tests = repo().join("python/tests");
    run_python(
        &python,
        &[
            "-m",
            "unittest",
            "discover",
            "-s",
            tests.to_str().unwrap(),
            "-p",
            "test_*.py",
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    for backbone in ["resnet", "vgg_bn", "vit"] {
        let run = dir.path().join(backbone);
        train(backbone, cifar.as_deref(), &run).await;
        let sc = fedssl_shared::config::Scenario::load(&run.join("scenario.json"), &[]).unwrap();
        let feats = run.join("features.safetensors");
        let e = export_features(&sc, &run.join("final.safetensors"), 100, &feats).unwrap();
        assert_eq!(e.images, 100);
        let script = tests.join("check_features.py");
        let out = run_python(
            &python,
            &[
                script.to_str().unwrap(),
                run.to_str().unwrap(),
                feats.to_str().unwrap(),
                "--tol",
                "1e-4",
            ],
        );
        print!("{out}");
        let worst = out
            .lines()
            .find_map(|l| l.split("worst max abs difference ").nth(1))
            .and_then(|r| r.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap();
        assert!(worst <= 1e-4, "{backbone}: {worst}");
        assert!(
            out.contains(&format!("stages.{}", e.stages - 1)),
            "every stage compared"
        );
    }
}
