//! The data of a run: the scenario's training and test sets, loaded as `[data]` says (both
//! run modes and the `eval` subcommand load them the same way), and, when `[eval] dataset`
//! names another dataset than the one the clients train on, the two kept apart: the probes
//! use the evaluation dataset, the simulated clients the training one.

use anyhow::{bail, Result};
use fedssl_shared::config::Scenario;
use fedssl_shared::data::{load_split_with, DatasetKind, ImageDataset};

/// The dataset the probes use, and where: `eval.dataset` at `eval.path` (default
/// `data.path` when it is the training dataset's kind), or the training dataset.
fn eval_source(sc: &Scenario) -> (DatasetKind, Option<&std::path::Path>) {
    let kind = sc.eval.dataset.unwrap_or(sc.data.dataset);
    let same_kind = kind == sc.data.dataset;
    let path = sc
        .eval
        .path
        .as_deref()
        .or(sc.data.path.as_deref().filter(|_| same_kind));
    (kind, path)
}

/// True when the evaluation dataset is another than the training one (`[eval] dataset` or
/// `path` set and different).
pub fn eval_is_separate(sc: &Scenario) -> bool {
    let (kind, path) = eval_source(sc);
    kind != sc.data.dataset || path != sc.data.path.as_deref()
}

/// The labelled training and test sets of the evaluation of `sc`: the training dataset's
/// (`data.dataset` at `data.path`, the first `data.train_images` / `data.test_images` as the
/// loaders draw them with the seed), or `[eval] dataset`'s (all its images; `eval.train_labels`
/// and `eval.test_images` choose among them). A folder is read with `data.labels`,
/// `data.image_size` and `data.skip_bad_images`.
///
/// Errors: a loader's; an evaluation on a dataset without labels.
pub fn load_sets(sc: &Scenario) -> Result<(ImageDataset, ImageDataset)> {
    let (kind, path) = eval_source(sc);
    let (train_n, test_n) = if eval_is_separate(sc) {
        (None, None)
    } else {
        (sc.data.train_images, sc.data.test_images)
    };
    let folder = sc.data.folder_options();
    let train = load_split_with(kind, path, train_n, sc.seed, true, &folder)?;
    if sc.eval.enabled && train.labels.is_empty() {
        bail!(
            "the evaluation needs labelled images, and the image folder {} has none: set data.labels = \"subfolders\" (DIR/train/<class>/…), eval.dataset, or eval.enabled = false",
            path.map_or_else(|| "?".into(), |p| p.display().to_string())
        );
    }
    let train = one_class_if_unlabelled(train);
    let test = if sc.eval.enabled || kind != DatasetKind::Folder {
        load_split_with(kind, path, test_n, sc.seed, false, &folder)?
    } else {
        train.subset(&[])
    };
    Ok((train, test))
}

/// The training set the simulated clients are given shards of, when it is not the
/// evaluation's ([`eval_is_separate`]); `None` when [`load_sets`]'s training set is it. An
/// unlabelled folder is given one class (`"unlabelled"`) so that it can be partitioned.
pub fn load_federated(sc: &Scenario) -> Result<Option<ImageDataset>> {
    if !eval_is_separate(sc) {
        return Ok(None);
    }
    let ds = load_split_with(
        sc.data.dataset,
        sc.data.path.as_deref(),
        sc.data.train_images,
        sc.seed,
        true,
        &sc.data.folder_options(),
    )?;
    Ok(Some(one_class_if_unlabelled(ds)))
}

/// `ds`, with every image in class 0 of one (`"unlabelled"`) when it has no labels.
pub fn one_class_if_unlabelled(mut ds: ImageDataset) -> ImageDataset {
    if ds.labels.is_empty() {
        ds.labels = vec![0; ds.len()];
        ds.num_classes = 1;
        ds.class_names = vec!["unlabelled".into()];
    }
    ds
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
}
