//! The data of a run: the scenario's training and test sets, loaded as `[data]` says (both
//! run modes and the `eval` subcommand load them the same way), and, when the clients train
//! on other images than the probes fit on — `[eval] dataset` names another dataset, or the
//! dataset's clients' split is not its labelled one (STL-10's unlabelled images) — the two
//! kept apart: the probes use the evaluation dataset's labelled split, the simulated clients
//! the training one.

use std::path::PathBuf;

use anyhow::{bail, Result};
use fedssl_shared::config::Scenario;
use fedssl_shared::data::{
    load_split_with, train_split_is_labelled, DatasetKind, ImageDataset, Split,
};

/// The dataset the probes use, and where: `eval.dataset` at `eval.path` (default
/// `data.path` when it is the training dataset's kind; for the mixed dataset, the folder of
/// its first source of that kind), or the training dataset.
fn eval_source(sc: &Scenario) -> (DatasetKind, Option<PathBuf>) {
    let kind = sc.eval.dataset.unwrap_or(sc.data.dataset);
    let same_kind = kind == sc.data.dataset;
    let source_path = || {
        sc.data
            .sources
            .iter()
            .find(|s| s.dataset == kind)
            .and_then(|s| s.resolved_path(sc.data.path.as_deref()))
    };
    let path = sc
        .eval
        .path
        .clone()
        .or_else(|| sc.data.path.clone().filter(|_| same_kind))
        .or_else(source_path);
    (kind, path)
}

/// True when the evaluation dataset is another than the training one (`[eval] dataset` or
/// `path` set and different).
pub fn eval_is_separate(sc: &Scenario) -> bool {
    let (kind, path) = eval_source(sc);
    kind != sc.data.dataset || path.as_deref() != sc.data.path.as_deref()
}

/// True when the simulated clients train on other images than the probes' labelled training
/// set: [`eval_is_separate`], or the run's dataset trains its clients on another split than
/// its labelled one (STL-10 with `data.stl10_split` other than `"train"`).
pub fn federated_is_separate(sc: &Scenario) -> bool {
    eval_is_separate(sc) || !train_split_is_labelled(sc.data.dataset, &sc.data.load_options())
}

/// The labelled training and test sets of the evaluation of `sc`: the training dataset's
/// (`data.dataset` at `data.path`, the first `data.train_images` / `data.test_images` as the
/// loaders draw them with the seed; STL-10: its labelled training split, all of it unless it
/// is the clients' split), or `[eval] dataset`'s (all its images; `eval.train_labels` and
/// `eval.test_images` choose among them). A folder is read with `data.labels`,
/// `data.image_size` and `data.skip_bad_images`; CIFAR-100 with `data.cifar100_labels`;
/// STL-10 at `data.image_size`.
///
/// Errors: a loader's; an evaluation on a dataset without labels.
pub fn load_sets(sc: &Scenario) -> Result<(ImageDataset, ImageDataset)> {
    let (kind, path) = eval_source(sc);
    let path = path.as_deref();
    let train_n = if federated_is_separate(sc) {
        None
    } else {
        sc.data.train_images
    };
    let test_n = if eval_is_separate(sc) {
        None
    } else {
        sc.data.test_images
    };
    let opts = sc.data.load_options();
    let train = load_split_with(kind, path, train_n, sc.seed, Split::Labelled, &opts)?;
    if sc.eval.enabled && train.labels.is_empty() {
        bail!(
            "the evaluation needs labelled images, and the image folder {} has none: set data.labels = \"subfolders\" (DIR/train/<class>/…), eval.dataset, or eval.enabled = false",
            path.map_or_else(|| "?".into(), |p| p.display().to_string())
        );
    }
    let train = train.one_class_if_unlabelled();
    let test = if sc.eval.enabled || !matches!(kind, DatasetKind::Folder | DatasetKind::Mixed) {
        load_split_with(kind, path, test_n, sc.seed, Split::Test, &opts)?
    } else {
        train.subset(&[])
    };
    Ok((train, test))
}

/// The training set the simulated clients are given shards of, when it is not the
/// evaluation's ([`federated_is_separate`]); `None` when [`load_sets`]'s training set is it.
/// An unlabelled set (a folder, STL-10's unlabelled images) is given one class
/// (`"unlabelled"`) so that it can be partitioned
/// ([`ImageDataset::one_class_if_unlabelled`]).
pub fn load_federated(sc: &Scenario) -> Result<Option<ImageDataset>> {
    if !federated_is_separate(sc) {
        return Ok(None);
    }
    let ds = load_split_with(
        sc.data.dataset,
        sc.data.path.as_deref(),
        sc.data.train_images,
        sc.seed,
        Split::Train,
        &sc.data.load_options(),
    )?;
    Ok(Some(ds.one_class_if_unlabelled()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A folder of four 20×20 PNG images, in `cat/` and `dog/` when `classes`.
    fn folder(classes: bool) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for i in 0..4u8 {
            let sub = match (classes, i % 2) {
                (false, _) => d.path().to_path_buf(),
                (true, 0) => d.path().join("cat"),
                (true, _) => d.path().join("dog"),
            };
            std::fs::create_dir_all(&sub).unwrap();
            image::RgbImage::from_pixel(20, 20, image::Rgb([i * 60, 0, 0]))
                .save(sub.join(format!("{i}.png")))
                .unwrap();
        }
        d
    }

    fn scenario(sets: &[String]) -> Scenario {
        Scenario::from_toml_str("", sets).unwrap()
    }

    #[test]
    fn an_unlabelled_folder_cannot_be_probed_but_can_be_partitioned() {
        let d = folder(false);
        let path = toml::Value::from(d.path().display().to_string());
        let sets = vec![
            "data.dataset=\"folder\"".into(),
            format!("data.path={path}"),
        ];
        let e = format!("{:#}", load_sets(&scenario(&sets)).unwrap_err());
        assert!(
            e.contains("data.labels") && e.contains("eval.dataset"),
            "{e}"
        );
        let mut off = sets.clone();
        off.push("eval.enabled=false".into());
        let (train, test) = load_sets(&scenario(&off)).unwrap();
        assert_eq!((train.len(), train.num_classes, test.len()), (4, 1, 0));
        assert_eq!(train.labels, vec![0; 4]);
        // probed elsewhere: the folder is the simulated clients' set, one class
        let mut sep = sets.clone();
        sep.push("eval.dataset=\"synthetic\"".into());
        let sc = scenario(&sep);
        assert!(eval_is_separate(&sc));
        let fed = load_federated(&sc).unwrap().unwrap();
        assert_eq!((fed.len(), fed.num_classes), (4, 1));
        let (probe, _) = load_sets(&sc).unwrap();
        assert_eq!(probe.num_classes, 10);
    }

    #[test]
    fn a_labelled_folder_without_a_test_split_says_how_to_make_one() {
        let d = folder(true);
        let path = toml::Value::from(d.path().display().to_string());
        let sc = scenario(&[
            "data.dataset=\"folder\"".into(),
            format!("data.path={path}"),
            "data.labels=\"subfolders\"".into(),
        ]);
        let e = format!("{:#}", load_sets(&sc).unwrap_err());
        assert!(e.contains("no test split") && e.contains("/train/"), "{e}");
    }

    /// `stl10_binary/` in a new tempdir: 4 train images (labels 1..=4), 3 test images
    /// (label 7) and 6 unlabelled ones; every pixel of image `i` of a file is
    /// `(base + i, 0, 0)`, base 0 (train), 100 (test), 200 (unlabelled).
    fn stl10() -> tempfile::TempDir {
        use fedssl_shared::data::stl10::{IMAGE_BYTES, PLANE_BYTES};
        let d = tempfile::tempdir().unwrap();
        let inner = d.path().join("stl10_binary");
        std::fs::create_dir(&inner).unwrap();
        let x = |base: u8, k: u8| {
            (0..k)
                .flat_map(|i| {
                    let mut img = vec![0u8; IMAGE_BYTES];
                    img[..PLANE_BYTES].fill(base + i);
                    img
                })
                .collect::<Vec<u8>>()
        };
        std::fs::write(inner.join("train_X.bin"), x(0, 4)).unwrap();
        std::fs::write(inner.join("train_y.bin"), [1u8, 2, 3, 4]).unwrap();
        std::fs::write(inner.join("test_X.bin"), x(100, 3)).unwrap();
        std::fs::write(inner.join("test_y.bin"), [7u8; 3]).unwrap();
        std::fs::write(inner.join("unlabeled_X.bin"), x(200, 6)).unwrap();
        d
    }

    fn reds(ds: &ImageDataset) -> Vec<u8> {
        (0..ds.len()).map(|i| ds.image(i)[0]).collect()
    }

    #[test]
    fn stl10_probes_on_its_labelled_split_while_the_clients_train_on_the_unlabelled_images() {
        let d = stl10();
        let path = toml::Value::from(d.path().display().to_string());
        let base = vec![
            "data.dataset=\"stl10\"".to_string(),
            format!("data.path={path}"),
            "federation.clients=2".into(),
        ];
        let mut limited = base.clone();
        limited.push("data.train_images=6".into());
        let sc = scenario(&limited);
        assert!(!eval_is_separate(&sc) && federated_is_separate(&sc));
        // the probes: the 4 labelled training images (data.train_images is the clients'), the test split
        let (train, test) = load_sets(&sc).unwrap();
        assert_eq!(
            (train.labels.clone(), train.num_classes),
            (vec![0, 1, 2, 3], 10)
        );
        assert_eq!(
            (test.labels.clone(), reds(&test)),
            (vec![6; 3], vec![100, 101, 102])
        );
        assert_eq!(train.height, 32);
        // the clients: the first 6 of train + unlabeled, one class
        let fed = load_federated(&sc).unwrap().unwrap();
        assert_eq!(reds(&fed), vec![0, 1, 2, 3, 200, 201]);
        assert_eq!((fed.num_classes, fed.labels.clone()), (1, vec![0; 6]));
        // stl10_split = "train": one set, labelled, data.train_images limits it
        let mut tr = base.clone();
        tr.push("data.stl10_split=\"train\"".into());
        tr.push("data.train_images=3".into());
        tr.push("data.image_size=96".into());
        let sc = scenario(&tr);
        assert!(!federated_is_separate(&sc));
        assert!(load_federated(&sc).unwrap().is_none());
        let (train, _) = load_sets(&sc).unwrap();
        assert_eq!((train.labels.clone(), train.height), (vec![0, 1, 2], 96));
    }

    #[test]
    fn cifar100_runs_probe_on_the_labels_asked_for() {
        let d = tempfile::tempdir().unwrap();
        let inner = d.path().join("cifar-100-binary");
        std::fs::create_dir(&inner).unwrap();
        let records = |n: u8| {
            (0..n)
                .flat_map(|i| {
                    let mut r = vec![i; fedssl_shared::data::cifar100::RECORD_BYTES];
                    r[0] = i % 20;
                    r[1] = 50 + i;
                    r
                })
                .collect::<Vec<u8>>()
        };
        std::fs::write(inner.join("train.bin"), records(5)).unwrap();
        std::fs::write(inner.join("test.bin"), records(2)).unwrap();
        let path = toml::Value::from(d.path().display().to_string());
        let sets = |labels: &str| {
            vec![
                "data.dataset=\"cifar100\"".to_string(),
                format!("data.path={path}"),
                format!("data.cifar100_labels=\"{labels}\""),
                "data.train_images=4".into(),
            ]
        };
        let sc = scenario(&sets("fine"));
        assert!(!federated_is_separate(&sc));
        let (train, test) = load_sets(&sc).unwrap();
        assert_eq!(
            (train.labels.clone(), train.num_classes),
            (vec![50, 51, 52, 53], 100)
        );
        assert_eq!(test.labels, vec![50, 51]);
        assert_eq!(train.class_names[50], "mouse");
        let (train, _) = load_sets(&scenario(&sets("coarse"))).unwrap();
        assert_eq!(
            (train.labels.clone(), train.num_classes),
            (vec![0, 1, 2, 3], 20)
        );
        assert_eq!(train.image(3)[5], 3);
    }
}
