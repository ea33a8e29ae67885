//! The heterogeneity report of a split: per-client image counts and class histograms, and
//! how far each client's label distribution is from the population's.
//!
//! Two distances, both between a client's label distribution `p_k(c) = n_k(c) / n_k` and the
//! population's `p(c) = n(c) / n` (all images of the split):
//! * **EMD** in the form of Zhao et al. 2018 ("Federated Learning with Non-IID Data", eq. 7
//!   and Fig. 2): `EMD_k = Σ_c |p_k(c) − p(c)|`, in `[0, 2]`. Classes are unordered, so the
//!   earth mover's distance with ground distance 1 between any two distinct classes is the
//!   total variation `½ Σ_c |p_k(c) − p(c)|`; Zhao et al. drop the ½ (their bound on the
//!   weight divergence is in this sum), and so do we, so that our numbers read on their
//!   axes (e.g. a one-class client of balanced CIFAR-10 has EMD 1.8).
//! * **Jensen–Shannon divergence** in nats (natural log, in `[0, ln 2]`):
//!   `JS(p_k, p) = ½ KL(p_k ‖ m) + ½ KL(p ‖ m)`, `m = ½ (p_k + p)`, with `0 · ln 0 = 0`.
//!   (The square of SciPy's `jensenshannon(p, q)` with its default natural base.)
//!
//! An empty client (never produced by [`super::partition`]) has no distribution: its
//! distances are `None` and it is left out of the means.

use serde::Serialize;

/// One client's line of a [`HeterogeneityReport`].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ClientHeterogeneity {
    /// Client id (its shard index).
    pub client: usize,
    /// Images in its shard.
    pub images: usize,
    /// Its images per class, `num_classes` long.
    pub class_counts: Vec<usize>,
    /// `Σ_c |p_k(c) − p(c)|` (Zhao et al. 2018), in `[0, 2]`; `None` for an empty client.
    pub emd: Option<f64>,
    /// Jensen–Shannon divergence to the population in nats, in `[0, ln 2]`; `None` for an
    /// empty client.
    pub js: Option<f64>,
}

/// The figures of a whole split.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HeterogeneitySummary {
    /// Clients.
    pub clients: usize,
    /// Images in all shards.
    pub images: usize,
    /// Smallest shard, images.
    pub min_images: usize,
    /// Median shard, images (the lower of the two middle ones for an even count).
    pub median_images: usize,
    /// Largest shard, images.
    pub max_images: usize,
    /// Mean EMD of the non-empty clients.
    pub mean_emd: f64,
    /// Largest EMD.
    pub max_emd: f64,
    /// Mean Jensen–Shannon divergence of the non-empty clients, nats.
    pub mean_js: f64,
}

/// Per-client histograms and distances, the population's histogram and the summary.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HeterogeneityReport {
    /// Classes of the dataset.
    pub num_classes: usize,
    /// Images per class over all shards.
    pub population: Vec<usize>,
    /// One line per client, in client order.
    pub clients: Vec<ClientHeterogeneity>,
    /// Sizes and mean distances.
    pub summary: HeterogeneitySummary,
}

/// What `emd` and `js` mean, written next to them in `partition.json`.
pub const DEFINITIONS: &str = "emd = sum_c |p_k(c) - p(c)| (Zhao et al. 2018; twice the total variation), in [0, 2]; js = Jensen-Shannon divergence of p_k and p in nats (natural log), in [0, ln 2]; p = the population's label distribution over all shards";

/// `p` normalised to sum 1; `None` when it sums to 0.
pub fn distribution(counts: &[usize]) -> Option<Vec<f64>> {
    let n: usize = counts.iter().sum();
    (n > 0).then(|| counts.iter().map(|&c| c as f64 / n as f64).collect())
}

/// Zhao et al. 2018's EMD of two label distributions over the same classes:
/// `Σ_c |p(c) − q(c)|`. Panics if the lengths differ.
pub fn emd(p: &[f64], q: &[f64]) -> f64 {
    assert_eq!(p.len(), q.len(), "distributions over different classes");
    p.iter().zip(q).map(|(a, b)| (a - b).abs()).sum()
}

/// Kullback–Leibler divergence `Σ_c p(c) ln(p(c) / q(c))` in nats, `0 · ln 0 = 0`; only
/// called with `q(c) > 0` wherever `p(c) > 0`.
fn kl(p: &[f64], q: &[f64]) -> f64 {
    p.iter()
        .zip(q)
        .filter(|(a, _)| **a > 0.0)
        .map(|(a, b)| a * (a / b).ln())
        .sum()
}

/// Jensen–Shannon divergence of `p` and `q` in nats: `½ KL(p ‖ m) + ½ KL(q ‖ m)` with
/// `m = ½ (p + q)`. Symmetric, 0 iff `p = q`, at most `ln 2`. Panics if the lengths differ.
pub fn js_divergence(p: &[f64], q: &[f64]) -> f64 {
    assert_eq!(p.len(), q.len(), "distributions over different classes");
    let m: Vec<f64> = p.iter().zip(q).map(|(a, b)| 0.5 * (a + b)).collect();
    (0.5 * kl(p, &m) + 0.5 * kl(q, &m)).max(0.0)
}

/// The report of the split `parts` (per client, indices into `labels`; every label below
/// `num_classes`, as [`super::partition`] guarantees). Panics on an index out of `labels`
/// or a label `>= num_classes` (a programming error).
pub fn report(labels: &[u32], num_classes: usize, parts: &[Vec<usize>]) -> HeterogeneityReport {
    let counts: Vec<Vec<usize>> = parts
        .iter()
        .map(|idx| {
            let mut h = vec![0usize; num_classes];
            for &i in idx {
                h[labels[i] as usize] += 1;
            }
            h
        })
        .collect();
    let mut population = vec![0usize; num_classes];
    for h in &counts {
        for (p, c) in population.iter_mut().zip(h) {
            *p += c;
        }
    }
    let pop = distribution(&population);
    let clients: Vec<ClientHeterogeneity> = counts
        .into_iter()
        .enumerate()
        .map(|(k, h)| {
            let d = distribution(&h).zip(pop.as_ref());
            ClientHeterogeneity {
                client: k,
                images: h.iter().sum(),
                emd: d.as_ref().map(|(p, q)| emd(p, q)),
                js: d.as_ref().map(|(p, q)| js_divergence(p, q)),
                class_counts: h,
            }
        })
        .collect();
    let summary = summarise(&clients);
    HeterogeneityReport {
        num_classes,
        population,
        clients,
        summary,
    }
}

/// Sizes and mean distances of `clients`.
fn summarise(clients: &[ClientHeterogeneity]) -> HeterogeneitySummary {
    let mut sizes: Vec<usize> = clients.iter().map(|c| c.images).collect();
    sizes.sort_unstable();
    let emds: Vec<f64> = clients.iter().filter_map(|c| c.emd).collect();
    let jss: Vec<f64> = clients.iter().filter_map(|c| c.js).collect();
    let mean = |v: &[f64]| {
        if v.is_empty() {
            0.0
        } else {
            v.iter().sum::<f64>() / v.len() as f64
        }
    };
    HeterogeneitySummary {
        clients: clients.len(),
        images: sizes.iter().sum(),
        min_images: sizes.first().copied().unwrap_or(0),
        median_images: sizes
            .get(sizes.len().saturating_sub(1) / 2)
            .copied()
            .unwrap_or(0),
        max_images: sizes.last().copied().unwrap_or(0),
        mean_emd: mean(&emds),
        max_emd: emds.iter().copied().fold(0.0, f64::max),
        mean_js: mean(&jss),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::partition::{partition, IidConfig, LabelQuantityConfig, PartitionConfig};

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-12, "{a} != {b}");
    }

    #[test]
    fn emd_and_js_of_hand_computed_histograms() {
        // p = (1/2, 1/2, 0), q = (1/4, 1/4, 1/2): EMD = 1/4 + 1/4 + 1/2 = 1
        let p = distribution(&[2, 2, 0]).unwrap();
        let q = distribution(&[1, 1, 2]).unwrap();
        close(emd(&p, &q), 1.0);
        // m = (3/8, 3/8, 1/4)
        // KL(p‖m) = 2 · ½ ln(4/3) = ln(4/3)
        // KL(q‖m) = 2 · ¼ ln(2/3) + ½ ln 2 = ½ ln(4/3)
        // JS = ½ ln(4/3) + ¼ ln(4/3) = ¾ ln(4/3) = 0.215762...
        close(js_divergence(&p, &q), 0.75 * (4.0f64 / 3.0).ln());
        close(js_divergence(&q, &p), 0.75 * (4.0f64 / 3.0).ln());
        // disjoint supports: JS = ln 2, EMD = 2
        let a = [1.0, 0.0];
        let b = [0.0, 1.0];
        close(js_divergence(&a, &b), std::f64::consts::LN_2);
        close(emd(&a, &b), 2.0);
        close(js_divergence(&p, &p), 0.0);
        assert!(distribution(&[0, 0]).is_none());
    }

    #[test]
    fn report_of_a_small_split() {
        // labels 0 0 1 1 2 2; client 0 = {0, 1, 2} (classes 0 0 1), client 1 = {3, 4, 5}
        // (1 2 2): population (1/3, 1/3, 1/3)
        let labels = [0u32, 0, 1, 1, 2, 2];
        let r = report(&labels, 3, &[vec![0, 1, 2], vec![3, 4, 5]]);
        assert_eq!(r.population, vec![2, 2, 2]);
        assert_eq!(r.clients[0].class_counts, vec![2, 1, 0]);
        // client 0: |2/3 − 1/3| + |1/3 − 1/3| + |0 − 1/3| = 2/3
        close(r.clients[0].emd.unwrap(), 2.0 / 3.0);
        close(r.clients[1].emd.unwrap(), 2.0 / 3.0);
        // m = (1/2, 1/3, 1/6): KL(p_0‖m) = 2/3 ln(4/3) + 0; KL(pop‖m) = 1/3 (ln(2/3) + 0 + ln 2)
        let js0 = 0.5 * (2.0 / 3.0 * (4.0f64 / 3.0).ln())
            + 0.5 * (1.0 / 3.0 * ((2.0f64 / 3.0).ln() + 2.0f64.ln()));
        close(r.clients[0].js.unwrap(), js0);
        let s = &r.summary;
        assert_eq!(
            (s.clients, s.images, s.min_images, s.max_images),
            (2, 6, 3, 3)
        );
        close(s.mean_emd, 2.0 / 3.0);
        close(s.mean_js, js0);
        // an empty client has no distances and is left out of the means
        let r = report(&labels, 3, &[vec![0, 1, 2, 3, 4, 5], vec![]]);
        assert_eq!(r.clients[1].emd, None);
        assert_eq!((r.summary.min_images, r.summary.median_images), (0, 0));
        close(r.summary.mean_emd, 0.0);
    }

    #[test]
    fn iid_is_near_zero_and_one_class_per_client_is_far() {
        let l = crate::data::synthetic::generate(10_000, 0).labels;
        let seed = 3;
        let iid = partition(&l, 10, 10, &PartitionConfig::Iid(IidConfig {}), seed).unwrap();
        let r = report(&l, 10, &iid);
        assert!(r.summary.max_emd < 0.1, "IID max EMD {}", r.summary.max_emd);
        assert!(
            r.summary.mean_js < 0.005,
            "IID mean JS {}",
            r.summary.mean_js
        );
        let c1 = PartitionConfig::LabelQuantity(LabelQuantityConfig {
            classes_per_client: 1,
        });
        let parts = partition(&l, 10, 10, &c1, seed).unwrap();
        let r = report(&l, 10, &parts);
        // a one-class client against a uniform population: EMD = 0.9 + 9 · 0.1 = 1.8;
        // m = (0.55, 0.05, …): JS = ½ ln(1/0.55) + ½ (0.1 ln(0.1/0.55) + 0.9 ln 2) = 0.5256
        // with ten one-class clients covering the ten classes, mean EMD = 2 − 2 · Σ_c p(c) / 10
        // = 1.8 whatever the population; JS depends on it (near-uniform here)
        close(r.summary.mean_emd, 1.8);
        assert!(
            (r.summary.mean_js - 0.5256).abs() < 0.01,
            "{}",
            r.summary.mean_js
        );
    }
}
