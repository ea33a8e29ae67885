//! The tiny scenario of the end-to-end tests: synthetic images, a two-stage ResNet four
//! channels wide, three clients, two rounds; a test changes what it needs with `--set`-style
//! overrides.

use fedssl_shared::config::Scenario;

/// The tiny scenario as TOML: 240 synthetic training images (120 test) split by a Dirichlet
/// partition (α = 1) over 3 clients (at least 2), 2 rounds, batches of 16, a linear probe of
/// 20 epochs.
pub const TINY: &str = r#"
name = "tiny"
seed = 3
[data]
dataset = "synthetic"
train_images = 240
test_images = 120
[partition]
kind = "dirichlet"
alpha = 1.0
[model.resnet]
stem_width = 4
widths = [4, 8]
blocks = [1, 1]
[train]
batch_size = 16
[federation]
clients = 3
min_clients = 2
rounds = 2
round_deadline_seconds = 120
idle_timeout_seconds = 5
[eval]
epochs = 20
"#;

/// [`TINY`] with `overrides` (`key.path=value`, as `--set` takes them). Also sends the logs
/// (filtered by `FEDSSL_LOG`, `warn` by default) to the test's captured output, once.
///
/// # Panics
/// If an override does not fit the scenario.
pub fn tiny(overrides: &[&str]) -> Scenario {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FEDSSL_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
    let overrides: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
    match Scenario::from_toml_str(TINY, &overrides) {
        Ok(sc) => sc,
        Err(e) => panic!("the tiny scenario with {overrides:?}: {e:#}"),
    }
}
