//! A site's own images and the sample counts a coordinator accepts, end to end over loopback
//! QUIC: a `serve` run where one client trains on a folder of PNG files and two on the
//! synthetic set; a simulation that trains on a folder and probes on the synthetic set
//! (`[eval] dataset`); a client that claims more samples than its shard is refused.

// A test file: a failed unwrap is a failed test, in helpers as in `#[test]` functions.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use fedssl_client::DataSource;
use fedssl_coordinator::run::job::{run_job, Job, Mode};
use fedssl_shared::config::Scenario;
use image::{Rgb, RgbImage};

/// Writes `n` PNG images of assorted sizes (13×40 … 70×29) and colours into `dir`, in two
/// sub-folders.
fn write_pngs(dir: &Path, n: usize) {
    for i in 0..n {
        let sub = dir.join(if i % 2 == 0 { "ward-a" } else { "ward-b" });
        std::fs::create_dir_all(&sub).unwrap();
        let (w, h) = (13 + (i as u32 * 7) % 60, 29 + (i as u32 * 11) % 40);
        let img = RgbImage::from_fn(w, h, |x, y| {
            Rgb([(x * 9 + i as u32) as u8, (y * 5) as u8, (i * 30) as u8])
        });
        img.save(sub.join(format!("img-{i:03}.png"))).unwrap();
    }
}

fn free_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Serves `sc` into `out` (self-signed) with one in-process client per `sources` entry;
/// returns the summary and every client's session result.
async fn serve(
    sc: Scenario,
    out: &Path,
    sources: Vec<DataSource>,
) -> (
    fedssl_coordinator::run::outputs::Summary,
    Vec<anyhow::Result<fedssl_client::SessionReport>>,
) {
    let port = free_port();
    let job = Job {
        scenario: sc,
        out: out.to_path_buf(),
        mode: Mode::Serve {
            listen: format!("127.0.0.1:{port}").parse().unwrap(),
            identity: None,
            names: vec![],
            kit: None,
            revoked: None,
        },
        progress: false,
        resume: false,
    };
    let server = tokio::spawn(run_job(job));
    let pem = loop {
        match std::fs::read(out.join("cert.pem")) {
            Ok(p) if !p.is_empty() => break p,
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut clients = Vec::new();
    for (i, source) in sources.into_iter().enumerate() {
        let cfg = fedssl_client::tls::client_config(&pem, Duration::from_secs(5)).unwrap();
        clients.push(tokio::spawn(async move {
            let mut tries = 0;
            let (_ep, conn) = loop {
                match fedssl_client::open(addr, "localhost", cfg.clone()).await {
                    Ok(c) => break c,
                    Err(_) if tries < 50 => tries += 1,
                    Err(e) => return Err(e),
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            };
            let opts = fedssl_client::ClientOptions::new(format!("c{i}"), source);
            fedssl_client::run_session(conn, opts).await
        }));
    }
    let summary = tokio::time::timeout(Duration::from_secs(300), server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let mut results = Vec::new();
    for c in clients {
        results.push(c.await.unwrap());
    }
    (summary, results)
}

fn first_round(out: &Path) -> serde_json::Value {
    let rounds = std::fs::read_to_string(out.join("rounds.jsonl")).unwrap();
    serde_json::from_str(rounds.lines().next().unwrap()).unwrap()
}

/// One site trains on its own folder of 64 PNG files of odd sizes (one of them corrupt and
/// skipped), two on synthetic shards; the round completes with all three, the folder site
/// reporting its 63 readable images; its folder now holds the cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_trains_on_its_own_folder_of_pngs_beside_synthetic_sites() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("site-images");
    write_pngs(&images, 64);
    std::fs::write(images.join("ward-a").join("img-000.png"), b"\x89PNG broken").unwrap();
    let skipped = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let out = dir.path().join("run");
    let sc = fedssl_tests::tiny(&["federation.rounds=1", "eval.enabled=false"]);
    let (summary, results) = serve(
        sc,
        &out,
        vec![
            DataSource::Folder {
                dir: images.clone(),
                skip_bad_images: true,
                skipped: skipped.clone(),
            },
            DataSource::Shard {
                dir: None,
                k: 1,
                n: 3,
            },
            DataSource::Shard {
                dir: None,
                k: 2,
                n: 3,
            },
        ],
    )
    .await;
    assert_eq!(summary.rounds_completed, 1);
    for r in &results {
        assert_eq!(r.as_ref().unwrap().rounds_trained, 1);
    }
    assert_eq!(skipped.load(std::sync::atomic::Ordering::SeqCst), 1);
    let r1 = first_round(&out);
    // the folder site has no shard: it gets the id above the shards'
    assert_eq!(r1["clients"], serde_json::json!([1, 2, 3]), "{r1}");
    assert_eq!(r1["samples"]["3"], 63, "{r1}");
    assert!(images.join(".fedssl-cache-32px.bin").is_file());
}

/// `simulate` on a folder (partitioned among the simulated clients as one class), evaluated
/// on the synthetic set named by `[eval] dataset`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulate_trains_on_a_folder_and_probes_on_the_eval_dataset() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("imgs");
    write_pngs(&images, 48);
    let out = dir.path().join("run");
    let sc = fedssl_tests::tiny(&[
        "federation.rounds=1",
        "data.dataset=\"folder\"",
        &format!(
            "data.path={}",
            toml::Value::from(images.display().to_string())
        ),
        "data.train_images=48", // the folder's size (TINY says 240; a larger count is refused)
        "partition={kind=\"iid\"}",
        "eval.dataset=\"synthetic\"",
        "eval.probes=[\"linear\"]",
        "eval.epochs=2",
        "eval.random_init_baseline=false",
        "eval.train_labels=300",
        "eval.test_images=200",
    ]);
    let job = Job {
        scenario: sc,
        out: out.clone(),
        mode: Mode::Simulate,
        progress: false,
        resume: false,
    };
    let summary = tokio::time::timeout(Duration::from_secs(300), run_job(job))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(summary.rounds_completed, 1);
    assert_eq!(summary.dataset, "folder");
    let r1 = first_round(&out);
    let samples: u64 = (0..3)
        .map(|k| r1["samples"][k.to_string()].as_u64().unwrap())
        .sum();
    assert_eq!(samples, 48, "{r1}");
    let eval = summary.eval.unwrap();
    // the synthetic set (not the folder, which has no labels) was probed
    let e = serde_json::to_value(&eval).unwrap();
    assert_eq!(e["linear"]["test_images"], 200, "{e}");
    assert_eq!(e["linear"]["train_labels"], 300, "{e}");
}

/// A client that asks for shard 0 but trains on the whole synthetic set reports 240
/// samples for a shard of fewer: its update is refused (the round goes on with the other
/// two), and `rounds.jsonl` says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_claiming_more_samples_than_its_shard_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let sc = fedssl_tests::tiny(&["federation.rounds=1", "eval.enabled=false"]);
    let full = fedssl_shared::data::load_train_set(sc.data.dataset, None, Some(240), sc.seed)
        .unwrap()
        .unlabelled();
    let shard0 = {
        let (train, _) = fedssl_coordinator::run::data::load_sets(&sc).unwrap();
        fedssl_shared::partition::partition(
            &train.labels,
            train.num_classes,
            3,
            &sc.partition,
            fedssl_shared::seed::derive(sc.seed, fedssl_shared::seed::PARTITION, 0),
        )
        .unwrap()[0]
            .len()
    };
    assert!(shard0 < 240);
    let (summary, _) = serve(
        sc,
        &out,
        vec![
            DataSource::InMemory {
                data: Arc::new(full),
                shard: Some((0, 3)),
            },
            DataSource::Shard {
                dir: None,
                k: 1,
                n: 3,
            },
            DataSource::Shard {
                dir: None,
                k: 2,
                n: 3,
            },
        ],
    )
    .await;
    assert_eq!(summary.rounds_completed, 1);
    let r1 = first_round(&out);
    assert_eq!(r1["clients"], serde_json::json!([1, 2]), "{r1}");
    assert_eq!(
        r1["dropped_reasons"]["0"],
        format!(
            "update refused: update claims 240 training samples, but the client's shard holds {shard0}"
        ),
        "{r1}"
    );
}

/// The same as a user runs it: `fedssl-client --dataset folder --data DIR --skip-bad-images`
/// as a process beside two `--shard` processes; the folder site says in its last line how
/// many bad files it left out, and every client exits 0.
#[test]
fn the_client_binary_trains_on_a_folder_and_reports_the_skipped_files() {
    let client = fedssl_tests::binary("fedssl-client");
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("site-images");
    write_pngs(&images, 40);
    std::fs::write(images.join("ward-b").join("broken.jpg"), b"\xff\xd8\xff").unwrap();
    let out = dir.path().join("run");
    let port = free_port();
    let sc = fedssl_tests::tiny(&[
        "federation.rounds=1",
        "eval.enabled=false",
        "federation.join_timeout_seconds=120",
    ]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = rt.spawn(run_job(Job {
        scenario: sc,
        out: out.clone(),
        mode: Mode::Serve {
            listen: format!("127.0.0.1:{port}").parse().unwrap(),
            identity: None,
            names: vec![],
            kit: None,
            revoked: None,
        },
        progress: false,
        resume: false,
    }));
    let cert = out.join("cert.pem");
    let t0 = std::time::Instant::now();
    while !std::fs::read_to_string(&cert).is_ok_and(|s| s.contains("END CERTIFICATE")) {
        assert!(t0.elapsed() < Duration::from_secs(30), "no cert.pem");
        std::thread::sleep(Duration::from_millis(20));
    }
    let base = |extra: &[&str]| {
        let mut c = std::process::Command::new(&client);
        c.args(["--coordinator", &format!("127.0.0.1:{port}"), "--ca"])
            .arg(&cert)
            .arg("--quiet")
            .args(extra)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        c.spawn().unwrap()
    };
    let folder_site = base(&[
        "--dataset",
        "folder",
        "--data",
        images.to_str().unwrap(),
        "--skip-bad-images",
    ]);
    let others: Vec<_> = (1..3)
        .map(|k| base(&["--shard", &format!("{k}/3")]))
        .collect();
    let summary = rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(300), server).await })
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(summary.rounds_completed, 1);
    let o = folder_site.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("trained 1 round(s) (1 bad image file(s) skipped)"),
        "{stdout}"
    );
    assert!(stderr.contains("broken.jpg"), "{stderr}");
    for c in others {
        assert!(c.wait_with_output().unwrap().status.success());
    }
    assert_eq!(first_round(&out)["samples"]["3"], 40);
}

/// A deployment where every site brings its folder: `[data] dataset = "folder"` (the sites'
/// plain `--data DIR` is then their folder, at the run's `data.image_size`), probed on the
/// synthetic set (`[eval] dataset`); each site's n_k is its own image count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_folder_run_where_every_site_brings_its_own_images() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    write_pngs(&a, 20);
    write_pngs(&b, 28);
    let out = dir.path().join("run");
    let sc = fedssl_tests::tiny(&[
        "federation.rounds=1",
        "federation.clients=2",
        "data.dataset=\"folder\"",
        "eval.dataset=\"synthetic\"",
        "eval.enabled=false",
    ]);
    let (summary, results) = serve(
        sc,
        &out,
        vec![
            DataSource::Whole { dir: Some(a) },
            DataSource::Whole { dir: Some(b) },
        ],
    )
    .await;
    assert_eq!(summary.rounds_completed, 1);
    for r in results {
        r.unwrap();
    }
    let r1 = first_round(&out);
    let mut samples: Vec<u64> = r1["samples"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .collect();
    samples.sort_unstable();
    assert_eq!(samples, vec![20, 28], "{r1}");
}
