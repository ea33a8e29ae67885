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
        let task = build_task(pretext, &backbone, vb)?;
        seeded_init(
            &head_vars,
            crate::seed::derive(head_seed, crate::seed::ROTATION_HEAD, 0),
        )?;
        Ok(Self {
            backbone,
            backbone_vars,
            task,
            head_vars,
            share_heads: pretext.share_heads,
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

    /// The weights that travel to the coordinator: the backbone, plus the `head.*`
    /// variables when the heads are shared.
    pub fn federated_weights(&self) -> Result<WeightSet> {
        let mut w = WeightSet::from_varmap(&self.backbone_vars)?;
        if self.share_heads {
            w.tensors
                .extend(WeightSet::from_varmap(&self.head_vars)?.tensors);
        }
        Ok(w)
    }

    /// Loads global weights as [`Self::federated_weights`] lays them out. All or nothing:
    /// errors (changing nothing) if a name is missing, unexpected or mis-shaped.
    pub fn load_federated(&self, global: &WeightSet) -> Result<()> {
        let (heads, backbone) = global.split_prefix("head.");
        if self.share_heads {
            // check both before writing either
            backbone.check_fits_varmap(&self.backbone_vars)?;
            heads
                .check_fits_varmap(&self.head_vars)
                .context("the shared pretext heads do not fit")?;
            heads.load_into_varmap(&self.head_vars)?;
        } else if !heads.tensors.is_empty() {
            bail!(
                "the global weights carry pretext heads (`head.*`) but pretext.share_heads is false"
            );
        }
        backbone.load_into_varmap(&self.backbone_vars)
    }
}

fn sorted_vars(vm: &VarMap) -> Vec<(String, Var)> {
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
