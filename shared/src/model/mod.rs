//! Backbones. Every convolution of every backbone goes through [`conv2d`], the single place
//! where a faster CPU kernel can be swapped in.
//!
//! [`Backbone`] is the one type the rest of fedssl trains, federates and evaluates; the
//! scenario's `[model]` section ([`ModelConfig`]) picks the family and its layout, and
//! [`build_backbone`] builds it with seeded weights.

pub mod init;
pub mod resnet;
pub mod vgg;
pub mod vit;

pub use init::{build_resnet, seeded_init};
pub use resnet::{BackboneOutput, ResNet, ResNetConfig};
pub use vgg::{Vgg, VggConfig};
pub use vit::{Vit, VitConfig};

use anyhow::Context;
use candle_core::{DType, Device, Result, Tensor};
use candle_nn::{VarBuilder, VarMap};

/// 2-D convolution without bias, dilation 1, groups 1.
///
/// `x`: `(B, C_in, H, W)`; `w`: `(C_out, C_in, K, K)`; returns
/// `(B, C_out, (H + 2·padding − K)/stride + 1, (W + 2·padding − K)/stride + 1)`.
/// Zero padding on all four sides. Differentiable (candle autograd).
///
/// On the CPU with `f32` this is our im2col + GEMM kernel with a GEMM + col2im backward
/// ([`crate::ops::conv2d`]); elsewhere (CUDA) candle's own convolution.
pub fn conv2d(x: &Tensor, w: &Tensor, stride: usize, padding: usize) -> Result<Tensor> {
    crate::ops::conv2d(x, w, stride, padding)
}

/// Backbone family, the scenario's `model.backbone`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackboneKind {
    /// CIFAR-style ResNet with BasicBlocks ([`ResNet`], He et al. 2016).
    Resnet,
    /// VGG with BatchNorm, adapted to 32×32 ([`Vgg`], Simonyan & Zisserman 2015).
    VggBn,
    /// Vision Transformer ([`Vit`], Dosovitskiy et al. 2021), MAE's encoder layout.
    Vit,
}

impl BackboneKind {
    /// The name used in scenario files and `summary.json`.
    pub fn name(self) -> &'static str {
        match self {
            BackboneKind::Resnet => "resnet",
            BackboneKind::VggBn => "vgg_bn",
            BackboneKind::Vit => "vit",
        }
    }
}

/// The scenario's `[model]` section: which backbone, and the layout of each family (only the
/// chosen family's table is used). Every key is optional; unknown keys are refused.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// Backbone family: `"resnet"` (default), `"vgg_bn"` or `"vit"`.
    pub backbone: BackboneKind,
    /// `[model.resnet]`: CIFAR-style ResNet layout.
    pub resnet: ResNetConfig,
    /// `[model.vgg]`: VGG-BN layout.
    pub vgg: VggConfig,
    /// `[model.vit]`: Vision Transformer layout.
    pub vit: VitConfig,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            backbone: BackboneKind::Resnet,
            resnet: ResNetConfig::default(),
            vgg: VggConfig::default(),
            vit: VitConfig::default(),
        }
    }
}

impl ModelConfig {
    /// Checks the chosen family's layout; the message names the `model.*` key.
    pub fn validate(&self) -> anyhow::Result<()> {
        match self.backbone {
            BackboneKind::Resnet => self.resnet.validate().context("in model.resnet"),
            BackboneKind::VggBn => self.vgg.validate().context("in model.vgg"),
            BackboneKind::Vit => self.vit.validate().context("in model.vit"),
        }
    }
}

/// A backbone of any family: images in, per-stage maps and pre-logits out.
#[derive(Clone, Debug)]
pub enum Backbone {
    /// A CIFAR-style ResNet.
    ResNet(ResNet),
    /// A VGG-BN.
    Vgg(Vgg),
    /// A Vision Transformer.
    Vit(Vit),
}

impl Backbone {
    /// Forward pass on normalised images `x` `(B, 3, H, W)`. `train = true` uses batch
    /// statistics in BatchNorm and updates the running statistics; `false` uses them.
    /// Returns each stage's output and the pre-logits `(B, D)`.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<BackboneOutput> {
        match self {
            Backbone::ResNet(n) => n.forward_t(x, train),
            Backbone::Vgg(n) => n.forward_t(x, train),
            Backbone::Vit(n) => n.forward_t(x, train),
        }
    }

    /// Inference-mode forward pass for evaluation and feature extraction: the outputs of
    /// `forward_t(x, false)` (to rounding), without gradients. The ResNet folds every
    /// BatchNorm into its convolution ([`ResNet::forward_inference`]); the other backbones
    /// run `forward_t(x, false)` and detach its outputs.
    pub fn forward_inference(&self, x: &Tensor) -> Result<BackboneOutput> {
        match self {
            Backbone::ResNet(n) => n.forward_inference(x),
            Backbone::Vgg(_) | Backbone::Vit(_) => {
                let out = self.forward_t(x, false)?;
                Ok(BackboneOutput {
                    stages: out.stages.iter().map(|t| t.detach()).collect(),
                    pre_logits: out.pre_logits.detach(),
                })
            }
        }
    }

    /// `D`, the width of the pre-logits vector.
    pub fn feature_dim(&self) -> usize {
        match self {
            Backbone::ResNet(n) => n.feature_dim(),
            Backbone::Vgg(n) => n.feature_dim(),
            Backbone::Vit(n) => n.feature_dim(),
        }
    }

    /// The family.
    pub fn kind(&self) -> BackboneKind {
        match self {
            Backbone::ResNet(_) => BackboneKind::Resnet,
            Backbone::Vgg(_) => BackboneKind::VggBn,
            Backbone::Vit(_) => BackboneKind::Vit,
        }
    }
}

/// Builds the backbone `cfg` asks for with `f32` variables in a fresh `VarMap` on `device`,
/// seeded by [`seeded_init`]`(varmap, seed)`: the same config and seed give bit-identical
/// weights. Errors on an invalid layout, naming the `model.*` table.
pub fn build_backbone(
    cfg: &ModelConfig,
    seed: u64,
    device: &Device,
) -> anyhow::Result<(Backbone, VarMap)> {
    cfg.validate()?;
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, device);
    let net = match cfg.backbone {
        BackboneKind::Resnet => Backbone::ResNet(ResNet::new(&cfg.resnet, vb)?),
        BackboneKind::VggBn => Backbone::Vgg(Vgg::new(&cfg.vgg, vb)?),
        BackboneKind::Vit => Backbone::Vit(Vit::new(&cfg.vit, vb)?),
    };
    seeded_init(&varmap, seed)?;
    Ok((net, varmap))
}
