//! CPU speed of the default ResNet: one rotation training step (batch 128 images, AllFour →
//! 512 samples) broken into its parts, and eval-mode inference throughput.
//!
//! `cargo run --release -p fedssl-shared --example speed`

use std::time::Instant;

use candle_core::Device;
use fedssl_shared::data::synthetic;
use fedssl_shared::model::ResNetConfig;
use fedssl_shared::optim::SgdMomentum;
use fedssl_shared::pretext::{rotation_batch, RotationMode};
use fedssl_shared::train::{extract_features, train_local, LocalModel, LocalTrainConfig};
use rand::SeedableRng;

fn main() -> anyhow::Result<()> {
    let dev = Device::Cpu;
    let t = Instant::now();
    let _ = synthetic::generate(10_000, 0);
    println!(
        "synthetic::generate(10_000): {:.3} s",
        t.elapsed().as_secs_f64()
    );
    let ds = synthetic::generate(128 * 4, 0);
    let mut m = LocalModel::new(&ResNetConfig::default(), 0, &dev)?;

    // one step, by parts, inside candle's pool as train_local does
    let idx: Vec<usize> = (0..128).collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let mut opt = SgdMomentum::new(m.named_vars(), 0.05, 0.9, 5e-4);
    for rep in 0..2 {
        Device::Cpu.with_context(|| -> anyhow::Result<()> {
            let t0 = Instant::now();
            let (x, y) = rotation_batch(&ds, &idx, RotationMode::AllFour, true, &mut rng, &dev)?;
            let t1 = Instant::now();
            let logits = m.logits(&x, true)?;
            let loss = candle_nn::loss::cross_entropy(&logits, &y)?;
            let _ = loss.to_scalar::<f32>()?;
            let t2 = Instant::now();
            let grads = loss.backward()?;
            let t3 = Instant::now();
            opt.step(&grads)?;
            let t4 = Instant::now();
            println!(
                "step parts (rep {rep}): batch {:.3} s, forward {:.3} s, backward {:.3} s, sgd {:.3} s",
                (t1 - t0).as_secs_f64(),
                (t2 - t1).as_secs_f64(),
                (t3 - t2).as_secs_f64(),
                (t4 - t3).as_secs_f64()
            );
            Ok(())
        })?;
    }

    let cfg = LocalTrainConfig {
        batch_size: 128,
        rotation_mode: RotationMode::AllFour,
        ..Default::default()
    };
    let t = Instant::now();
    let s = train_local(&mut m, &ds, &cfg, &mut |_, _, _| {})?;
    let per_step = t.elapsed().as_secs_f64() / s.steps as f64;
    println!(
        "train_local step (batch 128 images x 4 rotations = 512 samples): {:.3} s/step, {:.0} samples/s",
        per_step,
        512.0 / per_step
    );
    let big = synthetic::generate(1024, 1);
    let t = Instant::now();
    let f = extract_features(&m.backbone, &big, 256, &dev)?;
    let secs = t.elapsed().as_secs_f64();
    println!(
        "inference (eval mode, batch 256): {:.0} images/s ({} images in {:.2} s, features {:?})",
        big.len() as f64 / secs,
        big.len(),
        secs,
        f.dims()
    );
    Ok(())
}
