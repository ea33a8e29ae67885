//! The coordinator's side of secure aggregation (Bonawitz et al. 2017, Figure 4 rounds 2–4):
//! the masked vectors summed as they arrive ([`MaskedSum`]), then the masks removed
//! ([`MaskedSum::unmask`]) from the secrets the surviving clients' shares recover:
//! - for every client `u` whose masked vector arrived, its self-mask seed `b_u`:
//!   `PRG(b_u)` is subtracted;
//! - for every client `v` that published keys but whose vector did not arrive, its mask
//!   secret `s_v`: for each `u` whose vector arrived the pairwise mask `u` added for `v`
//!   (`+PRG(s_{u,v})` if `u < v`, `−PRG(s_{u,v})` otherwise) is taken back out — with a
//!   sparse masking graph ([`super::graph`]), for each such `u` that is `v`'s neighbour.
//!
//! No client may be asked for both secrets of the same peer (that would unmask its vector):
//! [`UnmaskRequest::check`] is what a client checks before answering.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{bail, ensure, Context, Result};
use x25519_dalek::StaticSecret;

use super::masking::{agree, apply_mask, PURPOSE_MASK};
use super::quantize::Quantizer;
use super::ClientIndex;

/// What the coordinator asks the survivors for: shares of `b_u` for the clients whose
/// vectors arrived and of `s_v` for those whose vectors did not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnmaskRequest {
    /// Clients whose masked vector is in the sum: their self-mask seeds are needed.
    pub arrived: BTreeSet<ClientIndex>,
    /// Clients whose masked vector is not: their mask secret keys are needed.
    pub dropped: BTreeSet<ClientIndex>,
}

impl UnmaskRequest {
    /// A client's check before it reveals any share: the two sets are disjoint and together
    /// are the round's clients `round_clients`, and at least `threshold` vectors arrived.
    /// Errors name the offending client.
    pub fn check(&self, round_clients: &BTreeSet<ClientIndex>, threshold: usize) -> Result<()> {
        if let Some(c) = self.arrived.intersection(&self.dropped).next() {
            bail!("secure aggregation: the coordinator asked for both secrets of client {c}");
        }
        let all: BTreeSet<ClientIndex> = self.arrived.union(&self.dropped).copied().collect();
        ensure!(
            &all == round_clients,
            "secure aggregation: the unmask request does not list exactly the round's clients"
        );
        ensure!(
            self.arrived.len() >= threshold,
            "secure aggregation: {} masked vectors arrived, the threshold is {threshold}",
            self.arrived.len()
        );
        Ok(())
    }
}

/// The ring sum of the masked vectors of one round.
pub struct MaskedSum {
    q: Quantizer,
    round: u64,
    clients: BTreeMap<ClientIndex, [u8; 32]>,
    /// The masking graph's neighbours of each client; `None`: the complete graph.
    neighbours: Option<BTreeMap<ClientIndex, BTreeSet<ClientIndex>>>,
    weights: BTreeMap<ClientIndex, u64>,
    sum: Vec<u64>,
}

impl MaskedSum {
    /// An empty sum of vectors of `len` ring elements from the round's clients, each listed
    /// with its public mask key `S_u` (the key list the clients masked against).
    pub fn new(
        q: Quantizer,
        round: u64,
        len: usize,
        clients: BTreeMap<ClientIndex, [u8; 32]>,
    ) -> Self {
        Self {
            q,
            round,
            clients,
            neighbours: None,
            weights: BTreeMap::new(),
            sum: vec![0; len],
        }
    }

    /// The same sum for clients that masked only with their neighbours in a sparse masking
    /// graph ([`super::graph::MaskingGraph::neighbours`] over the key list): a dropped
    /// client's pairwise masks are removed for its arrived neighbours only.
    pub fn with_neighbours(
        mut self,
        neighbours: BTreeMap<ClientIndex, BTreeSet<ClientIndex>>,
    ) -> Self {
        self.neighbours = Some(neighbours);
        self
    }

    /// Adds client `u`'s masked vector `y` and its public weight `n_k`. Refused, naming the
    /// client, and the sum left unchanged: a client not in the round, a second vector from
    /// the same client (a replay), a wrong length, or an element outside the ring.
    pub fn add(&mut self, u: ClientIndex, weight: u64, y: &[u64]) -> Result<()> {
        ensure!(
            self.clients.contains_key(&u),
            "secure aggregation: client {u} is not in round {}'s key list",
            self.round
        );
        ensure!(
            !self.weights.contains_key(&u),
            "secure aggregation: client {u} already sent its masked vector for round {} (replay refused)",
            self.round
        );
        ensure!(
            y.len() == self.sum.len(),
            "secure aggregation: client {u}'s masked vector has {} elements, the model has {}",
            y.len(),
            self.sum.len()
        );
        if let Some(i) = y.iter().position(|&v| self.q.reduce(v) != v) {
            bail!(
                "secure aggregation: client {u}'s element {i} is outside the 2^{} ring",
                self.q.bits
            );
        }
        for (s, &v) in self.sum.iter_mut().zip(y) {
            *s = self.q.reduce(s.wrapping_add(v));
        }
        self.weights.insert(u, weight);
        Ok(())
    }

    /// What to ask the survivors for ([`UnmaskRequest`]).
    pub fn request(&self) -> UnmaskRequest {
        let arrived: BTreeSet<ClientIndex> = self.weights.keys().copied().collect();
        let dropped = self
            .clients
            .keys()
            .filter(|c| !arrived.contains(c))
            .copied()
            .collect();
        UnmaskRequest { arrived, dropped }
    }

    /// The unmasked ring sum `Σ n_k q_k` of the arrived vectors and their total weight
    /// `N = Σ n_k`, from the recovered self-mask seeds of the arrived clients and mask
    /// secret keys of the dropped ones. Errors, naming the client, when one is missing.
    pub fn unmask(
        mut self,
        self_seeds: &BTreeMap<ClientIndex, [u8; 32]>,
        dropped_secrets: &BTreeMap<ClientIndex, [u8; 32]>,
    ) -> Result<(Vec<u64>, u64)> {
        let req = self.request();
        for u in &req.arrived {
            let b = self_seeds
                .get(u)
                .with_context(|| format!("secure aggregation: no self-mask seed of client {u}"))?;
            apply_mask(&mut self.sum, b, false, &self.q);
        }
        for v in &req.dropped {
            let sk = dropped_secrets.get(v).with_context(|| {
                format!("secure aggregation: no mask key of dropped client {v}")
            })?;
            let sk = StaticSecret::from(*sk);
            let masked_with_v = |u: &&ClientIndex| {
                self.neighbours
                    .as_ref()
                    .is_none_or(|n| n.get(v).is_some_and(|near| near.contains(u)))
            };
            for u in req.arrived.iter().filter(masked_with_v) {
                let seed = agree(&sk, &self.clients[u], PURPOSE_MASK, self.round, *v, *u)?;
                // u added +PRG(s_uv) when u < v: take back what it added
                apply_mask(&mut self.sum, &seed, *u > *v, &self.q);
            }
        }
        let total = self.weights.values().sum();
        Ok((self.sum, total))
    }
}

#[cfg(test)]
// Client indices are the protocol's ids here: index loops read as the paper's notation.
#[allow(clippy::needless_range_loop)]
mod tests {
    use super::super::masking::PURPOSE_SEAL;
    use super::super::masking::{mask_update, ClientSecrets};
    use super::super::shares::{open, recover, seal, split};
    use super::*;

    /// One client of the in-memory protocol.
    struct Client {
        secrets: ClientSecrets,
        update: Vec<f32>,
        weight: u64,
        /// shares this client holds, by owner: (share of b_owner, share of s_owner), sealed
        inbox: BTreeMap<ClientIndex, Vec<u8>>,
    }

    /// The whole protocol in memory for `updates`; clients in `drop_before` never send their
    /// masked vector, those in `drop_after` send it but answer no unmask request. Returns
    /// the coordinator's weighted mean, or its error.
    fn run(
        updates: &[Vec<f32>],
        weights: &[u64],
        threshold: usize,
        drop_before: &[ClientIndex],
        drop_after: &[ClientIndex],
    ) -> Result<Vec<f64>> {
        let q = Quantizer::default();
        let round = 7;
        let n = updates.len();
        let mut clients: Vec<Client> = (0..n)
            .map(|i| Client {
                secrets: ClientSecrets::generate().unwrap(),
                update: updates[i].clone(),
                weight: weights[i],
                inbox: BTreeMap::new(),
            })
            .collect();
        let publics: Vec<_> = clients.iter().map(|c| c.secrets.public()).collect();
        // round 1: each client splits b_u and s_u and seals share v for client v
        for u in 0..n {
            let b = split(&clients[u].secrets.self_seed, threshold, n)?;
            let s = split(&clients[u].secrets.mask.to_bytes(), threshold, n)?;
            for v in 0..n {
                if u == v {
                    continue;
                }
                let key = agree(
                    &clients[u].secrets.seal,
                    &publics[v].seal,
                    PURPOSE_SEAL,
                    round,
                    u as u32,
                    v as u32,
                )?;
                let mut plain = b[v].clone();
                plain.extend_from_slice(&s[v]);
                let sealed = seal(&key, round, u as u32, v as u32, &plain)?;
                clients[v].inbox.insert(u as u32, sealed);
            }
            // a client keeps its own share
            let mut own = b[u].clone();
            own.extend_from_slice(&s[u]);
            clients[u].inbox.insert(u as u32, own);
        }
        // round 2: masked vectors
        let keys: BTreeMap<ClientIndex, [u8; 32]> =
            (0..n).map(|i| (i as u32, publics[i].mask)).collect();
        let len = updates[0].len();
        let mut sum = MaskedSum::new(q, round, len, keys.clone());
        for u in 0..n {
            if drop_before.contains(&(u as u32)) {
                continue;
            }
            let mut x = q.encode_weighted(&clients[u].update, clients[u].weight)?;
            let peers: Vec<_> = keys
                .iter()
                .filter(|(v, _)| **v != u as u32)
                .map(|(v, k)| (*v, *k))
                .collect();
            mask_update(&mut x, u as u32, &clients[u].secrets, &peers, round, &q)?;
            sum.add(u as u32, clients[u].weight, &x)?;
        }
        // round 3: survivors open their shares and answer the request
        let req = sum.request();
        let all: BTreeSet<ClientIndex> = (0..n as u32).collect();
        let mut b_shares: BTreeMap<ClientIndex, Vec<Vec<u8>>> = BTreeMap::new();
        let mut s_shares: BTreeMap<ClientIndex, Vec<Vec<u8>>> = BTreeMap::new();
        for v in 0..n as u32 {
            if drop_before.contains(&v) || drop_after.contains(&v) {
                continue;
            }
            req.check(&all, threshold)?;
            let me = &clients[v as usize];
            for (&owner, sealed) in &me.inbox {
                let plain = if owner == v {
                    sealed.clone()
                } else {
                    let key = agree(
                        &me.secrets.seal,
                        &publics[owner as usize].seal,
                        PURPOSE_SEAL,
                        round,
                        v,
                        owner,
                    )?;
                    open(&key, round, owner, v, sealed)?
                };
                let (b, s) = plain.split_at(33);
                if req.arrived.contains(&owner) {
                    b_shares.entry(owner).or_default().push(b.to_vec());
                } else {
                    s_shares.entry(owner).or_default().push(s.to_vec());
                }
            }
        }
        let mut seeds = BTreeMap::new();
        for u in &req.arrived {
            let sh = b_shares.get(u).cloned().unwrap_or_default();
            seeds.insert(
                *u,
                recover(&sh, threshold, &format!("client {u}'s self-mask seed"))?,
            );
        }
        let mut secrets = BTreeMap::new();
        for v in &req.dropped {
            let sh = s_shares.get(v).cloned().unwrap_or_default();
            secrets.insert(
                *v,
                recover(&sh, threshold, &format!("client {v}'s mask key"))?,
            );
        }
        let (ring_sum, total) = sum.unmask(&seeds, &secrets)?;
        q.decode_mean(&ring_sum, total)
    }

    fn updates(n: usize, len: usize) -> Vec<Vec<f32>> {
        (0..n)
            .map(|k| {
                (0..len)
                    .map(|i| ((i * 31 + k * 17) % 97) as f32 / 10.0 - 4.8)
                    .collect()
            })
            .collect()
    }

    fn assert_close(a: &[f64], b: &[f64], tol: f64) {
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            // c/R is reached at exact ties; 1e-4 relative slack for the f64 arithmetic
            assert!((x - y).abs() <= tol * 1.0001, "element {i}: {x} vs {y}");
        }
    }

    #[test]
    fn masks_cancel_and_the_mean_is_fedavgs_within_quantisation() {
        for n in [2usize, 3, 7] {
            let u = updates(n, 500);
            let w: Vec<u64> = (0..n as u64).map(|k| 10 + 5 * k).collect();
            let got = run(&u, &w, 2, &[], &[]).unwrap();
            let keep: Vec<usize> = (0..n).collect();
            assert_close(
                &got,
                &super::super::weighted_mean(&u, &w, &keep),
                Quantizer::default().max_error(),
            );
        }
    }

    #[test]
    fn masks_cancel_exactly_in_the_ring() {
        let q = Quantizer::default();
        let n = 4;
        let secrets: Vec<ClientSecrets> =
            (0..n).map(|_| ClientSecrets::generate().unwrap()).collect();
        let keys: BTreeMap<ClientIndex, [u8; 32]> = (0..n)
            .map(|i| (i as u32, secrets[i].public().mask))
            .collect();
        let mut want = vec![0u64; 300];
        let mut masked_sum = vec![0u64; 300];
        for u in 0..n {
            let mut x: Vec<u64> = (0..300)
                .map(|i| ((i * 13 + u * 101) % 4096) as u64)
                .collect();
            for (w, v) in want.iter_mut().zip(&x) {
                *w = q.reduce(*w + v);
            }
            let peers: Vec<_> = keys
                .iter()
                .filter(|(v, _)| **v != u as u32)
                .map(|(v, k)| (*v, *k))
                .collect();
            mask_update(&mut x, u as u32, &secrets[u], &peers, 1, &q).unwrap();
            for (s, v) in masked_sum.iter_mut().zip(&x) {
                *s = q.reduce(*s + v);
            }
        }
        // remove only the self masks: the pairwise ones must have cancelled exactly
        for s in &secrets {
            apply_mask(&mut masked_sum, &s.self_seed, false, &q);
        }
        assert_eq!(masked_sum, want);
    }

    #[test]
    fn one_masked_vector_is_uncorrelated_with_the_update() {
        let q = Quantizer::default();
        let (a, b) = (
            ClientSecrets::generate().unwrap(),
            ClientSecrets::generate().unwrap(),
        );
        let len = 100_000;
        let x: Vec<f32> = (0..len)
            .map(|i| ((i % 1000) as f32 / 125.0) - 4.0)
            .collect();
        let mut y = q.encode_weighted(&x, 1).unwrap();
        let enc = y.clone();
        mask_update(&mut y, 0, &a, &[(1, b.public().mask)], 3, &q).unwrap();
        let r = correlation(&enc, &y);
        assert!(r.abs() < 0.02, "correlation {r}");
        assert!(correlation(&enc, &enc) > 0.999);
    }

    fn correlation(a: &[u64], b: &[u64]) -> f64 {
        let n = a.len() as f64;
        let (ma, mb) = (
            a.iter().sum::<u64>() as f64 / n,
            b.iter().sum::<u64>() as f64 / n,
        );
        let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
        for (&x, &y) in a.iter().zip(b) {
            let (dx, dy) = (x as f64 - ma, y as f64 - mb);
            sab += dx * dy;
            saa += dx * dx;
            sbb += dy * dy;
        }
        sab / (saa * sbb).sqrt()
    }

    #[test]
    fn dropouts_up_to_n_minus_threshold_still_give_the_exact_sum() {
        let u = updates(5, 200);
        let w = vec![10, 20, 30, 40, 50];
        let tol = Quantizer::default().max_error();
        // client 4 drops after masking: its update is in the mean, its b_4 from others' shares
        let got = run(&u, &w, 3, &[], &[4]).unwrap();
        assert_close(
            &got,
            &super::super::weighted_mean(&u, &w, &[0, 1, 2, 3, 4]),
            tol,
        );
        // client 1 drops before masking: the mean of the others, its pairwise masks removed
        let got = run(&u, &w, 3, &[1], &[]).unwrap();
        assert_close(
            &got,
            &super::super::weighted_mean(&u, &w, &[0, 2, 3, 4]),
            tol,
        );
        // one of each: 3 survivors answer, the threshold
        let got = run(&u, &w, 3, &[1], &[4]).unwrap();
        assert_close(
            &got,
            &super::super::weighted_mean(&u, &w, &[0, 2, 3, 4]),
            tol,
        );
    }

    #[test]
    fn fewer_survivors_than_the_threshold_fail_clearly() {
        let u = updates(5, 50);
        let w = vec![1; 5];
        let e = run(&u, &w, 3, &[0], &[3, 4]).unwrap_err().to_string();
        assert!(
            e.contains("distinct shares") && e.contains("threshold is 3"),
            "{e}"
        );
        let e = run(&u, &w, 3, &[0, 1, 2], &[]).unwrap_err().to_string();
        assert!(
            e.contains("2 masked vectors arrived, the threshold is 3"),
            "{e}"
        );
    }

    #[test]
    fn wrong_length_replay_outsider_and_out_of_ring_vectors_are_refused() {
        let q = Quantizer::default();
        let keys = BTreeMap::from([(0, [1u8; 32]), (1, [2u8; 32])]);
        let mut s = MaskedSum::new(q, 2, 3, keys);
        s.add(0, 5, &[1, 2, 3]).unwrap();
        let e = s.add(0, 5, &[1, 2, 3]).unwrap_err().to_string();
        assert!(
            e.contains("client 0 already sent") && e.contains("replay"),
            "{e}"
        );
        let e = s.add(1, 5, &[1, 2]).unwrap_err().to_string();
        assert!(
            e.contains("client 1's masked vector has 2 elements, the model has 3"),
            "{e}"
        );
        let e = s.add(9, 5, &[1, 2, 3]).unwrap_err().to_string();
        assert!(e.contains("client 9 is not in round 2"), "{e}");
        let e = s.add(1, 5, &[1, 1 << 32, 3]).unwrap_err().to_string();
        assert!(e.contains("element 1 is outside"), "{e}");
        // none of the refusals changed the sum
        assert_eq!(s.sum, vec![1, 2, 3]);
        let req = s.request();
        assert_eq!(req.arrived, BTreeSet::from([0]));
        assert_eq!(req.dropped, BTreeSet::from([1]));
        let both = UnmaskRequest {
            arrived: BTreeSet::from([0, 1]),
            dropped: BTreeSet::from([1]),
        };
        let e = both
            .check(&BTreeSet::from([0, 1]), 1)
            .unwrap_err()
            .to_string();
        assert!(e.contains("both secrets of client 1"), "{e}");
    }
}
