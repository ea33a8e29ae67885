//! `partition.png`: the heat map of a split, clients × classes, each cell coloured by the
//! fraction of that client's images in that class (white 0 → dark blue 1, matplotlib's
//! "Blues" ends), with a colour bar and the split's mean EMD and Jensen–Shannon divergence
//! in the title ([`fedssl_shared::partition::report`]).

use std::path::Path;

use anyhow::{ensure, Result};
use fedssl_shared::partition::report::HeterogeneityReport;
use plotters::prelude::*;

use super::plot::{err, init_font};

/// Width of the heat map, pixels.
pub const WIDTH: u32 = 900;
/// Pixels above, below and around the cells (title, class axis, margins).
const FRAME_PX: u32 = 150;
/// Width of the colour bar's area on the right, pixels.
const BAR_AREA_PX: u32 = 110;

/// `(width, height)` in pixels of the heat map of `clients` clients: one row of
/// `clamp(480 / clients, 2, 24)` pixels per client plus [`FRAME_PX`] (e.g. 10 clients:
/// 24-pixel rows, 900 × 390; 100 clients: 4-pixel rows, 900 × 550).
pub fn heatmap_size(clients: usize) -> (u32, u32) {
    let row = (480 / clients.max(1)).clamp(2, 24) as u32;
    (WIDTH, FRAME_PX + row * clients as u32)
}

/// The colour of a fraction `f` in `[0, 1]` (clamped): linear from white to (8, 48, 107).
pub fn colour(f: f64) -> RGBColor {
    let f = if f.is_finite() {
        f.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let mix = |hi: f64, lo: f64| (hi + (lo - hi) * f).round() as u8;
    RGBColor(mix(255.0, 8.0), mix(255.0, 48.0), mix(255.0, 107.0))
}

/// Writes the heat map of `report` as a PNG of [`heatmap_size`] at `path`. Errors when the
/// report has no client or no class, or the file cannot be written.
pub fn partition_heatmap(path: &Path, report: &HeterogeneityReport) -> Result<()> {
    let clients = report.clients.len();
    let classes = report.num_classes;
    ensure!(
        clients > 0 && classes > 0,
        "heat map {}: no clients or no classes",
        path.display()
    );
    init_font();
    let size = heatmap_size(clients);
    let root = BitMapBackend::new(path, size).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let (cells, bar) = root.split_horizontally(size.0 - BAR_AREA_PX);
    let s = &report.summary;
    let title = format!(
        "{clients} clients, {} images: mean EMD {:.3}, mean JS {:.3} nats",
        s.images, s.mean_emd, s.mean_js
    );
    let mut chart = ChartBuilder::on(&cells)
        .caption(title, ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(55)
        .build_cartesian_2d(-0.5f64..classes as f64 - 0.5, clients as f64 - 0.5..-0.5f64)
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_mesh()
        .x_desc("class")
        .y_desc("client")
        .x_labels(classes.min(20))
        .y_labels(clients.min(20))
        .x_label_formatter(&|v| format!("{}", v.round()))
        .y_label_formatter(&|v| format!("{}", v.round()))
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(err)?;
    let rects = report.clients.iter().enumerate().flat_map(|(k, c)| {
        let n = c.images.max(1) as f64;
        c.class_counts.iter().enumerate().map(move |(j, &m)| {
            let (x, y) = (j as f64, k as f64);
            Rectangle::new(
                [(x - 0.5, y - 0.5), (x + 0.5, y + 0.5)],
                colour(m as f64 / n).filled(),
            )
        })
    });
    chart.draw_series(rects).map_err(err)?;
    draw_colour_bar(&bar, size.1)?;
    root.present().map_err(err)?;
    Ok(())
}

/// The colour bar: fractions 0 (bottom) to 1 (top) with three labels.
fn draw_colour_bar(
    area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    height: u32,
) -> Result<()> {
    let top = 50i32;
    let bottom = height as i32 - 50;
    let span = (bottom - top).max(1);
    for y in top..bottom {
        let f = (bottom - y) as f64 / span as f64;
        area.draw(&Rectangle::new([(15, y), (40, y + 1)], colour(f).filled()))
            .map_err(err)?;
    }
    area.draw(&Rectangle::new([(15, top), (40, bottom)], BLACK))
        .map_err(err)?;
    let style = ("sans-serif", 14).into_font();
    for (f, label) in [(0.0, "0"), (0.5, "0.5"), (1.0, "1")] {
        let y = bottom - (f * span as f64) as i32;
        area.draw(&Text::new(label, (46, y - 7), style.clone()))
            .map_err(err)?;
    }
    area.draw(&Text::new("fraction", (10, top - 30), style))
        .map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use fedssl_shared::partition::report::report;

    #[test]
    fn the_heat_map_decodes_with_its_size_and_colours() {
        // 4 clients: rows of 480 / 4 = 120 → clamped to 24 px, height 150 + 4 · 24 = 246
        assert_eq!(heatmap_size(4), (900, 246));
        assert_eq!(heatmap_size(100), (900, 550));
        assert_eq!(heatmap_size(1000), (900, 2150));
        assert_eq!(colour(0.0), RGBColor(255, 255, 255));
        assert_eq!(colour(1.0), RGBColor(8, 48, 107));
        // 0.5: 255 − 247/2 = 131.5 → 132; 255 − 207/2 = 151.5 → 152; 255 − 74 = 181
        assert_eq!(colour(0.5), RGBColor(132, 152, 181));
        let labels = [0u32, 0, 1, 1, 2, 2, 2, 0];
        let r = report(
            &labels,
            3,
            &[vec![0, 1], vec![2, 3], vec![4, 5, 6], vec![7]],
        );
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("partition.png");
        partition_heatmap(&p, &r).unwrap();
        let img = image::open(&p).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (900, 246));
        // every client here holds one class: the heat map has full-fraction cells
        let dark = img.pixels().filter(|p| p.0 == [8, 48, 107]).count();
        assert!(dark > 4 * 24 * 20, "{dark} dark pixels");
        let empty = report(&labels, 3, &[]);
        assert!(partition_heatmap(&p, &empty).is_err());
    }
}
