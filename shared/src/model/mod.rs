//! Backbones. Every convolution of every backbone goes through [`conv2d`], the single place
//! where a faster CPU kernel can be swapped in.

pub mod init;
pub mod resnet;

pub use init::{build_resnet, seeded_init};
pub use resnet::{BackboneOutput, ResNet, ResNetConfig};

use candle_core::{Result, Tensor};

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
