//! A client's state between rounds ([`ClientState`]) and the two moments it is used: before
//! training, merging the round's global weights with it ([`begin_round`]: FedBN's local
//! BatchNorm, FedEMA's moving average, FedU's predictor choice, BYOL's first target), and
//! after training, capturing it again ([`ClientState::capture`]) with the round's divergence
//! ([`divergence`]).
//!
//! The state is a [`WeightSet`] so that `simulate` can keep it in a file per client
//! (safetensors, written atomically) instead of one model per idle client in memory:
//! - `head.*`: every pretext head variable (the local heads, BYOL's target network);
//! - `local.<name>`: the backbone as the client's last round left it, only when
//!   `federation.batch_norm` or `federation.local_update` needs it;
//! - `meta.divergence`, `meta.lambda`: FedEMA's/FedU's scalars (1-element tensors, `f32`).
//!
//! The divergence, as in the FedSSL code of EasyFL (`_calculate_divergence`): the mean over
//! the backbone's convolution weights (variables named `*conv*.weight`; every learnable
//! variable with ≥ 2 dimensions for a backbone without convolutions) of the L2 distance
//! between the weights at the start of local training and at its end.

use anyhow::{bail, Context, Result};

use super::LocalModel;
use crate::config::{BatchNormPolicy, LocalUpdateConfig};
use crate::weights::{TensorData, WeightSet};

/// Prefix of the stored backbone tensors.
const LOCAL: &str = "local.";
/// The stored divergence.
const DIVERGENCE: &str = "meta.divergence";
/// FedEMA's λ, fixed at the client's first merge.
const LAMBDA: &str = "meta.lambda";

/// A client's state between rounds (see the module docs for its tensors).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClientState {
    /// The tensors, as laid out in the module docs.
    pub weights: WeightSet,
}

/// What [`begin_round`] did, for logs and tests.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Merge {
    /// FedEMA's μ this round (`None`: no moving average).
    pub mu: Option<f64>,
    /// FedU: whether the global predictor was taken (`None`: not FedU or no state yet).
    pub global_predictor: Option<bool>,
    /// BatchNorm tensors overwritten with the client's own.
    pub bn_kept: usize,
}

/// Whether a client with these settings needs its backbone in its state.
pub fn keeps_backbone(bn: BatchNormPolicy, update: &LocalUpdateConfig) -> bool {
    bn != BatchNormPolicy::Aggregate || !matches!(update, LocalUpdateConfig::Plain(_))
}

/// Whether backbone variable `name` is a BatchNorm tensor that `bn` keeps local, given the
/// backbone's names (a BatchNorm module `m` is one with an `m.running_mean`).
fn bn_local(name: &str, bn: BatchNormPolicy, names: &std::collections::BTreeSet<String>) -> bool {
    let Some((module, leaf)) = name.rsplit_once('.') else {
        return false;
    };
    if !names.contains(&format!("{module}.running_mean")) {
        return false;
    }
    match bn {
        BatchNormPolicy::Aggregate => false,
        BatchNormPolicy::Local => {
            matches!(leaf, "weight" | "bias" | "running_mean" | "running_var")
        }
        BatchNormPolicy::WeightsOnly => matches!(leaf, "running_mean" | "running_var"),
    }
}

impl ClientState {
    /// The state of `model` after its round: every head variable, the backbone when
    /// [`keeps_backbone`], and the scalars.
    pub fn capture(
        model: &LocalModel,
        keep_backbone: bool,
        divergence: Option<f64>,
        lambda: Option<f64>,
    ) -> Result<Self> {
        let mut weights = WeightSet::from_varmap(&model.head_vars)?;
        if keep_backbone {
            for (k, v) in WeightSet::from_varmap(&model.backbone_vars)?.tensors {
                weights.tensors.insert(format!("{LOCAL}{k}"), v);
            }
        }
        for (key, v) in [(DIVERGENCE, divergence), (LAMBDA, lambda)] {
            if let Some(v) = v {
                let data = vec![v as f32];
                weights.tensors.insert(
                    key.into(),
                    TensorData {
                        shape: vec![1],
                        data,
                    },
                );
            }
        }
        Ok(Self { weights })
    }

    /// A stored scalar.
    fn scalar(&self, key: &str) -> Option<f64> {
        self.weights
            .tensors
            .get(key)
            .and_then(|t| t.data.first())
            .map(|&v| v as f64)
    }

    /// The stored divergence of the client's last round.
    pub fn divergence(&self) -> Option<f64> {
        self.scalar(DIVERGENCE)
    }

    /// FedEMA's λ, once fixed.
    pub fn lambda(&self) -> Option<f64> {
        self.scalar(LAMBDA)
    }

    /// Writes the stored head variables into `model` (a model just rebuilt for a client read
    /// back from its file). All or nothing: errors, naming the tensor, when the stored heads
    /// do not fit the model's.
    pub fn restore_heads(&self, model: &LocalModel) -> Result<()> {
        let (heads, _) = self.weights.split_prefix("head.");
        heads
            .load_into_varmap(&model.head_vars)
            .context("the client's stored state does not fit its pretext heads")
    }

    /// The stored backbone tensor `name`.
    fn local(&self, name: &str) -> Result<&TensorData> {
        self.weights
            .tensors
            .get(&format!("{LOCAL}{name}"))
            .with_context(|| format!("the client's stored state lacks backbone tensor `{name}`"))
    }
}

/// Loads the round's `global` weights into `model` and merges them with the client's
/// `state` from its last round (`None`: its first round) under `bn` and `update`:
/// 1. the global weights are loaded ([`LocalModel::load_federated`]);
/// 2. BatchNorm tensors that `bn` keeps local take their stored values;
/// 3. FedEMA: every other learnable travelling tensor (backbone, travelling heads; not the
///    running statistics) becomes `μ·local + (1 − μ)·global`, μ = min(λ·d, 1), d the stored
///    divergence and λ the stored one, or τ/d fixed now (λ = 1 when d = 0);
///    FedU: the travelling `head.predictor.*` tensors take their stored (local) values
///    unless d < threshold;
/// 4. the task's [`crate::pretext::PretextTask::begin_round`] (BYOL's first target).
///
/// Returns what it did and FedEMA's λ to store. Errors when the weights do not fit or the
/// state lacks a tensor it needs.
pub fn begin_round(
    model: &LocalModel,
    global: &WeightSet,
    state: Option<&ClientState>,
    bn: BatchNormPolicy,
    update: &LocalUpdateConfig,
) -> Result<(Merge, Option<f64>)> {
    model
        .load_federated(global)
        .context("global weights do not fit this client's model")?;
    let mut merge = Merge::default();
    let mut lambda = None;
    if let Some(st) = state {
        let bvars = super::model::sorted_vars(&model.backbone_vars);
        let names: std::collections::BTreeSet<String> =
            bvars.iter().map(|(n, _)| n.clone()).collect();
        let mu = match update {
            LocalUpdateConfig::FedEma(c) => st.divergence().map(|d| {
                let l = st.lambda().unwrap_or(if d > 0.0 { c.tau / d } else { 1.0 });
                lambda = Some(l);
                (l * d).min(1.0)
            }),
            _ => None,
        };
        merge.mu = mu;
        for (name, var) in &bvars {
            let mixed = if bn_local(name, bn, &names) {
                merge.bn_kept += 1;
                Some(1.0)
            } else if is_running_stat(name) {
                None
            } else {
                mu
            };
            if let Some(m) = mixed {
                set_mix(var, st.local(name)?, m)?;
            }
        }
        let fedu_local = match update {
            LocalUpdateConfig::FedU(c) => st.divergence().map(|d| d >= c.threshold),
            _ => None,
        };
        merge.global_predictor = fedu_local.map(|l| !l);
        for (name, var) in super::model::sorted_vars(&model.head_vars) {
            if !model.head_travels(&name) || is_running_stat(&name) {
                continue;
            }
            let m = if fedu_local == Some(true) && name.starts_with("head.predictor.") {
                Some(1.0)
            } else {
                mu
            };
            if let Some(m) = m {
                let stored = st
                    .weights
                    .tensors
                    .get(&name)
                    .with_context(|| format!("the client's stored state lacks `{name}`"))?;
                set_mix(&var, stored, m)?;
            }
        }
    }
    model
        .task
        .begin_round(&model.backbone_vars, &model.head_vars, state.is_none())?;
    Ok((merge, lambda))
}

/// `var ← m·local + (1 − m)·var` (`m = 1`: the stored value exactly).
fn set_mix(var: &candle_core::Var, local: &TensorData, m: f64) -> Result<()> {
    if var.dims() != local.shape.as_slice() {
        bail!(
            "the client's stored tensor has shape {:?}, the model expects {:?}",
            local.shape,
            var.dims()
        );
    }
    let l = local.to_tensor(var.device())?.to_dtype(var.dtype())?;
    let next = if m >= 1.0 {
        l
    } else {
        (l.affine(m, 0.0)? + var.as_tensor().affine(1.0 - m, 0.0)?)?
    };
    var.set(&next)?;
    Ok(())
}

/// A BatchNorm running statistic (no gradient; never mixed by FedEMA).
fn is_running_stat(name: &str) -> bool {
    name.ends_with(".running_mean") || name.ends_with(".running_var")
}

/// The divergence between backbone weights `start` and `end` (see the module docs): the
/// mean over the convolution weights of ‖end − start‖₂. Errors when the two layouts differ
/// or there is no tensor to measure.
pub fn divergence(start: &WeightSet, end: &WeightSet) -> Result<f64> {
    end.check_same_layout(start)?;
    let conv: Vec<&String> = start
        .tensors
        .keys()
        .filter(|k| k.contains("conv") && k.ends_with(".weight"))
        .collect();
    let chosen: Vec<&String> = if conv.is_empty() {
        start
            .tensors
            .iter()
            .filter(|(k, t)| t.shape.len() >= 2 && !is_running_stat(k))
            .map(|(k, _)| k)
            .collect()
    } else {
        conv
    };
    if chosen.is_empty() {
        bail!("no backbone weights to measure the divergence on");
    }
    let mut total = 0.0f64;
    for k in &chosen {
        let (a, b) = (&start.tensors[*k].data, &end.tensors[*k].data);
        let sq: f64 = a.iter().zip(b).map(|(x, y)| ((y - x) as f64).powi(2)).sum();
        total += sq.sqrt();
    }
    Ok(total / chosen.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{FedEmaConfig, FedUConfig};
    use crate::train::fixtures::{rotation, small};
    use candle_core::Device;

    fn model() -> LocalModel {
        LocalModel::new(&small(), &rotation(), 1, 2, &Device::Cpu).unwrap()
    }

    fn shifted(w: &WeightSet, by: f32) -> WeightSet {
        let mut o = w.clone();
        for t in o.tensors.values_mut() {
            t.data.iter_mut().for_each(|v| *v += by);
        }
        o
    }

    #[test]
    fn divergence_is_the_mean_conv_distance() {
        let mut a = WeightSet::default();
        a.tensors.insert(
            "x.conv.weight".into(),
            TensorData {
                shape: vec![2],
                data: vec![0.0, 0.0],
            },
        );
        a.tensors.insert(
            "y.conv2.weight".into(),
            TensorData {
                shape: vec![1],
                data: vec![1.0],
            },
        );
        a.tensors.insert(
            "y.bn.weight".into(),
            TensorData {
                shape: vec![1],
                data: vec![0.0],
            },
        );
        let mut b = a.clone();
        b.tensors.get_mut("x.conv.weight").unwrap().data = vec![3.0, 4.0]; // 5
        b.tensors.get_mut("y.conv2.weight").unwrap().data = vec![2.0]; // 1
        b.tensors.get_mut("y.bn.weight").unwrap().data = vec![100.0]; // not a conv
        assert!((divergence(&a, &b).unwrap() - 3.0).abs() < 1e-12);
    }

    #[test]
    fn fedbn_keeps_the_clients_bn_tensors_across_rounds() {
        let m = model();
        let own = WeightSet::from_varmap(&m.backbone_vars).unwrap();
        let st = ClientState::capture(&m, true, None, None).unwrap();
        let global = shifted(&own, 1.0);
        for (bn, kept) in [
            (
                BatchNormPolicy::Local,
                vec!["weight", "bias", "running_mean", "running_var"],
            ),
            (
                BatchNormPolicy::WeightsOnly,
                vec!["running_mean", "running_var"],
            ),
            (BatchNormPolicy::Aggregate, vec![]),
        ] {
            let (merge, _) =
                begin_round(&m, &global, Some(&st), bn, &LocalUpdateConfig::default()).unwrap();
            let now = WeightSet::from_varmap(&m.backbone_vars).unwrap();
            for leaf in ["weight", "bias", "running_mean", "running_var"] {
                let name = format!("stem.bn.{leaf}");
                let want = if kept.contains(&leaf) { &own } else { &global };
                assert_eq!(now.tensors[&name], want.tensors[&name], "{bn:?} {name}");
            }
            assert_eq!(
                now.tensors["stem.conv.weight"],
                global.tensors["stem.conv.weight"]
            );
            assert_eq!(merge.bn_kept > 0, !kept.is_empty());
        }
        // the first round (no state) trains from the global BN
        begin_round(
            &m,
            &global,
            None,
            BatchNormPolicy::Local,
            &LocalUpdateConfig::default(),
        )
        .unwrap();
        assert_eq!(WeightSet::from_varmap(&m.backbone_vars).unwrap(), global);
    }

    #[test]
    fn fedema_mu_on_a_hand_example() {
        let m = model();
        let own = WeightSet::from_varmap(&m.backbone_vars).unwrap();
        let update = LocalUpdateConfig::FedEma(FedEmaConfig { tau: 0.7 });
        let global = shifted(&own, 1.0);
        // first merge: d = 2, λ = τ/d = 0.35, μ = min(0.35·2, 1) = 0.7
        let st = ClientState::capture(&m, true, Some(2.0), None).unwrap();
        let (merge, lambda) =
            begin_round(&m, &global, Some(&st), BatchNormPolicy::Aggregate, &update).unwrap();
        assert!((merge.mu.unwrap() - 0.7).abs() < 1e-6);
        assert!((lambda.unwrap() - 0.35).abs() < 1e-6);
        let now = WeightSet::from_varmap(&m.backbone_vars).unwrap();
        let (w, l) = (
            &now.tensors["stem.conv.weight"].data,
            &own.tensors["stem.conv.weight"].data,
        );
        for (a, b) in w.iter().zip(l) {
            // 0.7·local + 0.3·(local + 1) = local + 0.3
            assert!((a - (b + 0.3)).abs() < 1e-5, "{a} {b}");
        }
        // running statistics come from the global model
        assert_eq!(
            now.tensors["stem.bn.running_mean"],
            global.tensors["stem.bn.running_mean"]
        );
        // later: λ stays 0.35; d = 4 gives μ = min(1.4, 1) = 1 (the client keeps its own)
        m.load_federated(&own).unwrap();
        let st = ClientState::capture(&m, true, Some(4.0), Some(0.35)).unwrap();
        let (merge, _) =
            begin_round(&m, &global, Some(&st), BatchNormPolicy::Aggregate, &update).unwrap();
        assert!((merge.mu.unwrap() - 1.0).abs() < 1e-6);
        let now = WeightSet::from_varmap(&m.backbone_vars).unwrap();
        assert_eq!(
            now.tensors["stem.conv.weight"],
            own.tensors["stem.conv.weight"]
        );
    }

    #[test]
    fn fedu_takes_the_global_predictor_only_under_the_threshold() {
        let p = crate::train::fixtures::byol();
        let m = LocalModel::new(&small(), &p, 1, 2, &Device::Cpu).unwrap();
        let own = m.federated_weights().unwrap();
        let global = shifted(&own, 1.0);
        let update = LocalUpdateConfig::FedU(FedUConfig { threshold: 0.5 });
        let key = "head.predictor.fc1.weight";
        for (d, takes_global) in [(0.2, true), (0.5, false), (3.0, false)] {
            m.load_federated(&own).unwrap();
            let st = ClientState::capture(&m, true, Some(d), None).unwrap();
            let (merge, _) =
                begin_round(&m, &global, Some(&st), BatchNormPolicy::Aggregate, &update).unwrap();
            assert_eq!(merge.global_predictor, Some(takes_global), "d = {d}");
            let now = m.federated_weights().unwrap();
            let want = if takes_global { &global } else { &own };
            assert_eq!(now.tensors[key], want.tensors[key], "d = {d}");
            // the encoder (backbone, projector) is always the global one
            assert_eq!(
                now.tensors["head.projector.fc1.weight"],
                global.tensors["head.projector.fc1.weight"]
            );
            assert_eq!(
                now.tensors["stem.conv.weight"],
                global.tensors["stem.conv.weight"]
            );
        }
    }

    #[test]
    fn state_round_trips_through_a_file() {
        let m = model();
        let st = ClientState::capture(&m, true, Some(1.5), Some(0.25)).unwrap();
        let dir = std::env::temp_dir().join(format!("fedssl-state-{}", std::process::id()));
        let path = dir.join("3.safetensors");
        st.weights.save(&path).unwrap();
        let back = ClientState {
            weights: WeightSet::load(&path).unwrap(),
        };
        assert_eq!(back, st);
        assert_eq!((back.divergence(), back.lambda()), (Some(1.5), Some(0.25)));
        let fresh = LocalModel::new(&small(), &rotation(), 1, 9, &Device::Cpu).unwrap();
        back.restore_heads(&fresh).unwrap();
        assert_eq!(
            WeightSet::from_varmap(&fresh.head_vars).unwrap(),
            WeightSet::from_varmap(&m.head_vars).unwrap()
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}
