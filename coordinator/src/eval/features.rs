//! Features of a frozen backbone, cached on the host for every probe: [`HostFeatures`] (a
//! row-major `(N, D)` matrix), the backbone applied in eval mode to a whole set
//! ([`extract_layers`]), each stage's map average-pooled to a bounded size ([`pool_grid`],
//! [`adaptive_avg_pool`]), and the backbone of a weight set ([`load_backbone`]).

use anyhow::{bail, ensure, Context, Result};
use candle_core::{Device, Tensor};
use fedssl_shared::config::Pooling;
use fedssl_shared::data::ImageDataset;
use fedssl_shared::model::{build_backbone, Backbone, BackboneKind, ModelConfig};
use fedssl_shared::pretext::{view_batch, EvalView};
use fedssl_shared::weights::WeightSet;

/// A row-major `(rows, dim)` matrix of `f32` features on the host: the cached features of
/// a set of images that every probe reuses.
#[derive(Clone, Debug, PartialEq)]
pub struct HostFeatures {
    /// Number of rows (images).
    pub rows: usize,
    /// Features per row.
    pub dim: usize,
    /// `rows · dim` values, row-major.
    pub data: Vec<f32>,
}

impl HostFeatures {
    /// Wraps `data` `(rows, dim)`; errors on a size mismatch or a non-finite value.
    pub fn new(rows: usize, dim: usize, data: Vec<f32>, what: &str) -> Result<Self> {
        ensure!(
            data.len() == rows * dim,
            "{what}: {} values do not make a ({rows}, {dim}) matrix",
            data.len()
        );
        if let Some(i) = data.iter().position(|v| !v.is_finite()) {
            bail!(
                "linear probe: {what} has a non-finite feature ({}) at row {}, column {}",
                data[i],
                i / dim.max(1),
                i % dim.max(1)
            );
        }
        Ok(Self { rows, dim, data })
    }

    /// Row `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }

    /// The listed rows, in order.
    pub fn select(&self, idx: &[usize]) -> Self {
        let mut data = Vec::with_capacity(idx.len() * self.dim);
        for &i in idx {
            data.extend_from_slice(self.row(i));
        }
        Self {
            rows: idx.len(),
            dim: self.dim,
            data,
        }
    }
}

/// The output grid `(h, w)` a `(C, H, W)` map is average-pooled to. `Global`: `(1, 1)`.
/// `Adaptive` (Revisiting: "adaptive pooling to at most ~9k values"): the largest
/// `s = ⌊√(max_dim / C)⌋` (at least 1), capped by `H` and `W` separately, so
/// `C·h·w ≤ max_dim` unless `C > max_dim` (then `(1, 1)`).
pub fn pool_grid(c: usize, h: usize, w: usize, pooling: Pooling, max_dim: usize) -> (usize, usize) {
    match pooling {
        Pooling::Global => (1, 1),
        Pooling::Adaptive => {
            let s = ((max_dim / c.max(1)) as f64).sqrt().floor() as usize;
            let s = s.max(1);
            (s.min(h).max(1), s.min(w).max(1))
        }
    }
}

/// Adaptive average pooling (PyTorch's `AdaptiveAvgPool2d`) of one `(C, H, W)` map `x` to
/// `(C, oh, ow)`, appended to `out` channel-major: output cell `(i, j)` averages rows
/// `⌊iH/oh⌋ .. ⌈(i+1)H/oh⌉` and columns `⌊jW/ow⌋ .. ⌈(j+1)W/ow⌉`.
pub fn adaptive_avg_pool(
    x: &[f32],
    c: usize,
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
    out: &mut Vec<f32>,
) {
    for ch in 0..c {
        let plane = &x[ch * h * w..(ch + 1) * h * w];
        for i in 0..oh {
            let (y0, y1) = (i * h / oh, ((i + 1) * h).div_ceil(oh));
            for j in 0..ow {
                let (x0, x1) = (j * w / ow, ((j + 1) * w).div_ceil(ow));
                let mut s = 0f32;
                for y in y0..y1 {
                    s += plane[y * w + x0..y * w + x1].iter().sum::<f32>();
                }
                out.push(s / ((y1 - y0) * (x1 - x0)) as f32);
            }
        }
    }
}

/// Names of the layers [`extract_layers`] returns for a backbone with `stages` stages:
/// ResNet `stage1..S`, VGG-BN `block1..5`, ViT `block1..depth` (each transformer block's tokens
/// as a `(D, H/p, W/p)` map), then `pre_logits`.
pub fn layer_names(kind: BackboneKind, stages: usize) -> Vec<String> {
    let prefix = match kind {
        BackboneKind::Resnet => "stage",
        BackboneKind::VggBn => "block",
        BackboneKind::Vit => "block",
    };
    let mut v: Vec<String> = (1..=stages).map(|s| format!("{prefix}{s}")).collect();
    v.push("pre_logits".into());
    v
}

/// Cached features of one set of images: one entry per layer.
pub struct LayerFeatures {
    /// Layer name ([`layer_names`]).
    pub name: String,
    /// The layer's output shape per image.
    pub shape: Vec<usize>,
    /// Pooled features `(N, dim)`.
    pub features: HostFeatures,
}

/// Applies `backbone` in eval mode to all of `ds` (batches of `batch`) and returns the
/// pre-logits `(N, D)` as the last entry, preceded (when `per_layer`) by every stage's map
/// pooled per [`pool_grid`] and [`adaptive_avg_pool`].
///
/// Under a patch-grid `view` ([`EvalView::PatchGrid`]) the backbone sees each image's 9
/// patches and every layer's features are the mean of the 9 patches' (pooled) features.
#[allow(clippy::too_many_arguments)]
pub fn extract_layers(
    backbone: &Backbone,
    ds: &ImageDataset,
    view: &EvalView,
    batch: usize,
    per_layer: bool,
    pooling: Pooling,
    max_dim: usize,
) -> Result<Vec<LayerFeatures>> {
    ensure!(
        batch > 0 && !ds.is_empty(),
        "feature extraction: empty set or batch"
    );
    let device = Device::Cpu;
    let idx: Vec<usize> = (0..ds.len()).collect();
    let mut layers: Vec<LayerAcc> = Vec::new();
    for chunk in idx.chunks(batch) {
        let x = view_batch(ds, chunk, view, &device)?;
        let out = backbone.forward_inference(&x)?;
        let mut maps: Vec<&Tensor> = if per_layer {
            out.stages.iter().collect()
        } else {
            vec![]
        };
        maps.push(&out.pre_logits);
        if layers.is_empty() {
            layers = maps
                .iter()
                .map(|m| LayerAcc::new(m.dims()[1..].to_vec(), pooling, max_dim))
                .collect();
        }
        for (m, layer) in maps.iter().zip(layers.iter_mut()) {
            layer.push(m, view.inputs_per_image(), chunk.len())?;
        }
    }
    let names = layer_names(backbone.kind(), layers.len() - 1);
    let names = if per_layer {
        names
    } else {
        vec!["pre_logits".to_string()]
    };
    layers
        .into_iter()
        .zip(names)
        .map(|(layer, name)| {
            Ok(LayerFeatures {
                features: HostFeatures::new(ds.len(), layer.dim(), layer.values, &name)?,
                name,
                shape: layer.shape,
            })
        })
        .collect()
}

/// One layer's features while [`extract_layers`] runs: its output shape per image, the grid
/// its maps are pooled to, and the pooled values of every image so far.
struct LayerAcc {
    shape: Vec<usize>,
    grid: (usize, usize),
    values: Vec<f32>,
}

impl LayerAcc {
    /// A layer whose output per image has `shape` (`[C, H, W]` maps are pooled per
    /// [`pool_grid`]; other shapes are kept as they are).
    fn new(shape: Vec<usize>, pooling: Pooling, max_dim: usize) -> Self {
        let grid = match shape[..] {
            [c, h, w] => pool_grid(c, h, w, pooling, max_dim),
            _ => (1, 1),
        };
        Self {
            shape,
            grid,
            values: Vec::new(),
        }
    }

    /// Values per image after pooling (`C·h·w`, or the size of a flat output).
    fn dim(&self) -> usize {
        match self.shape[..] {
            [c, _, _] => c * self.grid.0 * self.grid.1,
            _ => self.shape.iter().product(),
        }
    }

    /// Appends the layer's output `m` for a batch of `images` images, each seen as `per`
    /// consecutive inputs (its patches; their pooled features are averaged).
    fn push(&mut self, m: &Tensor, per: usize, images: usize) -> Result<()> {
        let (oh, ow) = self.grid;
        let v = m.flatten_all()?.to_vec1::<f32>()?;
        let pooled = match self.shape[..] {
            [c, h, w] => {
                let mut p = Vec::with_capacity(v.len() / (h * w) * oh * ow);
                for img in v.chunks_exact(c * h * w) {
                    adaptive_avg_pool(img, c, h, w, oh, ow, &mut p);
                }
                p
            }
            _ => v,
        };
        if per == 1 {
            self.values.extend_from_slice(&pooled);
        } else {
            // mean over each image's `per` consecutive inputs (its patches)
            let dim = pooled.len() / (images * per);
            for group in pooled.chunks_exact(dim * per) {
                for d in 0..dim {
                    let sum: f32 = (0..per).map(|j| group[j * dim + d]).sum();
                    self.values.push(sum / per as f32);
                }
            }
        }
        Ok(())
    }
}

/// The pre-logits features in the result of [`extract_layers`] (its last entry). Errors on an
/// empty result.
pub fn pre_logits(layers: &[LayerFeatures]) -> Result<&HostFeatures> {
    layers
        .last()
        .map(|l| &l.features)
        .context("feature extraction returned no layer")
}

/// Builds the scenario's backbone and loads `weights` into it (`head.*` pretext heads are
/// ignored). Errors when the weights do not fit the scenario's `[model]`.
pub fn load_backbone(weights: &WeightSet, model: &ModelConfig) -> Result<Backbone> {
    let (backbone, vars) = build_backbone(model, 0, &Device::Cpu)?;
    weights
        .split_prefix("head.")
        .1
        .load_into_varmap(&vars)
        .context("weights do not fit the scenario's backbone ([model] section)")?;
    Ok(backbone)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fedssl_shared::model::VggConfig;

    #[test]
    fn pool_grid_and_adaptive_pool_known_values() {
        assert_eq!(pool_grid(16, 32, 32, Pooling::Adaptive, 9000), (23, 23));
        assert_eq!(pool_grid(64, 8, 8, Pooling::Adaptive, 9000), (8, 8));
        assert_eq!(pool_grid(20000, 4, 4, Pooling::Adaptive, 9000), (1, 1));
        assert_eq!(pool_grid(16, 32, 32, Pooling::Global, 9000), (1, 1));
        // 1 channel 3×3 → 2×2: bins rows/cols {0,1} and {1,2}
        let x: Vec<f32> = (1..=9).map(|v| v as f32).collect();
        let mut out = vec![];
        adaptive_avg_pool(&x, 1, 3, 3, 2, 2, &mut out);
        assert_eq!(out, vec![3.0, 4.0, 6.0, 7.0]);
        out.clear();
        adaptive_avg_pool(&x, 1, 3, 3, 1, 1, &mut out);
        assert_eq!(out, vec![5.0]);
    }

    fn synthetic(n: usize) -> ImageDataset {
        fedssl_shared::data::synthetic::generate(n, 5)
    }

    #[test]
    fn patch_grid_features_are_the_mean_over_each_images_nine_patches() {
        let ds = synthetic(3);
        let (b, _) = build_backbone(&ModelConfig::default(), 4, &Device::Cpu).unwrap();
        let view = EvalView::PatchGrid {
            grid: fedssl_shared::pretext::grid::Grid {
                patch: 8,
                gap: 2,
                jitter: 1,
            },
            per_patch_norm: false,
            upscale: 1,
        };
        let got = extract_layers(&b, &ds, &view, 2, true, Pooling::Global, 1).unwrap();
        // by hand: every patch through the backbone, then the mean of each image's nine
        let x = view_batch(&ds, &[0, 1, 2], &view, &Device::Cpu).unwrap();
        let out = b.forward_inference(&x).unwrap();
        let want_pre = out
            .pre_logits
            .reshape((3, 9, 64))
            .unwrap()
            .mean(1)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let last = got.last().unwrap();
        assert_eq!((last.features.rows, last.features.dim), (3, 64));
        for (a, w) in last.features.data.iter().zip(&want_pre) {
            assert!((a - w).abs() < 1e-5, "{a} vs {w}");
        }
        let want_stage1 = out.stages[0]
            .mean((2, 3))
            .unwrap()
            .reshape((3, 9, 16))
            .unwrap()
            .mean(1)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        for (a, w) in got[0].features.data.iter().zip(&want_stage1) {
            assert!((a - w).abs() < 1e-5, "{a} vs {w}");
        }
    }

    #[test]
    fn per_layer_pooled_shapes_for_both_backbones() {
        let ds = synthetic(6);
        let resnet = ModelConfig::default();
        let vgg = ModelConfig {
            backbone: BackboneKind::VggBn,
            vgg: VggConfig {
                base_width: 8,
                ..VggConfig::default()
            },
            ..ModelConfig::default()
        };
        let dims = |cfg: &ModelConfig, pooling| -> Vec<(String, Vec<usize>, usize)> {
            let (b, _) = build_backbone(cfg, 0, &Device::Cpu).unwrap();
            extract_layers(&b, &ds, &EvalView::Whole, 4, true, pooling, 9000)
                .unwrap()
                .into_iter()
                .map(|l| {
                    assert_eq!(l.features.rows, 6);
                    (l.name, l.shape, l.features.dim)
                })
                .collect()
        };
        let s = |v: &str| v.to_string();
        assert_eq!(
            dims(&resnet, Pooling::Adaptive),
            vec![
                (s("stage1"), vec![16, 32, 32], 16 * 23 * 23),
                (s("stage2"), vec![32, 16, 16], 32 * 16 * 16),
                (s("stage3"), vec![64, 8, 8], 64 * 8 * 8),
                (s("pre_logits"), vec![64], 64),
            ]
        );
        assert_eq!(
            dims(&resnet, Pooling::Global)
                .iter()
                .map(|l| l.2)
                .collect::<Vec<_>>(),
            vec![16, 32, 64, 64]
        );
        assert_eq!(
            dims(&vgg, Pooling::Adaptive),
            vec![
                (s("block1"), vec![8, 16, 16], 8 * 16 * 16),
                (s("block2"), vec![16, 8, 8], 16 * 8 * 8),
                (s("block3"), vec![32, 4, 4], 32 * 4 * 4),
                (s("block4"), vec![64, 2, 2], 64 * 2 * 2),
                (s("block5"), vec![64, 1, 1], 64),
                (s("pre_logits"), vec![64], 64),
            ]
        );
        assert_eq!(
            dims(&vgg, Pooling::Global)
                .iter()
                .map(|l| l.2)
                .collect::<Vec<_>>(),
            vec![8, 16, 32, 64, 64, 64]
        );
        // a small cap forces a coarser grid: 16·s² ≤ 100 → s = 2
        let (b, _) = build_backbone(&resnet, 0, &Device::Cpu).unwrap();
        let l = extract_layers(&b, &ds, &EvalView::Whole, 4, true, Pooling::Adaptive, 100).unwrap();
        assert_eq!(l[0].features.dim, 16 * 2 * 2);
        // the global-pooled last stage is the pre-logits (ResNet's global average pool)
        let g = extract_layers(&b, &ds, &EvalView::Whole, 4, true, Pooling::Global, 1).unwrap();
        for (a, b) in g[2].features.data.iter().zip(&g[3].features.data) {
            assert!((a - b).abs() < 1e-5);
        }
    }
}
