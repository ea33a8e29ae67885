//! One client's side of a secure-aggregation round (Bonawitz et al. 2017, Figure 4, the
//! user's rounds 0–4), without the network: fresh keys ([`Participant::new`]), its sealed
//! Shamir shares for the round's key list ([`Participant::share_keys`]), the shares the others
//! sealed for it ([`Participant::receive_shares`]), its masked update
//! ([`Participant::mask`]) and its answer to the unmasking ([`Participant::reveal`]), which
//! refuses to reveal both secrets of any client.
//!
//! The clients are the coordinator's ids ([`ClientIndex`]); client `keys[i]` of the sorted
//! key list holds share `i` of everyone's secrets.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{bail, ensure, Context, Result};

use super::masking::{agree, mask_update, ClientSecrets, PublicKeys, PURPOSE_SEAL};
use super::quantize::Quantizer;
use super::shares::{open, seal, split};
use super::unmask::UnmaskRequest;
use super::ClientIndex;

/// Bytes of one Shamir share of a 32-byte secret (evaluation point + 32 values).
pub const SHARE_BYTES: usize = 33;

/// A client's answer to the unmasking: shares of `b_u` by owner `u` (arrived) and of `s_v`
/// by owner `v` (dropped), each [`SHARE_BYTES`] long.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reveal {
    /// Shares of the self-mask seeds of the clients whose vectors arrived.
    pub self_seeds: Vec<(ClientIndex, Vec<u8>)>,
    /// Shares of the mask secret keys of the clients whose vectors did not.
    pub mask_keys: Vec<(ClientIndex, Vec<u8>)>,
}

/// One client's state through a secure-aggregation round.
pub struct Participant {
    round: u64,
    me: ClientIndex,
    threshold: usize,
    q: Quantizer,
    secrets: ClientSecrets,
    /// The key list the shares were made for (U1), set by [`Self::share_keys`].
    keys: BTreeMap<ClientIndex, PublicKeys>,
    /// The shares this client holds, by owner: `share of b_owner ‖ share of s_owner`.
    held: BTreeMap<ClientIndex, Vec<u8>>,
}

impl Participant {
    /// Client `me`'s participation in `round` with Shamir threshold `threshold` and ring `q`:
    /// fresh keys from the operating system's generator. Errors on an invalid quantiser or
    /// a threshold below 2, or if the generator fails.
    pub fn new(round: u64, me: ClientIndex, threshold: usize, q: Quantizer) -> Result<Self> {
        q.validate()?;
        ensure!(
            threshold >= 2,
            "secure aggregation: threshold {threshold} is below 2"
        );
        Ok(Self {
            round,
            me,
            threshold,
            q,
            secrets: ClientSecrets::generate()?,
            keys: BTreeMap::new(),
            held: BTreeMap::new(),
        })
    }

    /// This client's public keys `(C_u, S_u)`, to advertise.
    pub fn public(&self) -> PublicKeys {
        self.secrets.public()
    }

    /// The ring the update is masked in.
    pub fn quantizer(&self) -> &Quantizer {
        &self.q
    }

    /// Shares of `b_u` and `s_u` for every client of the key list `keys` (U1), each sealed
    /// for its recipient: `(recipient, ciphertext)` for every client but this one, whose own
    /// share it keeps. Errors when the list does not hold this client with its own keys,
    /// names a client twice, has fewer clients than the threshold or more than 255.
    pub fn share_keys(
        &mut self,
        keys: &[(ClientIndex, PublicKeys)],
    ) -> Result<Vec<(ClientIndex, Vec<u8>)>> {
        let map: BTreeMap<ClientIndex, PublicKeys> = keys.iter().copied().collect();
        ensure!(
            map.len() == keys.len(),
            "secure aggregation: the key list names a client twice"
        );
        ensure!(
            map.get(&self.me) == Some(&self.public()),
            "secure aggregation: the key list does not hold client {}'s own keys",
            self.me
        );
        let n = map.len();
        ensure!(
            n >= self.threshold,
            "secure aggregation: {n} clients advertised keys, the threshold is {}",
            self.threshold
        );
        let b = split(&self.secrets.self_seed, self.threshold, n)?;
        let s = split(&self.secrets.mask.to_bytes(), self.threshold, n)?;
        let mut out = Vec::with_capacity(n - 1);
        for (i, (&v, pk)) in map.iter().enumerate() {
            let mut plain = b[i].clone();
            plain.extend_from_slice(&s[i]);
            if v == self.me {
                self.held.insert(v, plain);
                continue;
            }
            let key = self.seal_key(v, pk)?;
            out.push((v, seal(&key, self.round, self.me, v, &plain)?));
        }
        self.keys = map;
        Ok(out)
    }

    /// The key that seals the shares between this client and `peer` (either direction):
    /// Diffie–Hellman of this client's seal key with `pk.seal`, bound to the round and pair.
    fn seal_key(&self, peer: ClientIndex, pk: &PublicKeys) -> Result<[u8; 32]> {
        agree(
            &self.secrets.seal,
            &pk.seal,
            PURPOSE_SEAL,
            self.round,
            self.me,
            peer,
        )
    }

    /// Opens the shares the other clients sealed for this one (`(sender, ciphertext)`); the
    /// senders and this client are the clients its update is masked against (U2). Errors,
    /// naming the sender, on a sender outside the key list, a repeated sender, a box that
    /// does not open or a share of the wrong size, and when fewer than the threshold remain.
    pub fn receive_shares(&mut self, routed: &[(ClientIndex, Vec<u8>)]) -> Result<()> {
        ensure!(
            !self.keys.is_empty(),
            "secure aggregation: shares routed before the key list"
        );
        for (from, sealed) in routed {
            let pk = self.keys.get(from).with_context(|| {
                format!(
                    "secure aggregation: shares from client {from}, which is not in the key list"
                )
            })?;
            ensure!(
                *from != self.me && !self.held.contains_key(from),
                "secure aggregation: shares from client {from} routed twice"
            );
            let key = self.seal_key(*from, pk)?;
            let plain = open(&key, self.round, *from, self.me, sealed)?;
            ensure!(
                plain.len() == 2 * SHARE_BYTES,
                "secure aggregation: client {from}'s shares are {} bytes, not {}",
                plain.len(),
                2 * SHARE_BYTES
            );
            self.held.insert(*from, plain);
        }
        ensure!(
            self.held.len() >= self.threshold,
            "secure aggregation: shares of {} clients arrived, the threshold is {}",
            self.held.len(),
            self.threshold
        );
        Ok(())
    }

    /// The clients this client's update is masked against (U2: itself and the senders of
    /// the shares it received).
    pub fn masking_clients(&self) -> BTreeSet<ClientIndex> {
        self.held.keys().copied().collect()
    }

    /// The masked vector of update `x` `(P,)` weighted by `weight` (n_k): quantised, times
    /// `n_k` in the ring, plus the self mask and the pairwise masks with the other clients of
    /// U2 (`(P,)` ring elements). Errors before the shares were received, or on a
    /// non-finite value of `x`.
    pub fn mask(&self, x: &[f32], weight: u64) -> Result<Vec<u64>> {
        ensure!(
            self.held.contains_key(&self.me),
            "secure aggregation: masking before the shares were exchanged"
        );
        let mut y = self.q.encode_weighted(x, weight)?;
        let peers: Vec<(ClientIndex, [u8; 32])> = self
            .held
            .keys()
            .filter(|&&v| v != self.me)
            .map(|v| (*v, self.keys[v].mask))
            .collect();
        mask_update(&mut y, self.me, &self.secrets, &peers, self.round, &self.q)?;
        Ok(y)
    }

    /// The shares `req` asks for ([`UnmaskRequest`]: `b` of the arrived clients, `s` of the
    /// dropped ones), after checking it ([`UnmaskRequest::check`]: disjoint sets that are
    /// exactly U2, at least the threshold arrived). Errors, revealing nothing, otherwise.
    pub fn reveal(&self, req: &UnmaskRequest) -> Result<Reveal> {
        let u2 = self.masking_clients();
        req.check(&u2, self.threshold)?;
        if !req.arrived.contains(&self.me) {
            bail!(
                "secure aggregation: client {} is asked to unmask a sum its own vector is not in",
                self.me
            );
        }
        let mut r = Reveal::default();
        for (&owner, plain) in &self.held {
            let (b, s) = plain.split_at(SHARE_BYTES);
            if req.arrived.contains(&owner) {
                r.self_seeds.push((owner, b.to_vec()));
            } else {
                r.mask_keys.push((owner, s.to_vec()));
            }
        }
        Ok(r)
    }
}
