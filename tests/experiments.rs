//! The experiments' one runner end to end, on the tiny synthetic scenario: `sweep` (a 2 × 1
//! grid × 2 seeds: its runs, `results.csv` against every run's `summary.json`, `results.md`'s
//! mean ± std against the CSV, skipping finished runs, running only new, changed or
//! interrupted ones, refusing a bad axis before anything runs), the same sweep written as a
//! `[sweep]` table of its file (the same cells and rows as the flags; flags override it;
//! `simulate` refuses the table) and its preset `compare` (`--reuse` keeps a finished run of
//! the same scenario).

// A test file: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use fedssl_coordinator::experiments::sweep::{plan, sweep, SweepSpec};
use fedssl_tests::TINY;
use serde_json::Value;

/// The tiny scenario cut down further (2 clients, 32 images, a 2-epoch probe), as `--set`s.
const SMALL: [&str; 7] = [
    "federation.clients=2",
    "federation.min_clients=2",
    "data.train_images=32",
    "data.test_images=16",
    "train.batch_size=8",
    "eval.epochs=2",
    "federation.rounds=2",
];

fn small_sets() -> Vec<String> {
    SMALL.iter().map(|s| s.to_string()).collect()
}

fn mtime(p: &Path) -> SystemTime {
    std::fs::metadata(p).unwrap().modified().unwrap()
}

fn summary(dir: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap()
}

fn spec(base: &Path, out: &Path, strategies: &str) -> SweepSpec {
    SweepSpec {
        scenario: base.to_path_buf(),
        grid: vec![
            format!("federation.strategy.kind=[{strategies}]"),
            r#"partition=[{kind="iid"}]"#.to_string(),
        ],
        seeds: vec![0, 1],
        sets: small_sets(),
        data_dir: None,
        out: out.to_path_buf(),
        progress: false,
    }
}

/// Sorted labels.
fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_runs_its_cells_tabulates_them_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("tiny.toml");
    std::fs::write(&base, TINY).unwrap();
    let out = dir.path().join("sweep");

    // a bad axis is refused, naming it, before anything is written
    let mut bad = spec(&base, &out, "fedavg");
    bad.grid.push("federation.roundz=[2]".into());
    let e = format!("{:#}", sweep(&bad).await.unwrap_err());
    assert!(
        e.contains("--grid federation.roundz=2") && e.contains("roundz"),
        "{e}"
    );
    bad.grid = vec!["federation.strategy.kind=[fedavg, nosuch]".into()];
    let e = format!("{:#}", sweep(&bad).await.unwrap_err());
    assert!(
        e.contains("sweep cell `strategy=nosuch`") && e.contains("nosuch"),
        "{e}"
    );
    assert!(
        !out.exists(),
        "nothing may run or be written before every cell is valid"
    );

    // 2 × 1 cells × 2 seeds = 4 runs
    let report = sweep(&spec(&base, &out, "fedavg, fedprox")).await.unwrap();
    let cells = [
        "strategy=fedavg__partition=iid",
        "strategy=fedprox__partition=iid",
    ];
    let runs: Vec<PathBuf> = cells
        .iter()
        .flat_map(|c| [0, 1].map(|s| out.join(c).join(format!("seed-{s}"))))
        .collect();
    assert_eq!(report.ran.len(), 4);
    assert!(report.skipped.is_empty() && report.failed.is_empty());
    for r in &runs {
        assert!(r.join("summary.json").is_file(), "{}", r.display());
    }

    // results.csv: one row per run, its numbers those of the run's summary.json
    let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
    let lines: Vec<Vec<&str>> = csv.lines().map(|l| l.split(',').collect()).collect();
    assert_eq!(
        lines[0],
        [
            "cell",
            "federation.strategy.kind",
            "partition",
            "seed",
            "linear_top1",
            "linear_top5",
            "mlp_top1",
            "random_init_top1",
            "rounds",
            "wall_seconds",
            "epsilon_rdp",
            "delta"
        ]
    );
    assert_eq!(lines.len(), 5, "{csv}");
    for (row, run) in lines[1..].iter().zip(&runs) {
        let s = summary(run);
        let num = |i: usize| row[i].parse::<f64>().unwrap();
        let at = |p: &str| s.pointer(p).unwrap().as_f64().unwrap();
        assert_eq!(row[0], run.parent().unwrap().file_name().unwrap());
        assert_eq!(row[3], &run.file_name().unwrap().to_str().unwrap()[5..]);
        assert_eq!(row[3], s["seed"].to_string());
        assert_eq!(num(4), at("/eval/linear/top1"));
        assert_eq!(num(5), at("/eval/linear/top5"));
        assert_eq!(num(6), at("/eval/mlp/top1"));
        assert_eq!(num(7), at("/eval/random_init/linear/top1"));
        assert_eq!(row[8], "2");
        assert_eq!(num(9), at("/wall_seconds"));
        // no [federation.dp]: no privacy spent to report
        assert_eq!(row[10..], ["", ""]);
        assert_eq!(s["strategy"], row[1]);
    }
    assert_eq!(lines[1][1..3], ["fedavg", "iid"]);
    assert_eq!(lines[3][1..3], ["fedprox", "iid"]);

    // results.md: mean ± sample std (n − 1) of each cell's two seeds, from the CSV by hand
    let md = std::fs::read_to_string(out.join("results.md")).unwrap();
    for (c, strategy) in ["fedavg", "fedprox"].iter().enumerate() {
        let (a, b) = (
            lines[1 + 2 * c][4].parse::<f64>().unwrap(),
            lines[2 + 2 * c][4].parse::<f64>().unwrap(),
        );
        let mean = (a + b) / 2.0;
        let std = (a - b).abs() / 2f64.sqrt();
        let ri = (lines[1 + 2 * c][7].parse::<f64>().unwrap()
            + lines[2 + 2 * c][7].parse::<f64>().unwrap())
            / 2.0;
        let row = format!(
            "| {strategy} | iid | {:.1} ± {:.1} | {:.1} | 2 |",
            100.0 * mean,
            100.0 * std,
            100.0 * ri
        );
        assert!(md.contains(&row), "{row} not in\n{md}");
    }
    assert!(md.find("| fedavg |").unwrap() < md.find("| fedprox |").unwrap());
    assert_eq!(&std::fs::read(out.join("top1.png")).unwrap()[1..4], b"PNG");

    // again: every run is finished with the same scenario, so none runs
    let before: Vec<SystemTime> = runs
        .iter()
        .map(|r| mtime(&r.join("summary.json")))
        .collect();
    let again = sweep(&spec(&base, &out, "fedavg, fedprox")).await.unwrap();
    assert_eq!(again.skipped.len(), 4);
    assert!(again.ran.is_empty());
    let after: Vec<SystemTime> = runs
        .iter()
        .map(|r| mtime(&r.join("summary.json")))
        .collect();
    assert_eq!(before, after, "a finished run was run again");
    assert_eq!(
        std::fs::read_to_string(out.join("results.csv")).unwrap(),
        csv,
        "the same runs give the same table"
    );

    // one axis value changed: only its cells run, the others are kept
    let changed = sweep(&spec(&base, &out, "fedavg, fedavgm")).await.unwrap();
    assert_eq!(
        sorted(changed.ran.clone()),
        [
            "strategy=fedavgm__partition=iid/seed-0",
            "strategy=fedavgm__partition=iid/seed-1"
        ]
    );
    assert_eq!(changed.skipped.len(), 2);
    assert_eq!(mtime(&runs[0].join("summary.json")), before[0]);
    assert_eq!(mtime(&runs[1].join("summary.json")), before[1]);
    let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
    assert_eq!(csv.lines().count(), 5);
    assert!(csv.contains("fedavgm") && !csv.contains("fedprox"), "{csv}");

    // a run whose scenario changed under it, and an interrupted one, run again; only they
    let sj = runs[0].join("scenario.json");
    let mut sc: Value = serde_json::from_str(&std::fs::read_to_string(&sj).unwrap()).unwrap();
    sc["federation"]["rounds"] = 3.into();
    std::fs::write(&sj, serde_json::to_string(&sc).unwrap()).unwrap();
    let avgm1 = out.join("strategy=fedavgm__partition=iid/seed-1");
    std::fs::remove_file(avgm1.join("summary.json")).unwrap();
    let resumed = sweep(&spec(&base, &out, "fedavg, fedavgm")).await.unwrap();
    assert_eq!(
        sorted(resumed.ran.clone()),
        [
            "strategy=fedavg__partition=iid/seed-0",
            "strategy=fedavgm__partition=iid/seed-1"
        ]
    );
    assert_eq!(resumed.skipped.len(), 2);
    assert_eq!(mtime(&runs[1].join("summary.json")), before[1]);
    let rerun: Value = serde_json::from_str(&std::fs::read_to_string(&sj).unwrap()).unwrap();
    assert_eq!(
        rerun["federation"]["rounds"], 2,
        "the rerun wrote its own scenario"
    );
    assert!(avgm1.join("summary.json").is_file());
    // --out one run's folder: refused, naming it, before anything is written there
    let e = format!(
        "{:#}",
        sweep(&spec(&base, &runs[1], "fedavg")).await.unwrap_err()
    );
    assert!(e.contains("holds a run"), "{e}");
    assert!(!runs[1].join("results.md").exists());
    // nor a folder inside one
    let inside = runs[1].join("checkpoints");
    let e = format!(
        "{:#}",
        sweep(&spec(&base, &inside, "fedavg")).await.unwrap_err()
    );
    assert!(e.contains("holds a run"), "{e}");
}

/// `compare`, a preset of the same runner: two scenario files, then `--reuse` keeps both
/// finished runs (same numbers, no new run) and reruns one whose scenario changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_reuses_finished_runs_of_the_same_scenario() {
    use fedssl_coordinator::experiments::compare::run_compare;
    let dir = tempfile::tempdir().unwrap();
    let files: Vec<PathBuf> = ["a", "b"]
        .iter()
        .map(|n| {
            let p = dir.path().join(format!("{n}.toml"));
            std::fs::write(
                &p,
                TINY.replace("name = \"tiny\"", &format!("name = \"{n}\"")),
            )
            .unwrap();
            p
        })
        .collect();
    let out = dir.path().join("cmp");
    let sets = small_sets();
    let first = run_compare(&files, &out, None, &sets, false, false)
        .await
        .unwrap();
    assert!(out.join("report.md").is_file() && out.join("probes.csv").is_file());
    let t = [
        mtime(&out.join("a/summary.json")),
        mtime(&out.join("b/summary.json")),
    ];
    let again = run_compare(&files, &out, None, &sets, true, false)
        .await
        .unwrap();
    assert_eq!(mtime(&out.join("a/summary.json")), t[0]);
    assert_eq!(mtime(&out.join("b/summary.json")), t[1]);
    for (x, y) in first.iter().zip(&again) {
        assert_eq!(x.eval.eval.linear.top1, y.eval.eval.linear.top1);
    }
    // b's scenario changes: with --reuse only b runs again
    std::fs::write(
        &files[1],
        TINY.replace("name = \"tiny\"", "name = \"b\"\nseed = 4\n")
            .replace("seed = 3\n", ""),
    )
    .unwrap();
    run_compare(&files, &out, None, &sets, true, false)
        .await
        .unwrap();
    assert_eq!(mtime(&out.join("a/summary.json")), t[0]);
    assert_eq!(summary(&out.join("b"))["seed"], 4);
}

/// `results.csv` without its `wall_seconds` column (the one number two runs of the same
/// scenario do not share).
fn rows_without_wall_seconds(out: &Path) -> Vec<String> {
    let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
    let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
    let wall = header.iter().position(|h| *h == "wall_seconds").unwrap();
    csv.lines()
        .map(|l| {
            let mut f: Vec<&str> = l.split(',').collect();
            f.remove(wall);
            f.join(",")
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_file_is_the_same_sweep_as_its_flags() {
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("tiny.toml");
    std::fs::write(&plain, TINY).unwrap();
    let file = dir.path().join("tiny-sweep.toml");
    std::fs::write(
        &file,
        format!(
            "{TINY}\n[sweep]\nseeds = [1]\n\n[[sweep.axis]]\nkey = \"partition\"\nvalues = [{{ kind = \"iid\" }}, {{ kind = \"dirichlet\", alpha = 0.5 }}]\n\n[[sweep.axis]]\nkey = \"federation.strategy.kind\"\nvalues = [\"fedprox\"]\n"
        ),
    )
    .unwrap();
    let spec = |scenario: &Path, grid: &[&str], seeds: &[u64], out: &Path| SweepSpec {
        scenario: scenario.to_path_buf(),
        grid: grid.iter().map(|g| g.to_string()).collect(),
        seeds: seeds.to_vec(),
        sets: small_sets(),
        data_dir: None,
        out: out.to_path_buf(),
        progress: false,
    };
    let flags = [
        r#"partition=[{kind="iid"}, {kind="dirichlet", alpha=0.5}]"#,
        "federation.strategy.kind=[fedprox]",
    ];

    // the file alone, and the plain file with the same flags: the same cells and rows
    let by_file = dir.path().join("by-file");
    let a = sweep(&spec(&file, &[], &[], &by_file)).await.unwrap();
    let by_flags = dir.path().join("by-flags");
    let b = sweep(&spec(&plain, &flags, &[1], &by_flags)).await.unwrap();
    assert_eq!(a.plan.cells, b.plan.cells);
    assert_eq!(a.plan.seeds, vec![1]);
    let names: Vec<&str> = a.plan.cells.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "partition=iid__strategy=fedprox",
            "partition=dirichlet-0.5__strategy=fedprox"
        ]
    );
    assert_eq!(a.ran.len(), 2);
    let rows = rows_without_wall_seconds(&by_file);
    assert_eq!(rows.len(), 3);
    assert_eq!(rows, rows_without_wall_seconds(&by_flags));
    // the same scenarios exactly: the file's sweep into the flags' folder skips every run
    let again = sweep(&spec(&file, &[], &[], &by_flags)).await.unwrap();
    assert_eq!((again.ran.len(), again.skipped.len()), (0, 2));
    // the [sweep] table never reaches a run's scenario
    let run = by_file.join(names[0]).join("seed-1");
    let json = std::fs::read_to_string(run.join("scenario.json")).unwrap();
    assert!(!json.contains("sweep"), "{json}");

    // flags next to the table: --grid replaces the axis of its key, in place; --seeds the seeds
    let p = plan(&spec(
        &file,
        &["federation.strategy.kind=[fedavg, fedprox]"],
        &[4, 5],
        &by_file,
    ))
    .unwrap();
    assert_eq!(p.seeds, vec![4, 5]);
    assert_eq!(p.cells.len(), 4);
    assert_eq!(p.cells[1].name, "partition=iid__strategy=fedprox");
    let p = plan(&spec(&file, &["train.lr=[0.1, 0.2]"], &[], &by_file)).unwrap();
    assert_eq!(p.grid.axes.len(), 3);
    assert_eq!(p.grid.axes[2].key, "train.lr");
    // a key of the table that is not one is refused by name
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, format!("{TINY}\n[sweep]\nseed = [1]\n")).unwrap();
    let e = format!("{:#}", plan(&spec(&bad, &[], &[], &by_file)).unwrap_err());
    assert!(
        e.contains("[sweep] of") && e.contains("unknown field `seed`"),
        "{e}"
    );

    // simulate (any single run) refuses the file, naming the table
    let e = format!(
        "{:#}",
        fedssl_shared::config::Scenario::load(&file, &[]).unwrap_err()
    );
    assert!(
        e.contains("tiny-sweep.toml") && e.contains("[sweep] is the grid and seeds of a sweep"),
        "{e}"
    );
}

/// Runs that all fail for one reason (here a missing dataset folder) are said once, and no
/// results file is promised when none was written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_whose_runs_all_fail_alike_says_the_reason_once() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.toml");
    std::fs::write(&base, TINY).unwrap();
    let out = dir.path().join("out");
    let mut s = spec(&base, &out, "fedavg, fedprox");
    s.sets.push("data.dataset=\"cifar10\"".into());
    s.data_dir = Some(dir.path().join("no-such-folder"));
    let e = format!("{:#}", sweep(&s).await.unwrap_err());
    assert!(e.starts_with("4 of 4 sweep runs failed (each: "), "{e}");
    assert_eq!(e.matches("no-such-folder").count(), 1, "{e}");
    assert!(!e.contains("lists the others"), "{e}");
    assert!(!out.join("results.csv").exists());
}
