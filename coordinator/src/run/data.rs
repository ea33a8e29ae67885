//! The data of a run: the scenario's training and test sets, loaded as `[data]` says (both
//! run modes and the `eval` subcommand load them the same way).

use anyhow::Result;
use fedssl_shared::config::Scenario;
use fedssl_shared::data::ImageDataset;
use fedssl_shared::data::{load_test_set, load_train_set};

/// The training and test sets of `sc` (`data.dataset` at `data.path`, the first
/// `data.train_images` / `data.test_images` as the loaders draw them with the seed).
pub fn load_sets(sc: &Scenario) -> Result<(ImageDataset, ImageDataset)> {
    let train = load_train_set(
        sc.data.dataset,
        sc.data.path.as_deref(),
        sc.data.train_images,
        sc.seed,
    )?;
    let test = load_test_set(
        sc.data.dataset,
        sc.data.path.as_deref(),
        sc.data.test_images,
        sc.seed,
    )?;
    Ok((train, test))
}
