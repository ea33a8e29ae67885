//! Masked image modelling: Masked Autoencoders (He, Chen, Xie, Li, Dollár & Girshick, "Masked
//! Autoencoders Are Scalable Vision Learners", CVPR 2022), federated as in Yan et al. 2022.
//!
//! Per image a random `mask_ratio` of the patches is removed; the ViT encoder
//! ([`Vit::forward_visible`]) sees only the visible patches; a light decoder (the task's
//! head, `head.*`) gets the encoded visible tokens plus a shared learned mask token at every
//! removed position, adds fixed sin-cos position embeddings, and predicts the pixels of every
//! patch. The loss is the mean squared error over the *masked* patches only, against
//! per-patch-normalised pixels (MAE's `norm_pix_loss`). Only the encoder is federated (and
//! evaluated); the decoder travels only with `pretext.share_heads = true`.
//!
//! Decoder variables (under `head.`): `decoder_embed.{weight,bias}` (`(d, D)`),
//! `mask_token` (`(1, 1, d)`), `blocks.{i}.*` (transformer blocks of width `d`, as the ViT's),
//! `norm.{weight,bias}`, `pred.{weight,bias}` (`(p·p·3, d)`).

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor, D};
use candle_nn::{Linear, Module, VarBuilder};
use rand::rngs::StdRng;
use rand::Rng;

use super::{PreparedBatch, PretextKind, PretextTask, StepOutput};
use crate::data::{hwc_u8_to_tensor, ImageDataset};
use crate::image::hflip;
use crate::model::vit::{patchify, pos_embed_tensor, Block, LayerNorm};
use crate::model::{Backbone, Vit};

/// `[pretext.mae]`: masking and decoder of MAE.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MaeConfig {
    /// Fraction of each image's patches that is removed, in (0, 1) (default 0.75, MAE's).
    /// The encoder keeps `floor(L·(1 − mask_ratio))` of the `L` patches (MAE's `len_keep`);
    /// at least one must be kept and at least one removed.
    pub mask_ratio: f64,
    /// Decoder token width `d` (default 64), a multiple of 4 and of `decoder_heads`.
    pub decoder_dim: usize,
    /// Decoder transformer blocks (default 1; 0 makes the decoder linear per token).
    pub decoder_depth: usize,
    /// Decoder attention heads (default 4).
    pub decoder_heads: usize,
    /// Regress each patch's pixels normalised by the patch's own mean and standard deviation
    /// (MAE's `norm_pix_loss`, default `true`); `false`: the raw (dataset-normalised) pixels.
    pub norm_pix_loss: bool,
    /// Random horizontal flip of each image before masking (default `true`).
    pub flip: bool,
}

impl Default for MaeConfig {
    fn default() -> Self {
        Self {
            mask_ratio: 0.75,
            decoder_dim: 64,
            decoder_depth: 1,
            decoder_heads: 4,
            norm_pix_loss: true,
            flip: true,
        }
    }
}

impl MaeConfig {
    /// Checks the values; the message names the `pretext.mae.*` key.
    pub fn validate(&self) -> Result<()> {
        if !(self.mask_ratio > 0.0 && self.mask_ratio < 1.0) {
            bail!(
                "pretext.mae.mask_ratio must be in (0, 1), got {}",
                self.mask_ratio
            );
        }
        let d = self.decoder_dim;
        if d == 0 || !d.is_multiple_of(4) {
            bail!("pretext.mae.decoder_dim must be a positive multiple of 4, got {d}");
        }
        if self.decoder_heads == 0 || !d.is_multiple_of(self.decoder_heads) {
            bail!(
                "pretext.mae.decoder_heads must divide pretext.mae.decoder_dim ({d}), got {}",
                self.decoder_heads
            );
        }
        Ok(())
    }

    /// Patches the encoder keeps out of `l`: `floor(l·(1 − mask_ratio))` (with a 1e-9 slack so
    /// that e.g. `10·(1 − 0.9)` gives 1, not 0). Errors, naming `pretext.mae.mask_ratio`,
    /// unless at least one patch is kept and at least one removed.
    pub fn len_keep(&self, l: usize) -> Result<usize> {
        let keep = (l as f64 * (1.0 - self.mask_ratio) + 1e-9).floor() as usize;
        if keep == 0 || keep >= l {
            bail!(
                "pretext.mae.mask_ratio = {} keeps {keep} of {l} patches: at least one must be kept and one masked",
                self.mask_ratio
            );
        }
        Ok(keep)
    }
}

/// One batch's random masks, MAE's `random_masking` on the CPU.
#[derive(Clone, Debug, PartialEq)]
pub struct Masks {
    /// Images.
    pub batch: usize,
    /// Patches per image `L`.
    pub len: usize,
    /// Visible patches per image `K`.
    pub keep_len: usize,
    /// `(B, K)` row-major: the visible patch indices of each image (in shuffle order).
    pub keep: Vec<u32>,
    /// `(B, L)` row-major: position of each patch in its image's shuffle order, MAE's
    /// `ids_restore` (`< K` for visible patches).
    pub restore: Vec<u32>,
    /// `(B, L)` row-major: 1 where the patch is masked (removed), 0 where visible.
    pub mask: Vec<f32>,
}

/// Draws an independent uniformly random mask for each of `batch` images of `len` patches,
/// keeping `keep_len`: for each image in order, `len` noise values `rng.random::<f64>()`
/// are drawn; their argsort (ties by index) is the shuffle; the first `keep_len` patches of
/// the shuffle are visible (MAE's argsort-of-noise trick).
pub fn random_masks(batch: usize, len: usize, keep_len: usize, rng: &mut impl Rng) -> Masks {
    let mut keep = Vec::with_capacity(batch * keep_len);
    let mut restore = vec![0u32; batch * len];
    let mut mask = vec![0f32; batch * len];
    for b in 0..batch {
        let noise: Vec<f64> = (0..len).map(|_| rng.random::<f64>()).collect();
        let mut shuffle: Vec<usize> = (0..len).collect();
        shuffle.sort_by(|&i, &j| noise[i].total_cmp(&noise[j]).then(i.cmp(&j)));
        for (r, &patch) in shuffle.iter().enumerate() {
            restore[b * len + patch] = r as u32;
            mask[b * len + patch] = if r < keep_len { 0.0 } else { 1.0 };
        }
        keep.extend(shuffle[..keep_len].iter().map(|&i| i as u32));
    }
    Masks {
        batch,
        len,
        keep_len,
        keep,
        restore,
        mask,
    }
}

/// MAE's reconstruction targets of images `x` `(B, C, H, W)`: [`patchify`]`(x, p)`
/// `(B, L, p·p·C)`, and with `norm_pix` every patch normalised by its own mean and variance,
/// `(t − mean)/√(var + 1e-6)`, where `var` is the unbiased variance over the patch's
/// `p·p·C` values (PyTorch's `Tensor.var` default, as MAE's code). The result carries no
/// gradient.
pub fn mae_targets(x: &Tensor, p: usize, norm_pix: bool) -> candle_core::Result<Tensor> {
    let t = patchify(&x.detach(), p)?;
    if !norm_pix {
        return Ok(t);
    }
    let n = t.dim(D::Minus1)? as f64;
    let mean = t.mean_keepdim(D::Minus1)?;
    let tc = t.broadcast_sub(&mean)?;
    let var = (tc.sqr()?.sum_keepdim(D::Minus1)? / (n - 1.0).max(1.0))?;
    tc.broadcast_div(&(var + 1e-6)?.sqrt()?)
}

/// MAE's loss: the mean over patches with `mask = 1` of each patch's mean squared error,
/// `Σ_{b,l} mask[b,l]·mean_k (pred − target)²[b,l,k] / Σ mask`. `pred`, `target`:
/// `(B, L, P)`; `mask`: `(B, L)` of 0/1. Visible patches (`mask = 0`) do not count.
pub fn masked_mse(pred: &Tensor, target: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
    let per_patch = (pred - target)?.sqr()?.mean(D::Minus1)?; // (B, L)
    (per_patch * mask)?.sum_all()? / mask.sum_all()?.to_scalar::<f32>()? as f64
}

/// The MAE task: masking, the decoder head and the masked-patch loss.
pub struct MaeTask {
    cfg: MaeConfig,
    patch: usize,
    decoder_embed: Linear,
    mask_token: Tensor,
    blocks: Vec<Block>,
    norm: LayerNorm,
    pred: Linear,
}

impl MaeTask {
    /// Creates the decoder under `vb` (names in the module docs) for the encoder `vit`.
    /// Errors on invalid parameters.
    pub fn new(cfg: &MaeConfig, vit: &Vit, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let (d, p) = (cfg.decoder_dim, vit.patch_size());
        let blocks = (0..cfg.decoder_depth)
            .map(|i| Block::new(d, cfg.decoder_heads, 4, vb.pp("blocks").pp(i)))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self {
            cfg: cfg.clone(),
            patch: p,
            decoder_embed: candle_nn::linear(vit.feature_dim(), d, vb.pp("decoder_embed"))?,
            mask_token: vb.get((1, 1, d), "mask_token")?,
            blocks,
            norm: LayerNorm::new(d, vb.pp("norm"))?,
            pred: candle_nn::linear(d, p * p * 3, vb.pp("pred"))?,
        })
    }

    /// Decoder: encoded visible tokens `enc` `(B, K, D)` (in the order of `masks.keep`) →
    /// pixel predictions of every patch `(B, L, p·p·3)` in grid order, on a `gh × gw` grid.
    pub fn decode(
        &self,
        enc: &Tensor,
        masks: &Masks,
        gh: usize,
        gw: usize,
    ) -> candle_core::Result<Tensor> {
        let (b, k, _) = enc.dims3()?;
        let (l, d) = (masks.len, self.cfg.decoder_dim);
        let dev = enc.device();
        let x = self
            .decoder_embed
            .forward(&enc.reshape((b * k, enc.dim(2)?))?)?;
        let x = x.reshape((b, k, d))?;
        let tokens = self.mask_token.broadcast_as((b, l - k, d))?;
        let x = Tensor::cat(&[&x, &tokens.contiguous()?], 1)?.contiguous()?; // (B, L, d), shuffle order
        let restore = Tensor::from_vec(masks.restore.clone(), (b, l, 1), dev)?
            .broadcast_as((b, l, d))?
            .contiguous()?;
        let mut x = x
            .gather(&restore, 1)?
            .broadcast_add(&pos_embed_tensor(d, gh, gw, dev)?)?;
        for blk in &self.blocks {
            x = blk.forward(&x)?;
        }
        let x = self.norm.forward(&x)?.reshape((b * l, d))?;
        self.pred.forward(&x)?.reshape((b, l, ()))
    }

    /// Flipped (if configured) images `idx` of `ds`, normalised `(B, 3, H, W)`: one
    /// `rng.random_bool(0.5)` per image, in order.
    fn images(
        &self,
        ds: &ImageDataset,
        idx: &[usize],
        rng: &mut StdRng,
        device: &Device,
    ) -> Result<Tensor> {
        let (h, w, c) = (ds.height, ds.width, ds.channels);
        let mut bytes = Vec::with_capacity(idx.len() * h * w * c);
        for &i in idx {
            let img = ds.try_image(i)?;
            if self.cfg.flip && rng.random_bool(0.5) {
                bytes.extend_from_slice(&hflip(img, h, w, c));
            } else {
                bytes.extend_from_slice(img);
            }
        }
        hwc_u8_to_tensor(&bytes, idx.len(), h, w, c, ds.mean, ds.std, device)
    }
}

/// One prepared masked-autoencoder batch: the images, their patch grid, the random masks.
struct MaeBatch {
    /// `(B, 3, H, W)` normalised images.
    x: Tensor,
    /// `(H/p, W/p)`.
    grid: (usize, usize),
    masks: Masks,
    /// `(B, K)` `u32`: the visible patches.
    keep: Tensor,
    /// `(B, L)` `f32`: 1 where a patch is masked.
    mask: Tensor,
}

impl PretextTask for MaeTask {
    fn kind(&self) -> PretextKind {
        PretextKind::Mae
    }

    /// Flip draws for every image, then [`random_masks`], encoder on the visible patches,
    /// decoder, [`masked_mse`] against [`mae_targets`]. `correct = None`, `count` = masked
    /// patches in the batch.
    fn prepare(
        &self,
        shard: &ImageDataset,
        idx: &[usize],
        rng: &mut StdRng,
        device: &Device,
    ) -> Result<PreparedBatch> {
        let x = self.images(shard, idx, rng, device)?;
        let (_, _, h, w) = x.dims4()?;
        let p = self.patch;
        if p == 0 || h % p != 0 || w % p != 0 {
            bail!("masked autoencoder: {h}x{w} images are not a whole number of {p}x{p} patches");
        }
        let (gh, gw) = (h / p, w / p);
        let l = gh * gw;
        let k = self.cfg.len_keep(l)?;
        let b = idx.len();
        let masks = random_masks(b, l, k, rng);
        let keep = Tensor::from_vec(masks.keep.clone(), (b, k), device)?;
        let mask = Tensor::from_vec(masks.mask.clone(), (b, l), device)?;
        Ok(PreparedBatch::new(MaeBatch {
            x,
            grid: (gh, gw),
            masks,
            keep,
            mask,
        }))
    }

    fn step(&self, backbone: &Backbone, batch: PreparedBatch) -> Result<StepOutput> {
        let Backbone::Vit(vit) = backbone else {
            bail!(
                "pretext.task = \"mae\" needs model.backbone = \"vit\", got \"{}\"",
                backbone.kind().name()
            );
        };
        let MaeBatch {
            x,
            grid,
            masks,
            keep,
            mask,
        } = batch.take(self.kind())?;
        let (gh, gw) = vit.grid(&x).context("masked autoencoder input")?;
        if (gh, gw) != grid {
            bail!("masked autoencoder: the batch has a {grid:?} patch grid, the backbone sees {gh}x{gw}");
        }
        let enc = vit.forward_visible(&x, &keep)?;
        let pred = self.decode(&enc, &masks, gh, gw)?;
        let target = mae_targets(&x, self.patch, self.cfg.norm_pix_loss)?;
        let loss = masked_mse(&pred, &target, &mask)?;
        Ok(StepOutput {
            loss,
            correct: None,
            count: masks.batch * (masks.len - masks.keep_len),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::DType;
    use candle_nn::VarMap;
    use rand::SeedableRng;

    #[test]
    fn len_keep_rounding_and_limits() {
        let cfg = |r| MaeConfig {
            mask_ratio: r,
            ..MaeConfig::default()
        };
        assert_eq!(cfg(0.75).len_keep(64).unwrap(), 16);
        assert_eq!(cfg(0.7).len_keep(64).unwrap(), 19); // floor(19.2)
        assert_eq!(cfg(0.9).len_keep(10).unwrap(), 1); // 10·(1 − 0.9) = 0.999… + slack
        assert!(cfg(0.99).len_keep(64).is_err()); // keeps 0
        assert_eq!(cfg(0.01).len_keep(64).unwrap(), 63); // floor(63.36): one masked
        assert!(cfg(1e-12).len_keep(64).is_err()); // masks 0
        assert!(cfg(0.0).validate().is_err());
        assert!(cfg(1.0).validate().is_err());
        let e = cfg(1.5).validate().unwrap_err().to_string();
        assert!(e.contains("pretext.mae.mask_ratio"), "{e}");
    }

    #[test]
    fn masks_partition_the_patches_and_are_seeded() {
        let draw = |seed| random_masks(5, 64, 16, &mut StdRng::seed_from_u64(seed));
        let m = draw(1);
        for b in 0..5 {
            let keep: Vec<usize> = m.keep[b * 16..(b + 1) * 16]
                .iter()
                .map(|&i| i as usize)
                .collect();
            let row = &m.mask[b * 64..(b + 1) * 64];
            assert_eq!(row.iter().filter(|&&v| v == 1.0).count(), 48);
            // visible = the kept set, masked = the rest: disjoint and covering all 64
            let mut seen = [false; 64];
            for &i in &keep {
                assert_eq!(row[i], 0.0);
                assert!(!seen[i], "index {i} kept twice");
                seen[i] = true;
            }
            for (i, s) in seen.iter().enumerate() {
                assert_eq!(*s, row[i] == 0.0);
            }
            // restore inverts the shuffle: kept patch at shuffle position r has restore r
            for (r, &i) in keep.iter().enumerate() {
                assert_eq!(m.restore[b * 64 + i], r as u32);
            }
            let mut pos: Vec<u32> = m.restore[b * 64..(b + 1) * 64].to_vec();
            pos.sort();
            assert_eq!(pos, (0..64).collect::<Vec<u32>>());
        }
        assert_eq!(m, draw(1));
        assert_ne!(m.keep, draw(2).keep);
        // different images of a batch get different masks
        assert_ne!(m.keep[..16], m.keep[16..32]);
    }

    #[test]
    fn loss_counts_only_masked_patches() {
        let dev = Device::Cpu;
        // B = 1, L = 4, P = 2; patches 1 and 3 masked
        let target =
            Tensor::from_vec(vec![1f32, 2., 3., 4., 5., 6., 7., 8.], (1, 4, 2), &dev).unwrap();
        let mask = Tensor::from_vec(vec![0f32, 1., 0., 1.], (1, 4), &dev).unwrap();
        // right on masked patches, wrong on visible ones → 0
        let pred =
            Tensor::from_vec(vec![9f32, 9., 3., 4., -9., 9., 7., 8.], (1, 4, 2), &dev).unwrap();
        let loss = masked_mse(&pred, &target, &mask).unwrap();
        assert_eq!(loss.to_scalar::<f32>().unwrap(), 0.0);
        // one value of masked patch 3 off by 2: patch error (4 + 0)/2 = 2, mean over 2 masked = 1
        let pred =
            Tensor::from_vec(vec![9f32, 9., 3., 4., -9., 9., 9., 8.], (1, 4, 2), &dev).unwrap();
        let loss = masked_mse(&pred, &target, &mask).unwrap();
        assert!((loss.to_scalar::<f32>().unwrap() - 1.0).abs() < 1e-6);
    }

    #[test]
    fn norm_pix_targets_known_values() {
        // one 2x2 single... 3-channel patch p = 1 is too small; use p = 2, C = 1 via patchify
        // of a (1, 1, 2, 2) image [[1, 2], [3, 4]]: mean 2.5, unbiased var 5/3
        let x = Tensor::from_vec(vec![1f32, 2., 3., 4.], (1, 1, 2, 2), &Device::Cpu).unwrap();
        let t = mae_targets(&x, 2, true).unwrap();
        let s = (5.0f32 / 3.0 + 1e-6).sqrt();
        let want = [-1.5 / s, -0.5 / s, 0.5 / s, 1.5 / s];
        let got = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "{got:?}");
        }
        let raw = mae_targets(&x, 2, false).unwrap();
        assert_eq!(
            raw.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            vec![1., 2., 3., 4.]
        );
    }

    fn tiny_task(cfg: &MaeConfig) -> (Backbone, VarMap, MaeTask, VarMap) {
        let model = crate::model::ModelConfig {
            backbone: crate::model::BackboneKind::Vit,
            vit: crate::model::VitConfig {
                dim: 16,
                depth: 1,
                heads: 2,
                ..Default::default()
            },
            ..Default::default()
        };
        let (bb, bvars) = crate::model::build_backbone(&model, 1, &Device::Cpu).unwrap();
        let hvars = VarMap::new();
        let vb = VarBuilder::from_varmap(&hvars, DType::F32, &Device::Cpu);
        let Backbone::Vit(vit) = &bb else {
            unreachable!()
        };
        let task = MaeTask::new(cfg, vit, vb.pp("head")).unwrap();
        crate::model::seeded_init(&hvars, 2).unwrap();
        (bb, bvars, task, hvars)
    }

    #[test]
    fn batch_loss_trains_encoder_and_decoder() {
        let cfg = MaeConfig {
            decoder_dim: 16,
            decoder_heads: 2,
            ..Default::default()
        };
        let (bb, bvars, task, hvars) = tiny_task(&cfg);
        let ds = crate::data::synthetic::generate(6, 0);
        let run = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            task.batch_loss(&bb, &ds, &[0, 3, 5], &mut rng, &Device::Cpu)
                .unwrap()
        };
        let out = run(4);
        assert_eq!(out.correct, None);
        assert_eq!(out.count, 3 * 48);
        let loss = out.loss.to_scalar::<f32>().unwrap();
        assert!(loss.is_finite() && loss > 0.0);
        assert_eq!(run(4).loss.to_scalar::<f32>().unwrap(), loss);
        let grads = out.loss.backward().unwrap();
        for vm in [&bvars, &hvars] {
            for (name, var) in vm.data().lock().unwrap().iter() {
                assert!(
                    grads.get(var.as_tensor()).is_some(),
                    "no gradient for {name}"
                );
            }
        }
        let names: Vec<String> = hvars.data().lock().unwrap().keys().cloned().collect();
        assert!(names.iter().all(|n| n.starts_with("head.")), "{names:?}");
        assert!(names.contains(&"head.mask_token".to_string()));
    }

    #[test]
    fn decoder_places_tokens_back_in_grid_order() {
        // With a purely per-token decoder (depth 0), the prediction of a masked patch depends
        // only on its position: two different masks give the same prediction there.
        let cfg = MaeConfig {
            decoder_dim: 16,
            decoder_heads: 2,
            decoder_depth: 0,
            ..Default::default()
        };
        let (bb, _bv, task, _hv) = tiny_task(&cfg);
        let Backbone::Vit(vit) = &bb else {
            unreachable!()
        };
        let ds = crate::data::synthetic::generate(1, 0);
        let x = hwc_u8_to_tensor(ds.image(0), 1, 32, 32, 3, ds.mean, ds.std, &Device::Cpu).unwrap();
        let predict = |seed| {
            let m = random_masks(1, 64, 16, &mut StdRng::seed_from_u64(seed));
            let keep = Tensor::from_vec(m.keep.clone(), (1, 16), &Device::Cpu).unwrap();
            let enc = vit.forward_visible(&x, &keep).unwrap();
            (task.decode(&enc, &m, 8, 8).unwrap(), m)
        };
        let (pa, ma) = predict(1);
        let (pb, mb) = predict(2);
        assert_eq!(pa.dims(), &[1, 64, 48]);
        let mut compared = 0;
        for l in 0..64 {
            if ma.mask[l] == 1.0 && mb.mask[l] == 1.0 {
                let a = pa.get(0).unwrap().get(l).unwrap();
                let b = pb.get(0).unwrap().get(l).unwrap();
                let d = (a - b).unwrap().abs().unwrap().max_all().unwrap();
                assert!(d.to_scalar::<f32>().unwrap() < 1e-6);
                compared += 1;
            }
        }
        assert!(compared > 0);
    }
}
