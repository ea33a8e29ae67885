//! The coordinator's side of one secure-aggregation round (Bonawitz et al. 2017, Figure 4,
//! the server's rounds 0–4), without the network: the advertised keys ([`RoundAggregation::add_keys`],
//! U1), the sealed shares and their routing ([`RoundAggregation::add_shares`],
//! [`RoundAggregation::routed_to`], U2), the masked vectors ([`RoundAggregation::add_masked`],
//! U3), the survivors' shares ([`RoundAggregation::add_reveal`], U4) and the unmasked
//! weighted mean ([`RoundAggregation::finish`]). Every refusal names the client and changes
//! nothing; the coordinator reads the ciphertexts it routes no more than anyone else can.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{bail, ensure, Result};

use super::graph::MaskingGraph;
use super::masking::PublicKeys;
use super::participant::{Reveal, SHARE_BYTES};
use super::quantize::Quantizer;
use super::shares::recover;
use super::unmask::{MaskedSum, UnmaskRequest};
use super::ClientIndex;

/// Largest sealed share box accepted: two shares and the 16-byte tag.
const SEALED_BYTES: usize = 2 * SHARE_BYTES + 16;

/// One round's secure aggregation on the coordinator.
pub struct RoundAggregation {
    round: u64,
    threshold: usize,
    q: Quantizer,
    graph: MaskingGraph,
    len: usize,
    keys: BTreeMap<ClientIndex, PublicKeys>,
    /// Sealed shares by sender, then recipient.
    shares: BTreeMap<ClientIndex, BTreeMap<ClientIndex, Vec<u8>>>,
    sum: Option<MaskedSum>,
    b_shares: BTreeMap<ClientIndex, Vec<Vec<u8>>>,
    s_shares: BTreeMap<ClientIndex, Vec<Vec<u8>>>,
    answered: BTreeSet<ClientIndex>,
    request: Option<UnmaskRequest>,
}

impl RoundAggregation {
    /// A round `round` of vectors of `len` values in ring `q`, with Shamir threshold
    /// `threshold`.
    pub fn new(round: u64, threshold: usize, q: Quantizer, len: usize) -> Self {
        Self {
            round,
            threshold,
            q,
            graph: MaskingGraph::Complete,
            len,
            keys: BTreeMap::new(),
            shares: BTreeMap::new(),
            sum: None,
            b_shares: BTreeMap::new(),
            s_shares: BTreeMap::new(),
            answered: BTreeSet::new(),
            request: None,
        }
    }

    /// The same round with masking graph `graph` (default: the complete graph).
    pub fn with_graph(mut self, graph: MaskingGraph) -> Self {
        self.graph = graph;
        self
    }

    /// Every client of the key list U1 with its neighbours in the masking graph.
    fn neighbours(&self) -> BTreeMap<ClientIndex, BTreeSet<ClientIndex>> {
        self.graph.neighbours(&self.keys.keys().copied().collect())
    }

    /// The threshold t.
    pub fn threshold(&self) -> usize {
        self.threshold
    }

    /// Client `u`'s advertised keys. Refused: a second advertisement, keys after the list
    /// was relayed, or keys another client already advertised.
    pub fn add_keys(&mut self, u: ClientIndex, keys: PublicKeys) -> Result<()> {
        ensure!(
            self.shares.is_empty(),
            "secure aggregation: client {u}'s keys came after the key list was sent"
        );
        ensure!(
            !self.keys.contains_key(&u),
            "secure aggregation: client {u} advertised its keys twice"
        );
        ensure!(
            !self
                .keys
                .values()
                .any(|k| k.seal == keys.seal || k.mask == keys.mask),
            "secure aggregation: client {u} advertised keys another client already holds"
        );
        self.keys.insert(u, keys);
        Ok(())
    }

    /// The key list to relay (U1), sorted by id. Errors when fewer clients than the
    /// threshold advertised keys.
    pub fn key_list(&self) -> Result<Vec<(ClientIndex, PublicKeys)>> {
        ensure!(
            self.keys.len() >= self.threshold,
            "secure aggregation: {} client(s) advertised keys, the threshold is {}",
            self.keys.len(),
            self.threshold
        );
        Ok(self.keys.iter().map(|(k, v)| (*k, *v)).collect())
    }

    /// Client `u`'s sealed shares, `(recipient, box)`: exactly one for every neighbour of `u`
    /// in the masking graph over the key list (every other client with the complete graph),
    /// each at most [`SEALED_BYTES`]. Refused otherwise, naming the client.
    pub fn add_shares(&mut self, u: ClientIndex, boxes: Vec<(ClientIndex, Vec<u8>)>) -> Result<()> {
        ensure!(
            self.keys.contains_key(&u),
            "secure aggregation: client {u} sent shares without keys in the list"
        );
        ensure!(
            self.sum.is_none() && !self.shares.contains_key(&u),
            "secure aggregation: client {u}'s shares came twice or too late"
        );
        let near = self.neighbours().remove(&u).unwrap_or_default();
        let mut by_recipient = BTreeMap::new();
        for (v, b) in boxes {
            ensure!(
                v != u && self.keys.contains_key(&v),
                "secure aggregation: client {u} sent shares for client {v}, not another client of the key list"
            );
            ensure!(
                near.contains(&v),
                "secure aggregation: client {u} sent shares for client {v}, which is not its neighbour in the masking graph"
            );
            ensure!(
                b.len() <= SEALED_BYTES,
                "secure aggregation: client {u}'s shares for client {v} are {} bytes, at most {SEALED_BYTES} expected",
                b.len()
            );
            ensure!(
                by_recipient.insert(v, b).is_none(),
                "secure aggregation: client {u} sent two share boxes for client {v}"
            );
        }
        ensure!(
            by_recipient.len() == near.len(),
            "secure aggregation: client {u} sent shares for {} of the {} {}",
            by_recipient.len(),
            near.len(),
            match self.graph {
                MaskingGraph::Complete => "other clients",
                MaskingGraph::KRegular { .. } => "neighbours it has in the masking graph",
            }
        );
        self.shares.insert(u, by_recipient);
        Ok(())
    }

    /// The clients whose shares arrived (U2), the clients the updates are masked against.
    pub fn masking_clients(&self) -> BTreeSet<ClientIndex> {
        self.shares.keys().copied().collect()
    }

    /// What client `v` of U2 receives: the boxes every other client of U2 sealed for it.
    pub fn routed_to(&self, v: ClientIndex) -> Vec<(ClientIndex, Vec<u8>)> {
        self.shares
            .iter()
            .filter(|(u, _)| **u != v)
            .filter_map(|(u, m)| Some((*u, m.get(&v)?.clone())))
            .collect()
    }

    /// Closes the share phase: from now on masked vectors are taken, against U2's mask keys.
    /// Errors when fewer clients than the threshold sent their shares.
    pub fn begin_masking(&mut self) -> Result<()> {
        let u2 = self.masking_clients();
        ensure!(
            u2.len() >= self.threshold,
            "secure aggregation: {} client(s) sent their shares, the threshold is {}; {} sent keys but no shares",
            u2.len(),
            self.threshold,
            missing(self.keys.keys(), &u2)
        );
        let keys = u2.iter().map(|u| (*u, self.keys[u].mask)).collect();
        let mut sum = MaskedSum::new(self.q, self.round, self.len, keys);
        if self.graph != MaskingGraph::Complete {
            sum = sum.with_neighbours(self.neighbours());
        }
        self.sum = Some(sum);
        Ok(())
    }

    /// Client `u`'s masked vector `y` with its weight n_k ([`MaskedSum::add`]: refused,
    /// naming the client and changing nothing, when `u` is not in U2, sent one already (a
    /// replay), or `y` has the wrong length or a value outside the ring).
    pub fn add_masked(&mut self, u: ClientIndex, weight: u64, y: &[u64]) -> Result<()> {
        ensure!(
            self.request.is_none(),
            "secure aggregation: client {u}'s masked vector came after the unmasking began"
        );
        match self.sum.as_mut() {
            Some(s) => s.add(u, weight, y),
            None => bail!(
                "secure aggregation: client {u}'s masked vector came before the shares were routed"
            ),
        }
    }

    /// Closes the masked phase: the request to send the survivors ([`UnmaskRequest`]).
    /// Errors when fewer vectors than the threshold arrived (the round fails).
    pub fn unmask_request(&mut self) -> Result<UnmaskRequest> {
        let Some(sum) = self.sum.as_ref() else {
            bail!("secure aggregation: no masked phase");
        };
        let req = sum.request();
        ensure!(
            req.arrived.len() >= self.threshold,
            "secure aggregation: {} masked vector(s) arrived, the threshold is {}; none from {}",
            req.arrived.len(),
            self.threshold,
            missing(self.shares.keys(), &req.arrived)
        );
        self.request = Some(req.clone());
        Ok(req)
    }

    /// Survivor `v`'s shares. Refused, naming the client, and nothing kept: `v` not among
    /// the arrived, a second answer, a share of the wrong size, a share of `b` for a dropped
    /// client or of `s` for an arrived one, or a repeated owner.
    pub fn add_reveal(&mut self, v: ClientIndex, r: Reveal) -> Result<()> {
        let Some(req) = self.request.as_ref() else {
            bail!("secure aggregation: client {v}'s shares came before the unmask request");
        };
        ensure!(
            req.arrived.contains(&v) && !self.answered.contains(&v),
            "secure aggregation: client {v} is not a survivor yet to answer"
        );
        let check = |list: &[(ClientIndex, Vec<u8>)], want: &BTreeSet<ClientIndex>, what: &str| {
            let mut seen = BTreeSet::new();
            for (owner, share) in list {
                ensure!(
                    want.contains(owner) && seen.insert(*owner),
                    "secure aggregation: client {v} revealed a {what} share of client {owner}, which was not asked for"
                );
                ensure!(
                    share.len() == SHARE_BYTES,
                    "secure aggregation: client {v}'s share of client {owner} is {} bytes, not {SHARE_BYTES}",
                    share.len()
                );
            }
            Ok(())
        };
        check(&r.self_seeds, &req.arrived, "self-mask")?;
        check(&r.mask_keys, &req.dropped, "mask-key")?;
        for (owner, share) in r.self_seeds {
            self.b_shares.entry(owner).or_default().push(share);
        }
        for (owner, share) in r.mask_keys {
            self.s_shares.entry(owner).or_default().push(share);
        }
        self.answered.insert(v);
        Ok(())
    }

    /// The survivors that answered the unmasking (U4).
    pub fn survivors(&self) -> &BTreeSet<ClientIndex> {
        &self.answered
    }

    /// The unmasked weighted mean of the arrived updates `(P,)` and their total weight
    /// `N = Σ n_k`. Errors (the round fails, nothing aggregated) when fewer survivors than
    /// the threshold answered, a secret cannot be recovered, or the sum could have wrapped.
    pub fn finish(self) -> Result<(Vec<f64>, u64)> {
        let (Some(sum), Some(req)) = (self.sum, self.request) else {
            bail!("secure aggregation: the round did not reach the unmasking");
        };
        ensure!(
            self.answered.len() >= self.threshold,
            "secure aggregation: {} survivor(s) answered the unmasking, the threshold is {}; {} left after masking",
            self.answered.len(),
            self.threshold,
            missing(req.arrived.iter(), &self.answered)
        );
        let mut seeds = BTreeMap::new();
        for u in &req.arrived {
            let sh = self.b_shares.get(u).map(Vec::as_slice).unwrap_or_default();
            let whose = format!("client {u}'s self-mask seed");
            seeds.insert(*u, recover(sh, self.threshold, &whose)?);
        }
        let mut secrets = BTreeMap::new();
        for v in &req.dropped {
            let sh = self.s_shares.get(v).map(Vec::as_slice).unwrap_or_default();
            let whose = format!("client {v}'s mask key");
            secrets.insert(*v, recover(sh, self.threshold, &whose)?);
        }
        let (ring, total) = sum.unmask(&seeds, &secrets)?;
        let mean = self.q.decode_mean(&ring, total)?;
        Ok((mean, total))
    }
}

/// The clients of `all` not in `present`, for an error: `client 4` or `clients 3, 4`.
fn missing<'a>(
    all: impl Iterator<Item = &'a ClientIndex>,
    present: &BTreeSet<ClientIndex>,
) -> String {
    let gone: Vec<String> = all
        .filter(|u| !present.contains(u))
        .map(|u| u.to_string())
        .collect();
    match gone.len() {
        1 => format!("client {}", gone[0]),
        _ => format!("clients {}", gone.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::super::participant::Participant;
    use super::*;

    /// Routes a whole round in memory: `updates` with `weights`; clients in `before` fail
    /// after sharing keys (no masked vector), those in `after` send their vector but do not
    /// answer the unmasking. Returns the coordinator's mean and total weight.
    fn round(
        updates: &[Vec<f32>],
        weights: &[u64],
        t: usize,
        before: &[u32],
        after: &[u32],
    ) -> Result<(Vec<f64>, u64)> {
        round_on(MaskingGraph::Complete, updates, weights, t, before, after)
    }

    /// [`round`] with masking graph `graph`; ids are 1, 4, 7, … (3k + 1).
    fn round_on(
        graph: MaskingGraph,
        updates: &[Vec<f32>],
        weights: &[u64],
        t: usize,
        before: &[u32],
        after: &[u32],
    ) -> Result<(Vec<f64>, u64)> {
        let q = Quantizer {
            bits: 64,
            ..Quantizer::default()
        };
        let n = updates.len();
        let ids: Vec<u32> = (0..n as u32).map(|i| i * 3 + 1).collect();
        let mut ps: Vec<Participant> = ids
            .iter()
            .map(|&id| Participant::new(5, id, t, q).unwrap().with_graph(graph))
            .collect();
        let mut agg = RoundAggregation::new(5, t, q, updates[0].len()).with_graph(graph);
        for (p, &id) in ps.iter().zip(&ids) {
            agg.add_keys(id, p.public())?;
        }
        let list = agg.key_list()?;
        for (p, &id) in ps.iter_mut().zip(&ids) {
            let boxes = p.share_keys(&list)?;
            if let MaskingGraph::KRegular { k } = graph {
                assert_eq!(
                    boxes.len(),
                    k.min(n - 1),
                    "client {id}: one box per neighbour"
                );
            }
            agg.add_shares(id, boxes)?;
        }
        agg.begin_masking()?;
        for (p, &id) in ps.iter_mut().zip(&ids) {
            p.receive_shares(&agg.routed_to(id))?;
        }
        for (k, (p, &id)) in ps.iter().zip(&ids).enumerate() {
            if before.contains(&id) {
                continue;
            }
            let y = p.mask(&updates[k], weights[k])?;
            agg.add_masked(id, weights[k], &y)?;
        }
        let req = agg.unmask_request()?;
        for (p, &id) in ps.iter().zip(&ids) {
            if before.contains(&id) || after.contains(&id) {
                continue;
            }
            agg.add_reveal(id, p.reveal(&req)?)?;
        }
        agg.finish()
    }

    fn updates(n: usize, len: usize) -> Vec<Vec<f32>> {
        (0..n)
            .map(|k| {
                (0..len)
                    .map(|i| ((i * 13 + k * 29) % 101) as f32 / 50.0 - 1.0)
                    .collect()
            })
            .collect()
    }

    fn close(a: &[f64], b: &[f64]) {
        let tol = Quantizer::default().max_error() * 1.0001;
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!((x - y).abs() <= tol, "value {i}: {x} vs {y}");
        }
    }

    #[test]
    fn a_k_regular_round_gives_the_weighted_mean_with_dropouts() {
        // 9 clients (ids 1, 4, …, 25), each masking with 4 neighbours, t = 3 of 5 shares
        let g = MaskingGraph::KRegular { k: 4 };
        let u = updates(9, 200);
        let w = [30, 10, 20, 50, 40, 15, 25, 35, 45];
        let all: Vec<usize> = (0..9).collect();
        let (m, total) = round_on(g, &u, &w, 3, &[], &[]).unwrap();
        assert_eq!(total, 270);
        close(&m, &super::super::weighted_mean(&u, &w, &all));
        // id 4 (the second) drops before masking, id 13 (the fifth) after
        let (m, total) = round_on(g, &u, &w, 3, &[4], &[13]).unwrap();
        assert_eq!(total, 260);
        close(
            &m,
            &super::super::weighted_mean(&u, &w, &[0, 2, 3, 4, 5, 6, 7, 8]),
        );
        // two dropped before masking, far apart in the graph
        let (m, _) = round_on(g, &u, &w, 3, &[4, 16], &[]).unwrap();
        close(
            &m,
            &super::super::weighted_mean(&u, &w, &[0, 2, 3, 4, 6, 7, 8]),
        );
        // three of client 1's four neighbours (4, 7, 22, 25) leave after masking: 6
        // survivors are more than t, but client 1's self mask has only 2 shares left
        let e = round_on(g, &u, &w, 3, &[], &[4, 7, 25])
            .unwrap_err()
            .to_string();
        assert!(e.contains("client 1's self-mask seed"), "{e}");
    }

    #[test]
    fn routed_round_gives_the_weighted_mean_with_dropouts() {
        let u = updates(5, 300);
        let w = [30, 10, 20, 50, 40];
        let (m, total) = round(&u, &w, 3, &[], &[]).unwrap();
        assert_eq!(total, 150);
        close(&m, &super::super::weighted_mean(&u, &w, &[0, 1, 2, 3, 4]));
        // id 13 (the fifth) drops after masking: its update is in the mean
        let (m, _) = round(&u, &w, 3, &[], &[13]).unwrap();
        close(&m, &super::super::weighted_mean(&u, &w, &[0, 1, 2, 3, 4]));
        // id 4 (the second) drops before masking: the mean of the others
        let (m, total) = round(&u, &w, 3, &[4], &[13]).unwrap();
        assert_eq!(total, 140);
        close(&m, &super::super::weighted_mean(&u, &w, &[0, 2, 3, 4]));
        // two drop after masking with threshold 4: 3 survivors cannot unmask
        let e = round(&u, &w, 4, &[], &[10, 13]).unwrap_err().to_string();
        assert!(
            e.contains(
                "3 survivor(s) answered the unmasking, the threshold is 4; clients 10, 13 left after masking"
            ),
            "{e}"
        );
    }

    #[test]
    fn bad_shares_vectors_and_reveals_are_refused_naming_the_client() {
        let q = Quantizer::default();
        let mut ps: Vec<Participant> = (0..3)
            .map(|i| Participant::new(2, i, 2, q).unwrap())
            .collect();
        let mut agg = RoundAggregation::new(2, 2, q, 4);
        for (i, p) in ps.iter().enumerate() {
            agg.add_keys(i as u32, p.public()).unwrap();
        }
        let e = agg.add_keys(0, ps[0].public()).unwrap_err().to_string();
        assert!(e.contains("client 0 advertised its keys twice"), "{e}");
        let list = agg.key_list().unwrap();
        let boxes: Vec<_> = ps
            .iter_mut()
            .map(|p| p.share_keys(&list).unwrap())
            .collect();
        // shares for only one of the two others
        let e = agg
            .add_shares(1, boxes[1][..1].to_vec())
            .unwrap_err()
            .to_string();
        assert!(e.contains("client 1 sent shares for 1 of the 2"), "{e}");
        for (i, b) in boxes.into_iter().enumerate() {
            agg.add_shares(i as u32, b).unwrap();
        }
        agg.begin_masking().unwrap();
        // a box routed to the wrong client does not open
        let wrong = agg.routed_to(1);
        let e = ps[2].receive_shares(&wrong[..1]).unwrap_err().to_string();
        assert!(e.contains("do not open"), "{e}");
        for (i, p) in ps.iter_mut().enumerate() {
            p.receive_shares(&agg.routed_to(i as u32)).unwrap();
        }
        let y = ps[0].mask(&[0.1, 0.2, 0.3, 0.4], 7).unwrap();
        let e = agg.add_masked(0, 7, &y[..3]).unwrap_err().to_string();
        assert!(e.contains("client 0's masked vector has 3 elements"), "{e}");
        agg.add_masked(0, 7, &y).unwrap();
        let e = agg.add_masked(0, 7, &y).unwrap_err().to_string();
        assert!(e.contains("replay refused"), "{e}");
        let y1 = ps[1].mask(&[0.0; 4], 3).unwrap();
        agg.add_masked(1, 3, &y1).unwrap();
        let req = agg.unmask_request().unwrap();
        assert_eq!(req.dropped, BTreeSet::from([2]));
        // a survivor that reveals the b-share of the dropped client is refused
        let mut bad = ps[0].reveal(&req).unwrap();
        bad.self_seeds.push(bad.mask_keys[0].clone());
        let e = agg.add_reveal(0, bad).unwrap_err().to_string();
        assert!(e.contains("self-mask share of client 2"), "{e}");
        // a request naming a client both ways is refused by the client
        let mut both = req.clone();
        both.arrived.insert(2);
        let e = ps[0].reveal(&both).unwrap_err().to_string();
        assert!(e.contains("both secrets of client 2"), "{e}");
        agg.add_reveal(0, ps[0].reveal(&req).unwrap()).unwrap();
        agg.add_reveal(1, ps[1].reveal(&req).unwrap()).unwrap();
        let (m, total) = agg.finish().unwrap();
        assert_eq!(total, 10);
        for (v, want) in m.iter().zip([0.07, 0.14, 0.21, 0.28]) {
            assert!((v - want).abs() <= q.max_error() * 1.0001, "{v} vs {want}");
        }
    }
}
