//! The limits a scenario is held to when it loads, so that an impossible or runaway run is
//! refused before anything starts: rounds and clients ([`MAX_ROUNDS`], [`MAX_CLIENTS`]), the
//! `federation.*_seconds` waits ([`MAX_SECONDS`], checked by the federation section), the
//! images' side (`data.image_size` against the datasets and the patch layouts),
//! `federation.max_weights_bytes` against the model's own payload ([`model_payload_bytes`]),
//! and over-long values ([`check_value_sizes`]), which are named and shown shortened
//! ([`shorten`]), never echoed whole.

use anyhow::{bail, Result};

use super::Scenario;
use crate::data::IMAGE_SIDE;
use crate::model::{BackboneKind, ModelConfig};
use crate::pretext::PretextConfig;

/// Most rounds a scenario may ask for (`federation.rounds`).
pub const MAX_ROUNDS: usize = 100_000;
/// Most clients a scenario may ask for (`federation.clients`).
pub const MAX_CLIENTS: usize = 100_000;
/// Longest string value in a scenario, in characters (a path, a name, a site).
pub const MAX_VALUE_CHARS: usize = 4096;
/// Most images a scenario may ask for in one count (`data.train_images`, `data.test_images`,
/// `data.sources[i].images`): 30 GB of 32×32 RGB bytes, beyond every dataset fedssl reads, so
/// that a typo is one line, not an allocation the machine cannot make.
pub const MAX_IMAGES: usize = 10_000_000;
/// Longest time a `federation.*_seconds` key may give, in seconds (a year): longer values,
/// like NaN and negative ones, cannot become the `Duration` the run waits with.
pub const MAX_SECONDS: f64 = 365.0 * 24.0 * 3600.0;
/// Most elements of one list in a scenario.
pub const MAX_LIST_LEN: usize = 100_000;
/// Characters of an over-long value shown before it is cut.
pub const SHOWN_CHARS: usize = 60;
/// Characters of one line of a parser's message shown before it is cut.
pub const MESSAGE_LINE_CHARS: usize = 1000;

/// `s` if it has at most `max` characters; else its first `max` characters, `…` and how
/// many characters it has.
pub fn shorten(s: &str, max: usize) -> String {
    let n = s.chars().count();
    if n <= max {
        return s.to_string();
    }
    let head: String = s.chars().take(max).collect();
    format!("{head}… ({n} characters)")
}

/// Every line of `msg` [`shorten`]ed to `max` characters (a parser's message quotes the line
/// of the file it failed on, which may be a megabyte long).
pub fn shorten_lines(msg: &str, max: usize) -> String {
    msg.lines()
        .map(|l| shorten(l, max))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Refuses a string longer than [`MAX_VALUE_CHARS`] or a list longer than [`MAX_LIST_LEN`]
/// anywhere in the scenario's tree, naming its key (`federation.sites[2]`) and showing the
/// value's start only.
pub fn check_value_sizes(value: &toml::Value) -> Result<()> {
    walk(value, "")
}

fn walk(v: &toml::Value, key: &str) -> Result<()> {
    let named = |k: &str| if k.is_empty() { "the scenario" } else { k }.to_string();
    match v {
        toml::Value::String(s) if s.chars().count() > MAX_VALUE_CHARS => bail!(
            "{}: a value of {} characters is too long (at most {MAX_VALUE_CHARS}): \"{}\"",
            named(key),
            s.chars().count(),
            shorten(&s.escape_default().to_string(), SHOWN_CHARS)
        ),
        toml::Value::Array(a) => {
            if a.len() > MAX_LIST_LEN {
                bail!(
                    "{}: a list of {} entries is too long (at most {MAX_LIST_LEN})",
                    named(key),
                    a.len()
                );
            }
            for (i, x) in a.iter().enumerate() {
                walk(x, &format!("{key}[{i}]"))?;
            }
            Ok(())
        }
        toml::Value::Table(t) => {
            for (k, x) in t {
                let k = shorten(&k.escape_default().to_string(), SHOWN_CHARS);
                let path = if key.is_empty() {
                    k
                } else {
                    format!("{key}.{k}")
                };
                walk(x, &path)?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Bytes of the weights payload a round sends each client for `model` and `pretext`: the
/// safetensors of the federated weights (the backbone, and the heads when
/// `pretext.share_heads`), built from the configuration alone (no training, no data).
///
/// Errors when the model cannot be built (the configuration check already ran).
/// Computed once per configuration in a process (a scenario is validated several times
/// while its `--set` overrides are checked).
pub fn model_payload_bytes(model: &ModelConfig, pretext: &PretextConfig) -> Result<u64> {
    static KNOWN: std::sync::Mutex<Vec<(String, u64)>> = std::sync::Mutex::new(Vec::new());
    let key = serde_json::to_string(&(model, pretext))?;
    let known = |k: &str| {
        let g = KNOWN
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        g.iter().find(|(x, _)| x == k).map(|(_, b)| *b)
    };
    if let Some(b) = known(&key) {
        return Ok(b);
    }
    let device = candle_core::Device::Cpu;
    let w = crate::train::LocalModel::new(model, pretext, 0, 0, &device)?.federated_weights()?;
    let bytes = w.to_safetensors()?.len() as u64;
    let mut g = KNOWN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if g.len() >= 64 {
        g.remove(0);
    }
    g.push((key, bytes));
    Ok(bytes)
}

/// The counts: rounds and clients; the message names the key.
pub fn check_counts(fed: &super::FederationConfig) -> Result<()> {
    if fed.rounds > MAX_ROUNDS {
        bail!(
            "federation.rounds = {} is more than the {MAX_ROUNDS} rounds a run may have",
            fed.rounds
        );
    }
    if fed.clients > MAX_CLIENTS {
        bail!(
            "federation.clients = {} is more than the {MAX_CLIENTS} clients a run may have",
            fed.clients
        );
    }
    Ok(())
}

/// The images' side, the image counts and the weights payload (module docs); the message
/// names the key.
pub fn check(sc: &Scenario) -> Result<()> {
    let fed = &sc.federation;
    let mut counts = vec![
        ("data.train_images".to_string(), sc.data.train_images),
        ("data.test_images".to_string(), sc.data.test_images),
    ];
    for (i, src) in sc.data.sources.iter().enumerate() {
        counts.push((format!("data.sources[{i}].images"), src.images));
    }
    for (key, n) in counts {
        if let Some(n) = n.filter(|&n| n > MAX_IMAGES) {
            bail!("{key} = {n} is more than the {MAX_IMAGES} images a run may ask for");
        }
    }
    check_image_size(sc)?;
    let need = model_payload_bytes(&sc.model, &sc.pretext)?;
    if fed.max_weights_bytes < need {
        bail!(
            "federation.max_weights_bytes = {} is below the model's own weights payload of {need} bytes ({} backbone): no client could receive the global model",
            fed.max_weights_bytes,
            sc.model.backbone.name()
        );
    }
    Ok(())
}

/// The images' side: a non-32 `data.image_size` needs datasets that are resized (folder,
/// STL-10) for training and evaluation, and the patch layouts (patch-based tasks, ViT
/// patches) must fit it.
fn check_image_size(sc: &Scenario) -> Result<()> {
    let side = sc.data.image_size;
    let eval = sc.eval.dataset.unwrap_or(sc.data.dataset);
    if side != IMAGE_SIDE && !eval.resizes() {
        bail!(
            "data.image_size = {side}: eval.dataset {eval:?} has {IMAGE_SIDE}×{IMAGE_SIDE} images; evaluate on a folder or STL-10 dataset, or keep data.image_size = {IMAGE_SIDE}"
        );
    }
    sc.pretext.check_image_size(side, sc.model.vit.patch_size)?;
    if sc.model.backbone == BackboneKind::Vit && !side.is_multiple_of(sc.model.vit.patch_size) {
        bail!(
            "model.vit.patch_size ({}) must divide the {side}-pixel side of the images (data.image_size)",
            sc.model.vit.patch_size
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(sets: &[&str]) -> String {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        format!("{:#}", Scenario::from_toml_str("", &sets).unwrap_err())
    }

    #[test]
    fn rounds_and_clients_beyond_the_limits_are_refused_by_key() {
        let e = refused(&["federation.rounds=1000000000"]);
        assert!(
            e.contains("federation.rounds") && e.contains("100000"),
            "{e}"
        );
        let e = refused(&["federation.clients=100001"]);
        assert!(e.contains("federation.clients"), "{e}");
        Scenario::from_toml_str("", &["federation.rounds=100000".into()]).unwrap();
    }

    #[test]
    fn image_counts_beyond_the_limit_are_refused_by_key() {
        let e = refused(&["data.train_images=100000000000"]);
        assert!(
            e.contains("data.train_images = 100000000000 is more than the 10000000 images"),
            "{e}"
        );
        let e = refused(&[
            "data.dataset=\"mixed\"",
            "data.sources=[{dataset=\"synthetic\", images=100000000}]",
            "eval.enabled=false",
        ]);
        assert!(e.contains("data.sources[0].images = 100000000"), "{e}");
        Scenario::from_toml_str("", &["data.train_images=10000000".into()]).unwrap();
    }

    #[test]
    fn retention_and_sample_caps_are_checked_by_key() {
        let e = refused(&["federation.keep_checkpoints=0"]);
        assert!(e.contains("federation.keep_checkpoints"), "{e}");
        let e = refused(&["federation.max_samples_per_client=0"]);
        assert!(e.contains("federation.max_samples_per_client"), "{e}");
        let sc = Scenario::from_toml_str("", &["federation.keep_checkpoints=2".into()]).unwrap();
        assert_eq!(sc.federation.keep_checkpoints, Some(2));
        assert_eq!(Scenario::default().federation.keep_checkpoints, None);
    }

    #[test]
    fn image_sizes_are_checked() {
        let e = refused(&["data.image_size=4"]);
        assert!(
            e.contains("data.image_size") && e.contains("8..=1024"),
            "{e}"
        );
        let e = refused(&["data.image_size=5000"]);
        assert!(e.contains("data.image_size"), "{e}");
        // CIFAR-10 and synthetic images are not resized
        let e = refused(&["data.image_size=64"]);
        assert!(e.contains("data.image_size = 64"), "{e}");
        // a folder trained at 64 but probed on the synthetic set
        let e = refused(&[
            "data.dataset=\"folder\"",
            "data.image_size=64",
            "eval.dataset=\"synthetic\"",
        ]);
        assert!(e.contains("data.image_size = 64: eval.dataset"), "{e}");
        let ok = Scenario::from_toml_str(
            "",
            &[
                "data.dataset=\"folder\"".into(),
                "data.image_size=64".into(),
                "eval.dataset=\"folder\"".into(),
            ],
        )
        .unwrap();
        assert_eq!(ok.data.image_size, 64);
        // a ViT patch that does not divide the size
        let e = refused(&[
            "data.dataset=\"folder\"",
            "data.image_size=36",
            "model.backbone=\"vit\"",
            "model.vit.patch_size=8",
        ]);
        assert!(
            e.contains("model.vit.patch_size") && e.contains("36"),
            "{e}"
        );
    }

    #[test]
    fn max_weights_bytes_below_the_model_is_refused() {
        let need = model_payload_bytes(&ModelConfig::default(), &PretextConfig::default()).unwrap();
        // the default ResNet: its f32 values plus the safetensors header
        let sc = Scenario::default();
        let values =
            crate::train::LocalModel::new(&sc.model, &sc.pretext, 0, 0, &candle_core::Device::Cpu)
                .unwrap()
                .federated_weights()
                .unwrap()
                .num_values() as u64;
        assert!(need > values * 4 && need < values * 4 + 100_000, "{need}");
        let e = refused(&[&format!("federation.max_weights_bytes={}", need - 1)]);
        assert!(
            e.contains("federation.max_weights_bytes") && e.contains(&need.to_string()),
            "{e}"
        );
        Scenario::from_toml_str("", &[format!("federation.max_weights_bytes={need}")]).unwrap();
    }

    #[test]
    fn an_over_long_value_is_named_not_echoed() {
        let long = "x".repeat(100_000);
        let text = format!("[data]\ndataset = \"folder\"\npath = \"{long}\"\n");
        let e = format!("{:#}", Scenario::from_toml_str(&text, &[]).unwrap_err());
        assert!(
            e.contains("data.path") && e.contains("100000 characters"),
            "{e}"
        );
        assert!(e.len() < 400, "{} bytes: {}", e.len(), &e[..400]);
        // in a list, the entry is named
        let text = format!("[federation]\nsites = [\"a\", \"{long}\"]\n");
        let e = format!("{:#}", Scenario::from_toml_str(&text, &[]).unwrap_err());
        assert!(e.contains("federation.sites[1]"), "{e}");
        // a parse error quoting a long line is shortened too
        let text = format!("name = {long}\n");
        let e = format!("{:#}", Scenario::from_toml_str(&text, &[]).unwrap_err());
        assert!(e.len() < 2500, "{} bytes", e.len());
        // and an unknown key that is long
        let text = format!("{long} = 1\n");
        let e = format!("{:#}", Scenario::from_toml_str(&text, &[]).unwrap_err());
        assert!(e.len() < 2500, "{} bytes", e.len());
        // a long --set, malformed or not, is shortened in the message
        for set in [format!("name{long}"), format!("data.path={long}")] {
            let e = format!("{:#}", Scenario::from_toml_str("", &[set]).unwrap_err());
            assert!(
                e.len() < 400 && e.contains("characters"),
                "{}",
                &e[..e.len().min(400)]
            );
        }
    }

    #[test]
    fn shorten_keeps_short_strings_and_counts_long_ones() {
        assert_eq!(shorten("abc", 3), "abc");
        assert_eq!(shorten("abcd", 3), "abc… (4 characters)");
        assert_eq!(shorten_lines("ab\nabcdef", 4), "ab\nabcd… (6 characters)");
    }
}
