//! Jigsaw puzzles (Noroozi & Favaro, "Unsupervised Learning of Visual Representations by
//! Solving Jigsaw Puzzles", ECCV 2016): cut an image into a 3×3 grid of tiles, shuffle them by
//! one permutation of a fixed set, and let the network classify which permutation it was.
//!
//! * Tiles: the 3×3 grid of [`super::grid`] (a gap between cells and a random jitter of every
//!   tile inside its cell, against edge-continuity shortcuts). Each tile is standardised by
//!   its own mean and standard deviation (over its pixels and channels), as the paper does so
//!   that low-level statistics of neighbouring tiles cannot be matched; optional per-tile
//!   grey / colour dropping (as in relative patch) against chromatic aberration.
//! * Permutations: [`permutation_set`], the paper's Algorithm 1 (greedy maximal minimum
//!   Hamming distance over **all** 9! permutations, seeded start).
//! * Network: every tile of the batch goes through the shared backbone in one forward
//!   (pre-logits `(9B, D)`); for a puzzle with permutation `σ` the embeddings are concatenated
//!   in shuffled order `[f(t_σ(0)) ‖ … ‖ f(t_σ(8))]` `(9D)` and an MLP head classifies the
//!   permutation's index in the full set.
//! * Several permutations per image (after Kolesnikov, Zhai & Beyer, "Revisiting
//!   Self-Supervised Visual Representation Learning", CVPR 2019, who reuse each image's tile
//!   embeddings for several permutations): every image is shuffled by
//!   `k = permutations_per_image` distinct permutations of the set, so one backbone forward
//!   over `9B` tiles gives `B·k` puzzles to the head; the label is the index in the full set.
//!   Revisiting's code names two ways to draw them: (1) independently for each image, (2) the
//!   same `k` for the whole batch (the one it uses). [`PermutationDraw::PerImage`] (1) is the
//!   default: with (2) a batch's labels are only `k` of the `P` classes, the head chases each
//!   batch's label set instead of the tiles' content, and on fedssl's small budgets the loss
//!   stays at `ln P` (measured on CIFAR-10, 32 images a step, `k = 8`, `P = 100`: (2) sat at
//!   ≈ 4.6 for 600 to over 1,000 steps depending on the init, (1) was at 0.68 after 300
//!   steps; see the README's jigsaw section).
//!
//! Convention: a permutation `σ` (`[u8; 9]`) puts tile `σ[i]` (raster index of the grid cell
//! it was cut from) at position `i` of the shuffled puzzle.

use anyhow::{bail, Result};
use candle_core::{Device, Tensor};
use candle_nn::{Linear, Module, VarBuilder};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::grid::{crop_hwc, upscale, Grid};
use super::relative_patch::{check_colour_probs, drop_colour};
use super::{classification_step, PreparedBatch, PretextKind, PretextTask, StepOutput};
use crate::data::ImageDataset;
use crate::model::Backbone;

/// Largest `pretext.jigsaw.permutations` accepted (the paper's largest set).
pub const MAX_PERMUTATIONS: usize = 1000;

/// `9! = 362880`, the number of permutations of 9 tiles.
pub const ALL_PERMUTATIONS: usize = 362_880;

/// `[pretext.jigsaw]`: tile geometry, permutation set, colour removal and head width.
///
/// The default geometry fits 32×32 images exactly: `3×8 + 2×3 + 2×1 = 32` (nominal tile
/// corners at 1, 12, 23 px; neighbouring tiles 1 to 5 px apart).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JigsawConfig {
    /// Side of each square tile in pixels (default 8).
    pub tile_size: usize,
    /// Nominal gap between neighbouring tiles in pixels (default 3); at least `2 × jitter`.
    pub gap: usize,
    /// Largest random shift of a tile inside its cell, per axis, in pixels (default 1).
    pub jitter: usize,
    /// Size of the permutation set, the number of classes (default 100; 2 to 1000).
    pub permutations: usize,
    /// Seed of the permutation set's first (random) permutation (default 0). Every client
    /// must use the same value, which the scenario guarantees.
    pub permutation_seed: u64,
    /// Distinct permutations every image is shuffled by, i.e. puzzles per image (default 8,
    /// as Revisiting; 1 to `permutations`). Earlier versions called it
    /// `permutations_per_batch` and always drew per batch; that name is refused (as unknown)
    /// rather than read with the new meaning, so that `--reuse` and `--resume` never mistake
    /// a run of the old draw for one of the new.
    pub permutations_per_image: usize,
    /// How the `permutations_per_image` permutations are drawn: `"per_image"` (default,
    /// independently for every image) or `"per_batch"` (the same ones for the whole batch,
    /// as Revisiting's code; stalls at chance on small budgets, see [`PermutationDraw`]).
    pub permutation_draw: PermutationDraw,
    /// Probability that a tile is made grey (default 0.25).
    pub grayscale_prob: f64,
    /// Probability that a tile keeps one random colour channel, the others set to the dataset
    /// mean (default 0.25); drawn exclusively with `grayscale_prob` (sum at most 1).
    pub channel_drop_prob: f64,
    /// `true` (default): every tile standardised by its own mean and standard deviation (the
    /// paper's); `false`: normalised with the dataset's per-channel mean/std like whole
    /// images at evaluation.
    pub per_tile_norm: bool,
    /// Bilinear upscaling factor of every patch before the backbone (default 1: none; 2
    /// turns 8×8 patches into 16×16), so the backbone sees inputs closer to the 32×32 images it
    /// is evaluated on; 1 to 8.
    pub upscale: usize,
    /// Width of the head's hidden layer (default 512).
    pub head_hidden: usize,
}

impl Default for JigsawConfig {
    fn default() -> Self {
        Self {
            tile_size: 8,
            gap: 3,
            jitter: 1,
            permutations: 100,
            permutation_seed: 0,
            permutations_per_image: 8,
            permutation_draw: PermutationDraw::PerImage,
            grayscale_prob: 0.25,
            channel_drop_prob: 0.25,
            per_tile_norm: true,
            upscale: 1,
            head_hidden: 512,
        }
    }
}

impl JigsawConfig {
    /// The tile grid these parameters describe.
    pub fn grid(&self) -> Grid {
        Grid {
            patch: self.tile_size,
            gap: self.gap,
            jitter: self.jitter,
        }
    }

    /// Checks the parameters; messages name the `pretext.jigsaw.*` key. Whether the grid fits
    /// the images is checked when a batch is built.
    pub fn validate(&self) -> Result<()> {
        const KEY: &str = "pretext.jigsaw";
        self.grid().validate(KEY, "tile_size")?;
        if !(2..=MAX_PERMUTATIONS).contains(&self.permutations) {
            bail!(
                "{KEY}.permutations must be in 2..={MAX_PERMUTATIONS}, got {}",
                self.permutations
            );
        }
        if !(1..=self.permutations).contains(&self.permutations_per_image) {
            bail!(
                "{KEY}.permutations_per_image must be in 1..={KEY}.permutations ({}), got {}",
                self.permutations,
                self.permutations_per_image
            );
        }
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

/// How a jigsaw batch draws the permutations its images are shuffled by (`pretext.jigsaw.
/// permutation_draw`); both give every image `permutations_per_image` distinct ones.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PermutationDraw {
    /// Each image draws its own (Revisiting's method 1, and Noroozi & Favaro's one random
    /// permutation per image when `permutations_per_image = 1`): a batch's labels cover
    /// the set nearly uniformly, so only the tiles' content can lower the loss.
    #[default]
    PerImage,
    /// One draw for the whole batch, shared by every image (Revisiting's method 2, the one
    /// its code runs): the batch's labels are only those `k` classes, and the head's easiest
    /// gain is to track each batch's label set, noise that kept the loss at `ln P` for 600 to
    /// over 1,000 steps of 32 images on CIFAR-10 (`P = 100`, `k = 8`).
    PerBatch,
}

/// All 9! permutations of `0..9` in lexicographic order.
fn all_permutations() -> Vec<[u8; 9]> {
    let mut out = Vec::with_capacity(ALL_PERMUTATIONS);
    let mut p: [u8; 9] = std::array::from_fn(|i| i as u8);
    loop {
        out.push(p);
        // next permutation (lexicographic)
        let Some(i) = (0..8).rev().find(|&i| p[i] < p[i + 1]) else {
            return out;
        };
        let j = (i + 1..9).rev().find(|&j| p[j] > p[i]).expect("exists");
        p.swap(i, j);
        p[i + 1..].reverse();
    }
}

/// Number of positions where `a` and `b` differ (0 to 9).
pub fn hamming(a: &[u8; 9], b: &[u8; 9]) -> usize {
    a.iter().zip(b).filter(|(x, y)| x != y).count()
}

/// The permutation set of Noroozi & Favaro's Algorithm 1 ("maximal" Hamming distance):
/// candidates are all 9! permutations; the first is drawn uniformly with
/// `StdRng::seed_from_u64(seed)`; then, `size − 1` times, the candidate whose minimum Hamming
/// distance to the permutations chosen so far is largest is added (ties: the
/// lexicographically first). Deterministic for a given `(size, seed)`; each added
/// permutation costs one pass over the 9! candidates (a set of 100 takes well under a second
/// in an optimised build).
///
/// Returns `size` distinct permutations in the order chosen; label `k` of the jigsaw task is
/// permutation `k`. Panics if `size > 9!`.
pub fn permutation_set(size: usize, seed: u64) -> Vec<[u8; 9]> {
    assert!(size <= ALL_PERMUTATIONS, "at most 9! permutations exist");
    if size == 0 {
        return Vec::new();
    }
    let all = all_permutations();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut k = rng.random_range(0..all.len());
    let mut min_dist = vec![u8::MAX; all.len()];
    let mut out = Vec::with_capacity(size);
    loop {
        let chosen = all[k];
        out.push(chosen);
        if out.len() == size {
            return out;
        }
        let mut best = (0u8, 0usize);
        for (j, (cand, d)) in all.iter().zip(min_dist.iter_mut()).enumerate() {
            *d = (*d).min(hamming(cand, &chosen) as u8);
            if *d > best.0 {
                best = (*d, j);
            }
        }
        k = best.1;
    }
}

/// Standardises `n` tiles of `(t, t, C)` `u8` bytes each by their own statistics into an
/// `f32` `(n, C, t, t)` buffer: `(v/255 − μ) / √(σ² + 10⁻⁴)`, `μ`, `σ²` over the tile's
/// `t·t·C` values on the 0..1 scale (a flat tile becomes zeros).
pub fn standardise_tiles(bytes: &[u8], n: usize, t: usize, c: usize) -> Vec<f32> {
    let hw = t * t;
    let mut out = vec![0f32; n * c * hw];
    for (tile, dst) in bytes.chunks_exact(hw * c).zip(out.chunks_exact_mut(hw * c)) {
        let m = tile.iter().map(|&v| v as f64).sum::<f64>() / (hw * c) as f64 / 255.0;
        let var = tile
            .iter()
            .map(|&v| (v as f64 / 255.0 - m).powi(2))
            .sum::<f64>()
            / (hw * c) as f64;
        let inv = 1.0 / (var + 1e-4).sqrt();
        for (p, px) in tile.chunks_exact(c).enumerate() {
            for (ch, &v) in px.iter().enumerate() {
                dst[ch * hw + p] = ((v as f64 / 255.0 - m) * inv) as f32;
            }
        }
    }
    out
}

/// Cuts the 9 tiles of one `(H, W, C)` image in raster order of the grid (tile `3r + c` from
/// cell `(r, c)`), each `(t, t, C)` bytes, jitters drawn in that order (y then x per tile).
/// Requires the grid to fit.
pub fn cut_tiles(
    img: &[u8],
    h: usize,
    w: usize,
    c: usize,
    grid: &Grid,
    rng: &mut impl Rng,
) -> Vec<Vec<u8>> {
    let t = grid.patch;
    (0..9)
        .map(|k| {
            let (y, x) = grid.sample_corner(h, w, k / 3, k % 3, rng);
            let mut tile = Vec::with_capacity(t * t * c);
            crop_hwc(img, w, c, y, x, t, &mut tile);
            tile
        })
        .collect()
}

/// One jigsaw batch: the tiles and how the head reads them.
pub struct JigsawBatch {
    /// Every tile of the batch, `(9B, C, t, t)` `f32` standardised per tile (or with the
    /// dataset's statistics when `per_tile_norm = false`); image `b`'s tile
    /// `k` (grid raster order) is row `9b + k`.
    pub tiles: Tensor,
    /// `(B·k·9)` `u32` rows of `tiles` whose embeddings, taken 9 at a time, form the head's
    /// inputs: puzzle `b·k + j` is image `b` shuffled by its `j`-th permutation.
    pub gather: Tensor,
    /// `(B·k)` `u32` permutation indices in the full set.
    pub labels: Tensor,
}

/// Builds a jigsaw batch from images `idx` of `ds` with the permutation set `perms`.
///
/// Random draws, in order: with [`PermutationDraw::PerBatch`] the batch's
/// `k = cfg.permutations_per_image` distinct permutation indices first
/// (`rand::seq::index::sample`); then for each image in order: [`cut_tiles`], [`drop_colour`]
/// per tile and, with [`PermutationDraw::PerImage`], the image's own `k` distinct indices
/// (`rand::seq::index::sample`). Errors on an index out of range, `k > perms.len()`, or a grid
/// that does not fit the images (naming `pretext.jigsaw`).
pub fn jigsaw_batch(
    ds: &ImageDataset,
    idx: &[usize],
    cfg: &JigsawConfig,
    perms: &[[u8; 9]],
    rng: &mut impl Rng,
    device: &Device,
) -> Result<JigsawBatch> {
    let (h, w, c) = (ds.height, ds.width, ds.channels);
    let grid = cfg.grid();
    grid.check_fits(h, w, "pretext.jigsaw", "tile_size")?;
    let k = cfg.permutations_per_image;
    if k == 0 || k > perms.len() {
        bail!(
            "pretext.jigsaw.permutations_per_image ({k}) must be in 1..={}",
            perms.len()
        );
    }
    let batch_draw = match cfg.permutation_draw {
        PermutationDraw::PerBatch => Some(rand::seq::index::sample(rng, perms.len(), k).into_vec()),
        PermutationDraw::PerImage => None,
    };
    let t = grid.patch;
    let n = idx.len();
    let mut bytes = Vec::with_capacity(9 * n * t * t * c);
    let mut gather = Vec::with_capacity(n * k * 9);
    let mut labels = Vec::with_capacity(n * k);
    for (b, &i) in idx.iter().enumerate() {
        for mut tile in cut_tiles(ds.try_image(i)?, h, w, c, &grid, rng) {
            drop_colour(
                &mut tile,
                c,
                cfg.grayscale_prob,
                cfg.channel_drop_prob,
                ds.mean,
                rng,
            );
            bytes.extend_from_slice(&tile);
        }
        let chosen = match &batch_draw {
            Some(c) => c.clone(),
            None => rand::seq::index::sample(rng, perms.len(), k).into_vec(),
        };
        for &p in &chosen {
            gather.extend(perms[p].iter().map(|&s| (9 * b) as u32 + s as u32));
            labels.push(p as u32);
        }
    }
    let tiles = if cfg.per_tile_norm {
        Tensor::from_vec(
            standardise_tiles(&bytes, 9 * n, t, c),
            (9 * n, c, t, t),
            device,
        )?
    } else {
        crate::data::hwc_u8_to_tensor(&bytes, 9 * n, t, t, c, ds.mean, ds.std, device)?
    };
    Ok(JigsawBatch {
        tiles,
        gather: Tensor::from_vec(gather, n * k * 9, device)?,
        labels: Tensor::from_vec(labels, n * k, device)?,
    })
}

/// Jigsaw puzzles with an MLP head on the 9 tile embeddings concatenated in shuffled order:
/// `Linear(9D → hidden)` (`head.fc1`), ReLU, `Linear(hidden → permutations)` (`head.fc2`),
/// trained with cross-entropy over the permutation set.
pub struct JigsawTask {
    cfg: JigsawConfig,
    perms: Vec<[u8; 9]>,
    fc1: Linear,
    fc2: Linear,
}

impl JigsawTask {
    /// Computes the permutation set and creates the head under `vb` for `feature_dim`-wide
    /// pre-logits. Errors on invalid parameters.
    pub fn new(cfg: &JigsawConfig, feature_dim: usize, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        Ok(Self {
            cfg: cfg.clone(),
            perms: permutation_set(cfg.permutations, cfg.permutation_seed),
            fc1: candle_nn::linear(9 * feature_dim, cfg.head_hidden, vb.pp("fc1"))?,
            fc2: candle_nn::linear(cfg.head_hidden, cfg.permutations, vb.pp("fc2"))?,
        })
    }

    /// The permutation set; label `k` is `permutations()[k]`.
    pub fn permutations(&self) -> &[[u8; 9]] {
        &self.perms
    }

    /// Permutation logits `(P, permutations)` of a [`JigsawBatch`]'s `tiles` and `gather`
    /// (`P = gather.len() / 9` puzzles): one backbone forward over all tiles, then the
    /// embeddings gathered in shuffled order, `(P, 9D)`, through the head.
    pub fn logits(
        &self,
        backbone: &Backbone,
        tiles: &Tensor,
        gather: &Tensor,
        train: bool,
    ) -> Result<Tensor> {
        let f = backbone
            .forward_t(&upscale(tiles, self.cfg.upscale)?, train)?
            .pre_logits;
        let d = f.dim(1)?;
        let g = gather.dim(0)?;
        if g % 9 != 0 {
            bail!("jigsaw gather holds {g} rows, not a multiple of 9");
        }
        let x = f.index_select(gather, 0)?.reshape((g / 9, 9 * d))?;
        Ok(self.fc2.forward(&self.fc1.forward(&x)?.relu()?)?)
    }
}

impl PretextTask for JigsawTask {
    fn kind(&self) -> PretextKind {
        PretextKind::Jigsaw
    }

    /// Cross-entropy over the permutation set for [`jigsaw_batch`] (`count` = images ×
    /// `permutations_per_image`).
    fn prepare(
        &self,
        shard: &ImageDataset,
        idx: &[usize],
        rng: &mut StdRng,
        device: &Device,
    ) -> Result<PreparedBatch> {
        let batch = jigsaw_batch(shard, idx, &self.cfg, &self.perms, rng, device)?;
        Ok(PreparedBatch::new(batch))
    }

    fn step(&self, backbone: &Backbone, batch: PreparedBatch) -> Result<StepOutput> {
        let batch: JigsawBatch = batch.take(self.kind())?;
        let logits = self.logits(backbone, &batch.tiles, &batch.gather, true)?;
        let y = &batch.labels;
        classification_step(&logits, y)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;

    /// The smallest Hamming distance between two permutations of `set`; `None` with fewer than
    /// two.
    fn min_hamming(set: &[[u8; 9]]) -> Option<usize> {
        let mut best = None;
        for (i, a) in set.iter().enumerate() {
            for b in &set[i + 1..] {
                let d = hamming(a, b);
                best = Some(best.map_or(d, |m: usize| m.min(d)));
            }
        }
        best
    }

    /// Shuffles 9 tiles by `perm`: `out[i] = tiles[perm[i]]`. Panics unless `tiles.len() == 9`
    /// and `perm` is a permutation of `0..9`.
    fn apply_permutation<T: Clone>(tiles: &[T], perm: &[u8; 9]) -> Vec<T> {
        assert_eq!(tiles.len(), 9, "a jigsaw puzzle has 9 tiles");
        perm.iter().map(|&p| tiles[p as usize].clone()).collect()
    }

    /// Restores the grid order of tiles shuffled by [`apply_permutation`] with `perm`:
    /// `out[perm[i]] = shuffled[i]`. Panics unless `shuffled.len() == 9` and `perm` is a
    /// permutation of `0..9`.
    fn undo_permutation<T: Clone>(shuffled: &[T], perm: &[u8; 9]) -> Vec<T> {
        assert_eq!(shuffled.len(), 9, "a jigsaw puzzle has 9 tiles");
        let mut out: Vec<Option<T>> = vec![None; 9];
        for (i, &p) in perm.iter().enumerate() {
            out[p as usize] = Some(shuffled[i].clone());
        }
        out.into_iter()
            .map(|t| t.expect("perm is a permutation of 0..9"))
            .collect()
    }

    #[test]
    fn all_permutations_are_the_9_factorial() {
        let all = all_permutations();
        assert_eq!(all.len(), ALL_PERMUTATIONS);
        assert_eq!(all[0], [0, 1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(all[1], [0, 1, 2, 3, 4, 5, 6, 8, 7]);
        assert_eq!(all[ALL_PERMUTATIONS - 1], [8, 7, 6, 5, 4, 3, 2, 1, 0]);
        assert!(all.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn permutation_set_is_maximal_distinct_and_seeded() {
        let set = permutation_set(100, 0);
        assert_eq!(set.len(), 100);
        for p in &set {
            let mut s = *p;
            s.sort();
            assert_eq!(s, [0, 1, 2, 3, 4, 5, 6, 7, 8]);
        }
        let distinct: std::collections::BTreeSet<_> = set.iter().collect();
        assert_eq!(distinct.len(), 100);
        // brute-force minimum over all 4950 pairs
        let mut brute = 9;
        for i in 0..100 {
            for j in i + 1..100 {
                brute = brute.min(set[i].iter().zip(&set[j]).filter(|(a, b)| a != b).count());
            }
        }
        assert_eq!(min_hamming(&set), Some(brute));
        assert_eq!(brute, MIN_HAMMING_100);
        // Greedy prefixes: the first 9 are pairwise at distance 9 (rows of a Latin square),
        // distance 8 holds up to 21 permutations, 7 up to 94 (measured, pinned here).
        assert_eq!(min_hamming(&set[..9]), Some(9));
        assert_eq!(min_hamming(&set[..10]), Some(8));
        assert_eq!(min_hamming(&set[..21]), Some(8));
        assert_eq!(min_hamming(&set[..22]), Some(7));
        assert_eq!(min_hamming(&set[..94]), Some(7));
        assert_eq!(set, permutation_set(100, 0));
        let other = permutation_set(100, 1);
        assert_ne!(set[0], other[0]);
        assert_eq!(min_hamming(&other), Some(brute));
        assert_eq!(min_hamming(&set[..1]), None);
        assert_eq!(permutation_set(0, 0), Vec::<[u8; 9]>::new());
    }

    /// The greedy set of 100 over all 9! (seed 0 and seed 1) has minimum Hamming distance 6.
    const MIN_HAMMING_100: usize = 6;

    #[test]
    fn apply_then_undo_restores_tiles() {
        // A 32×32 image whose pixels in cell (r, c) hold 3r + c (and 200 in the gaps).
        let grid = JigsawConfig::default().grid();
        let region = |v: usize| {
            (0..3).find(|&k| (grid.nominal(32, k) - 1..grid.nominal(32, k) + 9).contains(&v))
        };
        let mut img = vec![200u8; 32 * 32 * 3];
        for y in 0..32 {
            for x in 0..32 {
                if let (Some(r), Some(c)) = (region(y), region(x)) {
                    img[(y * 32 + x) * 3..][..3].fill((3 * r + c) as u8);
                }
            }
        }
        let mut rng = StdRng::seed_from_u64(2);
        let tiles = cut_tiles(&img, 32, 32, 3, &grid, &mut rng);
        for (k, t) in tiles.iter().enumerate() {
            assert!(t.iter().all(|&v| v == k as u8), "tile {k}");
        }
        let perm = [2u8, 0, 8, 4, 1, 7, 3, 6, 5];
        let shuffled = apply_permutation(&tiles, &perm);
        for (i, t) in shuffled.iter().enumerate() {
            assert!(t.iter().all(|&v| v == perm[i]), "position {i}");
        }
        assert_eq!(undo_permutation(&shuffled, &perm), tiles);
        for p in permutation_set(20, 3) {
            assert_eq!(undo_permutation(&apply_permutation(&tiles, &p), &p), tiles);
        }
    }

    #[test]
    fn tiles_are_standardised_individually() {
        // one 2×2 grey tile [0, 51, 102, 153] (0..1: 0, .2, .4, .6; μ = .3, σ² = .05) and a flat one
        let bytes = [0u8, 51, 102, 153, 7, 7, 7, 7];
        let out = standardise_tiles(&bytes, 2, 2, 1);
        let s = (0.05f64 + 1e-4).sqrt();
        let want = [-0.3 / s, -0.1 / s, 0.1 / s, 0.3 / s];
        for (a, b) in out[..4].iter().zip(want) {
            assert!((*a as f64 - b).abs() < 1e-5, "{out:?}");
        }
        assert_eq!(&out[4..], &[0.0; 4]);
        // channels-first layout: 1×1 tile with 3 channels keeps channel order
        let o = standardise_tiles(&[0, 255, 0], 1, 1, 3);
        assert!(o[1] > 0.0 && o[0] < 0.0 && o[0] == o[2]);
    }

    #[test]
    fn batch_gathers_the_permuted_tiles() {
        let ds = crate::data::synthetic::generate(5, 4);
        let cfg = JigsawConfig {
            permutations: 10,
            permutations_per_image: 3,
            grayscale_prob: 0.0,
            channel_drop_prob: 0.0,
            ..Default::default()
        };
        let perms = permutation_set(10, 0);
        for draw in [PermutationDraw::PerImage, PermutationDraw::PerBatch] {
            let cfg = JigsawConfig {
                permutation_draw: draw,
                ..cfg.clone()
            };
            let mut rng = StdRng::seed_from_u64(9);
            let b = jigsaw_batch(&ds, &[3, 0], &cfg, &perms, &mut rng, &Device::Cpu).unwrap();
            assert_eq!(b.tiles.dims(), &[18, 3, 8, 8]);
            let labels = b.labels.to_vec1::<u32>().unwrap();
            assert_eq!(labels.len(), 6);
            for img in labels.chunks(3) {
                let distinct: std::collections::BTreeSet<_> = img.iter().collect();
                assert_eq!(distinct.len(), 3, "{draw:?}: {labels:?}");
            }
            if draw == PermutationDraw::PerBatch {
                assert_eq!(&labels[..3], &labels[3..]);
            }
            let gather = b.gather.to_vec1::<u32>().unwrap();
            for (row, &l) in labels.iter().enumerate() {
                let img = row / 3;
                let want: Vec<u32> = perms[l as usize]
                    .iter()
                    .map(|&s| 9 * img as u32 + s as u32)
                    .collect();
                assert_eq!(&gather[row * 9..row * 9 + 9], &want[..]);
            }
            // every tile row has mean 0 and variance ≈ 1
            let t = b.tiles.flatten_from(1).unwrap();
            let m = t
                .mean(1)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(m < 1e-5, "{m}");
        }
        // per_tile_norm = false: the tiles are the dataset-normalised crops (replayed stream:
        // the per-batch draw comes before the tiles)
        let ds_norm = JigsawConfig {
            per_tile_norm: false,
            permutation_draw: PermutationDraw::PerBatch,
            ..cfg.clone()
        };
        let mut rng = StdRng::seed_from_u64(9);
        let b = jigsaw_batch(&ds, &[3], &ds_norm, &perms, &mut rng, &Device::Cpu).unwrap();
        let mut rng = StdRng::seed_from_u64(9);
        let _ = rand::seq::index::sample(&mut rng, 10, 3);
        let tiles = cut_tiles(ds.image(3), 32, 32, 3, &cfg.grid(), &mut rng);
        let want = crate::data::hwc_u8_to_tensor(
            &tiles.concat(),
            9,
            8,
            8,
            3,
            ds.mean,
            ds.std,
            &Device::Cpu,
        )
        .unwrap();
        let d = (b.tiles - want).unwrap().abs().unwrap().max_all().unwrap();
        assert_eq!(d.to_scalar::<f32>().unwrap(), 0.0);
        let bad = JigsawConfig {
            permutations_per_image: 11,
            ..cfg
        };
        let mut rng = StdRng::seed_from_u64(9);
        assert!(jigsaw_batch(&ds, &[0], &bad, &perms, &mut rng, &Device::Cpu).is_err());
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("pretext.jigsaw.permutations_per_image"));
    }

    /// The per-image draw spreads a batch's labels over the whole set; the per-batch draw
    /// gives every image the same `k` (the batch-correlated labels that kept the loss at
    /// `ln P`).
    #[test]
    fn per_image_draw_spreads_the_labels_of_a_batch() {
        let ds = crate::data::synthetic::generate(64, 4);
        let perms = permutation_set(100, 0);
        let idx: Vec<usize> = (0..64).collect();
        let distinct = |draw| {
            let cfg = JigsawConfig {
                permutation_draw: draw,
                ..Default::default()
            };
            assert_eq!(cfg.permutations_per_image, 8);
            let mut rng = StdRng::seed_from_u64(1);
            let b = jigsaw_batch(&ds, &idx, &cfg, &perms, &mut rng, &Device::Cpu).unwrap();
            let labels = b.labels.to_vec1::<u32>().unwrap();
            assert_eq!(labels.len(), 64 * 8);
            labels
                .into_iter()
                .collect::<std::collections::BTreeSet<_>>()
                .len()
        };
        assert_eq!(
            JigsawConfig::default().permutation_draw,
            PermutationDraw::PerImage
        );
        assert_eq!(distinct(PermutationDraw::PerBatch), 8);
        // 512 draws over 100 classes leave ~0.6 classes unseen on average
        assert!(distinct(PermutationDraw::PerImage) >= 95);
    }

    #[test]
    fn draw_parses_and_the_old_key_is_refused() {
        let c: JigsawConfig =
            toml::from_str("permutations_per_image = 5\npermutation_draw = \"per_batch\"").unwrap();
        assert_eq!(c.permutations_per_image, 5);
        assert_eq!(c.permutation_draw, PermutationDraw::PerBatch);
        assert!(toml::from_str::<JigsawConfig>("permutation_draw = \"per_pixel\"").is_err());
        let e = toml::from_str::<JigsawConfig>("permutations_per_batch = 8")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("permutations_per_batch") && e.contains("permutations_per_image"),
            "{e}"
        );
    }
}
