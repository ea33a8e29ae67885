//! A client's persistent local state: the federated backbone, the pretext task with its
//! heads, and the weights that travel to and from the coordinator.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Var};
use candle_nn::{VarBuilder, VarMap};

use crate::model::{build_backbone, seeded_init, Backbone, ModelConfig};
use crate::pretext::{build_task, PretextConfig, PretextTask};
use crate::weights::WeightSet;

/// A client's persistent local state: the backbone (federated), and the pretext task with
/// its heads (`head.*` variables, local unless `pretext.share_heads`).
pub struct LocalModel {
    /// The backbone.
    pub backbone: Backbone,
    /// The backbone's variables, including BatchNorm running statistics.
    pub backbone_vars: VarMap,
    /// The pretext task and its heads.
    pub task: Box<dyn PretextTask>,
    /// The heads' variables, all named `head.*`.
    pub head_vars: VarMap,
    /// Whether the heads travel with the backbone (`pretext.share_heads`).
    pub share_heads: bool,
    /// The `head.*` name prefixes that travel with the backbone: the task's own choice
    /// ([`PretextTask::travelling_heads`], e.g. BYOL's `pretext.byol.travel`), else every
    /// head (`"head."`) when `share_heads`, else none.
    pub head_prefixes: Vec<String>,
    /// Where the variables live.
    pub device: Device,
}

impl LocalModel {
    /// A backbone from [`build_backbone`]`(model, backbone_seed)` and the task's heads
    /// initialised by [`seeded_init`] from `seed::derive(head_seed, seed::ROTATION_HEAD, 0)`.
    /// Errors on an invalid config.
    pub fn new(
        model: &ModelConfig,
        pretext: &PretextConfig,
        backbone_seed: u64,
        head_seed: u64,
        device: &Device,
    ) -> Result<Self> {
        let (backbone, backbone_vars) = build_backbone(model, backbone_seed, device)?;
        let head_vars = VarMap::new();
        let vb = VarBuilder::from_varmap(&head_vars, DType::F32, device);
        let task = build_task(pretext, model, &backbone, vb)?;
        seeded_init(
            &head_vars,
            crate::seed::derive(head_seed, crate::seed::ROTATION_HEAD, 0),
        )?;
        let head_prefixes = match task.travelling_heads() {
            Some(p) => p.iter().map(|s| s.to_string()).collect(),
            None if pretext.share_heads => vec!["head.".to_string()],
            None => Vec::new(),
        };
        Ok(Self {
            backbone,
            backbone_vars,
            task,
            head_vars,
            share_heads: pretext.share_heads,
            head_prefixes,
            device: device.clone(),
        })
    }

    /// Every trainable variable, backbone then heads, names sorted within each.
    pub fn named_vars(&self) -> Vec<(String, Var)> {
        let mut out = sorted_vars(&self.backbone_vars);
        out.extend(sorted_vars(&self.head_vars));
        out
    }

    /// The backbone's variables (BatchNorm running statistics included), names sorted.
    pub fn backbone_named_vars(&self) -> Vec<(String, Var)> {
        sorted_vars(&self.backbone_vars)
    }

    /// Whether the head variable `name` travels ([`Self::head_prefixes`]).
    pub fn head_travels(&self, name: &str) -> bool {
        self.head_prefixes
            .iter()
            .any(|p| name.starts_with(p.as_str()))
    }

    /// The head variables that travel, as weights.
    fn travelling_head_weights(&self) -> Result<WeightSet> {
        let mut all = WeightSet::from_varmap(&self.head_vars)?;
        all.tensors.retain(|k, _| self.head_travels(k));
        Ok(all)
    }

    /// The weights that travel to the coordinator: the backbone, plus the travelling
    /// `head.*` variables ([`Self::head_prefixes`]).
    pub fn federated_weights(&self) -> Result<WeightSet> {
        let mut w = WeightSet::from_varmap(&self.backbone_vars)?;
        if !self.head_prefixes.is_empty() {
            w.tensors.extend(self.travelling_head_weights()?.tensors);
        }
        Ok(w)
    }

    /// Loads global weights as [`Self::federated_weights`] lays them out. All or nothing:
    /// errors (changing nothing) if a name is missing, unexpected or mis-shaped.
    pub fn load_federated(&self, global: &WeightSet) -> Result<()> {
        let (heads, backbone) = global.split_prefix("head.");
        if !self.head_prefixes.is_empty() {
            // check both before writing either
            backbone.check_fits_varmap(&self.backbone_vars)?;
            heads
                .check_same_layout(&self.travelling_head_weights()?)
                .context("the shared pretext heads do not fit")?;
            for (name, var) in sorted_vars(&self.head_vars) {
                if let Some(t) = heads.tensors.get(&name) {
                    var.set(&t.to_tensor(var.device())?.to_dtype(var.dtype())?)?;
                }
            }
        } else if !heads.tensors.is_empty() {
            bail!(
                "the global weights carry pretext heads (`head.*`) but pretext.share_heads is false"
            );
        }
        backbone.load_into_varmap(&self.backbone_vars)
    }
}

/// The variables of `vm`, names sorted.
pub(crate) fn sorted_vars(vm: &VarMap) -> Vec<(String, Var)> {
    let data = vm.data().lock().expect("VarMap lock poisoned");
    let mut v: Vec<(String, Var)> = data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::fixtures::{rotation, small};

    fn model(cfg: &ModelConfig, seed: u64) -> LocalModel {
        LocalModel::new(cfg, &rotation(), seed, seed + 100, &Device::Cpu).unwrap()
    }

    #[test]
    fn heads_travel_only_when_shared_and_loading_is_all_or_nothing() {
        let dev = Device::Cpu;
        let local = model(&small(), 1);
        let w = local.federated_weights().unwrap();
        assert!(w.tensors.keys().all(|k| !k.starts_with("head.")));
        assert_eq!(w, WeightSet::from_varmap(&local.backbone_vars).unwrap());

        let mut p = rotation();
        p.share_heads = true;
        let shared = LocalModel::new(&small(), &p, 2, 3, &dev).unwrap();
        let ws = shared.federated_weights().unwrap();
        assert_eq!(ws.tensors["head.weight"].shape, vec![4, 16]);
        assert_eq!(ws.tensors["head.bias"].shape, vec![4]);
        assert_eq!(ws.tensors.len(), w.tensors.len() + 2);
        // the shared model takes the other's weights, heads included
        let other = LocalModel::new(&small(), &p, 5, 6, &dev).unwrap();
        other.load_federated(&ws).unwrap();
        assert_eq!(other.federated_weights().unwrap(), ws);
        // heads offered to a model that keeps them local: refused, nothing written
        let before = local.federated_weights().unwrap();
        let e = local.load_federated(&ws).unwrap_err().to_string();
        assert!(e.contains("share_heads"), "{e}");
        assert_eq!(local.federated_weights().unwrap(), before);
        // a shared model missing its heads in the global set: refused, backbone untouched
        let fresh = LocalModel::new(&small(), &p, 7, 8, &dev).unwrap();
        let before = fresh.federated_weights().unwrap();
        assert!(fresh.load_federated(&w).is_err());
        assert_eq!(fresh.federated_weights().unwrap(), before);
    }
}
