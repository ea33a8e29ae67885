//! Secure aggregation (Bonawitz et al., "Practical Secure Aggregation for Privacy-Preserving
//! Machine Learning", CCS 2017, §4 and Figure 4): the coordinator learns the sum of the
//! sampled clients' updates and nothing else about any one of them, and the sum survives
//! clients that drop out, as long as `threshold` of them stay.
//!
//! The building blocks, one file each, used by both sides:
//! - [`quantize`]: an update `(P,)` `f32` clipped to `[−c, c]` and mapped to fixed point in
//!   `Z_{2^b}` (`b = 32` by default, Flower's SecAgg+ defaults: clipping range 8,
//!   quantisation range 2²²), weighted by the client's sample count `n_k` in the ring, and the
//!   sum mapped back;
//! - [`masking`]: each client's X25519 key pairs, the pairwise mask seeds
//!   `s_{u,v} = HKDF-SHA256(X25519(s_u, S_v))`, the masks expanded from seeds by ChaCha20,
//!   and the masked vector `y_u = x_u + PRG(b_u) + Σ_{v>u} PRG(s_{u,v}) − Σ_{v<u} PRG(s_{u,v})`
//!   (mod `2^b`);
//! - [`shares`]: Shamir `t`-of-`n` shares (GF(256), the `blahaj` crate) of each client's
//!   self-mask seed `b_u` and mask secret key `s_u`, sealed for their recipient with
//!   ChaCha20-Poly1305 under a key agreed with the recipient's encryption key (so that the
//!   coordinator, which relays them, cannot read them);
//! - [`unmask`]: the coordinator's side: the masked vectors collected (a wrong length, a
//!   client outside the round or a second vector from the same client refused), then the
//!   self masks of the clients whose vectors arrived and the pairwise masks of those whose
//!   vectors did not removed, from the survivors' shares.
//!
//!
//! The protocol's two sides, without the network (the coordinator's `server/secagg_round.rs`
//! and the client's `secagg.rs` carry their messages, [`crate::protocol`]):
//! - [`participant`]: one client's steps (keys, sealed shares, masked vector, reveal);
//! - [`aggregator`]: the coordinator's (key list, share routing, masked sum, unmasking);
//! - [`vector`]: the update Δ = w_k − w_global as the flat vector that is masked, and back;
//! - [`graph`]: which clients mask with each other — every pair, or SecAgg+'s k-regular graph
//!   (Bell et al. 2020), where each client masks with and shares its secrets among k
//!   neighbours.
//!
//! Keys and self-mask seeds come from the operating system's generator (`ring`'s
//! `SystemRandom`), never from the scenario's seed: anyone holding the scenario could
//! otherwise remove the masks. The masks cancel exactly, so the unmasked sum — and the run's
//! weights — are still the same bytes for the same scenario and seed.
//!
//! Limits: at most 255 clients per round (GF(256) share indices); `Σ n_k · range` must stay
//! below `2^b` (checked when the sum is unmasked: a wrapped sum is an error, never a result).

pub mod aggregator;
pub mod graph;
pub mod masking;
pub mod participant;
pub mod quantize;
pub mod shares;
pub mod unmask;
pub mod vector;

/// A client's index in a secure-aggregation round (its id in the round's key list).
pub type ClientIndex = u32;

/// The FedAvg mean of the updates `u[k]` weighted by `w[k]` over the clients `keep`, in
/// `f64`: what a secure sum must reproduce within the quantisation error (the tests' reference).
#[cfg(test)]
fn weighted_mean(u: &[Vec<f32>], w: &[u64], keep: &[usize]) -> Vec<f64> {
    let total: u64 = keep.iter().map(|&k| w[k]).sum();
    (0..u[0].len())
        .map(|i| {
            keep.iter()
                .map(|&k| w[k] as f64 * u[k][i] as f64)
                .sum::<f64>()
                / total as f64
        })
        .collect()
}
