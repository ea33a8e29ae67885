//! BYOL (Grill, Strub, Altché, Tallec, Richemond et al., "Bootstrap Your Own Latent", NeurIPS
//! 2020): an online network (backbone `f_θ`, projector `g_θ`, predictor `q_θ`) predicts the
//! projection of another augmented view of the same image by a target network (`f_ξ`, `g_ξ`),
//! the exponential moving average of the online backbone and projector; no negatives.
//!
//! - Views: as SimCLR's ([`crate::pretext::simclr::simclr_batch`]: random resized crop, flip,
//!   colour jitter, grayscale; no blur at 32×32).
//! - Loss (the paper's eq. 2 and its symmetrisation): with `q = q_θ(g_θ(f_θ(v)))` and
//!   `z' = g_ξ(f_ξ(v'))`, `L = mean_i (2 − 2·cos(q₁ᵢ, sg(z'₂ᵢ))) + mean_i (2 − 2·cos(q₂ᵢ, sg(z'₁ᵢ)))`
//!   ([`byol_loss`]), in [0, 8].
//! - Target: after every optimiser step `ξ ← τ_k·ξ + (1 − τ_k)·θ` over every tensor of the
//!   backbone and projector (BatchNorm running statistics included), with
//!   `τ_k = 1 − (1 − τ_base)·(cos(πk/K) + 1)/2`, `k` the step of the round (from 1) and `K`
//!   the round's steps: the schedule runs over each local round (a client does not know
//!   the run's total steps). In the client's first round the target starts as a copy of the
//!   online network ([`PretextTask::begin_round`]); after that it is the client's own state
//!   and never travels (as in EasyFL's FedSSL code, where the target encoder stays local).
//! - Heads (all `head.*`): `head.projector.{fc1, bn, fc2}` and `head.predictor.{fc1, bn, fc2}`
//!   (Linear → BatchNorm → ReLU → Linear, as the paper's MLPs), the target backbone
//!   `head.target.<backbone names>` and projector `head.target_projector.*`. Which travel is
//!   `pretext.byol.travel` ([`ByolTravel`]).

use anyhow::{bail, Result};
use candle_core::{Device, Tensor, D};
use candle_nn::{BatchNorm, BatchNormConfig, Linear, Module, ModuleT, VarBuilder, VarMap};
use rand::rngs::StdRng;

use super::simclr::simclr_batch;
use super::{PreparedBatch, PretextKind, PretextTask, StepOutput};
use crate::augment::{validate_ranges, Pipeline};
use crate::data::ImageDataset;
use crate::model::{Backbone, BackboneKind, ModelConfig, ResNet, Vgg, Vit};

/// `pretext.byol.travel`: which of BYOL's online heads travel with the backbone (the target
/// network never does).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ByolTravel {
    /// The backbone alone; projector and predictor stay local.
    Backbone,
    /// Backbone and projector (the "online encoder" of FedU/FedEMA); predictor local.
    Projector,
    /// Backbone, projector and predictor (default; what FedU and FedEMA aggregate).
    #[default]
    Online,
}

/// `[pretext.byol]`: views, heads, target schedule and what travels.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ByolConfig {
    /// Hidden width of the projector and predictor MLPs (default 512; the paper: 4096).
    pub hidden_dim: usize,
    /// Output width of the projector and predictor (default 128; the paper: 256).
    pub out_dim: usize,
    /// τ_base of the target's EMA schedule (default 0.99, EasyFL's FedSSL value; the paper:
    /// 0.996 over 1,000 epochs).
    pub tau_base: f64,
    /// Which online heads travel (default `"online"`).
    pub travel: ByolTravel,
    /// Crop area fraction range (default `[0.2, 1.0]`).
    pub crop_scale: [f64; 2],
    /// Crop aspect-ratio range (default `[0.75, 1.3333]`).
    pub crop_ratio: [f64; 2],
    /// Random horizontal flip (default `true`).
    pub flip: bool,
    /// Colour-jitter strength (default 0.5).
    pub jitter_strength: f64,
    /// Probability of the colour jitter (default 0.8).
    pub jitter_prob: f64,
    /// Probability of grayscale (default 0.2).
    pub grayscale_prob: f64,
}

impl Default for ByolConfig {
    fn default() -> Self {
        Self {
            hidden_dim: 512,
            out_dim: 128,
            tau_base: 0.99,
            travel: ByolTravel::Online,
            crop_scale: [0.2, 1.0],
            crop_ratio: [0.75, 4.0 / 3.0],
            flip: true,
            jitter_strength: 0.5,
            jitter_prob: 0.8,
            grayscale_prob: 0.2,
        }
    }
}

impl ByolConfig {
    /// Checks every parameter; the message names the `pretext.byol.*` key.
    pub fn validate(&self) -> Result<()> {
        if !(self.tau_base.is_finite() && (0.0..=1.0).contains(&self.tau_base)) {
            bail!(
                "pretext.byol.tau_base must be in [0, 1], got {}",
                self.tau_base
            );
        }
        if self.hidden_dim == 0 || self.out_dim == 0 {
            bail!("pretext.byol.hidden_dim and pretext.byol.out_dim must be positive");
        }
        validate_ranges(
            "pretext.byol",
            (self.crop_scale[0], self.crop_scale[1]),
            (self.crop_ratio[0], self.crop_ratio[1]),
            self.jitter_strength,
            &[
                ("jitter_prob", self.jitter_prob),
                ("grayscale_prob", self.grayscale_prob),
            ],
        )
    }

    /// The augmentation pipeline of one view.
    pub fn pipeline(&self) -> Pipeline {
        Pipeline {
            crop_scale: (self.crop_scale[0], self.crop_scale[1]),
            crop_ratio: (self.crop_ratio[0], self.crop_ratio[1]),
            flip: self.flip,
            max_rotation_degrees: 0.0,
            jitter_strength: self.jitter_strength as f32,
            jitter_prob: self.jitter_prob,
            grayscale_prob: self.grayscale_prob,
        }
    }

    /// τ_k = 1 − (1 − τ_base)·(cos(πk/K) + 1)/2 for step `k` of `total` (K).
    pub fn tau(&self, k: usize, total: usize) -> f64 {
        let frac = k as f64 / total.max(1) as f64;
        1.0 - (1.0 - self.tau_base) * ((std::f64::consts::PI * frac).cos() + 1.0) / 2.0
    }
}

/// Linear → BatchNorm → ReLU → Linear: `(B, in)` → `(B, out)`.
struct Mlp {
    fc1: Linear,
    bn: BatchNorm,
    fc2: Linear,
}

impl Mlp {
    fn new(input: usize, hidden: usize, out: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            fc1: candle_nn::linear(input, hidden, vb.pp("fc1"))?,
            bn: candle_nn::batch_norm(hidden, BatchNormConfig::default(), vb.pp("bn"))?,
            fc2: candle_nn::linear(hidden, out, vb.pp("fc2"))?,
        })
    }

    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let h = self.bn.forward_t(&self.fc1.forward(x)?, train)?.relu()?;
        Ok(self.fc2.forward(&h)?)
    }
}

/// BYOL with its online heads and its target network (see the module docs for the names).
pub struct ByolTask {
    cfg: ByolConfig,
    projector: Mlp,
    predictor: Mlp,
    target: Backbone,
    target_projector: Mlp,
}

/// The prefix of the target backbone's variables among the heads.
const TARGET: &str = "head.target.";
/// The prefixes of the online and target projectors.
const PROJECTOR: &str = "head.projector.";
const TARGET_PROJECTOR: &str = "head.target_projector.";

impl ByolTask {
    /// Creates the heads and the target network (a second backbone of layout `model`) under
    /// `vb` (`head`), for `feature_dim`-wide pre-logits. Errors on an invalid config.
    pub fn new(
        cfg: &ByolConfig,
        model: &ModelConfig,
        feature_dim: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        cfg.validate()?;
        let (h, o) = (cfg.hidden_dim, cfg.out_dim);
        let tvb = vb.pp("target");
        let target = match model.backbone {
            BackboneKind::Resnet => Backbone::ResNet(ResNet::new(&model.resnet, tvb)?),
            BackboneKind::VggBn => Backbone::Vgg(Vgg::new(&model.vgg, tvb)?),
            BackboneKind::Vit => Backbone::Vit(Vit::new(&model.vit, tvb)?),
        };
        Ok(Self {
            cfg: cfg.clone(),
            projector: Mlp::new(feature_dim, h, o, vb.pp("projector"))?,
            predictor: Mlp::new(o, h, o, vb.pp("predictor"))?,
            target,
            target_projector: Mlp::new(feature_dim, h, o, vb.pp("target_projector"))?,
        })
    }

    /// Every (online variable, its target variable) pair: each backbone variable `n` with
    /// `head.target.n`, each `head.projector.x` with `head.target_projector.x`. Errors when
    /// a target variable is missing (heads of another task).
    fn pairs(
        backbone_vars: &VarMap,
        head_vars: &VarMap,
    ) -> Result<Vec<(candle_core::Var, candle_core::Var)>> {
        let b = backbone_vars
            .data()
            .lock()
            .map_err(|_| anyhow::anyhow!("VarMap lock poisoned"))?;
        let h = head_vars
            .data()
            .lock()
            .map_err(|_| anyhow::anyhow!("VarMap lock poisoned"))?;
        let mut out = Vec::new();
        let mut find = |online: &candle_core::Var, name: String| -> Result<()> {
            match h.get(&name) {
                Some(t) => {
                    out.push((online.clone(), t.clone()));
                    Ok(())
                }
                None => bail!("BYOL's target network lacks `{name}`"),
            }
        };
        for (name, var) in b.iter() {
            find(var, format!("{TARGET}{name}"))?;
        }
        for (name, var) in h.iter() {
            if let Some(rest) = name.strip_prefix(PROJECTOR) {
                find(var, format!("{TARGET_PROJECTOR}{rest}"))?;
            }
        }
        Ok(out)
    }
}

impl PretextTask for ByolTask {
    fn kind(&self) -> PretextKind {
        PretextKind::Byol
    }

    fn travelling_heads(&self) -> Option<Vec<&'static str>> {
        Some(match self.cfg.travel {
            ByolTravel::Backbone => vec![],
            ByolTravel::Projector => vec![PROJECTOR],
            ByolTravel::Online => vec![PROJECTOR, "head.predictor."],
        })
    }

    fn prepare(
        &self,
        shard: &ImageDataset,
        idx: &[usize],
        rng: &mut StdRng,
        device: &Device,
    ) -> Result<PreparedBatch> {
        let x = simclr_batch(shard, idx, &self.cfg.pipeline(), rng, device)?;
        Ok(PreparedBatch::new(x))
    }

    /// [`byol_loss`] of the two views; `count` = N images, no accuracy.
    fn step(&self, backbone: &Backbone, batch: PreparedBatch) -> Result<StepOutput> {
        let x: Tensor = batch.take(self.kind())?;
        let n = x.dim(0)? / 2;
        let q = self.predictor.forward(
            &self
                .projector
                .forward(&backbone.forward_t(&x, true)?.pre_logits, true)?,
            true,
        )?;
        let z = self
            .target_projector
            .forward(&self.target.forward_t(&x, true)?.pre_logits, true)?
            .detach();
        let loss = byol_loss(
            &q.narrow(0, 0, n)?,
            &q.narrow(0, n, n)?,
            &z.narrow(0, 0, n)?,
            &z.narrow(0, n, n)?,
        )?;
        Ok(StepOutput {
            loss,
            correct: None,
            count: n,
        })
    }

    /// In the client's first round, the target becomes a copy of the online network.
    fn begin_round(&self, backbone_vars: &VarMap, head_vars: &VarMap, first: bool) -> Result<()> {
        if first {
            for (online, target) in Self::pairs(backbone_vars, head_vars)? {
                target.set(&online.as_tensor().detach().copy()?)?;
            }
        }
        Ok(())
    }

    /// `ξ ← τ_k·ξ + (1 − τ_k)·θ` ([`ByolConfig::tau`]).
    fn after_step(
        &self,
        backbone_vars: &VarMap,
        head_vars: &VarMap,
        step: usize,
        total: usize,
    ) -> Result<()> {
        let tau = self.cfg.tau(step, total);
        for (online, target) in Self::pairs(backbone_vars, head_vars)? {
            let next = (target.as_tensor().affine(tau, 0.0)?
                + online.as_tensor().detach().affine(1.0 - tau, 0.0)?)?;
            target.set(&next)?;
        }
        Ok(())
    }
}

/// BYOL's symmetrised loss: `mean_i (2 − 2·cos(q1ᵢ, z2ᵢ)) + mean_i (2 − 2·cos(q2ᵢ, z1ᵢ))`
/// for predictions `q1`, `q2` and target projections `z1`, `z2` (the caller detaches them),
/// all `(N, d)`; a 0-d tensor in [0, 8]. Rows are L2-normalised with ε = 1e-12.
pub fn byol_loss(q1: &Tensor, q2: &Tensor, z1: &Tensor, z2: &Tensor) -> Result<Tensor> {
    let term = |q: &Tensor, z: &Tensor| -> Result<Tensor> {
        let cos = (normalise(q)? * normalise(z)?)?.sum(D::Minus1)?;
        Ok(cos.affine(-2.0, 2.0)?.mean_all()?)
    };
    Ok((term(q1, z2)? + term(q2, z1)?)?)
}

/// Rows of `x` `(N, d)` divided by their L2 norm (at least 1e-12).
fn normalise(x: &Tensor) -> Result<Tensor> {
    let norm = x
        .sqr()?
        .sum_keepdim(D::Minus1)?
        .sqrt()?
        .clamp(1e-12f32, f32::MAX)?;
    Ok(x.broadcast_div(&norm)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::WeightSet;
    use candle_core::DType;

    fn t(rows: &[[f32; 2]]) -> Tensor {
        Tensor::from_vec(rows.concat(), (rows.len(), 2), &Device::Cpu).unwrap()
    }

    #[test]
    fn loss_is_known_on_hand_tensors() {
        // q1 ∥ z2 (cos 1, term 0); q2 ⟂ z1 (cos 0, term 2) and q2 = −z1 (cos −1, term 4)
        let q1 = t(&[[1.0, 0.0], [0.0, 3.0]]);
        let z2 = t(&[[2.0, 0.0], [0.0, 0.5]]);
        let q2 = t(&[[1.0, 0.0], [0.0, -1.0]]);
        let z1 = t(&[[0.0, 1.0], [0.0, 2.0]]);
        let l = byol_loss(&q1, &q2, &z1, &z2).unwrap();
        let v = l.to_scalar::<f32>().unwrap();
        // first term: mean(0, 0) = 0; second: mean(2, 4) = 3
        assert!((v - 3.0).abs() < 1e-6, "{v}");
        // cos(45°) = 1/√2: 2 − √2 in each term
        let a = t(&[[1.0, 1.0]]);
        let b = t(&[[1.0, 0.0]]);
        let v = byol_loss(&a, &a, &b, &b)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!((v - 2.0 * (2.0 - 2f32.sqrt())).abs() < 1e-6, "{v}");
    }

    #[test]
    fn tau_schedule_matches_the_formula() {
        let c = ByolConfig {
            tau_base: 0.9,
            ..ByolConfig::default()
        };
        assert!((c.tau(0, 10) - 0.9).abs() < 1e-12);
        assert!((c.tau(5, 10) - 0.95).abs() < 1e-12);
        assert!((c.tau(10, 10) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn target_starts_as_the_online_network_and_is_its_ema_after_a_step() {
        let p = crate::train::fixtures::byol();
        let m =
            crate::train::LocalModel::new(&crate::train::fixtures::small(), &p, 1, 2, &Device::Cpu)
                .unwrap();
        let online =
            |m: &crate::train::LocalModel| WeightSet::from_varmap(&m.backbone_vars).unwrap();
        let heads = |m: &crate::train::LocalModel| WeightSet::from_varmap(&m.head_vars).unwrap();
        let name = "stem.conv.weight";
        let target_name = format!("{TARGET}{name}");
        // before: the target is initialised independently
        assert_ne!(heads(&m).tensors[&target_name], online(&m).tensors[name]);
        m.task
            .begin_round(&m.backbone_vars, &m.head_vars, true)
            .unwrap();
        let h = heads(&m);
        assert_eq!(h.tensors[&target_name], online(&m).tensors[name]);
        assert_eq!(
            h.tensors["head.target_projector.fc1.weight"],
            h.tensors["head.projector.fc1.weight"]
        );
        // a later round keeps the target as it is
        let before = online(&m).tensors[name].clone();
        {
            let data = m.backbone_vars.data().lock().unwrap();
            let v = &data[name];
            v.set(&v.as_tensor().affine(1.0, 0.5).unwrap()).unwrap();
        }
        m.task
            .begin_round(&m.backbone_vars, &m.head_vars, false)
            .unwrap();
        assert_eq!(heads(&m).tensors[&target_name], before);
        // one EMA step at k = 5 of K = 10: τ = 0.95, target = 0.95·old + 0.05·(old + 0.5)
        m.task
            .after_step(&m.backbone_vars, &m.head_vars, 5, 10)
            .unwrap();
        let after = &heads(&m).tensors[&target_name];
        for (a, b) in after.data.iter().zip(&before.data) {
            assert!((a - (b + 0.025)).abs() < 1e-6, "{a} vs {b}");
        }
        // which heads travel: projector and predictor, never the target
        let w = m.federated_weights().unwrap();
        assert!(w.tensors.contains_key("head.projector.fc1.weight"));
        assert!(w.tensors.contains_key("head.predictor.fc2.bias"));
        assert!(w.tensors.keys().all(|k| !k.starts_with("head.target")));
        let _ = DType::F32;
    }

    #[test]
    fn share_heads_is_refused_and_one_training_step_runs() {
        let mut p = crate::train::fixtures::byol();
        p.share_heads = true;
        let e =
            crate::train::LocalModel::new(&crate::train::fixtures::small(), &p, 1, 2, &Device::Cpu)
                .err()
                .unwrap()
                .to_string();
        assert!(e.contains("pretext.byol.travel"), "{e}");
        p.share_heads = false;
        p.byol.hidden_dim = 16;
        p.byol.travel = ByolTravel::Backbone;
        let mut m =
            crate::train::LocalModel::new(&crate::train::fixtures::small(), &p, 1, 2, &Device::Cpu)
                .unwrap();
        assert!(m
            .federated_weights()
            .unwrap()
            .tensors
            .keys()
            .all(|k| !k.starts_with("head.")));
        let ds = crate::data::synthetic::generate(8, 2);
        let cfg = crate::train::LocalTrainConfig {
            batch_size: 8,
            ..Default::default()
        };
        let s = crate::train::train_local(&mut m, &ds, &cfg, 0.0, 3, &mut |_, _, _| {}).unwrap();
        assert!(
            s.loss.is_finite() && (0.0..=8.0).contains(&s.loss),
            "{}",
            s.loss
        );
        assert_eq!(s.accuracy, None);
    }
}
