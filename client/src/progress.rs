//! The progress bar of one local round, drawn under the caller's [`MultiProgress`].

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

/// The bar's line.
const TEMPLATE: &str = "  client {prefix:>3} round {msg} [{bar:25}] {pos}/{len} steps {per_sec} loss {wide_msg}";

/// Adds to `mp` the bar of round `shown` (1-based, as logs count) of client `client_id`.
pub(crate) fn round_bar(mp: &MultiProgress, client_id: u32, shown: u32) -> ProgressBar {
    let bar = mp.add(ProgressBar::new(0));
    bar.set_style(
        ProgressStyle::with_template(TEMPLATE)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix(client_id.to_string());
    bar.set_message(format!("{shown}"));
    bar
}

/// Shows local step `step` of `total` and the loss of that step on `bar`.
pub(crate) fn show_step(bar: &ProgressBar, step: usize, total: usize, loss: f64) {
    bar.set_length(total as u64);
    bar.set_position(step as u64);
    bar.set_message(format!("{loss:.3}"));
}
