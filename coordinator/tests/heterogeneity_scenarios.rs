//! The scenarios of `scenarios/heterogeneity/` load, are named after their file, say the
//! split their name promises (the sweep's base `sweep-simclr` its IID default) and, with CIFAR-10 at `../shared/data/cifar10` (relative to the
//! repository root; skipped with a printed reason otherwise), draw it.

// A test file: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use fedssl_coordinator::run::split::draw_split;
use fedssl_shared::config::Scenario;
use fedssl_shared::data::mixed::MixedSource;
use fedssl_shared::data::DatasetKind;
use fedssl_shared::feature_skew::RotationSkew;
use fedssl_shared::partition::PartitionConfig;

/// Every scenario of `scenarios/heterogeneity/`, a sweep file's `[sweep]` table taken out
/// (see [`sweep_tables`]).
fn scenarios() -> Vec<(PathBuf, Scenario)> {
    sweep_files()
        .into_iter()
        .map(|(p, sc, _)| (p, sc))
        .collect()
}

fn sweep_files() -> Vec<(PathBuf, Scenario, Option<toml::Value>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios/heterogeneity");
    let mut out: Vec<(PathBuf, Scenario, Option<toml::Value>)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .map(|p| {
            let (sc, sweep) = Scenario::load_sweep_file(&p, &[])
                .unwrap_or_else(|e| panic!("{}: {e:#}", p.display()));
            (p, sc, sweep)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[test]
fn every_heterogeneity_scenario_loads_and_says_its_split() {
    let all = scenarios();
    assert!(all.len() >= 8, "{} scenarios", all.len());
    for (path, sc) in &all {
        let stem = path.file_stem().unwrap().to_str().unwrap();
        assert_eq!(sc.name, stem, "{}", path.display());
        match stem {
            "niid-dir0.5" | "niid-dir0.1" | "orchestra-dir0.1" => {
                let PartitionConfig::Dirichlet(d) = &sc.partition else {
                    panic!("{stem}: {:?}", sc.partition)
                };
                assert_eq!(d.alpha.to_string(), stem.rsplit("dir").next().unwrap());
                assert_eq!(d.min_size, Some(10));
            }
            s if s.starts_with("niid-c") || s == "fedu-2class" => {
                let PartitionConfig::LabelQuantity(q) = &sc.partition else {
                    panic!("{stem}: {:?}", sc.partition)
                };
                let k: usize = s.trim_start_matches("niid-c").parse().unwrap_or(2);
                assert_eq!(q.classes_per_client, k, "{stem}");
            }
            "feature-rotation" => {
                assert_eq!(sc.partition, PartitionConfig::default());
                assert_eq!(sc.feature_skew.rotation, RotationSkew::QuarterTurns);
            }
            "feature-noise" => assert_eq!(sc.feature_skew.noise, 0.1),
            "sweep-simclr" => {
                // the sweep's base: its grid replaces the partition and the strategy's kind
                assert_eq!(sc.partition, PartitionConfig::default());
                assert_eq!(sc.pretext.task, fedssl_shared::pretext::PretextKind::Simclr);
                assert_eq!(sc.federation.strategy.name(), "fedavg");
                assert_eq!(sc.federation.clients, 8);
            }
            "domain-mixed" => {
                assert_eq!(sc.data.dataset, DatasetKind::Mixed);
                let kinds: Vec<DatasetKind> = sc.data.sources.iter().map(|s| s.dataset).collect();
                assert_eq!(kinds, vec![DatasetKind::Cifar10, DatasetKind::Stl10]);
                assert!(matches!(sc.partition, PartitionConfig::Domain(_)));
                assert_eq!(sc.eval.dataset, Some(DatasetKind::Cifar10));
            }
            other => panic!("{other}: a new scenario needs its line here"),
        }
        assert_eq!(
            sc.feature_skew.is_off(),
            !stem.starts_with("feature-"),
            "{stem}"
        );
    }
}

#[test]
fn every_heterogeneity_split_can_be_drawn_on_cifar10() {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/cifar10");
    if !data.join("cifar-10-batches-bin").is_dir() {
        eprintln!("skipped: no CIFAR-10 at {}", data.display());
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for (path, mut sc) in scenarios() {
        sc.data.path = Some(data.clone());
        let mut images = sc.data.train_images;
        if sc.data.dataset == DatasetKind::Mixed {
            // the sources' folders start from the one holding cifar10/; a synthetic source
            // stands in for STL-10, which is not here
            sc.data.path = data.parent().map(Path::to_path_buf);
            for s in &mut sc.data.sources {
                if s.dataset == DatasetKind::Stl10 {
                    *s = MixedSource {
                        dataset: DatasetKind::Synthetic,
                        path: None,
                        images: s.images,
                        name: Some("stl10-stand-in".into()),
                    };
                }
            }
            images = Some(sc.data.sources.iter().map(|s| s.images.unwrap()).sum());
        }
        let out = dir.path().join(&sc.name);
        let r = draw_split(&sc, &out).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
        assert_eq!(r.summary.clients, sc.federation.clients);
        assert_eq!(Some(r.summary.images), images);
        if sc.name == "domain-mixed" {
            // ten clients of 1,000 images, five per domain, each drawing from one
            let v: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(out.join("partition.json")).unwrap())
                    .unwrap();
            let domains: Vec<&str> = v["clients"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["domain"].as_str().unwrap())
                .collect();
            assert_eq!(domains, [["cifar10"; 5], ["stl10-stand-in"; 5]].concat());
            assert_eq!(r.summary.min_images, 1000);
            assert_eq!(r.summary.max_images, 1000);
        }
        assert!(out.join("partition.png").is_file());
        if sc.name == "niid-c1" {
            // ten one-class clients covering the ten classes: mean EMD 1.8 exactly
            assert!(
                (r.summary.mean_emd - 1.8).abs() < 1e-9,
                "{}",
                r.summary.mean_emd
            );
        }
    }
}

#[test]
fn the_sweep_file_holds_the_issues_grid() {
    let files = sweep_files();
    let (_, _, table) = files
        .iter()
        .find(|(p, _, _)| p.ends_with("sweep-simclr.toml"))
        .unwrap();
    let t =
        fedssl_coordinator::experiments::sweep::SweepTable::read(table.clone().unwrap()).unwrap();
    assert_eq!(t.seeds, Some(vec![0, 1]));
    let file = std::path::Path::new("sweep-simclr.toml");
    let specs = t.grid_specs(&[], file);
    assert!(specs
        .iter()
        .all(|s| s.origin == "[[sweep.axis]] of sweep-simclr.toml"));
    assert_eq!(
        specs.iter().map(|s| s.spec.as_str()).collect::<Vec<_>>(),
        vec![
            // a table's keys come back sorted: the same values
            "partition=[{ kind = \"iid\" }, { alpha = 0.5, kind = \"dirichlet\" }, { alpha = 0.1, kind = \"dirichlet\" }, { classes_per_client = 2, kind = \"label_quantity\" }]",
            "federation.strategy.kind=[\"fedavg\", \"fedprox\", \"fedavgm\"]",
        ]
    );
    let grid = fedssl_coordinator::experiments::grid::Grid::parse_specs(&specs).unwrap();
    let names: Vec<String> = grid.cells().into_iter().map(|c| c.name).collect();
    assert_eq!(names.len(), 12);
    assert_eq!(names[0], "partition=iid__strategy=fedavg");
    assert_eq!(names[11], "partition=label_quantity-2__strategy=fedavgm");
    // the other files have no [sweep]
    assert!(files
        .iter()
        .filter(|(p, _, _)| !p.ends_with("sweep-simclr.toml"))
        .all(|(_, _, t)| t.is_none()));
}
