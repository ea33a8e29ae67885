//! VGG with BatchNorm (Simonyan & Zisserman, "Very Deep Convolutional Networks for
//! Large-Scale Image Recognition", ICLR 2015, Table 1 configurations A, D and E, i.e.
//! VGG-11/16/19; BatchNorm after every convolution as torchvision's `vgg*_bn`), adapted to
//! 32×32 inputs as Kolesnikov, Zhai & Beyer ("Revisiting Self-Supervised Visual
//! Representation Learning", CVPR 2019) use VGG19-BN:
//!
//! * five blocks of `conv3×3 → BN → ReLU` layers, each block followed by a 2×2 max-pool, so a
//!   32×32 image gives maps of 16, 8, 4, 2 and 1 pixels;
//! * block `b` has `base_width · widen · [1, 2, 4, 8, 8][b]` channels (the paper's 64, 128,
//!   256, 512, 512 at `base_width = 64`, `widen = 1`);
//! * then one hidden fully connected block `Linear → BatchNorm1d → ReLU` whose output is the
//!   pre-logits (Revisiting: "the pre-logits is the last hidden fully connected layer"). The
//!   last block's map is global-average-pooled before it, which at 32×32 (a 1×1 map) is the
//!   same as flattening and lets other input sizes through.
//!
//! A max-pool is skipped where the map is already smaller than 2×2, so inputs smaller than
//! 32×32 (patches) reach a 1×1 map before the last block and go on through 3×3 convolutions
//! of 1×1 maps.
//!
//! Variable names: `blocks.{b}.{l}.conv.weight`, `blocks.{b}.{l}.bn.{weight,bias,running_mean,running_var}`,
//! `hidden.fc.weight` `(hidden, C_last)`, `hidden.bn.*`. No biases (each layer is followed by BatchNorm).

use candle_core::{Result, Tensor};
use candle_nn::{batch_norm, BatchNorm, BatchNormConfig, VarBuilder};

use super::conv2d;
use super::resnet::BackboneOutput;

/// Channel multiplier of each of the five blocks, relative to `base_width`.
const BLOCK_MULT: [usize; 5] = [1, 2, 4, 8, 8];

/// Shape of a VGG-BN backbone, the scenario's `[model.vgg]`. Every key optional (defaults
/// below), unknown keys refused.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VggConfig {
    /// 11, 16 or 19: configurations A, D, E of Simonyan & Zisserman (default 11).
    pub depth: usize,
    /// Channels of the first block before widening (default 16; the paper's VGG uses 64,
    /// a quarter of it keeps VGG-11 trainable on 2 CPU cores).
    pub base_width: usize,
    /// Widening factor: every block's channels and the default hidden width are multiplied
    /// by it (default 1).
    pub widen: usize,
    /// Width of the hidden fully connected layer, i.e. of the pre-logits (default:
    /// `8 · base_width · widen`, the last block's width).
    pub hidden: Option<usize>,
}

impl Default for VggConfig {
    fn default() -> Self {
        Self {
            depth: 11,
            base_width: 16,
            widen: 1,
            hidden: None,
        }
    }
}

impl VggConfig {
    /// Convolutions per block: A `[1, 1, 2, 2, 2]`, D `[2, 2, 3, 3, 3]`, E `[2, 2, 4, 4, 4]`.
    /// Errors on another depth.
    pub fn convs_per_block(&self) -> anyhow::Result<[usize; 5]> {
        Ok(match self.depth {
            11 => [1, 1, 2, 2, 2],
            16 => [2, 2, 3, 3, 3],
            19 => [2, 2, 4, 4, 4],
            d => anyhow::bail!("vgg: `depth` must be 11, 16 or 19, got {d}"),
        })
    }

    /// Output channels of each block.
    pub fn block_widths(&self) -> [usize; 5] {
        BLOCK_MULT.map(|m| m * self.base_width * self.widen)
    }

    /// Width of the pre-logits.
    pub fn hidden_width(&self) -> usize {
        self.hidden.unwrap_or(8 * self.base_width * self.widen)
    }

    /// Errors (naming the key) on an unknown depth or a zero width.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.convs_per_block()?;
        if self.base_width == 0 || self.widen == 0 || self.hidden == Some(0) {
            anyhow::bail!("vgg: `base_width`, `widen` and `hidden` must be positive");
        }
        Ok(())
    }
}

#[derive(Clone, Debug)]
struct ConvBnRelu {
    w: Tensor,
    bn: BatchNorm,
}

/// A VGG-BN backbone without classifier (see the module docs).
#[derive(Clone, Debug)]
pub struct Vgg {
    blocks: Vec<Vec<ConvBnRelu>>,
    fc: Tensor,
    fc_bn: BatchNorm,
    feature_dim: usize,
}

impl Vgg {
    /// Creates the variables under `vb` (names in the module docs); values are whatever `vb`
    /// initialises (use [`super::build_backbone`] for seeded weights). Errors on an invalid
    /// config.
    pub fn new(cfg: &VggConfig, vb: VarBuilder) -> Result<Self> {
        let per_block = cfg
            .convs_per_block()
            .and_then(|p| cfg.validate().map(|_| p))
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let mut ci = 3;
        let mut blocks = Vec::with_capacity(5);
        for (b, (&n, co)) in per_block.iter().zip(cfg.block_widths()).enumerate() {
            let mut layers = Vec::with_capacity(n);
            for l in 0..n {
                let lvb = vb.pp(format!("blocks.{b}.{l}"));
                let w = lvb.pp("conv").get((co, ci, 3, 3), "weight")?;
                let bn = batch_norm(co, BatchNormConfig::default(), lvb.pp("bn"))?;
                layers.push(ConvBnRelu { w, bn });
                ci = co;
            }
            blocks.push(layers);
        }
        let hidden = cfg.hidden_width();
        let fc = vb.pp("hidden.fc").get((hidden, ci), "weight")?;
        let fc_bn = batch_norm(hidden, BatchNormConfig::default(), vb.pp("hidden.bn"))?;
        Ok(Self {
            blocks,
            fc,
            fc_bn,
            feature_dim: hidden,
        })
    }

    /// Forward pass on normalised images `x` `(B, 3, H, W)`. `train = true` uses batch
    /// statistics in BatchNorm and updates the running statistics. Returns the output of each
    /// of the five blocks after its max-pool, `(B, C_b, H/2^(b+1), W/2^(b+1))`, and the
    /// pre-logits `(B, hidden)`.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<BackboneOutput> {
        let mut h = x.clone();
        let mut stages = Vec::with_capacity(self.blocks.len());
        for block in &self.blocks {
            for layer in block {
                let y = conv2d(&h, &layer.w, 1, 1)?;
                h = crate::ops::batch_norm_relu(&layer.bn, &y, train)?;
            }
            let (_, _, hh, ww) = h.dims4()?;
            if hh >= 2 && ww >= 2 {
                h = crate::ops::max_pool2x2(&h)?;
            }
            stages.push(h.clone());
        }
        let pooled = h.mean((2, 3))?;
        let z = pooled.matmul(&self.fc.t()?)?;
        let pre_logits = crate::ops::batch_norm_relu(&self.fc_bn, &z, train)?;
        Ok(BackboneOutput { stages, pre_logits })
    }

    /// `D`, the width of the pre-logits (the hidden layer's width).
    pub fn feature_dim(&self) -> usize {
        self.feature_dim
    }
}

#[cfg(test)]
mod tests {
    use super::super::{build_backbone, Backbone, BackboneKind, ModelConfig};
    use super::*;
    use crate::weights::WeightSet;
    use candle_core::Device;

    fn cfg(depth: usize, base_width: usize) -> ModelConfig {
        ModelConfig {
            backbone: BackboneKind::VggBn,
            vgg: VggConfig {
                depth,
                base_width,
                ..VggConfig::default()
            },
            ..ModelConfig::default()
        }
    }

    #[test]
    fn stage_shapes_for_vgg_11_16_19() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (2, 3, 32, 32), &dev).unwrap();
        for depth in [11, 16, 19] {
            let (net, vm) = build_backbone(&cfg(depth, 4), 0, &dev).unwrap();
            assert_eq!(net.kind(), BackboneKind::VggBn);
            let out = net.forward_t(&x, true).unwrap();
            let shapes: Vec<Vec<usize>> = out.stages.iter().map(|t| t.dims().to_vec()).collect();
            assert_eq!(
                shapes,
                vec![
                    vec![2, 4, 16, 16],
                    vec![2, 8, 8, 8],
                    vec![2, 16, 4, 4],
                    vec![2, 32, 2, 2],
                    vec![2, 32, 1, 1]
                ],
                "VGG-{depth}"
            );
            assert_eq!(out.pre_logits.dims(), &[2, 32]);
            assert_eq!(net.feature_dim(), 32);
            // conv layers + the hidden FC: 11 - 3 classifier layers + 1 hidden = 9 for VGG-11
            let convs = WeightSet::from_varmap(&vm)
                .unwrap()
                .tensors
                .keys()
                .filter(|k| k.ends_with("conv.weight"))
                .count();
            assert_eq!(convs, depth - 3, "VGG-{depth}");
        }
    }

    #[test]
    fn parameter_count_of_a_small_vgg11_is_hand_computed() {
        let dev = Device::Cpu;
        let mut c = cfg(11, 2);
        c.vgg.hidden = Some(10);
        let (net, vm) = build_backbone(&c, 0, &dev).unwrap();
        assert_eq!(net.feature_dim(), 10);
        // widths 2, 4, 8, 16, 16; VGG-11: convs 3→2 | 2→4 | 4→8, 8→8 | 8→16, 16→16 | 16→16, 16→16
        let convs = 9 * (3 * 2 + 2 * 4 + 4 * 8 + 8 * 8 + 8 * 16 + 16 * 16 + 16 * 16 + 16 * 16);
        // 4 BN values per channel of every conv
        let bn = 4 * (2 + 4 + 8 + 8 + 16 + 16 + 16 + 16);
        let fc = 16 * 10 + 4 * 10;
        let w = WeightSet::from_varmap(&vm).unwrap();
        assert_eq!(w.num_values(), convs + bn + fc);
        for n in [
            "blocks.0.0.conv.weight",
            "blocks.0.0.bn.running_var",
            "blocks.4.1.conv.weight",
            "hidden.fc.weight",
            "hidden.bn.weight",
            "hidden.bn.running_mean",
        ] {
            assert!(w.tensors.contains_key(n), "{n} missing");
        }
        assert_eq!(w.tensors["hidden.fc.weight"].shape, vec![10, 16]);
    }

    #[test]
    fn widen_multiplies_channels_and_seeding_is_deterministic() {
        let dev = Device::Cpu;
        let mut c = cfg(11, 2);
        c.vgg.widen = 3;
        let (net, _) = build_backbone(&c, 0, &dev).unwrap();
        assert_eq!(net.feature_dim(), 8 * 2 * 3);
        let x = Tensor::randn(0f32, 1.0, (2, 3, 32, 32), &dev).unwrap();
        let out = net.forward_t(&x, false).unwrap();
        assert_eq!(out.stages[0].dims(), &[2, 6, 16, 16]);
        let a = WeightSet::from_varmap(&build_backbone(&c, 5, &dev).unwrap().1).unwrap();
        let b = WeightSet::from_varmap(&build_backbone(&c, 5, &dev).unwrap().1).unwrap();
        let d = WeightSet::from_varmap(&build_backbone(&c, 6, &dev).unwrap().1).unwrap();
        assert_eq!(a, b);
        assert_ne!(a.tensors["hidden.fc.weight"], d.tensors["hidden.fc.weight"]);
        assert!(a.tensors["hidden.bn.weight"].data.iter().all(|&v| v == 1.0));
        // Linear init U(-1/sqrt(16·3), 1/sqrt(16·3))
        let bound = 1.0 / (48f32).sqrt();
        assert!(a.tensors["hidden.fc.weight"]
            .data
            .iter()
            .all(|v| v.abs() <= bound));
    }

    #[test]
    fn eval_forward_is_deterministic_and_gradients_flow_through_max_pool() {
        let dev = Device::Cpu;
        let (net, vm) = build_backbone(&cfg(11, 2), 1, &dev).unwrap();
        let x = Tensor::randn(0f32, 1.0, (3, 3, 32, 32), &dev).unwrap();
        let a = net.forward_t(&x, false).unwrap().pre_logits;
        let b = net.forward_t(&x, false).unwrap().pre_logits;
        assert_eq!(
            a.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            b.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
        let loss = net
            .forward_t(&x, true)
            .unwrap()
            .pre_logits
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap();
        let grads = loss.backward().unwrap();
        let data = vm.data().lock().unwrap();
        let g = grads
            .get(data["blocks.0.0.conv.weight"].as_tensor())
            .unwrap();
        let norm = g
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(norm > 0.0);
        // a larger input: the hidden layer sees the global average of a 2×2 map
        let p = Tensor::randn(0f32, 1.0, (2, 3, 64, 64), &dev).unwrap();
        let out = net.forward_t(&p, false).unwrap();
        assert_eq!(out.stages[4].dims(), &[2, 16, 2, 2]);
        assert_eq!(out.pre_logits.dims(), &[2, 16]);
        let _ = Backbone::Vgg;
    }

    #[test]
    fn invalid_configs_are_refused() {
        assert!(VggConfig {
            depth: 13,
            ..VggConfig::default()
        }
        .validate()
        .is_err());
        assert!(build_backbone(&cfg(13, 2), 0, &Device::Cpu).is_err());
        assert!(build_backbone(&cfg(11, 0), 0, &Device::Cpu).is_err());
        assert!(toml::from_str::<VggConfig>("layers = 3").is_err());
        let c: VggConfig = toml::from_str("depth = 19").unwrap();
        assert_eq!((c.depth, c.base_width, c.hidden_width()), (19, 16, 128));
    }
}
