//! PNG charts of the evaluation suite, drawn by `plotters`' bitmap backend with a font
//! embedded in the binary (an ASCII subset of DejaVu Sans, `coordinator/assets/`, Bitstream
//! Vera licence in `DejaVuSans-LICENSE.txt`): no system fonts and no C libraries.
//!
//! Accuracies are fractions in `[0, 1]`, drawn as percentages.

use std::path::Path;
use std::sync::Once;

use anyhow::{anyhow, ensure, Result};
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// Pixels of every chart.
pub const SIZE: (u32, u32) = (900, 560);

static FONT: &[u8] = include_bytes!("../../assets/DejaVuSans-subset.ttf");
static INIT: Once = Once::new();

/// Registers the embedded font as `sans-serif` (once per process).
pub(crate) fn init_font() {
    INIT.call_once(|| {
        for style in [FontStyle::Normal, FontStyle::Bold] {
            // The embedded font is valid; a failure would only make text disappear.
            let _ = plotters::style::register_font("sans-serif", style, FONT);
        }
    });
}

/// A plotters error as an `anyhow` one.
pub(crate) fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("plot: {e:?}")
}

const COLOURS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

/// One line of a [`line_chart`].
#[derive(Clone, Debug)]
pub struct Series {
    /// Legend entry.
    pub name: String,
    /// `(x, y)` points, `y` a fraction in `[0, 1]` (drawn as %).
    pub points: Vec<(f64, f64)>,
    /// Optional error bar half-height per point (same length as `points`), a fraction.
    pub err: Vec<f64>,
    /// Dashed-looking style: drawn thinner with hollow markers (e.g. a baseline).
    pub baseline: bool,
}

/// How the x axis is drawn.
#[derive(Clone, Debug)]
pub enum XAxis {
    /// Linear, with numeric labels.
    Linear,
    /// Logarithmic (base 10); all x must be positive.
    Log,
    /// Named categories at x = 0, 1, …, n − 1 (points may sit a little off their category,
    /// to keep lines apart); no vertical grid lines.
    Categories(Vec<String>),
}

impl XAxis {
    /// The drawn x range (in axis coordinates) for data spanning `x0..=x1`. Errors on a
    /// non-positive x on a log axis.
    fn range(&self, title: &str, x0: f64, x1: f64) -> Result<(f64, f64)> {
        Ok(match self {
            XAxis::Log => {
                ensure!(x0 > 0.0, "plot {title}: log axis needs positive x");
                (x0.log10() - 0.1, x1.log10() + 0.1)
            }
            XAxis::Linear => {
                let pad = if x1 > x0 { (x1 - x0) * 0.05 } else { 0.5 };
                (x0 - pad, x1 + pad)
            }
            XAxis::Categories(c) => (x0.min(0.0) - 0.5, x1.max(c.len() as f64 - 1.0) + 0.5),
        })
    }

    /// Where a data x is drawn, in axis coordinates.
    fn position(&self, x: f64) -> f64 {
        match self {
            XAxis::Log => x.log10(),
            XAxis::Linear | XAxis::Categories(_) => x,
        }
    }

    /// Tick marks asked of plotters.
    fn ticks(&self) -> usize {
        match self {
            XAxis::Log => 60,
            XAxis::Linear => 10,
            // one more than the categories: plotters then steps by 1
            XAxis::Categories(c) => c.len() + 1,
        }
    }

    /// The label of the tick at axis coordinate `v` (log axis: only 1, 2 and 5 × 10^k).
    fn label(&self, v: f64) -> String {
        match self {
            XAxis::Log => {
                let x = 10f64.powf(v);
                let e = x.log10().floor();
                let m = x / 10f64.powf(e);
                let nice = [1.0, 2.0, 5.0, 10.0]
                    .iter()
                    .any(|n| (m - n).abs() < 0.02 * n);
                if !nice {
                    String::new()
                } else if x >= 1.0 {
                    format!("{:.0}", x)
                } else {
                    format!("{x:.2}")
                }
            }
            XAxis::Categories(c) => {
                let i = v.round();
                if (v - i).abs() < 1e-6 && i >= 0.0 {
                    c.get(i as usize).cloned().unwrap_or_default()
                } else {
                    String::new()
                }
            }
            XAxis::Linear => {
                let v = if v.abs() < 1e-9 { 0.0 } else { v };
                if (v - v.round()).abs() < 1e-9 {
                    format!("{v:.0}")
                } else {
                    format!("{v:.2}")
                }
            }
        }
    }
}

/// A chart on `f64 × f64` axes drawn into a bitmap.
type Chart<'a, 'b> =
    ChartContext<'a, BitMapBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// A line chart of accuracies: `series` over `x`, y in % (0 to the largest value, error
/// bars included, plus a margin), legend in the lower right. Writes a `SIZE` PNG at `path`. Errors on an empty
/// chart, a non-positive x on a log axis or an unwritable path.
pub fn line_chart(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    x_axis: XAxis,
    series: &[Series],
) -> Result<()> {
    init_font();
    let (mut x0, mut x1, mut y1) = (f64::INFINITY, f64::NEG_INFINITY, 0f64);
    for s in series {
        for (i, &(x, y)) in s.points.iter().enumerate() {
            x0 = x0.min(x);
            x1 = x1.max(x);
            // the top of the point's error bar, if any, is drawn too
            y1 = y1.max(y + s.err.get(i).copied().unwrap_or(0.0).max(0.0));
        }
    }
    ensure!(x0.is_finite(), "plot {title}: no points");
    let ymax = 100.0 * (y1 * 1.15).clamp(0.05, 1.0);
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let (xa, xb) = x_axis.range(title, x0, x1)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 24))
        .margin(15)
        .x_label_area_size(50)
        .y_label_area_size(60)
        .build_cartesian_2d(xa..xb, 0.0..ymax)
        .map_err(err)?;
    let mut mesh = chart.configure_mesh();
    if matches!(x_axis, XAxis::Categories(_)) {
        mesh.disable_x_mesh();
    }
    mesh.x_desc(x_label)
        .y_desc(y_label)
        .x_labels(x_axis.ticks())
        .x_label_formatter(&|v: &f64| x_axis.label(*v))
        .y_label_formatter(&|v| format!("{v:.0}%"))
        .label_style(("sans-serif", 15))
        .draw()
        .map_err(err)?;
    for (i, s) in series.iter().enumerate() {
        draw_line(&mut chart, s, COLOURS[i % COLOURS.len()], &x_axis)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 15))
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

/// One series of a [`line_chart`] in colour `c`: its line (with a legend entry), its
/// markers (hollow for a baseline) and its error bars.
fn draw_line(chart: &mut Chart<'_, '_>, s: &Series, c: RGBColor, x_axis: &XAxis) -> Result<()> {
    let data: Vec<(f64, f64)> = s
        .points
        .iter()
        .map(|&(x, y)| (x_axis.position(x), 100.0 * y))
        .collect();
    let width = if s.baseline { 1 } else { 2 };
    chart
        .draw_series(LineSeries::new(data.clone(), c.stroke_width(width)))
        .map_err(err)?
        .label(s.name.clone())
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
    let filled = !s.baseline;
    chart
        .draw_series(data.iter().map(|&p| {
            Circle::new(
                p,
                4,
                if filled {
                    c.filled()
                } else {
                    c.stroke_width(2)
                },
            )
        }))
        .map_err(err)?;
    for (&(x, y), &e) in data.iter().zip(&s.err) {
        if e > 0.0 {
            chart
                .draw_series(std::iter::once(PathElement::new(
                    vec![(x, y - 100.0 * e), (x, y + 100.0 * e)],
                    c.stroke_width(1),
                )))
                .map_err(err)?;
        }
    }
    Ok(())
}

/// Font size of bar charts' axis labels, in pixels.
const BAR_LABEL_PX: f64 = 15.0;
/// Height of one row of x labels, in pixels.
const LABEL_ROW_PX: u32 = 20;
/// Outer margin and y-label area of bar charts, in pixels.
const BAR_MARGIN: u32 = 15;
const BAR_Y_AREA: u32 = 60;

/// Rows for x labels centred at `centres` with pixel `widths` (both in x order): each label
/// goes to the first row where it keeps `gap` pixels from the label before it in that row,
/// so labels wider than their slot are staggered onto a second (third…) row instead of
/// overlapping. Row 0 is right below the axis.
pub fn x_label_rows(centres: &[f64], widths: &[f64], gap: f64) -> Vec<usize> {
    let mut right_edges: Vec<f64> = Vec::new();
    centres
        .iter()
        .zip(widths)
        .map(|(&c, &w)| {
            let left = c - w / 2.0;
            let row = right_edges
                .iter()
                .position(|&r| left >= r + gap)
                .unwrap_or(right_edges.len());
            if row == right_edges.len() {
                right_edges.push(f64::NEG_INFINITY);
            }
            right_edges[row] = c + w / 2.0;
            row
        })
        .collect()
}

/// The x labels of a bar chart with `labels.len()` slots on a `SIZE` canvas: for each label
/// its left and right pixel edges (centred on its slot) and its [`x_label_rows`] row.
pub fn bar_label_layout(labels: &[String]) -> Vec<(f64, f64, usize)> {
    init_font();
    let font = FontDesc::new(FontFamily::SansSerif, BAR_LABEL_PX, FontStyle::Normal);
    let n = labels.len().max(1) as f64;
    let left = (BAR_MARGIN + BAR_Y_AREA) as f64;
    let slot = (SIZE.0 - 2 * BAR_MARGIN - BAR_Y_AREA) as f64 / n;
    let centres: Vec<f64> = (0..labels.len())
        .map(|i| left + slot * (i as f64 + 0.5))
        .collect();
    let widths: Vec<f64> = labels
        .iter()
        .map(|l| {
            font.box_size(l)
                .map(|(w, _)| w as f64)
                .unwrap_or(l.len() as f64 * BAR_LABEL_PX * 0.6)
        })
        .collect();
    let rows = x_label_rows(&centres, &widths, 8.0);
    centres
        .iter()
        .zip(&widths)
        .zip(rows)
        .map(|((c, w), r)| (c - w / 2.0, c + w / 2.0, r))
        .collect()
}

/// Bars in groups: one group per `(label, values)`, one bar per value, coloured by series
/// (`series[j]` names the `j`-th value of every group in a legend; with no names there is
/// no legend and every bar gets its own colour). Values are fractions drawn as %, each
/// written above its bar; group labels are laid out by [`bar_label_layout`] (staggered
/// when too wide for their slot). Writes a `SIZE` PNG at `path`. Errors on no bars, groups
/// of different sizes, a non-finite value or an unwritable path.
pub fn grouped_bar_chart(
    path: &Path,
    title: &str,
    y_label: &str,
    series: &[String],
    groups: &[(String, Vec<f64>)],
) -> Result<()> {
    init_font();
    check_groups(title, series, groups)?;
    let max = groups
        .iter()
        .flat_map(|g| &g.1)
        .fold(0.0f64, |a, &b| a.max(b));
    // room above the bars for the values (and the legend)
    let headroom = if series.is_empty() { 1.15 } else { 1.3 };
    let ymax = 100.0 * (max * headroom).clamp(0.05, 1.0);
    let n = groups.len();
    let labels: Vec<String> = groups.iter().map(|g| g.0.clone()).collect();
    let layout = bar_label_layout(&labels);
    let rows = layout.iter().map(|l| l.2).max().unwrap_or(0) as u32 + 1;
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 24))
        .margin(BAR_MARGIN)
        .x_label_area_size(10 + rows * LABEL_ROW_PX)
        .y_label_area_size(BAR_Y_AREA)
        .build_cartesian_2d(-0.5f64..n as f64 - 0.5, 0.0..ymax)
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_desc(y_label)
        .y_label_formatter(&|v| format!("{v:.0}%"))
        .label_style(("sans-serif", BAR_LABEL_PX))
        .draw()
        .map_err(err)?;
    draw_bars(&mut chart, groups, !series.is_empty(), ymax)?;
    // group labels under the axis, staggered rows where they would overlap
    let (_, axis_y) = chart.backend_coord(&(0.0, 0.0));
    let label_style = TextStyle::from(("sans-serif", BAR_LABEL_PX).into_font())
        .pos(Pos::new(HPos::Center, VPos::Top));
    for (i, (label, (_, _, row))) in labels.iter().zip(&layout).enumerate() {
        let (x, _) = chart.backend_coord(&(i as f64, 0.0));
        root.draw_text(
            label,
            &label_style,
            (x, axis_y + 6 + (*row as u32 * LABEL_ROW_PX) as i32),
        )
        .map_err(err)?;
    }
    if !series.is_empty() {
        draw_bar_legend(&mut chart, series)?;
    }
    root.present().map_err(err)?;
    Ok(())
}

/// Refuses what [`grouped_bar_chart`] cannot draw: no bars, groups of different sizes, a
/// number of series names that is not the group size, a non-finite value.
fn check_groups(title: &str, series: &[String], groups: &[(String, Vec<f64>)]) -> Result<()> {
    ensure!(
        !groups.is_empty() && groups.iter().all(|g| !g.1.is_empty()),
        "bar chart {title}: no bars"
    );
    let per = groups[0].1.len();
    ensure!(
        groups.iter().all(|g| g.1.len() == per),
        "bar chart {title}: every group needs the same number of bars"
    );
    ensure!(
        series.is_empty() || series.len() == per,
        "bar chart {title}: {} series names for {per} bars per group",
        series.len()
    );
    ensure!(
        groups.iter().flat_map(|g| &g.1).all(|v| v.is_finite()),
        "bar chart {title}: a value is not finite"
    );
    Ok(())
}

/// The bars of [`grouped_bar_chart`], each with its value written above it: coloured by
/// position in the group when `by_series`, else every bar by its group.
fn draw_bars(
    chart: &mut Chart<'_, '_>,
    groups: &[(String, Vec<f64>)],
    by_series: bool,
    ymax: f64,
) -> Result<()> {
    let per = groups[0].1.len();
    // bars of a group share 80 % of its slot
    let width = 0.8 / per as f64;
    let value_px = if per > 2 { 11.0 } else { 13.0 };
    for (i, (_, values)) in groups.iter().enumerate() {
        for (j, v) in values.iter().enumerate() {
            let c = if by_series {
                COLOURS[j % COLOURS.len()]
            } else {
                COLOURS[i % COLOURS.len()]
            };
            let x0 = i as f64 - 0.4 + j as f64 * width;
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(x0 + 0.04 * width, 0.0), (x0 + 0.96 * width, 100.0 * v)],
                    c.filled(),
                )))
                .map_err(err)?;
            let text = format!("{:.1}%", 100.0 * v);
            let style = TextStyle::from(("sans-serif", value_px).into_font())
                .pos(Pos::new(HPos::Center, VPos::Bottom));
            chart
                .draw_series(std::iter::once(Text::new(
                    text,
                    (x0 + width / 2.0, 100.0 * v + ymax * 0.01),
                    style,
                )))
                .map_err(err)?;
        }
    }
    Ok(())
}

/// The legend of [`grouped_bar_chart`]: one swatch per series name, upper right.
fn draw_bar_legend<'a, 'b: 'a>(chart: &mut Chart<'a, 'b>, series: &[String]) -> Result<()> {
    for (j, name) in series.iter().enumerate() {
        let c = COLOURS[j % COLOURS.len()];
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(-0.5, 0.0), (-0.5, 0.0)],
                c.filled(),
            )))
            .map_err(err)?
            .label(name.as_str())
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 14, y + 6)], c.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK.mix(0.3))
        .label_font(("sans-serif", BAR_LABEL_PX))
        .draw()
        .map_err(err)?;
    Ok(())
}

/// k-NN top-1 per round (`rounds.jsonl`'s `knn_top1`), one line per run.
pub fn knn_per_round(path: &Path, runs: &[(String, Vec<(usize, f64)>)]) -> Result<()> {
    let series: Vec<Series> = runs
        .iter()
        .filter(|r| !r.1.is_empty())
        .map(|(name, pts)| Series {
            name: name.clone(),
            points: pts.iter().map(|&(r, a)| (r as f64, a)).collect(),
            err: vec![],
            baseline: false,
        })
        .collect();
    line_chart(
        path,
        "k-NN probe accuracy per round",
        "round",
        "k-NN top-1",
        XAxis::Linear,
        &series,
    )
}

/// Per-layer linear-probe top-1 of several backbones on one chart: x is the relative depth
/// (first stage 0, pre-logits 1), each point labelled in the legend by backbone.
pub fn per_layer(path: &Path, runs: &[(String, Vec<(String, f64)>)]) -> Result<()> {
    let series: Vec<Series> = runs
        .iter()
        .filter(|r| !r.1.is_empty())
        .map(|(name, layers)| {
            let n = layers.len().max(2) - 1;
            Series {
                name: format!(
                    "{name} ({})",
                    layers
                        .iter()
                        .map(|l| l.0.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                points: layers
                    .iter()
                    .enumerate()
                    .map(|(i, l)| (i as f64 / n as f64, l.1))
                    .collect(),
                err: vec![],
                baseline: false,
            }
        })
        .collect();
    line_chart(
        path,
        "Linear probe per layer",
        "relative depth (0 = first stage, 1 = pre-logits)",
        "top-1",
        XAxis::Linear,
        &series,
    )
}

/// Accuracies over named categories (e.g. the values of a sweep's first axis), one line per
/// series, error bars from each series' `err`.
pub fn categories_chart(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    categories: &[String],
    series: &[Series],
) -> Result<()> {
    line_chart(
        path,
        title,
        x_label,
        y_label,
        XAxis::Categories(categories.to_vec()),
        series,
    )
}

/// Top-1 against labelled images per class (log axis), mean ± std over the draws.
pub fn few_labels(path: &Path, series: &[Series]) -> Result<()> {
    line_chart(
        path,
        "Linear probe with few labels: pretrained vs random init",
        "labelled images per class (log)",
        "top-1 (mean over draws, bars: std)",
        XAxis::Log,
        series,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Width and height from a PNG's IHDR chunk.
    fn png_size(path: &Path) -> (u32, u32) {
        let b = std::fs::read(path).unwrap();
        assert_eq!(&b[..8], b"\x89PNG\r\n\x1a\n", "PNG signature");
        assert_eq!(&b[12..16], b"IHDR");
        let be = |s: &[u8]| u32::from_be_bytes([s[0], s[1], s[2], s[3]]);
        (be(&b[16..20]), be(&b[20..24]))
    }

    #[test]
    fn charts_are_pngs_of_the_chart_size() {
        let dir = tempfile::tempdir().unwrap();
        let bar = dir.path().join("bars.png");
        grouped_bar_chart(
            &bar,
            "Pretext tasks",
            "top-1",
            &[],
            &[
                ("rotation".into(), vec![0.42]),
                ("jigsaw".into(), vec![0.371]),
            ],
        )
        .unwrap();
        assert_eq!(png_size(&bar), SIZE);
        let layers = dir.path().join("layers.png");
        per_layer(
            &layers,
            &[
                (
                    "resnet".into(),
                    vec![
                        ("stage1".into(), 0.3),
                        ("stage2".into(), 0.35),
                        ("pre_logits".into(), 0.4),
                    ],
                ),
                (
                    "vgg_bn".into(),
                    vec![
                        ("block1".into(), 0.3),
                        ("block5".into(), 0.38),
                        ("pre_logits".into(), 0.33),
                    ],
                ),
            ],
        )
        .unwrap();
        assert_eq!(png_size(&layers), SIZE);
        let few = dir.path().join("few.png");
        let s = Series {
            name: "pretrained".into(),
            points: vec![(10.0, 0.2), (100.0, 0.3), (1000.0, 0.4)],
            err: vec![0.01, 0.02, 0.0],
            baseline: false,
        };
        let r = Series {
            name: "random init".into(),
            baseline: true,
            ..s.clone()
        };
        few_labels(&few, &[s, r]).unwrap();
        assert_eq!(png_size(&few), SIZE);
        let knn = dir.path().join("knn.png");
        knn_per_round(&knn, &[("run".into(), vec![(1, 0.2), (2, 0.25)])]).unwrap();
        assert_eq!(png_size(&knn), SIZE);
        let cat = dir.path().join("cat.png");
        let cats = ["iid".to_string(), "dirichlet-0.1".to_string()];
        let line = Series {
            name: "strategy=fedavg".into(),
            points: vec![(-0.05, 0.4), (0.95, 0.35)],
            err: vec![0.01, 0.0],
            baseline: false,
        };
        categories_chart(&cat, "t", "partition", "top-1", &cats, &[line]).unwrap();
        assert_eq!(png_size(&cat), SIZE);
        let axis = XAxis::Categories(cats.to_vec());
        assert_eq!(
            (
                axis.label(0.0),
                axis.label(1.0),
                axis.label(0.5),
                axis.label(2.0)
            ),
            (
                "iid".into(),
                "dirichlet-0.1".into(),
                String::new(),
                String::new()
            )
        );
        // text is drawn: a chart with a title has more non-white pixels than an empty frame
        assert!(std::fs::metadata(&bar).unwrap().len() > 2000);
        assert!(grouped_bar_chart(&bar, "x", "y", &[], &[]).is_err());
        assert!(few_labels(
            &few,
            &[Series {
                name: "bad".into(),
                points: vec![(0.0, 0.1)],
                err: vec![],
                baseline: false
            }]
        )
        .is_err());
    }

    #[test]
    fn label_rows_stagger_only_what_would_overlap() {
        assert_eq!(
            x_label_rows(&[0.0, 10.0, 20.0], &[8.0, 15.0, 8.0], 1.0),
            [0, 1, 0]
        );
        assert_eq!(
            x_label_rows(&[0.0, 10.0, 20.0], &[8.0, 8.0, 8.0], 1.0),
            [0, 0, 0]
        );
        // three wide labels in a row need three rows
        assert_eq!(
            x_label_rows(&[0.0, 1.0, 2.0], &[5.0, 5.0, 5.0], 0.0),
            [0, 1, 2]
        );
        assert!(x_label_rows(&[], &[], 1.0).is_empty());
    }

    /// The labels of the old compare-pretexts chart (6 tasks and 4 baselines in 10 slots)
    /// overlapped in one row; the layout must keep every row free of overlaps and inside the
    /// canvas, and the 6 task names of the grouped chart fit in one row.
    #[test]
    fn bar_labels_never_overlap() {
        let names = [
            "rotation",
            "relative_patch",
            "jigsaw",
            "exemplar",
            "simclr",
            "mae",
            "init resnet",
            "init relative_patch",
            "init jigsaw",
            "init vit",
        ];
        let labels: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let layout = bar_label_layout(&labels);
        assert!(layout.iter().any(|l| l.2 > 0), "10 slots need a second row");
        for (i, a) in layout.iter().enumerate() {
            assert!(
                a.0 >= 0.0 && a.1 <= SIZE.0 as f64,
                "{} leaves the canvas",
                names[i]
            );
            assert!(
                a.1 - a.0 > 20.0,
                "the font measured {} too narrow",
                names[i]
            );
            for (j, b) in layout.iter().enumerate().skip(i + 1) {
                if a.2 == b.2 {
                    assert!(
                        a.1 <= b.0 || b.1 <= a.0,
                        "{} overlaps {}",
                        names[i],
                        names[j]
                    );
                }
            }
        }
        let six = bar_label_layout(
            &labels[..5]
                .iter()
                .cloned()
                .chain(["mae (vit)".to_string()])
                .collect::<Vec<_>>(),
        );
        assert!(six.iter().all(|l| l.2 == 0), "{six:?}");
    }

    #[test]
    fn grouped_bars_with_a_legend() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("g.png");
        let groups = vec![
            ("rotation".to_string(), vec![0.42, 0.39]),
            ("mae (vit)".to_string(), vec![0.41, 0.395]),
        ];
        let series = ["pretrained".to_string(), "random init".to_string()];
        grouped_bar_chart(&p, "t", "top-1", &series, &groups).unwrap();
        assert_eq!(png_size(&p), SIZE);
        let ragged = vec![
            ("a".to_string(), vec![0.1, 0.2]),
            ("b".to_string(), vec![0.3]),
        ];
        assert!(grouped_bar_chart(&p, "t", "y", &series, &ragged).is_err());
        assert!(grouped_bar_chart(&p, "t", "y", &series[..1], &groups).is_err());
        assert!(grouped_bar_chart(&p, "t", "y", &series, &[]).is_err());
    }
}
