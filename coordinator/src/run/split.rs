//! The `partition` subcommand: draws a scenario's split of its training set among
//! `federation.clients` exactly as `simulate` does (same loader, same `[partition]`, same
//! `partition` seed stream), without training, and writes `partition.json` and
//! `partition.png` into the output folder; for choosing α, k or the sizes before a run.

use std::path::Path;

use anyhow::{Context, Result};
use fedssl_shared::config::Scenario;
use fedssl_shared::data::{load_split_with, Split};
use fedssl_shared::partition::report::HeterogeneityReport;

use crate::run::outputs;
use crate::run::resume::SCENARIO_FILE;
use crate::run::simulate;

/// Loads the training set of `sc`, draws its clients' shards and writes `partition.json` and
/// `partition.png` into `out` (created if missing); returns the report. Errors name the
/// data (as `simulate` does) or say why the split is impossible (the partitioner's message,
/// behind the scenario's name), or refuse an `out` that holds a run (its `scenario.json`),
/// and nothing is written then.
pub fn draw_split(sc: &Scenario, out: &Path) -> Result<HeterogeneityReport> {
    outputs::refuse_a_file_in_place(out)?;
    if out.join(SCENARIO_FILE).exists() {
        anyhow::bail!(
            "{} holds a run ({SCENARIO_FILE}): its partition.json and partition.png are that run's record; write the split into another folder",
            out.display()
        );
    }
    let train = load_split_with(
        sc.data.dataset,
        sc.data.path.as_deref(),
        sc.data.train_images,
        sc.seed,
        Split::Train,
        &sc.data.load_options(),
    )?
    .one_class_if_unlabelled();
    let parts = simulate::shards(sc, &train).with_context(|| {
        format!(
            "scenario {}: cannot split {} images among {} clients",
            sc.name,
            train.len(),
            sc.federation.clients
        )
    })?;
    outputs::create_out_dir(out)?;
    outputs::write_partition_files(out, &train, &parts)
}

/// The figures of `r` as a small Markdown table: clients, images, shard sizes
/// min / median / max, mean and max EMD, mean JS (nats).
pub fn figures_table(r: &HeterogeneityReport) -> String {
    let s = &r.summary;
    format!(
        "| clients | images | size min | size median | size max | mean EMD | max EMD | mean JS (nats) |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|\n\
         | {} | {} | {} | {} | {} | {:.3} | {:.3} | {:.4} |\n",
        s.clients,
        s.images,
        s.min_images,
        s.median_images,
        s.max_images,
        s.mean_emd,
        s.max_emd,
        s.mean_js
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scenario(extra: &[&str]) -> Scenario {
        let mut set = vec![
            "name=\"split\"".to_string(),
            "data.train_images=600".into(),
            "federation.clients=10".into(),
        ];
        set.extend(extra.iter().map(|s| s.to_string()));
        Scenario::from_toml_str("", &set).unwrap()
    }

    #[test]
    fn the_split_is_the_one_simulate_draws_and_its_figures_are_written() {
        let dir = tempfile::tempdir().unwrap();
        let sc = scenario(&["partition={kind=\"label_quantity\", classes_per_client=1}"]);
        let r = draw_split(&sc, dir.path()).unwrap();
        let train =
            fedssl_shared::data::load_train_set(sc.data.dataset, None, Some(600), sc.seed).unwrap();
        let parts = simulate::shards(&sc, &train).unwrap();
        let sizes: Vec<usize> = parts.iter().map(Vec::len).collect();
        assert_eq!(
            r.clients.iter().map(|c| c.images).collect::<Vec<_>>(),
            sizes
        );
        assert!(r
            .clients
            .iter()
            .all(|c| c.class_counts.iter().filter(|&&n| n > 0).count() == 1));
        assert!(dir.path().join("partition.json").is_file());
        assert!(dir.path().join("partition.png").is_file());
        let t = figures_table(&r);
        assert!(t.starts_with("| clients | images |"), "{t}");
        assert!(t.lines().nth(2).unwrap().starts_with("| 10 | 600 |"), "{t}");
    }

    #[test]
    fn an_impossible_split_writes_nothing_and_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let sc = scenario(&[
            "partition={kind=\"label_quantity\", classes_per_client=1}",
            "federation.clients=5",
        ]);
        let e = format!("{:#}", draw_split(&sc, &out).unwrap_err());
        assert!(
            e.contains("scenario split: cannot split 600 images among 5 clients"),
            "{e}"
        );
        assert!(e.contains("covers at most 5 of the 10 classes"), "{e}");
        assert!(!out.exists());
    }

    #[test]
    fn a_run_folder_is_refused_and_its_partition_files_left_as_they_are() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(SCENARIO_FILE), "{}").unwrap();
        std::fs::write(dir.path().join("partition.json"), "the run's").unwrap();
        let e = format!("{:#}", draw_split(&scenario(&[]), dir.path()).unwrap_err());
        assert!(e.contains("holds a run (scenario.json)"), "{e}");
        let kept = std::fs::read_to_string(dir.path().join("partition.json")).unwrap();
        assert_eq!(kept, "the run's");
        assert!(!dir.path().join("partition.png").exists());
    }

    /// `cifar-100-binary/train.bin` in `dir` with `n` records (fine label `i % 100`).
    fn cifar100(dir: &Path, n: usize) {
        let inner = dir.join("cifar-100-binary");
        std::fs::create_dir_all(&inner).unwrap();
        let rec = fedssl_shared::data::cifar100::RECORD_BYTES;
        let bytes: Vec<u8> = (0..n)
            .flat_map(|i| {
                let mut r = vec![i as u8; rec];
                (r[0], r[1]) = ((i % 20) as u8, (i % 100) as u8);
                r
            })
            .collect();
        std::fs::write(inner.join("train.bin"), bytes).unwrap();
    }

    #[test]
    fn a_domain_split_of_the_mixed_dataset_reports_each_clients_domain() {
        let dir = tempfile::tempdir().unwrap();
        cifar100(&dir.path().join("c100"), 90);
        let data = toml::Value::from(dir.path().display().to_string());
        let sc = Scenario::from_toml_str(
            "",
            &[
                "name=\"mixed\"".to_string(),
                "data.dataset=\"mixed\"".into(),
                format!("data.path={data}"),
                "data.sources=[{dataset=\"cifar100\", path=\"c100\"}, {dataset=\"synthetic\", images=30}]".into(),
                "partition={kind=\"domain\"}".into(),
                "federation.clients=4".into(),
                "eval.enabled=false".into(),
            ],
        )
        .unwrap();
        let out = dir.path().join("split");
        let r = draw_split(&sc, &out).unwrap();
        // 90 + 30 images among 4 clients: 3 of CIFAR-100 and 1 synthetic, 30 each
        assert_eq!(r.summary.images, 120);
        assert_eq!(r.num_classes, 110);
        assert!(r.clients.iter().all(|c| c.images == 30));
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("partition.json")).unwrap())
                .unwrap();
        assert_eq!(v["domains"], serde_json::json!(["cifar100", "synthetic"]));
        let clients = v["clients"].as_array().unwrap();
        let domains: Vec<&str> = clients
            .iter()
            .map(|c| c["domain"].as_str().unwrap())
            .collect();
        assert_eq!(domains, ["cifar100", "cifar100", "cifar100", "synthetic"]);
        assert_eq!(
            clients[3]["domain_counts"],
            serde_json::json!({"synthetic": 30})
        );
        // the same split as simulate draws, seeded
        let train = crate::run::data::load_sets(&sc).unwrap().0;
        assert_eq!(train.domains.len(), 120);
        let parts = simulate::shards(&sc, &train).unwrap();
        assert_eq!(parts, simulate::shards(&sc, &train).unwrap());
        assert!(parts[3].iter().all(|&i| train.domains[i] == 1));
        // a missing source is named by its index and folder
        let mut bad = sc.clone();
        bad.data.sources[0].path = Some("nowhere".into());
        let e = format!(
            "{:#}",
            draw_split(&bad, &dir.path().join("bad")).unwrap_err()
        );
        assert!(
            e.starts_with(&format!(
                "data.sources[0] (cifar100 at {}): ",
                dir.path().join("nowhere").display()
            )),
            "{e}"
        );
    }
}
