//! The scenarios of `scenarios/heterogeneity/` load, are named after their file, say the
//! split their name promises (the sweep's base `sweep-simclr` its IID default) and, with CIFAR-10 at `../shared/data/cifar10` (relative to the
//! repository root; skipped with a printed reason otherwise), draw it.

// A test file: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use fedssl_coordinator::run::split::draw_split;
use fedssl_shared::config::Scenario;
use fedssl_shared::feature_skew::RotationSkew;
use fedssl_shared::partition::PartitionConfig;

fn scenarios() -> Vec<(PathBuf, Scenario)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios/heterogeneity");
    let mut out: Vec<(PathBuf, Scenario)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .map(|p| {
            let sc = Scenario::load(&p, &[]).unwrap_or_else(|e| panic!("{}: {e:#}", p.display()));
            (p, sc)
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
        let out = dir.path().join(&sc.name);
        let r = draw_split(&sc, &out).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
        assert_eq!(r.summary.clients, sc.federation.clients);
        assert_eq!(Some(r.summary.images), sc.data.train_images);
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
