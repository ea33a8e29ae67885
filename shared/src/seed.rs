//! Seed derivation: every random stream of a run comes from the scenario's one seed.
//!
//! `derive(seed, stream, index)` mixes the master seed with a stream tag (e.g. [`PARTITION`],
//! [`CLIENT_TRAIN`]) and an index (client id, round) through SplitMix64 (Steele et al. 2014),
//! so streams are independent and stable across versions and platforms.
//!
//! Every stream of the workspace is listed below, with what it seeds and its index.
//! The strings are part of the results: renaming one changes every run that draws from it, so
//! they never change; a new random stream gets a new constant here.

use rand::rngs::StdRng;
use rand::SeedableRng;

/// The global backbone's initial weights (index 0), on the coordinator, every client and the
/// random-init baseline of the evaluation.
pub const INIT: &str = "init";
/// The pretext heads of the coordinator's initial model (index 0; they travel only with
/// `pretext.share_heads`).
pub const HEAD_INIT: &str = "head-init";
/// Client `k`'s local pretext heads (index: the client id).
pub const CLIENT_HEAD: &str = "client-head";
/// The heads' initial weights inside [`crate::train::LocalModel::new`], derived from the
/// head seed it is given (index 0); named when rotation was the only task, and kept so that
/// earlier rotation runs are reproduced bit for bit.
pub const ROTATION_HEAD: &str = "rotation-head";
/// The split of the training images among the clients (index 0).
pub const PARTITION: &str = "partition";
/// The clients sampled in a round (index: the 0-based round).
pub const SAMPLING: &str = "sampling";
/// A client's shuffling and augmentation in a round (index: `round << 32 | client id`).
pub const CLIENT_TRAIN: &str = "client-train";
/// The synthetic training set of a run (index 0; its seed then seeds [`SYNTHETIC_DATA`]).
pub const SYNTHETIC_TRAIN: &str = "synthetic-train";
/// The synthetic test set of a run (index 0; its seed then seeds [`SYNTHETIC_DATA`]).
pub const SYNTHETIC_TEST: &str = "synthetic-test";
/// The images of [`crate::data::synthetic::generate`] (index 0).
pub const SYNTHETIC_DATA: &str = "synthetic-data";
/// The labelled subset of the probes, a seeded shuffle of the training split (index 0).
pub const PROBE_SUBSET: &str = "probe-subset";
/// The linear probe's own seed (the coordinator's `ProbeConfig::seed`, index 0).
pub const PROBE: &str = "probe";
/// The validation split that chooses the probes' weight decay (index 0).
pub const PROBE_VAL: &str = "probe-val";
/// The MLP probe's own seed (the coordinator's `MlpConfig::seed`, index 0).
pub const MLP_PROBE: &str = "mlp-probe";
/// The few-label subsets (index: the draw, `0..eval.label_seeds`).
pub const FEW_LABELS: &str = "few-labels";
/// The labelled images of the k-NN monitor, a seeded shuffle of the training split (index 0).
pub const KNN_SUBSET: &str = "knn-subset";
/// DP-FedAvg's Gaussian noise on the coordinator (index: the 0-based round).
pub const DP_NOISE: &str = "dp-noise";
/// The Gaussian noise a simulated byzantine `noise` client sends (index:
/// `round << 32 | client id`).
pub const BYZANTINE: &str = "byzantine";
/// Feature skew's Gaussian noise on client `i`'s images (index: the client's shard index),
/// [`crate::feature_skew`].
pub const FEATURE_NOISE: &str = "feature-noise";
/// Feature skew's colour tint gains of client `i` (index: the client's shard index).
pub const FEATURE_TINT: &str = "feature-tint";
/// The run seed each source of the mixed dataset is loaded with (index: the source's
/// position in `data.sources`), so that two synthetic sources are different images
/// ([`crate::data::mixed`]).
pub const MIXED_SOURCE: &str = "mixed-source";

/// SplitMix64 finaliser: a bijective 64-bit mix.
pub fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The seed of stream `stream`, item `index`, of a run with master seed `seed`.
pub fn derive(seed: u64, stream: &str, index: u64) -> u64 {
    // FNV-1a of the tag: stable, unlike std's hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in stream.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    splitmix64(splitmix64(seed ^ h).wrapping_add(index))
}

/// A `StdRng` for stream `stream`, item `index`.
pub fn rng(seed: u64, stream: &str, index: u64) -> StdRng {
    StdRng::seed_from_u64(derive(seed, stream, index))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every stream of this module, once (a new stream is added here too).
    const ALL: [&str; 21] = [
        INIT,
        HEAD_INIT,
        CLIENT_HEAD,
        ROTATION_HEAD,
        PARTITION,
        SAMPLING,
        CLIENT_TRAIN,
        SYNTHETIC_TRAIN,
        SYNTHETIC_TEST,
        SYNTHETIC_DATA,
        PROBE_SUBSET,
        PROBE,
        PROBE_VAL,
        MLP_PROBE,
        FEW_LABELS,
        KNN_SUBSET,
        DP_NOISE,
        BYZANTINE,
        FEATURE_NOISE,
        FEATURE_TINT,
        MIXED_SOURCE,
    ];

    #[test]
    fn streams_differ_and_repeat() {
        assert_eq!(derive(7, "partition", 0), derive(7, "partition", 0));
        assert_ne!(derive(7, "partition", 0), derive(7, "partition", 1));
        assert_ne!(derive(7, "partition", 0), derive(7, "sampling", 0));
        assert_ne!(derive(7, "partition", 0), derive(8, "partition", 0));
        assert_eq!(PARTITION, "partition");
    }

    #[test]
    fn every_stream_is_listed_once() {
        let mut all = ALL.to_vec();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), ALL.len());
        // SplitMix64 reference value (first output of the generator seeded with 0).
        assert_eq!(splitmix64(0), 0xE220_A839_7B1D_CDAF);
    }
}
