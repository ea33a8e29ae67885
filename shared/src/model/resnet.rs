//! CIFAR-style ResNet with BasicBlocks (He, Zhang, Ren & Sun, "Deep Residual Learning for
//! Image Recognition", CVPR 2016, §4.2): a 3×3 stem, stages of BasicBlocks, global average
//! pooling. No max-pool, so 32×32 inputs keep 32×32 maps in the first stage.
//!
//! Variable names (the `WeightSet` / safetensors names):
//! `stem.conv.weight`, `stem.bn.{weight,bias,running_mean,running_var}`,
//! `stages.{s}.{b}.conv1.weight`, `stages.{s}.{b}.bn1.*`, `stages.{s}.{b}.conv2.weight`,
//! `stages.{s}.{b}.bn2.*`, and where a block changes stride or width
//! `stages.{s}.{b}.shortcut.conv.weight`, `stages.{s}.{b}.shortcut.bn.*`.

use candle_core::{Result, Tensor};
use candle_nn::{batch_norm, BatchNorm, BatchNormConfig, VarBuilder};

use super::conv2d;

/// Shape of a CIFAR-style ResNet. Serialised with every key optional (defaults below) and
/// unknown keys refused.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResNetConfig {
    /// Output channels of the 3×3 stem convolution.
    pub stem_width: usize,
    /// Output channels of each stage (one entry per stage).
    pub widths: Vec<usize>,
    /// BasicBlocks in each stage (same length as `widths`).
    pub blocks: Vec<usize>,
    /// Widening factor (Zagoruyko & Komodakis 2016; Revisiting's "widening factor"): the stem
    /// and every stage have `widen ×` their listed channels (default 1).
    pub widen: usize,
}

impl Default for ResNetConfig {
    /// A small ResNet-8: stem 16, widths `[16, 32, 64]`, one block per stage (~78k weights).
    fn default() -> Self {
        Self {
            stem_width: 16,
            widths: vec![16, 32, 64],
            blocks: vec![1, 1, 1],
            widen: 1,
        }
    }
}

impl ResNetConfig {
    /// Errors unless there is at least one stage, `widths` and `blocks` have the same length
    /// and every width and block count is positive.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.widths.is_empty() {
            anyhow::bail!("resnet: `widths` must list at least one stage");
        }
        if self.widths.len() != self.blocks.len() {
            anyhow::bail!(
                "resnet: `widths` has {} stages but `blocks` has {}",
                self.widths.len(),
                self.blocks.len()
            );
        }
        if self.stem_width == 0
            || self.widths.contains(&0)
            || self.blocks.contains(&0)
            || self.widen == 0
        {
            anyhow::bail!(
                "resnet: `stem_width`, `widths`, `blocks` and `widen` must all be positive"
            );
        }
        Ok(())
    }
}

/// What a backbone returns.
#[derive(Clone, Debug)]
pub struct BackboneOutput {
    /// Output of each stage, `(B, C_s, H_s, W_s)`; `H_s = ceil(H / 2^s)` for stage `s`.
    pub stages: Vec<Tensor>,
    /// Global average pool of the last stage, `(B, D)` with `D = widths.last()`.
    pub pre_logits: Tensor,
}

/// Convolution (no bias) followed by BatchNorm.
#[derive(Clone, Debug)]
struct ConvBn {
    w: Tensor,
    bn: BatchNorm,
    stride: usize,
    padding: usize,
}

impl ConvBn {
    fn new(
        ci: usize,
        co: usize,
        k: usize,
        stride: usize,
        conv_vb: VarBuilder,
        bn_vb: VarBuilder,
    ) -> Result<Self> {
        let w = conv_vb.get((co, ci, k, k), "weight")?;
        let bn = batch_norm(co, BatchNormConfig::default(), bn_vb)?;
        Ok(Self {
            w,
            bn,
            stride,
            padding: k / 2,
        })
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let y = conv2d(x, &self.w, self.stride, self.padding)?;
        crate::ops::batch_norm(&self.bn, &y, train)
    }

    /// `relu(bn(conv(x)))`, the BatchNorm and ReLU fused.
    fn forward_relu(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let y = conv2d(x, &self.w, self.stride, self.padding)?;
        crate::ops::batch_norm_relu(&self.bn, &y, train)
    }

    /// Inference: `relu?(bn(conv(x)) + residual?)` with the running statistics, BatchNorm
    /// folded into the convolution (see [`crate::ops::conv2d_bn_inference`]); no gradient.
    fn infer(&self, x: &Tensor, residual: Option<&Tensor>, relu: bool) -> Result<Tensor> {
        crate::ops::conv2d_bn_inference(
            x,
            &self.w,
            self.stride,
            self.padding,
            &self.bn,
            residual,
            relu,
        )
    }

    /// `relu(bn(conv(x)) + residual)`, the BatchNorm, residual add and ReLU fused.
    fn forward_add_relu(&self, x: &Tensor, residual: &Tensor, train: bool) -> Result<Tensor> {
        let y = conv2d(x, &self.w, self.stride, self.padding)?;
        crate::ops::batch_norm_add_relu(&self.bn, &y, residual, train)
    }
}

/// conv3x3-BN-ReLU-conv3x3-BN plus shortcut, then ReLU.
#[derive(Clone, Debug)]
struct BasicBlock {
    c1: ConvBn,
    c2: ConvBn,
    shortcut: Option<ConvBn>,
}

impl BasicBlock {
    fn new(ci: usize, co: usize, stride: usize, vb: VarBuilder) -> Result<Self> {
        let c1 = ConvBn::new(ci, co, 3, stride, vb.pp("conv1"), vb.pp("bn1"))?;
        let c2 = ConvBn::new(co, co, 3, 1, vb.pp("conv2"), vb.pp("bn2"))?;
        let shortcut = if stride != 1 || ci != co {
            let s = vb.pp("shortcut");
            Some(ConvBn::new(ci, co, 1, stride, s.pp("conv"), s.pp("bn"))?)
        } else {
            None
        };
        Ok(Self { c1, c2, shortcut })
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let y = self.c1.forward_relu(x, train)?;
        let s = match &self.shortcut {
            Some(sc) => sc.forward_t(x, train)?,
            None => x.clone(),
        };
        self.c2.forward_add_relu(&y, &s, train)
    }

    fn forward_inference(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.c1.infer(x, None, true)?;
        let s = match &self.shortcut {
            Some(sc) => sc.infer(x, None, false)?,
            None => x.clone(),
        };
        self.c2.infer(&y, Some(&s), true)
    }
}

/// A CIFAR-style ResNet backbone (He et al. 2016) without classifier.
#[derive(Clone, Debug)]
pub struct ResNet {
    stem: ConvBn,
    stages: Vec<Vec<BasicBlock>>,
    feature_dim: usize,
}

impl ResNet {
    /// Creates the variables under `vb` (names in the module docs). The values are
    /// whatever `vb` initialises; use [`super::build_resnet`] for the seeded torchvision-style
    /// initialisation. Errors on an invalid config (see [`ResNetConfig::validate`]).
    pub fn new(cfg: &ResNetConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let k = cfg.widen;
        let stem = ConvBn::new(
            3,
            k * cfg.stem_width,
            3,
            1,
            vb.pp("stem.conv"),
            vb.pp("stem.bn"),
        )?;
        let mut ci = k * cfg.stem_width;
        let mut stages = Vec::with_capacity(cfg.widths.len());
        for (s, (&co, &nb)) in cfg.widths.iter().zip(&cfg.blocks).enumerate() {
            let svb = vb.pp(format!("stages.{s}"));
            let mut blocks = Vec::with_capacity(nb);
            for b in 0..nb {
                let stride = if s > 0 && b == 0 { 2 } else { 1 };
                blocks.push(BasicBlock::new(ci, k * co, stride, svb.pp(b.to_string()))?);
                ci = k * co;
            }
            stages.push(blocks);
        }
        Ok(Self {
            stem,
            stages,
            feature_dim: ci,
        })
    }

    /// Forward pass. `x`: `(B, 3, H, W)` normalised images. `train = true` uses batch
    /// statistics in BatchNorm and updates the running statistics (momentum 0.1, as PyTorch);
    /// `train = false` uses the running statistics.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<BackboneOutput> {
        let mut h = self.stem.forward_relu(x, train)?;
        let mut outs = Vec::with_capacity(self.stages.len());
        for stage in &self.stages {
            for block in stage {
                h = block.forward_t(&h, train)?;
            }
            outs.push(h.clone());
        }
        let pre_logits = h.mean((2, 3))?;
        Ok(BackboneOutput {
            stages: outs,
            pre_logits,
        })
    }

    /// Inference: the same outputs as `forward_t(x, false)` (to rounding), with every
    /// BatchNorm folded into its convolution and the residual adds and ReLUs applied as each
    /// convolution's output is produced ([`crate::ops::conv2d_bn_inference`]). The outputs carry
    /// no gradient: for evaluation and feature extraction, like PyTorch's `eval()` under
    /// `no_grad()`.
    pub fn forward_inference(&self, x: &Tensor) -> Result<BackboneOutput> {
        let mut h = self.stem.infer(x, None, true)?;
        let mut outs = Vec::with_capacity(self.stages.len());
        for stage in &self.stages {
            for block in stage {
                h = block.forward_inference(&h)?;
            }
            outs.push(h.clone());
        }
        let pre_logits = h.mean((2, 3))?;
        Ok(BackboneOutput {
            stages: outs,
            pre_logits,
        })
    }

    /// `D`, the width of `pre_logits` (the last stage's width).
    pub fn feature_dim(&self) -> usize {
        self.feature_dim
    }
}

#[cfg(test)]
mod tests {
    use super::super::build_resnet;
    use super::*;
    use crate::weights::WeightSet;
    use candle_core::{DType, Device};

    fn shapes(out: &BackboneOutput) -> Vec<Vec<usize>> {
        out.stages.iter().map(|t| t.dims().to_vec()).collect()
    }

    #[test]
    fn default_config_shapes() {
        let dev = Device::Cpu;
        let (net, vm) = build_resnet(&ResNetConfig::default(), 0, &dev).unwrap();
        assert_eq!(net.feature_dim(), 64);
        let x = Tensor::randn(0f32, 1.0, (2, 3, 32, 32), &dev).unwrap();
        let out = net.forward_t(&x, true).unwrap();
        assert_eq!(
            shapes(&out),
            vec![vec![2, 16, 32, 32], vec![2, 32, 16, 16], vec![2, 64, 8, 8]]
        );
        assert_eq!(out.pre_logits.dims(), &[2, 64]);
        // parameter count of the default ResNet-8 (BN running stats included):
        // stem 432 + 4*16; stage0 2*2304 + 4*16*2; stage1 4608+9216+512 + 3*4*32;
        // stage2 18432+36864+2048 + 3*4*64
        let w = WeightSet::from_varmap(&vm).unwrap();
        let expect = 432 + 64 + 4608 + 128 + 4608 + 9216 + 512 + 384 + 18432 + 36864 + 2048 + 768;
        assert_eq!(w.num_values(), expect);
    }

    #[test]
    fn custom_config_and_non_square_input() {
        let dev = Device::Cpu;
        let cfg = ResNetConfig {
            stem_width: 8,
            widths: vec![8, 16],
            blocks: vec![2, 1],
            widen: 1,
        };
        let (net, vm) = build_resnet(&cfg, 1, &dev).unwrap();
        assert_eq!(net.feature_dim(), 16);
        let x = Tensor::randn(0f32, 1.0, (2, 3, 32, 32), &dev).unwrap();
        let out = net.forward_t(&x, false).unwrap();
        assert_eq!(shapes(&out), vec![vec![2, 8, 32, 32], vec![2, 16, 16, 16]]);
        let x = Tensor::randn(0f32, 1.0, (2, 3, 24, 40), &dev).unwrap();
        let out = net.forward_t(&x, true).unwrap();
        assert_eq!(shapes(&out), vec![vec![2, 8, 24, 40], vec![2, 16, 12, 20]]);
        assert_eq!(out.pre_logits.dims(), &[2, 16]);
        let names: Vec<String> = WeightSet::from_varmap(&vm)
            .unwrap()
            .tensors
            .into_keys()
            .collect();
        for n in [
            "stem.conv.weight",
            "stem.bn.weight",
            "stem.bn.bias",
            "stem.bn.running_mean",
            "stem.bn.running_var",
            "stages.0.1.conv2.weight",
            "stages.0.0.bn1.running_mean",
            "stages.1.0.shortcut.conv.weight",
            "stages.1.0.shortcut.bn.running_var",
        ] {
            assert!(names.iter().any(|x| x == n), "{n} missing from {names:?}");
        }
        // same width, stride 1: no shortcut conv in stage 0
        assert!(!names.iter().any(|x| x.starts_with("stages.0.0.shortcut")));
        assert_eq!(names.len(), 5 + 2 * 10 + 10 + 5);
    }

    #[test]
    fn seeded_weights_are_reproducible_and_torchvision_like() {
        let dev = Device::Cpu;
        let cfg = ResNetConfig::default();
        let a = WeightSet::from_varmap(&build_resnet(&cfg, 7, &dev).unwrap().1).unwrap();
        let b = WeightSet::from_varmap(&build_resnet(&cfg, 7, &dev).unwrap().1).unwrap();
        let c = WeightSet::from_varmap(&build_resnet(&cfg, 8, &dev).unwrap().1).unwrap();
        assert_eq!(a, b);
        assert_ne!(a.tensors["stem.conv.weight"], c.tensors["stem.conv.weight"]);
        assert!(a.tensors["stem.bn.weight"].data.iter().all(|&v| v == 1.0));
        assert!(a.tensors["stem.bn.bias"].data.iter().all(|&v| v == 0.0));
        assert!(a.tensors["stem.bn.running_mean"]
            .data
            .iter()
            .all(|&v| v == 0.0));
        assert!(a.tensors["stem.bn.running_var"]
            .data
            .iter()
            .all(|&v| v == 1.0));
        // Kaiming fan_out: stage 2 conv2 (64, 64, 3, 3): std = sqrt(2 / 576) = 0.0589
        let w = &a.tensors["stages.2.0.conv2.weight"].data;
        let n = w.len() as f64;
        let mean = w.iter().map(|&v| v as f64).sum::<f64>() / n;
        let std = (w.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n).sqrt();
        assert!(mean.abs() < 0.003, "{mean}");
        assert!((std - (2.0f64 / 576.0).sqrt()).abs() < 0.002, "{std}");
        assert_eq!(a.tensors["stem.conv.weight"].shape, vec![16, 3, 3, 3]);
        let _ = DType::F32;
    }

    #[test]
    fn train_mode_updates_running_stats_and_eval_does_not() {
        let dev = Device::Cpu;
        let (net, vm) = build_resnet(&ResNetConfig::default(), 0, &dev).unwrap();
        let x = (Tensor::randn(0f32, 1.0, (4, 3, 16, 16), &dev).unwrap() + 3.0).unwrap();
        net.forward_t(&x, false).unwrap();
        let before = WeightSet::from_varmap(&vm).unwrap();
        assert!(before.tensors["stem.bn.running_mean"]
            .data
            .iter()
            .all(|&v| v == 0.0));
        net.forward_t(&x, true).unwrap();
        let after = WeightSet::from_varmap(&vm).unwrap();
        assert_ne!(
            before.tensors["stem.bn.running_mean"],
            after.tensors["stem.bn.running_mean"]
        );
        assert_eq!(
            before.tensors["stem.conv.weight"],
            after.tensors["stem.conv.weight"]
        );
    }

    #[test]
    fn widen_multiplies_stem_and_stage_widths() {
        let dev = Device::Cpu;
        let cfg = ResNetConfig {
            widen: 2,
            ..ResNetConfig::default()
        };
        let (net, vm) = build_resnet(&cfg, 0, &dev).unwrap();
        assert_eq!(net.feature_dim(), 128);
        let w = WeightSet::from_varmap(&vm).unwrap();
        assert_eq!(w.tensors["stem.conv.weight"].shape, vec![32, 3, 3, 3]);
        assert_eq!(
            w.tensors["stages.2.0.conv2.weight"].shape,
            vec![128, 128, 3, 3]
        );
        let default =
            WeightSet::from_varmap(&build_resnet(&ResNetConfig::default(), 0, &dev).unwrap().1)
                .unwrap();
        let names = |w: &WeightSet| w.tensors.keys().cloned().collect::<Vec<_>>();
        assert_eq!(names(&w), names(&default));
        assert!(build_resnet(
            &ResNetConfig {
                widen: 0,
                ..ResNetConfig::default()
            },
            0,
            &dev
        )
        .is_err());
    }

    #[test]
    fn invalid_configs_are_refused() {
        let dev = Device::Cpu;
        let bad = ResNetConfig {
            stem_width: 8,
            widths: vec![8, 16],
            blocks: vec![1],
            widen: 1,
        };
        assert!(build_resnet(&bad, 0, &dev).is_err());
        let bad = ResNetConfig {
            stem_width: 8,
            widths: vec![],
            blocks: vec![],
            widen: 1,
        };
        assert!(build_resnet(&bad, 0, &dev).is_err());
        let cfg: ResNetConfig = toml::from_str("widths = [8]\nblocks = [2]").unwrap();
        assert_eq!(cfg.stem_width, 16);
        assert!(toml::from_str::<ResNetConfig>("depth = 3").is_err());
    }

    #[test]
    fn inference_matches_eval_mode_forward() {
        // Two blocks per stage, 32-wide: the first stage's 3×3 convs take Winograd
        // (min(C_in, C_out)·W = 32·32), the rest im2col; a few training-mode passes first so
        // the running statistics are not the initial 0 / 1.
        let cfg = ResNetConfig {
            stem_width: 32,
            widths: vec![32, 64],
            blocks: vec![2, 1],
            widen: 1,
        };
        let dev = Device::Cpu;
        let (net, _vm) = build_resnet(&cfg, 3, &dev).unwrap();
        for s in 0..3 {
            let x = Tensor::randn(0.5f32, 1.0, (4, 3, 32, 32), &dev).unwrap();
            net.forward_t(&x, true).unwrap();
            let _ = s;
        }
        let x = Tensor::randn(0f32, 1.0, (3, 3, 32, 32), &dev).unwrap();
        let a = net.forward_t(&x, false).unwrap();
        let b = net.forward_inference(&x).unwrap();
        for (p, q) in a
            .stages
            .iter()
            .chain([&a.pre_logits])
            .zip(b.stages.iter().chain([&b.pre_logits]))
        {
            assert_eq!(p.dims(), q.dims());
            let p = p.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let q = q.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let scale = p.iter().fold(1f32, |m, v| m.max(v.abs()));
            for (u, v) in p.iter().zip(&q) {
                assert!((u - v).abs() <= 1e-4 * scale, "{u} vs {v}");
            }
        }
    }
}
