//! The local training loop a client runs each round: the pretext task on its shard with SGD
//! + momentum, the batches prepared ahead on their own thread.
//!
//! On the CPU every step runs inside `Device::Cpu.with_context(..)` ([`on_device`]), i.e. on
//! candle's warm rayon pool; the progress callback is called on the calling thread between
//! steps, so it need not be `Send`.

use std::time::Instant;

use anyhow::{bail, Result};
use candle_core::{Tensor, Var};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

use super::{LocalModel, LocalTrainConfig};
use crate::data::ImageDataset;
use crate::device::on_device;
use crate::optim::SgdMomentum;
use crate::pretext::{PreparedBatch, PretextTask};

/// What one call of [`train_local`] reports.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrainStats {
    /// Mean pretext loss per sample over the last epoch (the task's unit: nats for
    /// classification and contrastive losses, squared error for reconstruction).
    pub loss: f64,
    /// Pretext accuracy (fraction in [0, 1]) over the last epoch; `None` for tasks without
    /// one (masked image modelling).
    pub accuracy: Option<f64>,
    /// Images in the shard.
    pub samples: usize,
    /// Optimiser steps taken.
    pub steps: usize,
    /// Wall-clock seconds of the whole call.
    pub seconds: f64,
}

/// Trains `model` (backbone and heads) for `cfg.local_epochs` epochs over `shard`.
///
/// Each epoch shuffles the shard from `StdRng::seed_from_u64(seed)` (one stream for
/// shuffling and augmentation, so the result is deterministic), cuts it into batches of
/// `cfg.batch_size` images (the last may be smaller), asks the pretext task for the batch's
/// loss ([`PretextTask::step`], BatchNorm in training mode) and minimises it with
/// [`SgdMomentum`] at the constant learning rate `cfg.lr` over the
/// `local_epochs · ceil(N / batch_size)` steps. After each step
/// `progress(step, total_steps, running_loss)` is called, `step` counting from 1 and
/// `running_loss` the mean loss of the current epoch so far.
///
/// The batches are prepared ([`PretextTask::prepare`]: decoding, crops, rotations,
/// augmentation, normalisation) [`PREFETCH_BATCHES`] ahead on a separate thread, so that
/// preparing the next batch overlaps the current step; the random stream is drawn in the
/// same order as without prefetching, so results do not depend on it.
///
/// With `proximal_mu` μ > 0 (FedProx, Li et al. 2020) every step minimises the pretext loss
/// plus (μ/2)·Σ_v ‖v − v₀‖² over the backbone's learnable variables `v` (not its BatchNorm
/// running statistics; not the heads), v₀ being their values when the call starts (the
/// round's global weights); the reported loss is the pretext loss alone. μ = 0 adds nothing:
/// training is bit-identical to a run without the term.
///
/// After every optimiser step the task's [`PretextTask::after_step`] runs (BYOL's target
/// update; nothing for the other tasks).
///
/// Returns the sample-weighted mean loss and accuracy of the last epoch.
/// Errors on an empty shard, `batch_size == 0`, `local_epochs == 0`, a negative or
/// non-finite `proximal_mu`, a batch that cannot be prepared, or a non-finite loss.
pub fn train_local(
    model: &mut LocalModel,
    shard: &ImageDataset,
    cfg: &LocalTrainConfig,
    proximal_mu: f64,
    seed: u64,
    progress: &mut dyn FnMut(usize, usize, f64),
) -> Result<TrainStats> {
    let prox = Proximal::new(model, proximal_mu)?;
    train_loop(model, shard, cfg, &prox, seed, progress, PREFETCH_BATCHES)
}

/// FedProx's proximal term: μ and the backbone's learnable variables with their values at
/// the start of the round (none when μ = 0).
struct Proximal {
    mu: f64,
    anchors: Vec<(Var, Tensor)>,
}

impl Proximal {
    /// The term of `model`'s backbone, anchored at its current values. Errors on a negative
    /// or non-finite `mu`.
    fn new(model: &LocalModel, mu: f64) -> Result<Self> {
        if !mu.is_finite() || mu < 0.0 {
            bail!("the proximal coefficient μ must be ≥ 0, got {mu}");
        }
        let mut anchors = Vec::new();
        if mu > 0.0 {
            for (name, var) in model.backbone_named_vars() {
                let leaf = name.rsplit('.').next().unwrap_or_default();
                if leaf == "running_mean" || leaf == "running_var" {
                    continue;
                }
                let start = var.as_detached_tensor().copy()?;
                anchors.push((var, start));
            }
        }
        Ok(Self { mu, anchors })
    }

    /// No term: μ = 0.
    #[cfg(test)]
    fn none() -> Self {
        Self {
            mu: 0.0,
            anchors: Vec::new(),
        }
    }

    /// `loss` + (μ/2)·Σ ‖v − v₀‖², or `loss` itself without a term.
    fn add_to(&self, loss: &Tensor) -> Result<Tensor> {
        if self.anchors.is_empty() {
            return Ok(loss.clone());
        }
        let mut sum: Option<Tensor> = None;
        for (var, start) in &self.anchors {
            let sq = var.as_tensor().sub(start)?.sqr()?.sum_all()?;
            sum = Some(match sum {
                None => sq,
                Some(s) => (s + sq)?,
            });
        }
        match sum {
            Some(s) => Ok((loss + s.affine(self.mu / 2.0, 0.0)?)?),
            None => Ok(loss.clone()),
        }
    }
}

/// Batches [`train_local`] prepares ahead of the step that runs (on its own thread).
pub const PREFETCH_BATCHES: usize = 2;

/// [`train_local`] with `prefetch` batches prepared ahead on a separate thread (0: each batch
/// is prepared right before its step, on the calling thread). The batch-preparing thread
/// owns the seeded stream and draws from it in the same order as the calling thread would
/// (each epoch's shuffle, then every batch's augmentations), so every `prefetch` gives
/// bit-identical results.
fn train_loop(
    model: &mut LocalModel,
    shard: &ImageDataset,
    cfg: &LocalTrainConfig,
    prox: &Proximal,
    seed: u64,
    progress: &mut dyn FnMut(usize, usize, f64),
    prefetch: usize,
) -> Result<TrainStats> {
    let start = Instant::now();
    if shard.is_empty() {
        bail!("cannot train on an empty shard");
    }
    if cfg.batch_size == 0 || cfg.local_epochs == 0 {
        bail!("batch_size and local_epochs must be positive");
    }
    let n = shard.len();
    let steps_per_epoch = n.div_ceil(cfg.batch_size);
    let total = steps_per_epoch * cfg.local_epochs;
    let mut opt = SgdMomentum::new(model.named_vars(), cfg.lr, cfg.momentum, cfg.weight_decay);
    let device = model.device.clone();
    let model_ref: &LocalModel = model;
    let task: &dyn PretextTask = model_ref.task.as_ref();
    // Every batch of the round in order, each epoch's shuffle first: the one place the
    // round's random stream is drawn from.
    let batches = {
        let device = device.clone();
        let (epochs, batch_size) = (cfg.local_epochs, cfg.batch_size);
        move |emit: &mut dyn FnMut(Result<(usize, PreparedBatch)>) -> bool| {
            let mut rng = StdRng::seed_from_u64(seed);
            for epoch in 0..epochs {
                let mut perm: Vec<usize> = (0..n).collect();
                perm.shuffle(&mut rng);
                for chunk in perm.chunks(batch_size) {
                    let batch = task.prepare(shard, chunk, &mut rng, &device);
                    let failed = batch.is_err();
                    if !emit(batch.map(|b| (epoch, b))) || failed {
                        return;
                    }
                }
            }
        }
    };
    let mut step = 0usize;
    let mut epoch_seen = usize::MAX;
    let (mut loss_sum, mut correct, mut seen) = (0.0f64, None::<usize>, 0usize);
    let mut run_step = |item: Result<(usize, PreparedBatch)>| -> Result<()> {
        let (epoch, batch) = item?;
        if epoch != epoch_seen {
            epoch_seen = epoch;
            (loss_sum, correct, seen) = (0.0, None, 0);
        }
        let k = step + 1;
        let (loss, ok, count) = on_device(&device, || -> Result<(f64, Option<usize>, usize)> {
            let out = task.step(&model_ref.backbone, batch)?;
            let grads = prox.add_to(&out.loss)?.backward()?;
            opt.step(&grads)?;
            task.after_step(&model_ref.backbone_vars, &model_ref.head_vars, k, total)?;
            let loss = out.loss.to_scalar::<f32>()? as f64;
            Ok((loss, out.correct, out.count))
        })?;
        if !loss.is_finite() {
            bail!("training diverged: loss is {loss} at step {}", step + 1);
        }
        step += 1;
        loss_sum += loss * count as f64;
        if let Some(ok) = ok {
            correct = Some(correct.unwrap_or(0) + ok);
        }
        seen += count;
        progress(step, total, loss_sum / seen.max(1) as f64);
        Ok(())
    };
    if prefetch == 0 {
        let mut result = Ok(());
        batches(&mut |item| {
            result = run_step(item);
            result.is_ok()
        });
        result?;
    } else {
        std::thread::scope(|scope| -> Result<()> {
            let (tx, rx) = std::sync::mpsc::sync_channel(prefetch);
            // The receiver hanging up (a failed step) stops the preparing thread.
            scope.spawn(move || batches(&mut |item| tx.send(item).is_ok()));
            for item in rx {
                run_step(item)?;
            }
            Ok(())
        })?;
    }
    if step != total {
        bail!("local training stopped after {step} of {total} steps");
    }
    Ok(TrainStats {
        loss: loss_sum / seen.max(1) as f64,
        accuracy: correct.map(|c| c as f64 / seen.max(1) as f64),
        samples: n,
        steps: step,
        seconds: start.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::synthetic;
    use crate::model::{Backbone, ModelConfig};
    use crate::pretext::{rotation_batch, PretextConfig, RotationMode, RotationTask, StepOutput};
    use crate::train::fixtures::{rotation, small};
    use crate::weights::WeightSet;
    use anyhow::Result;
    use candle_core::{DType, Device};
    use candle_nn::VarBuilder;

    fn model(cfg: &ModelConfig, seed: u64) -> LocalModel {
        LocalModel::new(cfg, &rotation(), seed, seed + 100, &Device::Cpu).unwrap()
    }

    fn cfg() -> LocalTrainConfig {
        LocalTrainConfig {
            local_epochs: 2,
            batch_size: 16,
            lr: 0.05,
            momentum: 0.9,
            weight_decay: 5e-4,
        }
    }

    /// The seed of the training stream in these tests.
    const SEED: u64 = 11;

    /// Loss on all images x 4 rotations, no optimiser step. BN in train mode (batch
    /// statistics): the untrained running statistics would make an eval-mode loss
    /// meaningless. This updates the running statistics, so both runs below do it equally.
    fn fixed_batch_loss(m: &LocalModel, ds: &ImageDataset) -> f64 {
        let idx: Vec<usize> = (0..ds.len()).collect();
        let mut rng = StdRng::seed_from_u64(0);
        let (x, y) =
            rotation_batch(ds, &idx, RotationMode::AllFour, false, &mut rng, &m.device).unwrap();
        // the same head the task trains, rebuilt from the head variables
        let vb = VarBuilder::from_varmap(&m.head_vars, DType::F32, &m.device);
        let task = RotationTask::new(
            &rotation().rotation,
            m.backbone.feature_dim(),
            vb.pp("head"),
        )
        .unwrap();
        let logits = task.logits(&m.backbone, &x, true).unwrap();
        candle_nn::loss::cross_entropy(&logits, &y)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap() as f64
    }

    #[test]
    fn an_empty_shard_is_an_error() {
        let ds = synthetic::generate(10, 4);
        assert!(train_local(
            &mut model(&ModelConfig::default(), 0),
            &ds.subset(&[]),
            &cfg(),
            0.0,
            SEED,
            &mut |_, _, _| {}
        )
        .is_err());
    }

    #[test]
    fn local_training_lowers_the_loss_and_is_deterministic() {
        let ds = synthetic::generate(64, 2);
        let mut m = model(&small(), 3);
        let before = fixed_batch_loss(&m, &ds);
        let stats0 = WeightSet::from_varmap(&m.backbone_vars).unwrap();
        let mut calls = vec![];
        let stats = train_local(&mut m, &ds, &cfg(), 0.0, SEED, &mut |s, t, l| {
            calls.push((s, t, l))
        })
        .unwrap();
        let after = fixed_batch_loss(&m, &ds);
        assert!(after < before, "loss before {before}, after {after}");
        assert_eq!(stats.steps, 8);
        assert_eq!(stats.samples, 64);
        assert!(stats.loss.is_finite() && (0.0..=1.0).contains(&stats.accuracy.unwrap()));
        assert_eq!(calls.len(), 8);
        assert_eq!(calls.last().unwrap().0, 8);
        assert!(calls.iter().all(|c| c.1 == 8));
        let w1 = WeightSet::from_varmap(&m.backbone_vars).unwrap();
        assert_ne!(
            stats0.tensors["stem.bn.running_mean"],
            w1.tensors["stem.bn.running_mean"]
        );
        assert_ne!(
            stats0.tensors["stages.1.0.conv1.weight"],
            w1.tensors["stages.1.0.conv1.weight"]
        );
        eprintln!("fixed-batch loss {before:.4} -> {after:.4}; last-epoch stats {stats:?}");

        // a second model from the same seeds trained the same way is bit-identical
        let mut m2 = model(&small(), 3);
        let before2 = fixed_batch_loss(&m2, &ds);
        assert_eq!(before, before2);
        let stats2 = train_local(&mut m2, &ds, &cfg(), 0.0, SEED, &mut |_, _, _| {}).unwrap();
        fixed_batch_loss(&m2, &ds);
        assert_eq!(stats.loss, stats2.loss);
        assert_eq!(
            WeightSet::from_varmap(&m2.backbone_vars).unwrap(),
            WeightSet::from_varmap(&m.backbone_vars).unwrap()
        );
        assert_eq!(
            WeightSet::from_varmap(&m2.head_vars).unwrap(),
            WeightSet::from_varmap(&m.head_vars).unwrap()
        );
    }

    /// ‖backbone − start‖² over the learnable (non-running-statistic) variables.
    fn drift(m: &LocalModel, start: &WeightSet) -> f64 {
        let now = WeightSet::from_varmap(&m.backbone_vars).unwrap();
        now.tensors
            .iter()
            .filter(|(k, _)| !k.contains("running_"))
            .map(|(k, t)| {
                t.data
                    .iter()
                    .zip(&start.tensors[k].data)
                    .map(|(a, b)| ((a - b) as f64).powi(2))
                    .sum::<f64>()
            })
            .sum()
    }

    #[test]
    fn the_proximal_term_keeps_the_backbone_near_its_start_and_mu_zero_changes_nothing() {
        let ds = synthetic::generate(48, 2);
        let run = |mu: f64| {
            let mut m = model(&small(), 5);
            let start = WeightSet::from_varmap(&m.backbone_vars).unwrap();
            let stats = train_local(&mut m, &ds, &cfg(), mu, SEED, &mut |_, _, _| {}).unwrap();
            let d = drift(&m, &start);
            (
                stats.loss,
                WeightSet::from_varmap(&m.backbone_vars).unwrap(),
                d,
            )
        };
        let plain = run(0.0);
        let strong = run(50.0);
        assert!(
            strong.2 < 0.5 * plain.2,
            "drift {} vs {}",
            strong.2,
            plain.2
        );
        // μ = 0 is training without the term, bit for bit
        let mut m = model(&small(), 5);
        let stats = train_loop(
            &mut m,
            &ds,
            &cfg(),
            &Proximal::none(),
            SEED,
            &mut |_, _, _| {},
            PREFETCH_BATCHES,
        )
        .unwrap();
        assert_eq!(stats.loss, plain.0);
        assert!(WeightSet::from_varmap(&m.backbone_vars).unwrap() == plain.1);
        let e = train_local(&mut m, &ds, &cfg(), -1.0, SEED, &mut |_, _, _| {}).unwrap_err();
        assert!(e.to_string().contains("μ"), "{e}");
    }

    #[test]
    fn prefetching_batches_gives_bit_identical_training() {
        // Two epochs (the shuffle of the second epoch comes after the first epoch's batches
        // in the stream), a last batch smaller than the others, and a task that draws
        // augmentations from the stream for every batch (rotation with random flips).
        let ds = synthetic::generate(37, 5);
        let pretext = PretextConfig::default();
        assert!(pretext.rotation.flip);
        let c = LocalTrainConfig {
            local_epochs: 2,
            batch_size: 8,
            ..cfg()
        };
        let run = |prefetch: usize| {
            let mut m = LocalModel::new(&small(), &pretext, 4, 104, &Device::Cpu).unwrap();
            let mut losses = vec![];
            let stats = train_loop(
                &mut m,
                &ds,
                &c,
                &Proximal::none(),
                SEED,
                &mut |_, _, l| losses.push(l),
                prefetch,
            )
            .unwrap();
            let w = WeightSet::from_varmap(&m.backbone_vars).unwrap();
            let h = WeightSet::from_varmap(&m.head_vars).unwrap();
            (stats.loss, stats.accuracy, stats.steps, losses, w, h)
        };
        let inline = run(0);
        assert_eq!(inline.2, 10);
        for prefetch in [1, PREFETCH_BATCHES, 5] {
            let ahead = run(prefetch);
            assert_eq!(inline.0, ahead.0, "prefetch {prefetch}: loss");
            assert_eq!(inline.1, ahead.1, "prefetch {prefetch}: accuracy");
            assert_eq!(inline.3, ahead.3, "prefetch {prefetch}: running losses");
            assert!(
                inline.4 == ahead.4,
                "prefetch {prefetch}: backbone weights differ"
            );
            assert!(
                inline.5 == ahead.5,
                "prefetch {prefetch}: head weights differ"
            );
        }
    }

    #[test]
    fn a_batch_that_cannot_be_prepared_stops_training_with_its_error() {
        // An index past the end of the shard fails in `prepare` on the preparing thread;
        // the error reaches the caller instead of a hang or a panic.
        struct Broken(Box<dyn PretextTask>);
        impl PretextTask for Broken {
            fn kind(&self) -> crate::pretext::PretextKind {
                self.0.kind()
            }
            fn prepare(
                &self,
                shard: &ImageDataset,
                idx: &[usize],
                rng: &mut StdRng,
                device: &Device,
            ) -> Result<PreparedBatch> {
                let bad: Vec<usize> = idx.iter().map(|i| i + 1000).collect();
                self.0.prepare(shard, &bad, rng, device)
            }
            fn step(&self, backbone: &Backbone, batch: PreparedBatch) -> Result<StepOutput> {
                self.0.step(backbone, batch)
            }
        }
        let ds = synthetic::generate(16, 1);
        for prefetch in [0, PREFETCH_BATCHES] {
            let mut m = model(&small(), 4);
            let inner = std::mem::replace(&mut m.task, Box::new(NoTask));
            m.task = Box::new(Broken(inner));
            let err = train_loop(
                &mut m,
                &ds,
                &cfg(),
                &Proximal::none(),
                SEED,
                &mut |_, _, _| {},
                prefetch,
            )
            .unwrap_err();
            let msg = format!("{err:#}");
            assert!(
                msg.contains("out of range (dataset has 16 images)"),
                "{prefetch}: {msg}"
            );
        }
    }

    /// A placeholder task for swapping a model's task out.
    struct NoTask;
    impl PretextTask for NoTask {
        fn kind(&self) -> crate::pretext::PretextKind {
            crate::pretext::PretextKind::Rotation
        }
        fn prepare(
            &self,
            _: &ImageDataset,
            _: &[usize],
            _: &mut StdRng,
            _: &Device,
        ) -> Result<PreparedBatch> {
            bail!("no task")
        }
        fn step(&self, _: &Backbone, _: PreparedBatch) -> Result<StepOutput> {
            bail!("no task")
        }
    }
}
