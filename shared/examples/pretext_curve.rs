//! Trains a scenario's pretext task centrally (one client, no federation, no evaluation) and
//! prints its learning curve: mean pretext loss and accuracy every `--every` steps. A quick
//! way to see whether a task learns at all, and how fast, under given settings:
//!
//! ```sh
//! cargo run --release -p fedssl-shared --example pretext_curve -- \
//!   scenarios/compare-pretexts.toml --data-dir data/cifar10 --steps 300 --every 25 \
//!   --set pretext.task=jigsaw --set data.train_images=2000
//! ```
//!
//! The learning rate follows `train.schedule` over `--steps` (cosine or constant) from
//! `train.lr`; batches are `train.batch_size` images of the shuffled set, epoch after epoch.
//! The backbone starts from the initial weights of a run of the scenario (same seed, same
//! init); `--save PATH` writes it after the last step as safetensors (with `--steps 0`: the
//! run's random-init backbone, for `fedssl-coordinator eval`).
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::Device;
use fedssl_shared::config::Scenario;
use fedssl_shared::data::load_train_set;
use fedssl_shared::device::on_device;
use fedssl_shared::optim::{lr_at, SgdMomentum};
use fedssl_shared::train::LocalModel;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let (mut scenario, mut data_dir, mut sets) = (None, None, Vec::new());
    let (mut steps, mut every, mut save) = (300usize, 25usize, None);
    while let Some(a) = args.next() {
        let mut val = || args.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--data-dir" => data_dir = Some(PathBuf::from(val()?)),
            "--set" => sets.push(val()?),
            "--steps" => steps = val()?.parse()?,
            "--every" => every = val()?.parse()?,
            "--save" => save = Some(PathBuf::from(val()?)),
            _ if a.starts_with("--") => bail!("unknown option {a}"),
            _ => scenario = Some(PathBuf::from(a)),
        }
    }
    let path = scenario.context(
        "usage: pretext_curve <scenario.toml> [--data-dir D] [--set k=v]... [--steps N] [--every K] [--save PATH]",
    )?;
    let sc = Scenario::load(&path, &sets)?;
    let dir = data_dir.or(sc.data.path.clone());
    let ds = load_train_set(
        sc.data.dataset,
        dir.as_deref(),
        sc.data.train_images,
        sc.seed,
    )?
    .unlabelled();
    let device = Device::Cpu;
    let init_seed = fedssl_shared::seed::derive(sc.seed, fedssl_shared::seed::INIT, 0);
    let model = LocalModel::new(&sc.model, &sc.pretext, init_seed, sc.seed + 1, &device)?;
    let (t, schedule) = (&sc.train.local, sc.train.schedule);
    let mut opt = SgdMomentum::new(model.named_vars(), t.lr, t.momentum, t.weight_decay);
    let mut rng = StdRng::seed_from_u64(sc.seed + 2);
    let mut order: Vec<usize> = Vec::new();
    let (mut loss_sum, mut correct, mut count) = (0.0f64, 0usize, 0usize);
    let start = Instant::now();
    println!(
        "{} on {} images, batch {}, lr {} ({:?}), {steps} steps",
        sc.pretext.task.name(),
        ds.len(),
        t.batch_size,
        t.lr,
        schedule
    );
    for step in 0..steps {
        if order.len() < t.batch_size {
            order = (0..ds.len()).collect();
            order.shuffle(&mut rng);
        }
        let idx: Vec<usize> = order.split_off(order.len() - t.batch_size.min(order.len()));
        opt.set_lr(lr_at(t.lr, &schedule, step, steps));
        let (loss, ok, n) = on_device(&device, || -> Result<(f64, Option<usize>, usize)> {
            let out = model
                .task
                .batch_loss(&model.backbone, &ds, &idx, &mut rng, &device)?;
            let grads = out.loss.backward()?;
            opt.step(&grads)?;
            Ok((out.loss.to_scalar::<f32>()? as f64, out.correct, out.count))
        })?;
        loss_sum += loss * n as f64;
        correct += ok.unwrap_or(0);
        count += n;
        if (step + 1) % every == 0 || step + 1 == steps {
            println!(
                "step {:5}  lr {:.4}  loss {:.4}  acc {:.3}  {:.0} s",
                step + 1,
                opt.lr(),
                loss_sum / count as f64,
                correct as f64 / count as f64,
                start.elapsed().as_secs_f64()
            );
            (loss_sum, correct, count) = (0.0, 0, 0);
        }
    }
    if let Some(p) = save {
        fedssl_shared::weights::WeightSet::from_varmap(&model.backbone_vars)?.save(&p)?;
        println!("backbone written to {}", p.display());
    }
    Ok(())
}
