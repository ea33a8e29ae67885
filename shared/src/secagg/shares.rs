//! Shamir `t`-of-`n` shares of a client's 32-byte secrets (Shamir 1979, over GF(256) byte by
//! byte: the `blahaj` crate) and their sealing for the one peer that holds each
//! (Bonawitz et al. 2017, Figure 4 round 1: `c_{u,v} = AE.enc(KA.agree(c_u, C_v), u‖v‖shares)`).
//!
//! A share is `1 + 32` bytes (its GF(256) evaluation point, then the values). Sealing is
//! ChaCha20-Poly1305 (`ring`) under the key [`super::masking::agree`] gives for
//! [`super::masking::PURPOSE_SEAL`], the nonce and associated data binding the round, the
//! sender and the recipient, so a share replayed into another round or pair fails to open.

use std::convert::TryFrom;

use anyhow::{bail, ensure, Result};
use blahaj::{Share, Sharks};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};

use super::ClientIndex;

/// `n` shares of `secret`, any `threshold` of which recover it: share `i` (0-based) is for the
/// round's `i`-th client. Errors unless `2 ≤ threshold ≤ n ≤ 255`.
pub fn split(secret: &[u8; 32], threshold: usize, n: usize) -> Result<Vec<Vec<u8>>> {
    ensure!(
        (2..=n).contains(&threshold) && n <= 255,
        "secure aggregation: threshold {threshold} of {n} clients must satisfy 2 ≤ threshold ≤ clients ≤ 255"
    );
    let sharks = Sharks(threshold as u8);
    Ok(sharks
        .dealer(secret)
        .take(n)
        .map(|s| Vec::from(&s))
        .collect())
}

/// The secret from at least `threshold` distinct shares of it. Errors (saying how many
/// arrived) with fewer, or on a malformed share; `whose` names the secret in the message.
pub fn recover(shares: &[Vec<u8>], threshold: usize, whose: &str) -> Result<[u8; 32]> {
    let parsed = shares
        .iter()
        .map(|b| Share::try_from(b.as_slice()).map_err(|e| anyhow::anyhow!("{whose}: {e}")))
        .collect::<Result<Vec<_>>>()?;
    let mut points: Vec<u8> = parsed.iter().map(|s| s.x.0).collect();
    points.sort_unstable();
    points.dedup();
    if points.len() < threshold {
        bail!(
            "secure aggregation: {} distinct shares of {whose}, the threshold is {threshold}",
            points.len()
        );
    }
    let secret = Sharks(threshold as u8)
        .recover(parsed.iter())
        .map_err(|e| anyhow::anyhow!("{whose}: {e}"))?;
    <[u8; 32]>::try_from(secret.as_slice())
        .map_err(|_| anyhow::anyhow!("{whose}: recovered {} bytes, not 32", secret.len()))
}

/// The nonce and associated data of a sealed share: round, sender, recipient.
fn binding(round: u64, from: ClientIndex, to: ClientIndex) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&round.to_le_bytes());
    b[8..12].copy_from_slice(&from.to_le_bytes());
    b[12..].copy_from_slice(&to.to_le_bytes());
    b
}

/// The 12-byte nonce: the round's low 32 bits, sender, recipient (unique per key: a pair's
/// sealing key is agreed afresh every round, and the associated data binds all 64 bits).
fn nonce(b: &[u8; 16]) -> Result<Nonce> {
    let mut n = [0u8; 12];
    n[..4].copy_from_slice(&b[..4]);
    n[4..].copy_from_slice(&b[8..]);
    Nonce::try_assume_unique_for_key(&n)
        .map_err(|_| anyhow::anyhow!("secure aggregation: bad nonce"))
}

fn cipher(key: &[u8; 32]) -> Result<LessSafeKey> {
    let k = UnboundKey::new(&CHACHA20_POLY1305, key)
        .map_err(|_| anyhow::anyhow!("secure aggregation: bad sealing key"))?;
    Ok(LessSafeKey::new(k))
}

/// `plaintext` sealed for client `to` by client `from` in `round` under `key` (their
/// agreed [`super::masking::PURPOSE_SEAL`] key): ciphertext plus 16-byte tag.
pub fn seal(
    key: &[u8; 32],
    round: u64,
    from: ClientIndex,
    to: ClientIndex,
    plaintext: &[u8],
) -> Result<Vec<u8>> {
    let b = binding(round, from, to);
    let nonce = nonce(&b)?;
    let mut buf = plaintext.to_vec();
    cipher(key)?
        .seal_in_place_append_tag(nonce, Aad::from(b), &mut buf)
        .map_err(|_| anyhow::anyhow!("secure aggregation: sealing failed"))?;
    Ok(buf)
}

/// Opens what [`seal`] sealed. Errors, naming the sender, when the key, round, sender,
/// recipient or bytes differ from the sealing ones (a forged, altered or replayed share).
pub fn open(
    key: &[u8; 32],
    round: u64,
    from: ClientIndex,
    to: ClientIndex,
    sealed: &[u8],
) -> Result<Vec<u8>> {
    let b = binding(round, from, to);
    let nonce = nonce(&b)?;
    let mut buf = sealed.to_vec();
    let plain = cipher(key)?
        .open_in_place(nonce, Aad::from(b), &mut buf)
        .map_err(|_| {
            anyhow::anyhow!(
                "secure aggregation: the shares client {from} sent to client {to} for round {round} do not open (altered, forged or replayed)"
            )
        })?;
    Ok(plain.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_threshold_shares_recover_and_fewer_do_not() {
        let secret: [u8; 32] = std::array::from_fn(|i| (i * 7 + 1) as u8);
        let shares = split(&secret, 3, 5).unwrap();
        assert_eq!(shares.len(), 5);
        assert!(shares.iter().all(|s| s.len() == 33));
        for pick in [[0, 1, 2], [0, 2, 4], [4, 3, 1]] {
            let sub: Vec<Vec<u8>> = pick.iter().map(|&i| shares[i].clone()).collect();
            assert_eq!(recover(&sub, 3, "b_1").unwrap(), secret);
        }
        let two = vec![shares[0].clone(), shares[3].clone(), shares[0].clone()];
        let e = recover(&two, 3, "b_1").unwrap_err().to_string();
        assert!(
            e.contains("2 distinct shares of b_1, the threshold is 3"),
            "{e}"
        );
        assert!(split(&secret, 1, 5).is_err());
        assert!(split(&secret, 6, 5).is_err());
        assert!(split(&secret, 3, 256).is_err());
    }

    #[test]
    fn sealed_shares_open_only_for_their_round_and_pair() {
        let key = [9u8; 32];
        let s = seal(&key, 3, 1, 2, b"share bytes").unwrap();
        assert_ne!(&s[..11], b"share bytes");
        assert_eq!(open(&key, 3, 1, 2, &s).unwrap(), b"share bytes");
        let e = open(&key, 4, 1, 2, &s).unwrap_err().to_string();
        assert!(e.contains("client 1 sent to client 2 for round 4"), "{e}");
        assert!(open(&key, 3, 2, 1, &s).is_err());
        assert!(open(&[8u8; 32], 3, 1, 2, &s).is_err());
        let mut bad = s.clone();
        bad[0] ^= 1;
        assert!(open(&key, 3, 1, 2, &bad).is_err());
    }
}
