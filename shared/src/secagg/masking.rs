//! A client's secure-aggregation keys and masks (Bonawitz et al. 2017, §4, Figure 4
//! rounds 0–2).
//!
//! Each client `u` draws two X25519 key pairs per round: `(c_u, C_u)` to agree the keys that
//! seal the shares it sends to each peer ([`super::shares`]) and `(s_u, S_u)` for its masks;
//! and a self-mask seed `b_u`. With peer `v`'s public mask key the pair agrees
//! `s_{u,v} = HKDF-SHA256(X25519(s_u, S_v))` (salt `fedssl-secagg-v1`, info: purpose,
//! round, `min(u, v)`, `max(u, v)`; the same for both sides). A seed expands into a mask of
//! `P` ring elements by ChaCha20 ([`prg`]), and `u` sends
//! `y_u = x_u + PRG(b_u) + Σ_{v>u} PRG(s_{u,v}) − Σ_{v<u} PRG(s_{u,v})` (mod `2^b`): summed
//! over all clients the pairwise masks cancel.

use anyhow::{ensure, Context, Result};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use ring::rand::SecureRandom;
use x25519_dalek::{PublicKey, StaticSecret};

use super::quantize::Quantizer;
use super::ClientIndex;

/// HKDF salt of every key this module derives.
const SALT: &[u8] = b"fedssl-secagg-v1";
/// HKDF purpose of the pairwise mask seeds.
pub const PURPOSE_MASK: &[u8] = b"mask";
/// HKDF purpose of the keys that seal shares.
pub const PURPOSE_SEAL: &[u8] = b"seal";

/// 32 bytes from the operating system's generator. Errors if it fails.
pub fn os_random_32() -> Result<[u8; 32]> {
    let mut b = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| anyhow::anyhow!("secure aggregation: the system random generator failed"))?;
    Ok(b)
}

/// One client's secrets for one round: the sealing and mask secret keys and the self-mask
/// seed `b_u`.
pub struct ClientSecrets {
    /// `c_u`, the X25519 secret that agrees the share-sealing keys.
    pub seal: StaticSecret,
    /// `s_u`, the X25519 secret that agrees the pairwise mask seeds (Shamir-shared).
    pub mask: StaticSecret,
    /// `b_u`, the self-mask seed (Shamir-shared).
    pub self_seed: [u8; 32],
}

/// What a client publishes (through the coordinator) to the round's other clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PublicKeys {
    /// `C_u`.
    pub seal: [u8; 32],
    /// `S_u`.
    pub mask: [u8; 32],
}

impl ClientSecrets {
    /// Fresh secrets from the operating system's generator.
    pub fn generate() -> Result<Self> {
        Ok(Self {
            seal: StaticSecret::from(os_random_32()?),
            mask: StaticSecret::from(os_random_32()?),
            self_seed: os_random_32()?,
        })
    }

    /// The public keys `(C_u, S_u)`.
    pub fn public(&self) -> PublicKeys {
        PublicKeys {
            seal: PublicKey::from(&self.seal).to_bytes(),
            mask: PublicKey::from(&self.mask).to_bytes(),
        }
    }
}

/// The 32-byte key clients `a` and `b` agree for `purpose` in `round`:
/// `HKDF-SHA256(X25519(secret, peer))`, the same whichever of the two computes it. Errors
/// on a peer key of low order (an all-zero shared secret: a malicious or broken peer).
pub fn agree(
    secret: &StaticSecret,
    peer: &[u8; 32],
    purpose: &[u8],
    round: u64,
    a: ClientIndex,
    b: ClientIndex,
) -> Result<[u8; 32]> {
    let shared = secret.diffie_hellman(&PublicKey::from(*peer));
    ensure!(
        shared.was_contributory(),
        "secure aggregation: client {b}'s public key is of low order"
    );
    let (lo, hi) = (a.min(b), a.max(b));
    let mut info = Vec::with_capacity(purpose.len() + 16);
    info.extend_from_slice(purpose);
    info.extend_from_slice(&round.to_le_bytes());
    info.extend_from_slice(&lo.to_le_bytes());
    info.extend_from_slice(&hi.to_le_bytes());
    let prk = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, SALT).extract(shared.as_bytes());
    let infos = [info.as_slice()];
    let okm = prk
        .expand(&infos, ring::hkdf::HKDF_SHA256)
        .map_err(|_| anyhow::anyhow!("secure aggregation: HKDF expand failed"))?;
    let mut out = [0u8; 32];
    okm.fill(&mut out)
        .map_err(|_| anyhow::anyhow!("secure aggregation: HKDF fill failed"))?;
    Ok(out)
}

/// The mask of `len` ring elements expanded from `seed` by ChaCha20 (20 rounds, its key the
/// seed, nonce 0): `next_u32` per element in a 32-bit ring, `next_u64` in a 64-bit one.
pub fn prg(seed: &[u8; 32], len: usize, q: &Quantizer) -> Vec<u64> {
    let mut rng = ChaCha20Rng::from_seed(*seed);
    if q.bits == 64 {
        (0..len).map(|_| rng.next_u64()).collect()
    } else {
        (0..len).map(|_| rng.next_u32() as u64).collect()
    }
}

/// `x += sign · PRG(seed)` (mod `2^b`), `sign` = +1 when `add`, −1 otherwise.
pub fn apply_mask(x: &mut [u64], seed: &[u8; 32], add: bool, q: &Quantizer) {
    let mask = prg(seed, x.len(), q);
    for (v, m) in x.iter_mut().zip(mask) {
        *v = q.reduce(if add {
            v.wrapping_add(m)
        } else {
            v.wrapping_sub(m)
        });
    }
}

/// Client `me`'s masked vector `y_u` (module docs) of its encoded update `x` (modified in
/// place), given the round's other clients' public keys `peers` (`(v, S_v)`, `v ≠ me`).
/// Errors on a peer key of low order, naming the peer.
pub fn mask_update(
    x: &mut [u64],
    me: ClientIndex,
    secrets: &ClientSecrets,
    peers: &[(ClientIndex, [u8; 32])],
    round: u64,
    q: &Quantizer,
) -> Result<()> {
    apply_mask(x, &secrets.self_seed, true, q);
    for &(v, pk) in peers {
        ensure!(
            v != me,
            "secure aggregation: client {me} listed as its own peer"
        );
        let seed = agree(&secrets.mask, &pk, PURPOSE_MASK, round, me, v)
            .with_context(|| format!("masking client {me}'s update"))?;
        apply_mask(x, &seed, me < v, q);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_sides_agree_the_same_key_and_purposes_differ() {
        let (a, b) = (
            ClientSecrets::generate().unwrap(),
            ClientSecrets::generate().unwrap(),
        );
        let (pa, pb) = (a.public(), b.public());
        let ab = agree(&a.mask, &pb.mask, PURPOSE_MASK, 4, 1, 2).unwrap();
        let ba = agree(&b.mask, &pa.mask, PURPOSE_MASK, 4, 2, 1).unwrap();
        assert_eq!(ab, ba);
        assert_ne!(ab, agree(&a.mask, &pb.mask, PURPOSE_SEAL, 4, 1, 2).unwrap());
        assert_ne!(ab, agree(&a.mask, &pb.mask, PURPOSE_MASK, 5, 1, 2).unwrap());
        // a low-order public key (the identity point) is refused
        let e = agree(&a.mask, &[0u8; 32], PURPOSE_MASK, 4, 1, 2).unwrap_err();
        assert!(e.to_string().contains("client 2"), "{e}");
    }

    #[test]
    fn prg_is_a_function_of_the_seed_in_the_ring() {
        let q = Quantizer::default();
        let m = prg(&[7; 32], 1000, &q);
        assert_eq!(m, prg(&[7; 32], 1000, &q));
        assert_ne!(m, prg(&[8; 32], 1000, &q));
        assert!(m.iter().all(|&v| v < 1 << 32));
        // the first element is ChaCha20's first keystream word for key [7; 32], nonce 0
        let mut rng = ChaCha20Rng::from_seed([7; 32]);
        assert_eq!(m[0], rng.next_u32() as u64);
        let mut x = vec![5u64; 1000];
        apply_mask(&mut x, &[7; 32], true, &q);
        apply_mask(&mut x, &[7; 32], false, &q);
        assert_eq!(x, vec![5u64; 1000]);
    }
}
