//! The masking graph of a secure-aggregation round: which clients agree pairwise masks and
//! hold shares of each other's secrets. The complete graph is Bonawitz et al. 2017's (every
//! pair; cost O(m²) for m clients); the k-regular graph is SecAgg+'s (Bell et al., "Secure
//! Single-Server Aggregation with (Poly)Logarithmic Overhead", CCS 2020, §3): each client
//! masks with and shares its secrets among k neighbours only, so its cost grows with k, not m.
//!
//! The k-regular graph here is the circulant (Harary) graph on the round's key list U1 sorted
//! by id: the client at position p is a neighbour of those at p ± 1, …, p ± k/2 (mod m). Both
//! sides compute it from U1, which every client receives, so it travels as k alone. k is even
//! (the circulant graph of odd degree needs m even); with k ≥ m − 1 it is the complete graph.
//! The coordinator picks U1 (as it does in SecAgg+, whose server draws the graph): the
//! guarantee stays the honest-but-curious one of the complete graph.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{ensure, Result};

use super::ClientIndex;

/// Which pairs of a round's clients mask.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MaskingGraph {
    /// Every pair (Bonawitz et al. 2017).
    #[default]
    Complete,
    /// Each client with `k` neighbours (SecAgg+); `k` even and at least 2.
    KRegular {
        /// Neighbours per client.
        k: usize,
    },
}

impl MaskingGraph {
    /// The graph the round message's `neighbours` field names: 0 is the complete graph, else
    /// k. Errors on an odd k.
    pub fn from_wire(neighbours: u32) -> Result<Self> {
        if neighbours == 0 {
            return Ok(Self::Complete);
        }
        let k = neighbours as usize;
        ensure!(
            Self::is_valid_k(k),
            "secure aggregation: a k-regular masking graph needs an even k of at least 2, got {k}"
        );
        Ok(Self::KRegular { k })
    }

    /// Whether `k` can be the degree of the circulant graph: even and at least 2 (module
    /// docs).
    pub fn is_valid_k(k: usize) -> bool {
        k >= 2 && k.is_multiple_of(2)
    }

    /// How many shares each client's secrets are split into in a round of `sampled` clients:
    /// all of them with the complete graph, else the k neighbours and the client itself.
    pub fn shares(self, sampled: usize) -> usize {
        match self {
            Self::Complete => sampled,
            Self::KRegular { k } => sampled.min(k + 1),
        }
    }

    /// The round message's `neighbours` field: 0 for the complete graph, else k.
    pub fn to_wire(self) -> u32 {
        match self {
            Self::Complete => 0,
            Self::KRegular { k } => k as u32,
        }
    }

    /// Every client of `clients` (the key list U1) with its neighbours, itself excluded.
    /// Symmetric: v is u's neighbour exactly when u is v's.
    pub fn neighbours(
        self,
        clients: &BTreeSet<ClientIndex>,
    ) -> BTreeMap<ClientIndex, BTreeSet<ClientIndex>> {
        let ids: Vec<ClientIndex> = clients.iter().copied().collect();
        let m = ids.len();
        let half = match self {
            Self::KRegular { k } if k < m.saturating_sub(1) => k / 2,
            _ => m, // complete
        };
        ids.iter()
            .enumerate()
            .map(|(p, &u)| {
                let near = if half >= m {
                    ids.iter().copied().filter(|&v| v != u).collect()
                } else {
                    (1..=half)
                        .flat_map(|d| [ids[(p + d) % m], ids[(p + m - d) % m]])
                        .collect()
                };
                (u, near)
            })
            .collect()
    }

    /// The Shamir threshold used when the scenario gives none: max(2, ⌈2s/3⌉) of the s
    /// shares each secret is split into (the m sampled clients, or k + 1 with the k-regular
    /// graph: the neighbours and the client itself).
    pub fn default_threshold(self, sampled: usize) -> usize {
        (2 * self.shares(sampled)).div_ceil(3).max(2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[u32]) -> BTreeSet<u32> {
        v.iter().copied().collect()
    }

    #[test]
    fn the_circulant_graph_is_k_regular_and_symmetric() {
        let clients = ids(&[3, 5, 8, 13, 21, 34, 55]);
        let g = MaskingGraph::KRegular { k: 4 }.neighbours(&clients);
        // positions 0..7; 3 (position 0) neighbours positions 1, 2, 6, 5: ids 5, 8, 55, 34
        assert_eq!(g[&3], ids(&[5, 8, 34, 55]));
        assert_eq!(g[&21], ids(&[8, 13, 34, 55]));
        for (u, near) in &g {
            assert_eq!(near.len(), 4, "client {u}");
            assert!(!near.contains(u));
            for v in near {
                assert!(g[v].contains(u), "{u} → {v} but not back");
            }
        }
        // k ≥ m − 1: the complete graph
        let small = ids(&[1, 2, 3, 4]);
        assert_eq!(
            MaskingGraph::KRegular { k: 4 }.neighbours(&small),
            MaskingGraph::Complete.neighbours(&small)
        );
        assert_eq!(
            MaskingGraph::Complete.neighbours(&small)[&2],
            ids(&[1, 3, 4])
        );
    }

    #[test]
    fn wire_form_and_default_threshold() {
        assert_eq!(MaskingGraph::from_wire(0).unwrap(), MaskingGraph::Complete);
        assert_eq!(
            MaskingGraph::from_wire(6).unwrap(),
            MaskingGraph::KRegular { k: 6 }
        );
        assert_eq!(MaskingGraph::KRegular { k: 6 }.to_wire(), 6);
        for bad in [1, 3, 7] {
            let e = MaskingGraph::from_wire(bad).unwrap_err().to_string();
            assert!(e.contains("even k"), "{e}");
        }
        assert_eq!(MaskingGraph::Complete.default_threshold(5), 4);
        assert_eq!(MaskingGraph::Complete.default_threshold(2), 2);
        // 100 clients, k = 8: each secret in 9 shares, t = 6
        assert_eq!(MaskingGraph::KRegular { k: 8 }.default_threshold(100), 6);
        assert_eq!(MaskingGraph::KRegular { k: 8 }.default_threshold(4), 3);
    }
}
