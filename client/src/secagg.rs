//! A secure-aggregation round on the client (the round message carried [`SecAggParams`];
//! Bonawitz et al. 2017, Figure 4): advertise fresh keys, send sealed Shamir shares of the
//! round's secrets to every neighbour in the masking graph (every client of the key list with
//! the complete graph), open the shares routed to this client,
//! train, send the masked update Δ·n_k (quantised, [`fedssl_shared::secagg::vector`]), and
//! answer the unmasking with the shares it asks for, refusing a request that would reveal
//! both secrets of a client. The cryptography is [`Participant`]'s; this file carries its
//! messages over the round's stream.

use std::collections::BTreeSet;

use anyhow::{bail, ensure, Context, Result};
use fedssl_shared::protocol::{
    read_message, write_message, write_weights_bytes, ClientMessage, RoundConfig, SecAggParams,
    ServerMessage,
};
use fedssl_shared::secagg::graph::MaskingGraph;
use fedssl_shared::secagg::masking::PublicKeys;
use fedssl_shared::secagg::participant::Participant;
use fedssl_shared::secagg::unmask::UnmaskRequest;
use fedssl_shared::secagg::vector::{flat_delta, ring_to_bytes};
use fedssl_shared::weights::WeightSet;

use crate::options::ClientOptions;
use crate::round::{train_round, Learner};

/// The round `round` (0-based) of `learner` under secure aggregation with `params`, from the
/// `global` weights, on the round's stream `(send, recv)` of `conn`. Returns the round when
/// the client answered the unmasking, `None` when local training failed (and it said so).
/// An error ends the round's stream (or, with `conn` closed, the session).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn secure_round(
    conn: &quinn::Connection,
    (mut send, mut recv): (quinn::SendStream, quinn::RecvStream),
    learner: &Learner,
    opts: &ClientOptions,
    round: u32,
    config: RoundConfig,
    global: WeightSet,
    params: SecAggParams,
) -> Result<Option<u32>> {
    let me = learner.client_id;
    ensure!(
        params.clients.contains(&me),
        "secure aggregation: round {} does not list client {me} among its clients",
        round + 1
    );
    let q = params.quantizer();
    let graph = MaskingGraph::from_wire(params.neighbours)?;
    let mut p = Participant::new(round as u64, me, params.threshold as usize, q)?.with_graph(graph);
    let pk = p.public();
    write_message(
        &mut send,
        &ClientMessage::SecAggKeys {
            round,
            seal: pk.seal,
            mask: pk.mask,
        },
    )
    .await?;
    let keys = match read_message(&mut recv).await? {
        ServerMessage::SecAggKeyList { round: r, keys } if r == round => keys,
        other => bail!("protocol error: expected SecAggKeyList, got {other:?}"),
    };
    let list: Vec<(u32, PublicKeys)> = keys
        .into_iter()
        .map(|(id, seal, mask)| (id, PublicKeys { seal, mask }))
        .collect();
    let shares = p.share_keys(&list)?;
    write_message(&mut send, &ClientMessage::SecAggShares { round, shares }).await?;
    let routed = match read_message(&mut recv).await? {
        ServerMessage::SecAggRouted { round: r, shares } if r == round => shares,
        other => bail!("protocol error: expected SecAggRouted, got {other:?}"),
    };
    p.receive_shares(&routed)?;
    let (stats, bytes) =
        match train_round(conn, learner, opts, round, config, global.clone()).await? {
            Ok(t) => t,
            Err(e) => {
                let reason = format!("{e:#}");
                write_message(&mut send, &ClientMessage::Failed { round, reason }).await?;
                send.finish().ok();
                return Ok(None);
            }
        };
    let trained = WeightSet::from_safetensors(&bytes)?;
    let delta = flat_delta(&global, &trained).context("secure aggregation: the trained weights")?;
    let y = p.mask(&delta, stats.samples as u64)?;
    write_message(
        &mut send,
        &ClientMessage::MaskedUpdate {
            round,
            num_samples: stats.samples as u64,
            loss: stats.loss,
            accuracy: stats.accuracy,
            train_seconds: stats.seconds,
        },
    )
    .await?;
    write_weights_bytes(&mut send, &ring_to_bytes(&y, q.bits)).await?;
    let (arrived, dropped) = match read_message(&mut recv).await? {
        ServerMessage::SecAggUnmask {
            round: r,
            arrived,
            dropped,
        } if r == round => (arrived, dropped),
        other => bail!("protocol error: expected SecAggUnmask, got {other:?}"),
    };
    // The unmask request proves the masked vector arrived: a simulated drop leaves here.
    opts.behaviour.after_masking(conn, me, round)?;
    let req = UnmaskRequest {
        arrived: arrived.into_iter().collect::<BTreeSet<u32>>(),
        dropped: dropped.into_iter().collect::<BTreeSet<u32>>(),
    };
    let r = p.reveal(&req)?;
    write_message(
        &mut send,
        &ClientMessage::SecAggReveal {
            round,
            self_seeds: r.self_seeds,
            mask_keys: r.mask_keys,
        },
    )
    .await?;
    send.finish().ok();
    Ok(Some(round))
}
