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

use super::graph::MaskingGraph;
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
    graph: MaskingGraph,
    secrets: ClientSecrets,
    /// The key list the shares were made for (U1), set by [`Self::share_keys`].
    keys: BTreeMap<ClientIndex, PublicKeys>,
    /// This client's neighbours in the masking graph over U1, set by [`Self::share_keys`].
    neighbours: BTreeSet<ClientIndex>,
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
            graph: MaskingGraph::Complete,
            secrets: ClientSecrets::generate()?,
            keys: BTreeMap::new(),
            neighbours: BTreeSet::new(),
            held: BTreeMap::new(),
        })
    }

    /// The same participation with masking graph `graph` (default: the complete graph).
    pub fn with_graph(mut self, graph: MaskingGraph) -> Self {
        self.graph = graph;
        self
    }

    /// This client's public keys `(C_u, S_u)`, to advertise.
    pub fn public(&self) -> PublicKeys {
        self.secrets.public()
    }

    /// The ring the update is masked in.
    pub fn quantizer(&self) -> &Quantizer {
        &self.q
    }

    /// Shares of `b_u` and `s_u` for this client's neighbours in the masking graph over the key
    /// list `keys` (U1; with the complete graph, every client of it), each sealed for its
    /// recipient: `(recipient, ciphertext)` for every neighbour, this client keeping its own
    /// share. Errors when the list does not hold this client with its own keys, names a
    /// client twice, gives it fewer neighbours than the threshold needs (threshold − 1) or
    /// more than 254.
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
        ensure!(
            map.len() >= self.threshold,
            "secure aggregation: {} clients advertised keys, the threshold is {}",
            map.len(),
            self.threshold
        );
        let ids: BTreeSet<ClientIndex> = map.keys().copied().collect();
        self.neighbours = self
            .graph
            .neighbours(&ids)
            .remove(&self.me)
            .unwrap_or_default();
        // the shares go to the neighbours and this client, in id order
        let holders: BTreeMap<ClientIndex, PublicKeys> = map
            .iter()
            .filter(|(v, _)| **v == self.me || self.neighbours.contains(v))
            .map(|(v, pk)| (*v, *pk))
            .collect();
        let n = holders.len();
        ensure!(
            n >= self.threshold,
            "secure aggregation: client {} has {} neighbour(s) in the masking graph, the threshold {} needs {}",
            self.me,
            n - 1,
            self.threshold,
            self.threshold - 1
        );
        let b = split(&self.secrets.self_seed, self.threshold, n)?;
        let s = split(&self.secrets.mask.to_bytes(), self.threshold, n)?;
        let mut out = Vec::with_capacity(n - 1);
        for (i, (&v, pk)) in holders.iter().enumerate() {
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
            ensure!(
                self.neighbours.contains(from),
                "secure aggregation: shares from client {from}, which is not a neighbour of client {} in the masking graph",
                self.me
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
    /// exactly U2, at least the threshold arrived; with the k-regular graph, U2 as this
    /// client sees it: itself and its neighbours that sent shares, the request read within
    /// its neighbourhood). Errors, revealing nothing, otherwise.
    pub fn reveal(&self, req: &UnmaskRequest) -> Result<Reveal> {
        let u2 = self.masking_clients();
        match self.graph {
            MaskingGraph::Complete => req.check(&u2, self.threshold)?,
            MaskingGraph::KRegular { .. } => {
                ensure!(
                    req.arrived.len() >= self.threshold,
                    "secure aggregation: {} masked vectors arrived, the threshold is {}",
                    req.arrived.len(),
                    self.threshold
                );
                let near = |c: &&ClientIndex| **c == self.me || self.neighbours.contains(c);
                let local = UnmaskRequest {
                    arrived: req.arrived.iter().filter(near).copied().collect(),
                    dropped: req.dropped.iter().filter(near).copied().collect(),
                };
                local.check(&u2, 0)?;
            }
        }
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
