//! The `features` run mode (`fedssl-coordinator features <checkpoint> --images N --out F`):
//! the Rust backbone's outputs on the first `N` test images of the checkpoint's scenario,
//! written as one safetensors file so that another implementation of the same backbone
//! (the repository's `python/fedssl_torch`) can be checked against ours on the same inputs.
//!
//! The file holds, for `N` images of `H × W` pixels (`C = 3` channels):
//! - `images_u8` `(N, H, W, C)` `U8`: the test images as stored;
//! - `images` `(N, C, H, W)` `F32`: the same images normalised as fedssl feeds them to the
//!   backbone, `(v/255 − mean[c]) / std[c]` ([`ImageDataset::batch_tensor`]);
//! - `pre_logits` `(N, D)` `F32`: the backbone in eval mode (BatchNorm running statistics) on
//!   the whole image;
//! - `stages.{s}` `(N, C_s, H_s, W_s)` `F32` for every stage `s` (0-based), unpooled;
//! - `labels` `(N,)` `I64` when the test set is labelled;
//!
//! and the metadata `mean`, `std` (comma-separated, 0..1 scale), `backbone` and `checkpoint`.
//! The backbone always sees the whole image here, also for the patch-based pretext tasks
//! whose evaluation averages a 3×3 patch grid (`[eval] view`).

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use candle_core::{Device, Tensor};
use fedssl_shared::config::Scenario;
use fedssl_shared::data::load::{load_split_with, Split};
use fedssl_shared::data::ImageDataset;
use fedssl_shared::encoding::{f32_entry, serialize_entries, Entry};
use fedssl_shared::weights::{write_atomic, WeightSet};

use crate::eval::features::load_backbone;

/// Images per forward pass while exporting (bounds the memory of the stage maps).
const BATCH: usize = 64;

/// What [`export_features`] wrote.
#[derive(Clone, Debug, PartialEq)]
pub struct FeaturesExport {
    /// Images exported `N`.
    pub images: usize,
    /// Pre-logits width `D`.
    pub dim: usize,
    /// Number of stage tensors (`stages.0 ..`).
    pub stages: usize,
}

/// Writes the features file `out` (layout in the module docs) for the backbone in
/// `checkpoint` (`head.*` tensors ignored) on the first `n` images of `sc`'s test set.
///
/// Errors name the file: a checkpoint that cannot be read or does not hold `sc`'s backbone,
/// `n = 0` or more images than the test set holds (the message gives the size), or an output
/// that cannot be written (written atomically: never half a file).
pub fn export_features(
    sc: &Scenario,
    checkpoint: &Path,
    n: usize,
    out: &Path,
) -> Result<FeaturesExport> {
    check_out(out)?;
    let weights = WeightSet::load(checkpoint)
        .with_context(|| format!("cannot read checkpoint {}", checkpoint.display()))?;
    let backbone = load_backbone(&weights, &sc.model)
        .with_context(|| format!("checkpoint {}", checkpoint.display()))?;
    let test = load_split_with(
        sc.data.dataset,
        sc.data.path.as_deref(),
        sc.data.test_images,
        sc.seed,
        Split::Test,
        &sc.data.load_options(),
    )?;
    ensure!(n > 0, "--images must be at least 1");
    ensure!(
        n <= test.len(),
        "--images {n}: the scenario's test set holds only {} images (data.test_images)",
        test.len()
    );
    let mut outs = input_tensors(&test, n)?;
    let mut pre = Vec::new();
    let mut stage_vals: Vec<(Vec<usize>, Vec<f32>)> = Vec::new();
    let idx: Vec<usize> = (0..n).collect();
    for chunk in idx.chunks(BATCH) {
        let x = test.batch_tensor(chunk, &Device::Cpu)?;
        let o = backbone.forward_inference(&x)?;
        pre.extend(o.pre_logits.flatten_all()?.to_vec1::<f32>()?);
        if stage_vals.is_empty() {
            stage_vals = o
                .stages
                .iter()
                .map(|s| (s.dims()[1..].to_vec(), Vec::new()))
                .collect();
        }
        for (s, acc) in o.stages.iter().zip(stage_vals.iter_mut()) {
            acc.1.extend(s.flatten_all()?.to_vec1::<f32>()?);
        }
    }
    let dim = backbone.feature_dim();
    outs.push(f32_entry("pre_logits".into(), vec![n, dim], &pre));
    let stages = stage_vals.len();
    for (s, (shape, vals)) in stage_vals.into_iter().enumerate() {
        let mut full = vec![n];
        full.extend(shape);
        outs.push(f32_entry(format!("stages.{s}"), full, &vals));
    }
    let meta = metadata(&test, sc, checkpoint);
    write(&outs, meta, out)?;
    Ok(FeaturesExport {
        images: n,
        dim,
        stages,
    })
}

/// Refuses an `out` that is a folder, or an existing file that is not a features file (a
/// checkpoint, say: it would be overwritten), before anything is computed.
fn check_out(out: &Path) -> Result<()> {
    if out.is_dir() {
        bail!(
            "--out {} is a folder; name the file to write",
            out.display()
        );
    }
    if out.exists() {
        let bytes =
            std::fs::read(out).with_context(|| format!("cannot read --out {}", out.display()))?;
        let is_features = safetensors::SafeTensors::deserialize(&bytes)
            .is_ok_and(|st| st.names().contains(&"pre_logits"));
        if !is_features {
            bail!(
                "--out {} exists and is not a features file (a checkpoint?): it would be overwritten; choose another path",
                out.display()
            );
        }
    }
    Ok(())
}

/// `images_u8`, `images` and (when labelled) `labels` of the first `n` images of `ds`.
fn input_tensors(ds: &ImageDataset, n: usize) -> Result<Vec<Entry>> {
    let (h, w, c) = (ds.height, ds.width, ds.channels);
    let raw = ds.images[..n * ds.image_bytes()].to_vec();
    let idx: Vec<usize> = (0..n).collect();
    let x: Tensor = ds.batch_tensor(&idx, &Device::Cpu)?;
    let normalised = x.flatten_all()?.to_vec1::<f32>()?;
    let mut outs = vec![
        Entry {
            name: "images_u8".into(),
            dtype: safetensors::Dtype::U8,
            shape: vec![n, h, w, c],
            bytes: raw,
        },
        f32_entry("images".into(), vec![n, c, h, w], &normalised),
    ];
    if !ds.labels.is_empty() {
        let bytes = ds.labels[..n]
            .iter()
            .flat_map(|&l| (l as i64).to_le_bytes())
            .collect();
        outs.push(Entry {
            name: "labels".into(),
            dtype: safetensors::Dtype::I64,
            shape: vec![n],
            bytes,
        });
    }
    Ok(outs)
}

/// The file's metadata: normalisation, backbone family, source checkpoint.
fn metadata(ds: &ImageDataset, sc: &Scenario, checkpoint: &Path) -> HashMap<String, String> {
    let join = |v: [f32; 3]| {
        v.iter()
            .map(|x| format!("{x:?}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    HashMap::from([
        ("mean".to_string(), join(ds.mean)),
        ("std".to_string(), join(ds.std)),
        ("backbone".to_string(), sc.model.backbone.name().to_string()),
        ("checkpoint".to_string(), checkpoint.display().to_string()),
    ])
}

/// Serialises `outs` with `meta` and writes them atomically to `path`.
fn write(outs: &[Entry], meta: HashMap<String, String>, path: &Path) -> Result<()> {
    let bytes = serialize_entries(outs, meta)?;
    write_atomic(path, &bytes).with_context(|| format!("--out {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use fedssl_shared::model::build_backbone;

    #[test]
    fn writes_inputs_pre_logits_and_stages_that_match_a_direct_forward() {
        let dir = tempfile::tempdir().unwrap();
        let mut sc =
            Scenario::from_toml_str("name = \"f\"\n[data]\ntest_images = 20\n", &[]).unwrap();
        sc.seed = 3;
        let (_, vars) = build_backbone(&sc.model, 11, &Device::Cpu).unwrap();
        let ws = WeightSet::from_varmap(&vars).unwrap();
        let ck = dir.path().join("final.safetensors");
        ws.save(&ck).unwrap();
        let out = dir.path().join("f.safetensors");
        let e = export_features(&sc, &ck, 5, &out).unwrap();
        assert_eq!((e.images, e.dim, e.stages), (5, 64, 3));
        let bytes = std::fs::read(&out).unwrap();
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        let meta = meta.metadata().clone().unwrap();
        assert_eq!(meta["backbone"], "resnet");
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(st.tensor("images_u8").unwrap().shape(), &[5, 32, 32, 3]);
        assert_eq!(st.tensor("images").unwrap().shape(), &[5, 3, 32, 32]);
        assert_eq!(st.tensor("stages.1").unwrap().shape(), &[5, 32, 16, 16]);
        // the same backbone applied directly gives the same pre-logits, bit for bit
        let test = fedssl_shared::data::load_test_set(sc.data.dataset, None, Some(20), 3).unwrap();
        let net = load_backbone(&ws, &sc.model).unwrap();
        let x = test.batch_tensor(&[0, 1, 2, 3, 4], &Device::Cpu).unwrap();
        let want = net.forward_inference(&x).unwrap().pre_logits;
        let want = want.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let got: Vec<f32> = st
            .tensor("pre_logits")
            .unwrap()
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        assert_eq!(got, want);
        // the u8 images are the first five stored test images; normalisation as metadata says
        let u8s = st.tensor("images_u8").unwrap().data().to_vec();
        assert_eq!(u8s, test.images[..5 * 32 * 32 * 3].to_vec());
        let mean: Vec<f32> = meta["mean"]
            .split(',')
            .map(|v| v.parse().unwrap())
            .collect();
        let std: Vec<f32> = meta["std"].split(',').map(|v| v.parse().unwrap()).collect();
        let x0: f32 =
            f32::from_le_bytes(st.tensor("images").unwrap().data()[..4].try_into().unwrap());
        let want0 = (u8s[0] as f32 / 255.0 - mean[0]) / std[0];
        assert!((x0 - want0).abs() < 1e-6, "{x0} vs {want0}");
    }

    #[test]
    fn refuses_too_many_images_and_a_foreign_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let sc = Scenario::from_toml_str("name = \"f\"\n[data]\ntest_images = 10\n", &[]).unwrap();
        let (_, vars) = build_backbone(&sc.model, 1, &Device::Cpu).unwrap();
        let ck = dir.path().join("final.safetensors");
        WeightSet::from_varmap(&vars).unwrap().save(&ck).unwrap();
        let out = dir.path().join("f.safetensors");
        let e = export_features(&sc, &ck, 11, &out).unwrap_err();
        assert!(format!("{e:#}").contains("holds only 10 images"), "{e:#}");
        assert!(!out.exists());
        let vit =
            Scenario::from_toml_str("name = \"f\"\n[model]\nbackbone = \"vit\"\n", &[]).unwrap();
        let e = export_features(&vit, &ck, 1, &out).unwrap_err();
        assert!(format!("{e:#}").contains("final.safetensors"), "{e:#}");
        assert!(!out.exists());
        // the checkpoint itself, or a folder, as --out: refused before anything is written
        let before = std::fs::read(&ck).unwrap();
        let e = export_features(&sc, &ck, 1, &ck).unwrap_err();
        assert!(format!("{e:#}").contains("is not a features file"), "{e:#}");
        assert_eq!(std::fs::read(&ck).unwrap(), before);
        let e = export_features(&sc, &ck, 1, dir.path()).unwrap_err();
        assert!(format!("{e:#}").contains("is a folder"), "{e:#}");
        // an existing features file is replaced
        export_features(&sc, &ck, 2, &out).unwrap();
        export_features(&sc, &ck, 3, &out).unwrap();
    }
}
