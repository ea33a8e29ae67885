//! PNG charts. Placeholder until the plotters-based charts land: it refuses to draw.

use std::path::Path;

/// Bar chart of fractions in [0, 1] shown as percent. Placeholder: errors.
pub fn bar_chart(
    path: &Path,
    title: &str,
    y_label: &str,
    bars: &[(String, f64)],
) -> anyhow::Result<()> {
    let _ = (title, y_label, bars);
    anyhow::bail!("cannot draw {}: charts are not built yet", path.display())
}
