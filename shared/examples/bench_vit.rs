//! Times the default ViT and ResNet backbones on the CPU, batch 256, 32×32: inference
//! (`forward_t(x, false)`) and training-mode forward (`forward_t(x, true)`).
//! `cargo run --release -p fedssl-shared --example bench_vit`
use std::time::Instant;

use candle_core::{Device, Tensor};
use fedssl_shared::model::{build_backbone, BackboneKind, ModelConfig};

fn main() -> anyhow::Result<()> {
    let x = Tensor::zeros((256, 3, 32, 32), candle_core::DType::F32, &Device::Cpu)?;
    for kind in [BackboneKind::Vit, BackboneKind::Resnet] {
        let cfg = ModelConfig {
            backbone: kind,
            ..Default::default()
        };
        let (net, _vm) = build_backbone(&cfg, 0, &Device::Cpu)?;
        Device::Cpu.with_context(|| -> anyhow::Result<()> {
            for train in [false, true, false, true] {
                let t = Instant::now();
                let out = net.forward_t(&x, train)?;
                let _ = out.pre_logits.sum_all()?.to_scalar::<f32>()?;
                let s = t.elapsed().as_secs_f64();
                println!("{} train={train}: {:.1} img/s", kind.name(), 256.0 / s);
            }
            Ok(())
        })?;
    }
    Ok(())
}
