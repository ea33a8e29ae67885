//! The trust boundary of FedAvg's weights: the sample count n_k a client reports with its
//! update. Where the coordinator knows the client's shard (a simulated client, or a client
//! that asked for `--shard K/N` of a run whose dataset the coordinator holds), a claim that
//! differs from the shard's size is refused: the update is not aggregated, and
//! `rounds.jsonl` says why. Any other claim cannot be checked and is believed, capped to
//! `federation.max_samples_per_client` when that is set.

use std::collections::BTreeMap;

use crate::strategy::validate::Refusal;

/// What a round accepts as n_k from each client.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SampleRule {
    /// Client id → the size of the shard it holds, for the clients whose shard is known.
    pub expected: BTreeMap<u32, u64>,
    /// `federation.max_samples_per_client`.
    pub cap: Option<u64>,
}

impl SampleRule {
    /// The n_k client `id`'s update is weighted with, given its `claimed` count: the claim
    /// when it matches the known shard, or (shard unknown) the claim capped to
    /// [`Self::cap`]. Errors ([`Refusal::WrongSampleCount`]) when the shard is known and the
    /// claim differs.
    pub fn weight(&self, id: u32, claimed: u64) -> Result<u64, Refusal> {
        match self.expected.get(&id) {
            Some(&shard) if shard != claimed => Err(Refusal::WrongSampleCount { claimed, shard }),
            Some(_) => Ok(claimed),
            None => match self.cap {
                Some(cap) if claimed > cap => {
                    tracing::warn!(
                        client = id,
                        claimed,
                        cap,
                        "the client's sample count is capped to federation.max_samples_per_client"
                    );
                    Ok(cap)
                }
                _ => Ok(claimed),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_shards_must_match_and_others_are_capped() {
        let rule = SampleRule {
            expected: BTreeMap::from([(0, 80), (1, 70)]),
            cap: Some(100),
        };
        assert_eq!(rule.weight(0, 80), Ok(80));
        assert_eq!(
            rule.weight(1, 240),
            Err(Refusal::WrongSampleCount {
                claimed: 240,
                shard: 70
            })
        );
        // fewer than the shard is refused too: the weight is the shard's, or nothing
        assert!(rule.weight(1, 69).is_err());
        // a client without a known shard: believed up to the cap
        assert_eq!(rule.weight(5, 99), Ok(99));
        assert_eq!(rule.weight(5, 2000), Ok(100));
        let open = SampleRule::default();
        assert_eq!(open.weight(5, 2000), Ok(2000));
        assert_eq!(
            Refusal::WrongSampleCount {
                claimed: 240,
                shard: 70
            }
            .to_string(),
            "update claims 240 training samples, but the client's shard holds 70"
        );
    }
}
