//! Relative patch position (Doersch, Gupta & Efros, "Unsupervised Visual Representation
//! Learning by Context Prediction", ICCV 2015): cut a 3×3 grid of patches out of an image,
//! show the network the centre patch and one of its 8 neighbours, and let it classify where
//! the neighbour sits relative to the centre.
//!
//! Labels are the neighbours in raster order, as `(row, col)` offsets from the centre cell
//! (row grows downwards, col rightwards):
//!
//! | label | 0 | 1 | 2 | 3 | 4 | 5 | 6 | 7 |
//! |---|---|---|---|---|---|---|---|---|
//! | offset | (−1,−1) up-left | (−1,0) up | (−1,+1) up-right | (0,−1) left | (0,+1) right | (+1,−1) down-left | (+1,0) down | (+1,+1) down-right |
//!
//! ([`neighbour_offset`]). The shortcuts the paper names are
//! countered as it does: a gap between the cells and a random jitter of every patch inside
//! its cell (no continuous edges or textures across patches; [`super::grid`]), and per-patch
//! colour removal against chromatic aberration (with probability `grayscale_prob` the patch is
//! made grey, with probability `channel_drop_prob` two of its three channels are replaced by
//! the dataset mean, i.e. 0 after normalisation — the paper's Gaussian noise of 1/100 of a
//! channel's standard deviation rounds to nothing on `u8` pixels).

use anyhow::{bail, Result};
use candle_core::{Device, Tensor};
use candle_nn::{Linear, Module, VarBuilder};
use rand::rngs::StdRng;
use rand::Rng;

use super::grid::{crop_hwc, upscale, Grid};
use super::{classification_step, PreparedBatch, PretextKind, PretextTask, StepOutput};
use crate::data::{hwc_u8_to_tensor, ImageDataset};
use crate::model::Backbone;

/// `[pretext.relative_patch]`: patch geometry, colour removal and head width.
///
/// The default geometry needs `3×8 + 2×2 + 2×1 = 30` px of a 32×32 image (centred: nominal
/// patch corners at 2, 12, 22 px ± 1), so neighbouring patches are 0 to 4 px apart and never
/// overlap. Colour removal is off by default: on CIFAR-10 (downsampled 32×32 images, little
/// chromatic aberration) it cost linear-probe accuracy under `scenarios/compare-pretexts.toml`
/// (37.9 % with 0.25 / 0.25 against 38.3 % without, gap 3), as did the wider gap (38.3 % at
/// gap 3 against 38.6 % at gap 2).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RelativePatchConfig {
    /// Side of each square patch in pixels (default 8).
    pub patch_size: usize,
    /// Nominal gap between neighbouring patches in pixels (default 2); must be at least
    /// `2 × jitter`.
    pub gap: usize,
    /// Largest random shift of a patch inside its cell, per axis, in pixels (default 1).
    pub jitter: usize,
    /// Probability that a patch is converted to grey (ITU-R 601 luma on all channels);
    /// default 0.
    pub grayscale_prob: f64,
    /// Probability that a patch keeps one random colour channel and the other two are set to
    /// the dataset mean (colour dropping); default 0. Drawn exclusively with
    /// `grayscale_prob`, so their sum must be at most 1.
    pub channel_drop_prob: f64,
    /// Bilinear upscaling factor of every patch before the backbone (default 1: none; 2
    /// turns 8×8 patches into 16×16), so the backbone sees inputs closer to the 32×32 images it
    /// is evaluated on; 1 to 8.
    pub upscale: usize,
    /// Width of the head's hidden layer (default 256).
    pub head_hidden: usize,
    /// `"all_eight"` (default): all 9 patches of every image go through the backbone and the
    /// centre is paired with each of its 8 neighbours (8 pairs per image, like rotation's
    /// `all_four`); `"random_one"`: the centre and one uniformly drawn neighbour (the paper's
    /// sampling, 1 pair per image).
    pub pairs: PairMode,
}

/// Which centre–neighbour pairs a relative-patch batch holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PairMode {
    /// Every image's centre with each of its 8 neighbours: `9B` patches, `8B` pairs.
    AllEight,
    /// Every image's centre with one uniformly drawn neighbour: `2B` patches, `B` pairs.
    RandomOne,
}

impl Default for RelativePatchConfig {
    fn default() -> Self {
        Self {
            patch_size: 8,
            gap: 2,
            jitter: 1,
            grayscale_prob: 0.0,
            channel_drop_prob: 0.0,
            upscale: 1,
            head_hidden: 256,
            pairs: PairMode::AllEight,
        }
    }
}

impl RelativePatchConfig {
    /// The patch grid these parameters describe.
    pub fn grid(&self) -> Grid {
        Grid {
            patch: self.patch_size,
            gap: self.gap,
            jitter: self.jitter,
        }
    }

    /// Checks the parameters; messages name the `pretext.relative_patch.*` key. Whether the
    /// grid fits the images is checked when a batch is built.
    pub fn validate(&self) -> Result<()> {
        const KEY: &str = "pretext.relative_patch";
        self.grid().validate(KEY, "patch_size")?;
        check_colour_probs(KEY, self.grayscale_prob, self.channel_drop_prob)?;
        if !(1..=8).contains(&self.upscale) {
            bail!("{KEY}.upscale must be in 1..=8, got {}", self.upscale);
        }
        if self.head_hidden == 0 {
            bail!("{KEY}.head_hidden must be at least 1");
        }
        Ok(())
    }
}

/// Checks `grayscale_prob` and `channel_drop_prob` of table `key`: each in [0, 1], sum ≤ 1.
pub(crate) fn check_colour_probs(key: &str, gray: f64, drop: f64) -> Result<()> {
    for (name, p) in [("grayscale_prob", gray), ("channel_drop_prob", drop)] {
        if !(0.0..=1.0).contains(&p) {
            bail!("{key}.{name} must be in [0, 1], got {p}");
        }
    }
    if gray + drop > 1.0 {
        bail!(
            "{key}.grayscale_prob + {key}.channel_drop_prob must be at most 1, got {gray} + {drop}"
        );
    }
    Ok(())
}

/// The `(row, col)` offset of neighbour `label` from the centre cell (table in the module
/// docs): `0 → (−1, −1)`, `1 → (−1, 0)`, … `7 → (1, 1)`. Panics if `label ≥ 8`.
pub fn neighbour_offset(label: u32) -> (i32, i32) {
    assert!(label < 8, "neighbour label {label} is not in 0..8");
    let cell = if label < 4 { label } else { label + 1 } as i32;
    (cell / 3 - 1, cell % 3 - 1)
}

/// Removes colour from one `(p, p, C)` patch in place against the chromatic-aberration
/// shortcut: one `rng.random::<f64>()` draw `u`; if `u < gray` every pixel becomes its luma
/// `round(0.299 R + 0.587 G + 0.114 B)` on all channels; else if `u < gray + drop`, one channel
/// `k = rng.random_range(0..3)` is kept and the others are set to `round(255 · mean[ch])`.
/// Patches with fewer than 3 channels are left alone (and draw nothing).
pub fn drop_colour(
    patch: &mut [u8],
    c: usize,
    gray: f64,
    drop: f64,
    mean: [f32; 3],
    rng: &mut impl Rng,
) {
    if c < 3 {
        return;
    }
    let u: f64 = rng.random();
    if u < gray {
        for px in patch.chunks_exact_mut(c) {
            let y = 0.299 * px[0] as f32 + 0.587 * px[1] as f32 + 0.114 * px[2] as f32;
            let y = y.round().clamp(0.0, 255.0) as u8;
            px[..3].fill(y);
        }
    } else if u < gray + drop {
        let keep = rng.random_range(0..3usize);
        let fill: [u8; 3] =
            std::array::from_fn(|ch| (mean[ch] * 255.0).round().clamp(0.0, 255.0) as u8);
        for px in patch.chunks_exact_mut(c) {
            for ch in (0..3).filter(|&ch| ch != keep) {
                px[ch] = fill[ch];
            }
        }
    }
}

/// Cuts the centre patch and neighbour `label` (see [`neighbour_offset`]) out of one
/// `(H, W, C)` image with the jitter of `grid`, as two `(p, p, C)` byte vectors (centre,
/// neighbour). Draws the centre's jitter, then the neighbour's. Requires the grid to fit.
pub fn cut_pair(
    img: &[u8],
    h: usize,
    w: usize,
    c: usize,
    grid: &Grid,
    label: u32,
    rng: &mut impl Rng,
) -> (Vec<u8>, Vec<u8>) {
    let p = grid.patch;
    let (dr, dc) = neighbour_offset(label);
    let (cy, cx) = grid.sample_corner(h, w, 1, 1, rng);
    let (ny, nx) = grid.sample_corner(h, w, (1 + dr) as usize, (1 + dc) as usize, rng);
    let mut centre = Vec::with_capacity(p * p * c);
    let mut neighbour = Vec::with_capacity(p * p * c);
    crop_hwc(img, w, c, cy, cx, p, &mut centre);
    crop_hwc(img, w, c, ny, nx, p, &mut neighbour);
    (centre, neighbour)
}

/// One relative-position batch: the patches and the pairs the head reads.
pub struct RelativePatchBatch {
    /// `(N, C, p, p)` `f32` patches normalised with the dataset's mean/std.
    pub patches: Tensor,
    /// `(P)` `u32` rows of `patches` holding each pair's centre.
    pub centre: Tensor,
    /// `(P)` `u32` rows of `patches` holding each pair's neighbour.
    pub neighbour: Tensor,
    /// `(P)` `u32` labels, the neighbour's position ([`neighbour_offset`]).
    pub labels: Tensor,
}

/// Builds a relative-position batch from images `idx` of `ds`.
///
/// For image `b` of the batch (in order):
/// * `AllEight`: its 9 patches (grid raster order, jitters drawn in that order, then
///   [`drop_colour`] on each in order) are rows `9b..9b+9`; pairs `8b + l`, `l = 0..8`, are
///   centre row `9b + 4` with neighbour `l`'s row, label `l`;
/// * `RandomOne`: label `l = rng.random_range(0..8)`, [`cut_pair`], [`drop_colour`] on the
///   centre then the neighbour; rows `2b` (centre) and `2b + 1` (neighbour), pair `b`.
///
/// Errors on an index out of range or a grid that does not fit the images (naming
/// `pretext.relative_patch`).
pub fn relative_patch_batch(
    ds: &ImageDataset,
    idx: &[usize],
    cfg: &RelativePatchConfig,
    rng: &mut impl Rng,
    device: &Device,
) -> Result<RelativePatchBatch> {
    let (h, w, c) = (ds.height, ds.width, ds.channels);
    let grid = cfg.grid();
    grid.check_fits(h, w, "pretext.relative_patch", "patch_size")?;
    let p = grid.patch;
    let per = match cfg.pairs {
        PairMode::AllEight => 9,
        PairMode::RandomOne => 2,
    };
    let n = idx.len();
    let mut bytes = Vec::with_capacity(n * per * p * p * c);
    let (mut centre, mut neighbour, mut labels) = (Vec::new(), Vec::new(), Vec::new());
    let colour = |patch: &mut Vec<u8>, rng: &mut _| {
        drop_colour(
            patch,
            c,
            cfg.grayscale_prob,
            cfg.channel_drop_prob,
            ds.mean,
            rng,
        )
    };
    for (b, &i) in idx.iter().enumerate() {
        let img = ds.try_image(i)?;
        let base = (b * per) as u32;
        match cfg.pairs {
            PairMode::AllEight => {
                let mut patches = Vec::with_capacity(9);
                for k in 0..9 {
                    let (y, x) = grid.sample_corner(h, w, k / 3, k % 3, rng);
                    let mut patch = Vec::with_capacity(p * p * c);
                    crop_hwc(img, w, c, y, x, p, &mut patch);
                    patches.push(patch);
                }
                for patch in &mut patches {
                    colour(patch, rng);
                    bytes.extend_from_slice(patch);
                }
                for l in 0..8u32 {
                    let (dr, dc) = neighbour_offset(l);
                    centre.push(base + 4);
                    neighbour.push(base + ((1 + dr) * 3 + 1 + dc) as u32);
                    labels.push(l);
                }
            }
            PairMode::RandomOne => {
                let l: u32 = rng.random_range(0..8);
                let (mut a, mut nb) = cut_pair(img, h, w, c, &grid, l, rng);
                colour(&mut a, rng);
                colour(&mut nb, rng);
                bytes.extend_from_slice(&a);
                bytes.extend_from_slice(&nb);
                centre.push(base);
                neighbour.push(base + 1);
                labels.push(l);
            }
        }
    }
    let m = labels.len();
    Ok(RelativePatchBatch {
        patches: hwc_u8_to_tensor(&bytes, n * per, p, p, c, ds.mean, ds.std, device)?,
        centre: Tensor::from_vec(centre, m, device)?,
        neighbour: Tensor::from_vec(neighbour, m, device)?,
        labels: Tensor::from_vec(labels, m, device)?,
    })
}

/// Relative patch position with an MLP head on the concatenated pre-logits of the centre and
/// the neighbour: `Linear(2D → hidden)` (`head.fc1`), ReLU, `Linear(hidden → 8)`
/// (`head.fc2`), trained with 8-way cross-entropy.
pub struct RelativePatchTask {
    cfg: RelativePatchConfig,
    fc1: Linear,
    fc2: Linear,
}

impl RelativePatchTask {
    /// Creates the head under `vb` for `feature_dim`-wide pre-logits. Errors on invalid
    /// parameters.
    pub fn new(cfg: &RelativePatchConfig, feature_dim: usize, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        Ok(Self {
            cfg: cfg.clone(),
            fc1: candle_nn::linear(2 * feature_dim, cfg.head_hidden, vb.pp("fc1"))?,
            fc2: candle_nn::linear(cfg.head_hidden, 8, vb.pp("fc2"))?,
        })
    }

    /// Position logits `(P, 8)` of a [`RelativePatchBatch`]: one backbone forward over all
    /// `patches`, then `head([f(centre_j) ‖ f(neighbour_j)])` for every pair `j`.
    pub fn logits(
        &self,
        backbone: &Backbone,
        batch: &RelativePatchBatch,
        train: bool,
    ) -> Result<Tensor> {
        let f = backbone
            .forward_t(&upscale(&batch.patches, self.cfg.upscale)?, train)?
            .pre_logits;
        let pair = Tensor::cat(
            &[
                f.index_select(&batch.centre, 0)?,
                f.index_select(&batch.neighbour, 0)?,
            ],
            1,
        )?;
        Ok(self.fc2.forward(&self.fc1.forward(&pair)?.relu()?)?)
    }
}

impl PretextTask for RelativePatchTask {
    fn kind(&self) -> PretextKind {
        PretextKind::RelativePatch
    }

    /// 8-way cross-entropy over [`relative_patch_batch`] (`count` = pairs).
    fn prepare(
        &self,
        shard: &ImageDataset,
        idx: &[usize],
        rng: &mut StdRng,
        device: &Device,
    ) -> Result<PreparedBatch> {
        let batch = relative_patch_batch(shard, idx, &self.cfg, rng, device)?;
        Ok(PreparedBatch::new(batch))
    }

    fn step(&self, backbone: &Backbone, batch: PreparedBatch) -> Result<StepOutput> {
        let batch: RelativePatchBatch = batch.take(self.kind())?;
        let logits = self.logits(backbone, &batch, true)?;
        let y = &batch.labels;
        classification_step(&logits, y)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    /// The label of the neighbour at `(row, col)` offset `(dr, dc)` from the centre, the inverse
    /// of [`neighbour_offset`]; `None` for `(0, 0)` or an offset outside `{−1, 0, 1}²`.
    fn neighbour_label(dr: i32, dc: i32) -> Option<u32> {
        if !(-1..=1).contains(&dr) || !(-1..=1).contains(&dc) || (dr, dc) == (0, 0) {
            return None;
        }
        let cell = ((dr + 1) * 3 + (dc + 1)) as u32;
        Some(if cell < 4 { cell } else { cell - 1 })
    }

    #[test]
    fn label_offset_table_and_round_trip() {
        let want = [
            (-1, -1),
            (-1, 0),
            (-1, 1),
            (0, -1),
            (0, 1),
            (1, -1),
            (1, 0),
            (1, 1),
        ];
        for (l, &off) in want.iter().enumerate() {
            assert_eq!(neighbour_offset(l as u32), off, "label {l}");
            assert_eq!(neighbour_label(off.0, off.1), Some(l as u32));
        }
        assert_eq!(neighbour_label(0, 0), None);
        assert_eq!(neighbour_label(2, 0), None);
        assert_eq!(neighbour_label(0, -2), None);
    }

    /// A 32×32 RGB image whose pixels in cell `(r, c)`'s region (nominal corner ± jitter of
    /// `grid`) hold `(10 + 3r + c, 50 + 3r + c, 90 + 3r + c)`, and 255 in the gaps.
    fn cell_coded(grid: &Grid) -> Vec<u8> {
        let region = |v: usize| {
            (0..3).find(|&k| {
                let lo = grid.nominal(32, k) - grid.jitter;
                (lo..lo + grid.patch + 2 * grid.jitter).contains(&v)
            })
        };
        let mut img = vec![255u8; 32 * 32 * 3];
        for y in 0..32 {
            for x in 0..32 {
                if let (Some(r), Some(c)) = (region(y), region(x)) {
                    let cell = (3 * r + c) as u8;
                    img[(y * 32 + x) * 3..][..3].copy_from_slice(&[
                        10 + cell,
                        50 + cell,
                        90 + cell,
                    ]);
                }
            }
        }
        img
    }

    #[test]
    fn patches_come_from_the_labelled_cell() {
        // gap 3 leaves 255-valued gap pixels between the regions (columns/rows 10 and 21), the
        // default gap 2 none: both must read their cell only.
        let gap3 = Grid {
            patch: 8,
            gap: 3,
            jitter: 1,
        };
        for grid in [gap3, RelativePatchConfig::default().grid()] {
            check_cells(&grid);
        }
    }

    fn check_cells(grid: &Grid) {
        let img = cell_coded(grid);
        let mut rng = StdRng::seed_from_u64(7);
        for label in 0..8u32 {
            let (dr, dc) = neighbour_offset(label);
            let cell = ((1 + dr) * 3 + (1 + dc)) as u8;
            for _ in 0..20 {
                let (a, b) = cut_pair(&img, 32, 32, 3, grid, label, &mut rng);
                assert_eq!(a.len(), 8 * 8 * 3);
                assert!(
                    a.chunks(3).all(|px| px == [14, 54, 94]),
                    "centre, label {label}"
                );
                assert!(
                    b.chunks(3)
                        .all(|px| px == [10 + cell, 50 + cell, 90 + cell]),
                    "neighbour of label {label} should come from cell {cell}"
                );
            }
        }
    }

    #[test]
    fn gap_is_respected() {
        // The corners the grid samples keep patches of neighbouring cells at least
        // gap − 2·jitter and at most gap + 2·jitter px apart: 1..=5 for gap 3, 0..=4 for the
        // default gap 2 (horizontally and vertically).
        let gap3 = Grid {
            patch: 8,
            gap: 3,
            jitter: 1,
        };
        for (grid, want) in [
            (gap3, (1, 5)),
            (RelativePatchConfig::default().grid(), (0, 4)),
        ] {
            let mut rng = StdRng::seed_from_u64(1);
            let (mut lo, mut hi) = (usize::MAX, 0);
            for _ in 0..500 {
                let (y0, x0) = grid.sample_corner(32, 32, 0, 1, &mut rng);
                let (y1, x1) = grid.sample_corner(32, 32, 1, 2, &mut rng);
                for gap in [x1 - (x0 + grid.patch), y1 - (y0 + grid.patch)] {
                    lo = lo.min(gap);
                    hi = hi.max(gap);
                }
            }
            assert_eq!((lo, hi), want);
        }
    }

    #[test]
    fn colour_dropping() {
        let mean = [0.5, 0.25, 0.0];
        let px = vec![100u8, 200, 50, 0, 0, 0];
        let mut rng = StdRng::seed_from_u64(0);
        let mut g = px.clone();
        drop_colour(&mut g, 3, 1.0, 0.0, mean, &mut rng);
        // 0.299·100 + 0.587·200 + 0.114·50 = 153.0
        assert_eq!(g, vec![153, 153, 153, 0, 0, 0]);
        let mut d = px.clone();
        drop_colour(&mut d, 3, 0.0, 1.0, mean, &mut rng);
        let fill = [128u8, 64, 0];
        let kept: Vec<usize> = (0..3)
            .filter(|&ch| d[ch] == px[ch] && d[ch] != fill[ch])
            .collect();
        assert_eq!(kept.len(), 1, "{d:?}");
        for ch in (0..3).filter(|&ch| ch != kept[0]) {
            assert_eq!((d[ch], d[3 + ch]), (fill[ch], fill[ch]));
        }
        let mut n = px.clone();
        drop_colour(&mut n, 3, 0.0, 0.0, mean, &mut rng);
        assert_eq!(n, px);
        assert!(check_colour_probs("k", 0.6, 0.6)
            .unwrap_err()
            .to_string()
            .contains("k.grayscale_prob"));
    }

    #[test]
    fn batch_layout_and_pairs() {
        let ds = crate::data::synthetic::generate(6, 2);
        let dev = Device::Cpu;
        let row = |x: &Tensor, r: usize| x.narrow(0, r, 1).unwrap();
        let same = |a: Tensor, b: Tensor| {
            let d = (a - b).unwrap().abs().unwrap().max_all().unwrap();
            assert_eq!(d.to_scalar::<f32>().unwrap(), 0.0);
        };
        let one = RelativePatchConfig {
            grayscale_prob: 0.0,
            channel_drop_prob: 0.0,
            pairs: PairMode::RandomOne,
            ..Default::default()
        };
        let mut rng = StdRng::seed_from_u64(5);
        let b = relative_patch_batch(&ds, &[4, 1, 3], &one, &mut rng, &dev).unwrap();
        assert_eq!(b.patches.dims(), &[6, 3, 8, 8]);
        assert_eq!(b.centre.to_vec1::<u32>().unwrap(), vec![0, 2, 4]);
        assert_eq!(b.neighbour.to_vec1::<u32>().unwrap(), vec![1, 3, 5]);
        let y = b.labels.to_vec1::<u32>().unwrap();
        // replay the stream for image 4: rows 0 and 1 are its centre and neighbour
        let mut rng = StdRng::seed_from_u64(5);
        let l: u32 = rng.random_range(0..8);
        assert_eq!(l, y[0]);
        let (a, nb) = cut_pair(ds.image(4), 32, 32, 3, &one.grid(), l, &mut rng);
        for (r, bytes) in [(0, a), (1, nb)] {
            let want = hwc_u8_to_tensor(&bytes, 1, 8, 8, 3, ds.mean, ds.std, &dev).unwrap();
            same(row(&b.patches, r), want);
        }

        let all = RelativePatchConfig {
            pairs: PairMode::AllEight,
            ..one
        };
        let b = relative_patch_batch(&ds, &[2, 5], &all, &mut rng, &dev).unwrap();
        assert_eq!(b.patches.dims(), &[18, 3, 8, 8]);
        assert_eq!(
            b.labels.to_vec1::<u32>().unwrap(),
            [0, 1, 2, 3, 4, 5, 6, 7].repeat(2)
        );
        assert_eq!(
            b.centre.to_vec1::<u32>().unwrap(),
            [[4u32; 8], [13; 8]].concat()
        );
        let nb = [0u32, 1, 2, 3, 5, 6, 7, 8];
        let nb2: Vec<u32> = nb.iter().map(|v| v + 9).collect();
        assert_eq!(
            b.neighbour.to_vec1::<u32>().unwrap(),
            [nb.to_vec(), nb2].concat()
        );

        // on a cell-coded image, all_eight row 9b + k holds cell k's code
        let coded = ImageDataset {
            images: cell_coded(&all.grid()),
            labels: Vec::new(),
            height: 32,
            width: 32,
            channels: 3,
            num_classes: 1,
            class_names: vec!["x".into()],
            mean: [0.0; 3],
            std: [1.0; 3],
            domains: Vec::new(),
            domain_names: Vec::new(),
        };
        let b = relative_patch_batch(&coded, &[0, 0], &all, &mut rng, &dev).unwrap();
        for r in 0..18 {
            let v = row(&b.patches, r)
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let cell = (r % 9) as f32;
            for (j, px) in v.iter().enumerate() {
                let want = [10.0, 50.0, 90.0][j / 64] + cell;
                assert!((px * 255.0 - want).abs() < 1e-3, "row {r}: {px}");
            }
        }

        let bad = RelativePatchConfig {
            patch_size: 9,
            gap: 2,
            ..Default::default()
        };
        let e = relative_patch_batch(&ds, &[0], &bad, &mut rng, &dev)
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("pretext.relative_patch") && e.contains("33"),
            "{e}"
        );
    }
}
