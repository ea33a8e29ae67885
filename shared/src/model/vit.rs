//! A small Vision Transformer (Dosovitskiy et al., "An Image is Worth 16x16 Words", ICLR 2021)
//! for 32×32 images, laid out as the encoder of MAE (He et al., "Masked Autoencoders Are
//! Scalable Vision Learners", CVPR 2022): patch embedding, fixed 2-D sin-cos position
//! embeddings (no variables), pre-norm transformer blocks, a final LayerNorm, and no class
//! token: the pre-logits are the mean of the final-normed tokens.
//!
//! Variable names (timm's, so PyTorch reads the weights by the same names):
//! `patch_embed.{weight,bias}` (a Linear `(D, p·p·3)` on [`patchify`]d pixels, the same map
//! as a conv with kernel = stride = p up to the order of its inputs),
//! `blocks.{i}.norm1.{weight,bias}`, `blocks.{i}.attn.qkv.{weight,bias}` (`(3D, D)`),
//! `blocks.{i}.attn.proj.{weight,bias}`, `blocks.{i}.norm2.{weight,bias}`,
//! `blocks.{i}.mlp.fc1.{weight,bias}` (`(r·D, D)`), `blocks.{i}.mlp.fc2.{weight,bias}`,
//! `norm.{weight,bias}`.
//!
//! Initialisation ([`super::seeded_init`]): Linear weights and biases keep PyTorch's
//! `nn.Linear` default `U(−1/√in, 1/√in)` (MAE uses Xavier-uniform weights and zero biases;
//! we keep one rule for every Linear of every backbone and head so that existing runs do not
//! change), LayerNorm weight 1 and bias 0.
//!
//! candle 0.11's fused `candle_nn::ops::layer_norm` and `softmax_last_dim` have no backward
//! pass (they are `apply_op*_no_bwd`): gradients would silently stop at them. This module
//! therefore builds LayerNorm and softmax from differentiable elementary ops.

use candle_core::{Device, Result, Tensor, D};
use candle_nn::{Linear, Module, VarBuilder};

use super::resnet::BackboneOutput;

/// Layout of the ViT, the scenario's `[model.vit]`. Every key is optional (defaults below);
/// unknown keys are refused.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VitConfig {
    /// Side of the square patches, in pixels (default 4: 64 tokens for 32×32 images).
    pub patch_size: usize,
    /// Token width `D` (default 96); a multiple of 4 (sin-cos position embedding) and of
    /// `heads`.
    pub dim: usize,
    /// Transformer blocks (default 4).
    pub depth: usize,
    /// Attention heads per block (default 4).
    pub heads: usize,
    /// Hidden width of each block's MLP as a multiple of `dim` (default 4).
    pub mlp_ratio: usize,
}

impl Default for VitConfig {
    /// Patch 4, dim 96, depth 4, 4 heads, MLP ratio 4 (about 450k weights).
    fn default() -> Self {
        Self {
            patch_size: 4,
            dim: 96,
            depth: 4,
            heads: 4,
            mlp_ratio: 4,
        }
    }
}

impl VitConfig {
    /// Errors unless every value is positive, `dim` is a multiple of 4 and of `heads`.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.patch_size == 0 || self.dim == 0 || self.depth == 0 {
            anyhow::bail!("vit: `patch_size`, `dim` and `depth` must be positive");
        }
        if self.heads == 0 || self.mlp_ratio == 0 {
            anyhow::bail!("vit: `heads` and `mlp_ratio` must be positive");
        }
        if !self.dim.is_multiple_of(4) {
            anyhow::bail!(
                "vit: `dim` must be a multiple of 4 (2-D sin-cos position embedding), got {}",
                self.dim
            );
        }
        if !self.dim.is_multiple_of(self.heads) {
            anyhow::bail!(
                "vit: `dim` ({}) must be a multiple of `heads` ({})",
                self.dim,
                self.heads
            );
        }
        Ok(())
    }
}

/// Fixed 2-D sin-cos position embeddings of a `gh × gw` grid of tokens, `dim` wide, as MAE's
/// reference `get_2d_sincos_pos_embed` (Vaswani et al. 2017's sinusoids, per axis).
///
/// Row-major `(gh·gw, dim)`: token `k = i·gw + j` (grid row `i`, column `j`). The first
/// `dim/2` values encode the column `j`, the last `dim/2` the row `i` (MAE's code names
/// them the other way round, because `np.meshgrid(grid_w, grid_h)` puts `w` first; the values
/// are the same). Each half is `[sin(pos·ω_0), …, sin(pos·ω_{m−1}), cos(pos·ω_0), …,
/// cos(pos·ω_{m−1})]` with `m = dim/4` and `ω_t = 10000^(−t/m)`. Panics unless `dim % 4 == 0`.
pub fn sincos_pos_embed_2d(dim: usize, gh: usize, gw: usize) -> Vec<f32> {
    assert!(
        dim.is_multiple_of(4),
        "sin-cos position embedding needs dim % 4 == 0"
    );
    let m = dim / 4;
    let omega: Vec<f64> = (0..m)
        .map(|t| 1.0 / 10000f64.powf(t as f64 / m as f64))
        .collect();
    let mut out = Vec::with_capacity(gh * gw * dim);
    for i in 0..gh {
        for j in 0..gw {
            for pos in [j as f64, i as f64] {
                out.extend(omega.iter().map(|w| (pos * w).sin() as f32));
                out.extend(omega.iter().map(|w| (pos * w).cos() as f32));
            }
        }
    }
    out
}

/// Cuts images `x` `(B, C, H, W)` into non-overlapping `p × p` patches: `(B, L, p·p·C)` with
/// `L = (H/p)·(W/p)` patches in row-major grid order, each flattened as `(p, p, C)` (pixel
/// row, pixel column, channel), MAE's `patchify` (`nchpwq → nhwpqc`). Errors unless `x` is
/// 4-D and `p` divides `H` and `W`.
pub fn patchify(x: &Tensor, p: usize) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    if p == 0 || !h.is_multiple_of(p) || !w.is_multiple_of(p) {
        candle_core::bail!("patchify: patch size {p} does not divide the {h}x{w} image");
    }
    let (gh, gw) = (h / p, w / p);
    x.reshape((b, c, gh, p, gw, p))?
        .permute((0, 2, 4, 3, 5, 1))?
        .reshape((b, gh * gw, p * p * c))
}

/// Inverse of [`patchify`]: `(B, gh·gw, p·p·c)` patches to `(B, c, gh·p, gw·p)` images.
/// Errors if the shape does not match.
pub fn unpatchify(t: &Tensor, p: usize, gh: usize, gw: usize, c: usize) -> Result<Tensor> {
    let (b, l, k) = t.dims3()?;
    if l != gh * gw || k != p * p * c {
        candle_core::bail!(
            "unpatchify: got ({b}, {l}, {k}) patches, expected (B, {}, {})",
            gh * gw,
            p * p * c
        );
    }
    t.reshape((b, gh, gw, p, p, c))?
        .permute((0, 5, 1, 3, 2, 4))?
        .reshape((b, c, gh * p, gw * p))
}

/// Applies `lin` to the last dimension of `x` `(…, in)` as one 2-D GEMM.
fn linear_nd(lin: &Linear, x: &Tensor) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let k = *dims.last().expect("rank ≥ 1");
    let rows: usize = dims[..dims.len() - 1].iter().product();
    let y = lin.forward(&x.reshape((rows, k))?)?;
    let mut out = dims;
    *out.last_mut().expect("rank ≥ 1") = y.dim(1)?;
    y.reshape(out)
}

/// LayerNorm over the last dimension (Ba et al. 2016), `eps = 1e-6` as MAE, built from
/// differentiable candle ops. Variables `weight` (γ) and `bias` (β), both `(D)`.
#[derive(Clone, Debug)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    /// Creates `weight` and `bias` of width `dim` under `vb`.
    pub fn new(dim: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.get(dim, "weight")?,
            bias: vb.get(dim, "bias")?,
            eps: 1e-6,
        })
    }

    /// `γ·(x − μ)/√(σ² + eps) + β` with the biased variance over the last dimension.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let d = x.dim(D::Minus1)? as f64;
        let mean = (x.sum_keepdim(D::Minus1)? / d)?;
        let xc = x.broadcast_sub(&mean)?;
        let var = (xc.sqr()?.sum_keepdim(D::Minus1)? / d)?;
        xc.broadcast_div(&(var + self.eps)?.sqrt()?)?
            .broadcast_mul(&self.weight)?
            .broadcast_add(&self.bias)
    }
}

/// Multi-head self-attention (Vaswani et al. 2017): `qkv` `(3D, D)` with bias, scaled
/// dot-product attention per head, `proj` `(D, D)`.
#[derive(Clone, Debug)]
struct Attention {
    qkv: Linear,
    proj: Linear,
    heads: usize,
}

impl Attention {
    fn new(dim: usize, heads: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            qkv: candle_nn::linear(dim, 3 * dim, vb.pp("qkv"))?,
            proj: candle_nn::linear(dim, dim, vb.pp("proj"))?,
            heads,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, n, c) = x.dims3()?;
        let hd = c / self.heads;
        let qkv = linear_nd(&self.qkv, x)?
            .reshape((b, n, 3, self.heads, hd))?
            .permute((2, 0, 3, 1, 4))?; // (3, B, h, N, hd)
        let q = (qkv.get(0)?.contiguous()? * (hd as f64).powf(-0.5))?;
        let k = qkv.get(1)?.contiguous()?;
        let v = qkv.get(2)?.contiguous()?;
        let attn = q.matmul(&k.t()?.contiguous()?)?; // (B, h, N, N)
        let attn = candle_nn::ops::softmax(&attn, D::Minus1)?;
        let out = attn.matmul(&v)?.transpose(1, 2)?.reshape((b, n, c))?;
        linear_nd(&self.proj, &out)
    }
}

/// A pre-norm transformer block: `x + attn(norm1(x))`, then `x + mlp(norm2(x))` with
/// `mlp = fc2 ∘ GELU ∘ fc1` (exact erf GELU, PyTorch's `nn.GELU`). Variables under its
/// prefix: `norm1.*`, `attn.qkv.*`, `attn.proj.*`, `norm2.*`, `mlp.fc1.*`, `mlp.fc2.*`.
#[derive(Clone, Debug)]
pub struct Block {
    norm1: LayerNorm,
    attn: Attention,
    norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

impl Block {
    /// A block of width `dim` with `heads` heads (`dim % heads == 0`) and an MLP of hidden
    /// width `mlp_ratio·dim`, variables under `vb`.
    pub fn new(dim: usize, heads: usize, mlp_ratio: usize, vb: VarBuilder) -> Result<Self> {
        if heads == 0 || !dim.is_multiple_of(heads) {
            candle_core::bail!("transformer block: dim {dim} is not a multiple of {heads} heads");
        }
        let mlp = vb.pp("mlp");
        Ok(Self {
            norm1: LayerNorm::new(dim, vb.pp("norm1"))?,
            attn: Attention::new(dim, heads, vb.pp("attn"))?,
            norm2: LayerNorm::new(dim, vb.pp("norm2"))?,
            fc1: candle_nn::linear(dim, mlp_ratio * dim, mlp.pp("fc1"))?,
            fc2: candle_nn::linear(mlp_ratio * dim, dim, mlp.pp("fc2"))?,
        })
    }

    /// Tokens `(B, N, D)` in, `(B, N, D)` out.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = (x + self.attn.forward(&self.norm1.forward(x)?)?)?;
        let h = linear_nd(&self.fc1, &self.norm2.forward(&x)?)?.gelu_erf()?;
        &x + linear_nd(&self.fc2, &h)?
    }
}

/// The ViT backbone (module docs). Accepts 3-channel images whose sides are multiples of the
/// patch size; the position embeddings are computed for the input's grid.
#[derive(Clone, Debug)]
pub struct Vit {
    patch_embed: Linear,
    blocks: Vec<Block>,
    norm: LayerNorm,
    cfg: VitConfig,
}

impl Vit {
    /// Creates the variables under `vb` (names in the module docs). Errors on an invalid
    /// config ([`VitConfig::validate`]).
    pub fn new(cfg: &VitConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let p = cfg.patch_size;
        let blocks = (0..cfg.depth)
            .map(|i| Block::new(cfg.dim, cfg.heads, cfg.mlp_ratio, vb.pp("blocks").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            patch_embed: candle_nn::linear(3 * p * p, cfg.dim, vb.pp("patch_embed"))?,
            blocks,
            norm: LayerNorm::new(cfg.dim, vb.pp("norm"))?,
            cfg: cfg.clone(),
        })
    }

    /// The layout.
    pub fn config(&self) -> &VitConfig {
        &self.cfg
    }

    /// Patch side `p` in pixels.
    pub fn patch_size(&self) -> usize {
        self.cfg.patch_size
    }

    /// `D`, the token width (and pre-logits width).
    pub fn feature_dim(&self) -> usize {
        self.cfg.dim
    }

    /// Token grid `(H/p, W/p)` of `x` `(B, 3, H, W)`; errors on another shape.
    pub fn grid(&self, x: &Tensor) -> Result<(usize, usize)> {
        let (_, c, h, w) = x.dims4()?;
        let p = self.cfg.patch_size;
        if c != 3 || !h.is_multiple_of(p) || !w.is_multiple_of(p) || h == 0 || w == 0 {
            candle_core::bail!(
                "vit: needs (B, 3, H, W) images with H and W multiples of the patch size {p}, got (B, {c}, {h}, {w})"
            );
        }
        Ok((h / p, w / p))
    }

    /// Patch embeddings plus position embeddings, `(B, L, D)`, `L = (H/p)·(W/p)`.
    pub fn embed(&self, x: &Tensor) -> Result<Tensor> {
        let (gh, gw) = self.grid(x)?;
        let t = linear_nd(&self.patch_embed, &patchify(x, self.cfg.patch_size)?)?;
        t.broadcast_add(&pos_embed_tensor(self.cfg.dim, gh, gw, x.device())?)
    }

    /// Every token after the final LayerNorm, `(B, L, D)`.
    pub fn tokens(&self, x: &Tensor) -> Result<Tensor> {
        let mut t = self.embed(x)?;
        for b in &self.blocks {
            t = b.forward(&t)?;
        }
        self.norm.forward(&t)
    }

    /// Forward pass on normalised images `x` `(B, 3, H, W)`. `stages[i]` is block `i`'s
    /// output tokens laid out as a map `(B, D, H/p, W/p)`; `pre_logits` `(B, D)` is the mean
    /// over tokens of the final-normed tokens. `train` is ignored (no dropout, no BatchNorm).
    pub fn forward_t(&self, x: &Tensor, _train: bool) -> Result<BackboneOutput> {
        let (gh, gw) = self.grid(x)?;
        let mut t = self.embed(x)?;
        let mut stages = Vec::with_capacity(self.blocks.len());
        for b in &self.blocks {
            t = b.forward(&t)?;
            let (n, _, d) = t.dims3()?;
            stages.push(t.transpose(1, 2)?.reshape((n, d, gh, gw))?);
        }
        let pre_logits = self.norm.forward(&t)?.mean(1)?;
        Ok(BackboneOutput { stages, pre_logits })
    }

    /// MAE's encoder: only the tokens `keep` `(B, K)` `u32` (indices into the `L` patches
    /// of each image, in any order) are gathered, after the position embeddings are added,
    /// and pass through the blocks and the final LayerNorm. Returns `(B, K, D)`: row `k` of
    /// image `b` is the encoding of patch `keep[b][k]`. With `keep` every patch in order,
    /// this equals [`Vit::tokens`]. Errors on an index ≥ `L` or a batch-size mismatch.
    pub fn forward_visible(&self, x: &Tensor, keep: &Tensor) -> Result<Tensor> {
        let t = self.embed(x)?;
        let (b, l, d) = t.dims3()?;
        let (kb, k) = keep.dims2()?;
        if kb != b {
            candle_core::bail!("forward_visible: {kb} rows of indices for {b} images");
        }
        let max = keep.max_all()?.to_dtype(candle_core::DType::F64)?;
        if k > 0 && max.to_scalar::<f64>()? as usize >= l {
            candle_core::bail!("forward_visible: a kept index is ≥ the {l} patches");
        }
        let idx = keep.unsqueeze(2)?.broadcast_as((b, k, d))?.contiguous()?;
        let mut t = t.contiguous()?.gather(&idx, 1)?;
        for blk in &self.blocks {
            t = blk.forward(&t)?;
        }
        self.norm.forward(&t)
    }
}

/// A `(1, L, D)` tensor of [`sincos_pos_embed_2d`] on `device`.
pub fn pos_embed_tensor(dim: usize, gh: usize, gw: usize, device: &Device) -> Result<Tensor> {
    Tensor::from_vec(sincos_pos_embed_2d(dim, gh, gw), (1, gh * gw, dim), device)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::DType;
    use candle_nn::VarMap;

    fn tiny(dim: usize, depth: usize) -> (Vit, VarMap) {
        let cfg = VitConfig {
            patch_size: 4,
            dim,
            depth,
            heads: 2,
            mlp_ratio: 2,
        };
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        let net = Vit::new(&cfg, vb).unwrap();
        crate::model::seeded_init(&vm, 7).unwrap();
        (net, vm)
    }

    fn images(b: usize, h: usize, w: usize, seed: u64) -> Tensor {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let v: Vec<f32> = (0..b * 3 * h * w)
            .map(|_| rng.random_range(-1.0..1.0))
            .collect();
        Tensor::from_vec(v, (b, 3, h, w), &Device::Cpu).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    #[test]
    fn sincos_known_values() {
        // dim 4, 2x2 grid: m = 1, ω = [1]; token (i, j) = [sin j, cos j, sin i, cos i]
        let (s1, c1) = (1f32.sin(), 1f32.cos());
        let e = sincos_pos_embed_2d(4, 2, 2);
        let want = [
            [0.0, 1.0, 0.0, 1.0],
            [s1, c1, 0.0, 1.0],
            [0.0, 1.0, s1, c1],
            [s1, c1, s1, c1],
        ];
        for (k, row) in want.iter().enumerate() {
            for (t, v) in row.iter().enumerate() {
                assert!((e[k * 4 + t] - v).abs() < 1e-6, "token {k} dim {t}");
            }
        }
        // dim 8, 1x2 grid: m = 2, ω = [1, 10000^(-1/2) = 0.01]; token (0, 1):
        let e = sincos_pos_embed_2d(8, 1, 2);
        let want1 = [s1, 0.01f32.sin(), c1, 0.01f32.cos(), 0.0, 0.0, 1.0, 1.0];
        for (t, v) in want1.iter().enumerate() {
            assert!((e[8 + t] - v).abs() < 1e-6, "dim {t}: {} vs {v}", e[8 + t]);
        }
        assert_eq!(&e[..8], &[0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0]);
    }

    #[test]
    fn patchify_layout_and_round_trip() {
        // 1 image, 2 channels, 2x4 pixels, patch 2: value = 100·c + 10·y + x
        let v: Vec<f32> = (0..2)
            .flat_map(|c| {
                (0..2).flat_map(move |y| (0..4).map(move |x| (100 * c + 10 * y + x) as f32))
            })
            .collect();
        let img = Tensor::from_vec(v, (1, 2, 2, 4), &Device::Cpu).unwrap();
        let p = patchify(&img, 2).unwrap();
        assert_eq!(p.dims(), &[1, 2, 8]);
        // patch 1 = columns 2..4; order (row, col, channel)
        assert_eq!(
            p.get(0).unwrap().get(1).unwrap().to_vec1::<f32>().unwrap(),
            vec![2.0, 102.0, 3.0, 103.0, 12.0, 112.0, 13.0, 113.0]
        );
        let back = unpatchify(&p, 2, 1, 2, 2).unwrap();
        assert_eq!(max_diff(&back, &img), 0.0);
        let x = images(3, 32, 32, 1);
        let back = unpatchify(&patchify(&x, 4).unwrap(), 4, 8, 8, 3).unwrap();
        assert_eq!(max_diff(&back, &x), 0.0);
        assert!(patchify(&x, 5).is_err());
    }

    #[test]
    fn shapes_of_stages_and_pre_logits() {
        let (net, _vm) = tiny(16, 3);
        let x = images(2, 32, 32, 0);
        let out = net.forward_t(&x, true).unwrap();
        assert_eq!(out.stages.len(), 3);
        for s in &out.stages {
            assert_eq!(s.dims(), &[2, 16, 8, 8]);
        }
        assert_eq!(out.pre_logits.dims(), &[2, 16]);
        // pre-logits is the token mean of the final-normed tokens
        let tokens = net.tokens(&x).unwrap();
        assert_eq!(tokens.dims(), &[2, 64, 16]);
        assert!(max_diff(&tokens.mean(1).unwrap(), &out.pre_logits) < 1e-6);
        // stage map (b, :, i, j) is token i·8 + j of the block's output
        let last = out.stages[2].get(1).unwrap().flatten_from(1).unwrap(); // (16, 64)
        let pre_norm = last.t().unwrap().get(10).unwrap(); // token 10 = (1, 2)
        let map = out.stages[2]
            .get(1)
            .unwrap()
            .narrow(1, 1, 1)
            .unwrap()
            .narrow(2, 2, 1)
            .unwrap()
            .flatten_all()
            .unwrap();
        assert_eq!(max_diff(&pre_norm, &map), 0.0);
        // other sizes work (position embeddings follow the grid); bad ones are refused
        assert_eq!(
            net.forward_t(&images(1, 8, 12, 0), false).unwrap().stages[0].dims(),
            &[1, 16, 2, 3]
        );
        assert!(net.forward_t(&images(1, 10, 12, 0), false).is_err());
    }

    #[test]
    fn forward_visible_matches_full_encoder() {
        let (net, _vm) = tiny(16, 2);
        let x = images(2, 16, 16, 3); // 16 tokens
        let full = net.tokens(&x).unwrap();
        let all: Vec<u32> = (0..16).chain(0..16).collect();
        let keep = Tensor::from_vec(all, (2, 16), &Device::Cpu).unwrap();
        let vis = net.forward_visible(&x, &keep).unwrap();
        assert!(max_diff(&vis, &full) < 1e-5);
        // a permutation of all tokens permutes the outputs (attention is equivariant)
        let perm: Vec<u32> = (0..16).rev().chain((0..16).map(|i| (i * 5) % 16)).collect();
        let keep = Tensor::from_vec(perm.clone(), (2, 16), &Device::Cpu).unwrap();
        let vis = net.forward_visible(&x, &keep).unwrap();
        for b in 0..2 {
            for k in 0..16 {
                let got = vis.get(b).unwrap().get(k).unwrap();
                let want = full.get(b).unwrap().get(perm[b * 16 + k] as usize).unwrap();
                assert!(max_diff(&got, &want) < 1e-5);
            }
        }
        // a subset differs from the full encoding (tokens attend to fewer others)
        let keep = Tensor::from_vec(vec![0u32, 5, 1, 2], (2, 2), &Device::Cpu).unwrap();
        let vis = net.forward_visible(&x, &keep).unwrap();
        assert_eq!(vis.dims(), &[2, 2, 16]);
        let bad = Tensor::from_vec(vec![0u32, 16], (1, 2), &Device::Cpu).unwrap();
        assert!(net
            .forward_visible(&x.narrow(0, 0, 1).unwrap(), &bad)
            .is_err());
    }

    #[test]
    fn gradients_reach_every_variable() {
        let (net, vm) = tiny(8, 1);
        let x = images(2, 8, 8, 5);
        let loss = net
            .forward_t(&x, true)
            .unwrap()
            .pre_logits
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap();
        let grads = loss.backward().unwrap();
        for (name, var) in vm.data().lock().unwrap().iter() {
            let g = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("no grad for {name}"));
            let n = g
                .abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(n > 0.0, "zero grad for {name}");
        }
    }

    #[test]
    fn seeded_init_of_vit_and_decoder_variables() {
        let (_net, vm) = tiny(16, 1);
        let data = vm.data().lock().unwrap();
        let get = |n: &str| {
            data[n]
                .as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        assert_eq!(get("norm.weight"), vec![1.0; 16]);
        assert_eq!(get("norm.bias"), vec![0.0; 16]);
        assert_eq!(get("blocks.0.norm1.bias"), vec![0.0; 16]);
        // Linear: PyTorch default U(−1/√in, 1/√in), in = 16 → |w| < 0.25, biases too
        for n in ["blocks.0.attn.qkv.weight", "blocks.0.mlp.fc1.bias"] {
            let v = get(n);
            assert!(
                v.iter().all(|x| x.abs() < 0.25) && v.iter().any(|x| x.abs() > 0.1),
                "{n}"
            );
        }
        drop(data);
        // MAE's mask token: N(0, 0.02²)
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        vb.pp("head").get((1, 1, 4000), "mask_token").unwrap();
        crate::model::seeded_init(&vm, 0).unwrap();
        let t = vm.data().lock().unwrap()["head.mask_token"]
            .as_tensor()
            .clone();
        let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let mean = v.iter().sum::<f32>() / v.len() as f32;
        let std = (v.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / v.len() as f32).sqrt();
        assert!(
            mean.abs() < 0.002 && (std - 0.02).abs() < 0.002,
            "{mean} {std}"
        );
    }

    #[test]
    fn layer_norm_known_values() {
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        let ln = LayerNorm::new(4, vb).unwrap();
        crate::model::seeded_init(&vm, 0).unwrap();
        let x = Tensor::from_vec(vec![1f32, 2., 3., 4.], (1, 4), &Device::Cpu).unwrap();
        // mean 2.5, biased var 1.25
        let s = (1.25f32 + 1e-6).sqrt();
        let want = [-1.5 / s, -0.5 / s, 0.5 / s, 1.5 / s];
        let got = ln
            .forward(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-6);
        }
    }
}
