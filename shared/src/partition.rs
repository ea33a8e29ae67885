//! Splitting a labelled dataset among federated clients.
//!
//! * [`PartitionScheme::Iid`]: a seeded shuffle cut into `num_clients` near-equal parts.
//! * [`PartitionScheme::Dirichlet`]: label skew of Hsu, Qi & Brown, "Measuring the Effects of
//!   Non-Identical Data Distribution for Federated Visual Classification" (2019): for every
//!   class, proportions `p ~ Dir(α·1)` over the clients decide how that class's images are
//!   shared. Small `α` (e.g. 0.1) gives clients dominated by one or two classes; large `α`
//!   (e.g. 1000) approaches IID.

use anyhow::{bail, Result};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Gamma};

/// How images are distributed among clients. Serialised as `{ kind = "iid" }` or
/// `{ kind = "dirichlet", alpha = 0.5 }`.
///
/// Unknown keys are refused, including `alpha` with `kind = "iid"` (serde's
/// `deny_unknown_fields` does not cover unit variants of tagged enums, so deserialisation goes
/// through a checked raw form).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "RawScheme", into = "RawScheme")]
pub enum PartitionScheme {
    /// Uniformly random, equal-size shards (sizes differ by at most one).
    Iid,
    /// Per-class Dirichlet label skew with concentration `alpha > 0` (Hsu et al. 2019).
    Dirichlet {
        /// Concentration α: small = skewed, large = close to IID.
        alpha: f64,
    },
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
enum RawKind {
    Iid,
    Dirichlet,
}

// The same raw form both ways, so self-describing formats (TOML, JSON) and bincode agree.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScheme {
    kind: RawKind,
    alpha: Option<f64>,
}

impl From<PartitionScheme> for RawScheme {
    fn from(p: PartitionScheme) -> Self {
        match p {
            PartitionScheme::Iid => RawScheme {
                kind: RawKind::Iid,
                alpha: None,
            },
            PartitionScheme::Dirichlet { alpha } => RawScheme {
                kind: RawKind::Dirichlet,
                alpha: Some(alpha),
            },
        }
    }
}

impl TryFrom<RawScheme> for PartitionScheme {
    type Error = String;
    fn try_from(r: RawScheme) -> std::result::Result<Self, String> {
        match (r.kind, r.alpha) {
            (RawKind::Iid, None) => Ok(PartitionScheme::Iid),
            (RawKind::Iid, Some(_)) => Err("`alpha` applies only to kind = \"dirichlet\"".into()),
            (RawKind::Dirichlet, Some(alpha)) => Ok(PartitionScheme::Dirichlet { alpha }),
            (RawKind::Dirichlet, None) => Err("kind = \"dirichlet\" needs `alpha`".into()),
        }
    }
}

/// Splits the images with labels `labels` among `num_clients` clients.
///
/// Returns, per client, the sorted indices into `labels` of its images: every index belongs
/// to exactly one client and no client is empty. Deterministic from `seed`
/// (`StdRng::seed_from_u64`).
///
/// Dirichlet: for each class in order `0..num_classes`, the class's indices are shuffled,
/// proportions `p_k = g_k / Σ g` with `g_k ~ Gamma(α, 1)` are drawn, and the indices are cut
/// at `round(n_c · Σ_{j≤k} p_j)`. Afterwards, while some client is empty, one image (the
/// highest index) is moved to it from the currently largest client (lowest client id on
/// ties); this slightly perturbs the drawn proportions only when α is tiny or clients many.
///
/// Errors when `num_clients` is 0 or exceeds `labels.len()`, when `alpha` is not a finite
/// positive number, or when a label is `>= num_classes`.
pub fn partition(
    labels: &[u32],
    num_classes: usize,
    num_clients: usize,
    scheme: &PartitionScheme,
    seed: u64,
) -> Result<Vec<Vec<usize>>> {
    if num_clients == 0 {
        bail!("cannot partition among 0 clients");
    }
    if num_clients > labels.len() {
        bail!(
            "cannot give each of {num_clients} clients at least one image: only {} images",
            labels.len()
        );
    }
    if let Some((i, l)) = labels
        .iter()
        .enumerate()
        .find(|(_, &l)| l as usize >= num_classes)
    {
        bail!("label {l} of image {i} is not below num_classes = {num_classes}");
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let mut parts: Vec<Vec<usize>> = vec![Vec::new(); num_clients];
    match scheme {
        PartitionScheme::Iid => {
            let mut idx: Vec<usize> = (0..labels.len()).collect();
            idx.shuffle(&mut rng);
            let base = labels.len() / num_clients;
            let extra = labels.len() % num_clients;
            let mut start = 0;
            for (k, part) in parts.iter_mut().enumerate() {
                let len = base + usize::from(k < extra);
                part.extend_from_slice(&idx[start..start + len]);
                start += len;
            }
        }
        PartitionScheme::Dirichlet { alpha } => {
            let alpha = *alpha;
            if !(alpha.is_finite() && alpha > 0.0) {
                bail!("Dirichlet alpha must be a finite number > 0, got {alpha}");
            }
            let gamma = Gamma::new(alpha, 1.0)
                .map_err(|e| anyhow::anyhow!("invalid Dirichlet alpha {alpha}: {e}"))?;
            let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); num_classes];
            for (i, &l) in labels.iter().enumerate() {
                by_class[l as usize].push(i);
            }
            for class_idx in by_class.iter_mut() {
                class_idx.shuffle(&mut rng);
                let g: Vec<f64> = (0..num_clients).map(|_| gamma.sample(&mut rng)).collect();
                let sum: f64 = g.iter().sum();
                let n_c = class_idx.len();
                if !(sum > 0.0 && sum.is_finite()) {
                    // every draw underflowed (tiny alpha): the whole class goes to one client,
                    // the limit of Dir(α) as α → 0
                    let k = rng.random_range(0..num_clients);
                    parts[k].extend_from_slice(class_idx);
                    continue;
                }
                let mut cum = 0.0;
                let mut start = 0usize;
                for (k, gk) in g.iter().enumerate() {
                    cum += gk / sum;
                    let end = if k + 1 == num_clients {
                        n_c
                    } else {
                        ((cum * n_c as f64).round() as usize).clamp(start, n_c)
                    };
                    parts[k].extend_from_slice(&class_idx[start..end]);
                    start = end;
                }
            }
            fill_empty_clients(&mut parts);
        }
    }
    for p in parts.iter_mut() {
        p.sort_unstable();
    }
    Ok(parts)
}

/// Moves one image (the highest index) from the largest client to each empty client.
fn fill_empty_clients(parts: &mut [Vec<usize>]) {
    while let Some(empty) = parts.iter().position(Vec::is_empty) {
        let largest = (0..parts.len())
            .max_by_key(|&k| (parts[k].len(), std::cmp::Reverse(k)))
            .expect("at least one client");
        let v = &mut parts[largest];
        let pos = (0..v.len())
            .max_by_key(|&i| v[i])
            .expect("largest client is non-empty");
        let moved = v.swap_remove(pos);
        parts[empty].push(moved);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(n: usize, classes: u32) -> Vec<u32> {
        (0..n).map(|i| (i as u32 * 7 + 3) % classes).collect()
    }

    fn check_disjoint_complete(parts: &[Vec<usize>], n: usize) {
        let mut seen = vec![0u8; n];
        for p in parts {
            assert!(!p.is_empty());
            assert!(p.windows(2).all(|w| w[0] < w[1]), "not sorted");
            for &i in p {
                seen[i] += 1;
            }
        }
        assert!(seen.iter().all(|&s| s == 1));
    }

    fn class_shares(part: &[usize], labels: &[u32], classes: usize) -> Vec<f64> {
        let mut h = vec![0usize; classes];
        for &i in part {
            h[labels[i] as usize] += 1;
        }
        h.iter().map(|&c| c as f64 / part.len() as f64).collect()
    }

    #[test]
    fn iid_is_disjoint_complete_and_balanced() {
        let l = labels(1003, 10);
        let parts = partition(&l, 10, 7, &PartitionScheme::Iid, 1).unwrap();
        check_disjoint_complete(&parts, 1003);
        let sizes: Vec<usize> = parts.iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![144, 144, 143, 143, 143, 143, 143]);
    }

    #[test]
    fn dirichlet_large_alpha_is_near_uniform() {
        let l = crate::data::synthetic::generate(50_000, 0).labels;
        let scheme = PartitionScheme::Dirichlet { alpha: 1000.0 };
        let parts = partition(&l, 10, 10, &scheme, 3).unwrap();
        check_disjoint_complete(&parts, 50_000);
        for p in &parts {
            for s in class_shares(p, &l, 10) {
                assert!((s - 0.1).abs() < 0.05, "share {s}");
            }
        }
    }

    #[test]
    fn dirichlet_small_alpha_is_skewed_and_deterministic() {
        let l = labels(50_000, 10);
        let scheme = PartitionScheme::Dirichlet { alpha: 0.1 };
        let parts = partition(&l, 10, 10, &scheme, 4).unwrap();
        check_disjoint_complete(&parts, 50_000);
        let mean_max: f64 = parts
            .iter()
            .map(|p| class_shares(p, &l, 10).into_iter().fold(0.0, f64::max))
            .sum::<f64>()
            / 10.0;
        assert!(mean_max > 0.5, "mean max share {mean_max}");
        assert_eq!(parts, partition(&l, 10, 10, &scheme, 4).unwrap());
        assert_ne!(parts, partition(&l, 10, 10, &scheme, 5).unwrap());
    }

    #[test]
    fn many_clients_and_tiny_alpha_leave_no_client_empty() {
        let l = labels(40, 2);
        let scheme = PartitionScheme::Dirichlet { alpha: 0.01 };
        let parts = partition(&l, 2, 40, &scheme, 0).unwrap();
        check_disjoint_complete(&parts, 40);
        assert!(parts.iter().all(|p| p.len() == 1));
    }

    #[test]
    fn invalid_arguments_are_errors() {
        let l = labels(10, 2);
        assert!(partition(&l, 2, 11, &PartitionScheme::Iid, 0).is_err());
        assert!(partition(&l, 2, 0, &PartitionScheme::Iid, 0).is_err());
        for alpha in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let e = partition(&l, 2, 2, &PartitionScheme::Dirichlet { alpha }, 0);
            assert!(e.is_err(), "alpha {alpha}");
        }
        assert!(partition(&l, 1, 2, &PartitionScheme::Iid, 0).is_err());
    }

    #[test]
    fn scheme_serde_shape() {
        let s: PartitionScheme = toml::from_str("kind = \"dirichlet\"\nalpha = 0.5").unwrap();
        assert_eq!(s, PartitionScheme::Dirichlet { alpha: 0.5 });
        let s: PartitionScheme = toml::from_str("kind = \"iid\"").unwrap();
        assert_eq!(s, PartitionScheme::Iid);
        assert!(toml::from_str::<PartitionScheme>("kind = \"iid\"\nalpha = 1.0").is_err());
        assert!(toml::from_str::<PartitionScheme>("kind = \"dirichlet\"").is_err());
        let e = toml::from_str::<PartitionScheme>("kind = \"iid\"\nbeta = 1").unwrap_err();
        assert!(e.to_string().contains("beta"), "{e}");
        let j = serde_json::to_string(&PartitionScheme::Dirichlet { alpha: 0.5 }).unwrap();
        assert_eq!(j, r#"{"kind":"dirichlet","alpha":0.5}"#);
        // `alpha` is always written (null for IID): the same form must also travel through
        // bincode, which cannot skip fields.
        assert_eq!(
            serde_json::to_string(&PartitionScheme::Iid).unwrap(),
            r#"{"kind":"iid","alpha":null}"#
        );
        let back: PartitionScheme = serde_json::from_str(r#"{"kind":"iid","alpha":null}"#).unwrap();
        assert_eq!(back, PartitionScheme::Iid);
    }
}
