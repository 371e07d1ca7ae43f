//! The persister's one durable consumer on `CHAT`: the run loop (elect,
//! consume, start over) and the consumer's setup.
//!
//! Exactly one persister consumes at a time (`leader`). Each batch is
//! projected, fanned out and only then acked (`stage`); a failure before
//! the ack leaves the batch to be retried, in order.

use crate::config::Config;
use crate::error::ConsumeError;
use crate::faults::FaultHooks;
use crate::leader::Leader;
use crate::metrics;
use crate::stage::{self, FanOut, Projector, Source};
use async_nats::jetstream::{self, consumer::pull};
use natter_core::subjects;
use natter_runtime::backoff::{Backoff, until_ready};
use sqlx::PgPool;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often the consumer's leader says it still holds our pull request.
const IDLE_HEARTBEAT: Duration = Duration::from_secs(1);
/// How long one pull request lasts. Missed heartbeats, not this, tell that
/// one was lost; but a request left behind by a pull restarted while its
/// server still holds it is served until it expires, its deliveries read
/// by no one (each one a gap the projector must pull again for), so it
/// must not live long.
const PULL_EXPIRES: Duration = Duration::from_secs(10);

/// Runs until `shutdown`: declare the streams, elect, consume, and on any
/// loss of leadership or of the consumer start over.
pub async fn run(
    config: &Config,
    pool: PgPool,
    js: jetstream::Context,
    hooks: FaultHooks,
    shutdown: CancellationToken,
) {
    let settings = config.streams.settings();
    let mut backoff = Backoff::default();
    while !shutdown.is_cancelled() {
        let declared = until_ready("JetStream streams", &shutdown, || {
            natter_runtime::jetstream::ensure_streams(&js, &settings)
        })
        .await;
        if declared.is_none() {
            return;
        }
        let Some(mut leader) = Leader::elect(&pool, &shutdown).await else {
            return;
        };
        tracing::info!("elected active persister");
        metrics::leader(true);
        let consumed = loop {
            match consume(config, &mut leader, &pool, &js, &hooks, &shutdown).await {
                // Still the leader: pull again at once (rewound to the ack
                // floor), rather than waiting out the request's expiry.
                Err(ConsumeError::PullLost) => {
                    tracing::warn!(
                        "deliveries of the consumer lost on their way; pulling again from the ack floor"
                    );
                    metrics::pull_restarted();
                }
                other => break other,
            }
        };
        metrics::leader(false);
        match consumed {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %e, "consumer stopped; starting over");
                if !backoff.wait(&shutdown).await {
                    return;
                }
            }
        }
    }
}

/// One consumer run: the projection and fan-out stages, side by side, until
/// shutdown or until either stops (which ends the other).
async fn consume(
    config: &Config,
    leader: &mut Leader,
    pool: &PgPool,
    js: &jetstream::Context,
    hooks: &FaultHooks,
    shutdown: &CancellationToken,
) -> Result<(), ConsumeError> {
    let source = subscribe(config, js).await?;
    let (to_fanout, committed) = stage::handover();
    let projector = Projector::new(config, leader, hooks, shutdown, to_fanout);
    let fan_out = FanOut::new(config, js, pool.clone(), hooks, shutdown);
    tokio::try_join!(projector.run(source), fan_out.run(committed)).map(|_| ())
}

/// Creates (or finds) the durable consumer, rewinds it to its ack floor and
/// starts pulling.
async fn subscribe(config: &Config, js: &jetstream::Context) -> Result<Source, ConsumeError> {
    let stream = js
        .get_stream(subjects::CHAT_STREAM)
        .await
        .map_err(|e| ConsumeError::Consumer(e.to_string()))?;
    let consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some(subjects::PERSISTER_CONSUMER.to_owned()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: Duration::from_secs(config.ack_wait_secs),
            max_deliver: -1,
            max_ack_pending: (config.batch_max * 8) as i64,
            num_replicas: config.streams.settings().replicas,
            ..Default::default()
        })
        .await
        .map_err(|e| ConsumeError::Consumer(e.to_string()))?;
    // Records a previous leader (or our own previous attempt) pulled but
    // never acked would come back only after the ack wait, behind newer
    // ones, and fan out out of order. Rewinding to the ack floor redelivers
    // them first; projection and fan-out are idempotent, so records above
    // the floor that were already done cost a no-op each.
    let rewound = stream
        .reset_consumer(subjects::PERSISTER_CONSUMER, None)
        .await
        .map_err(|e| ConsumeError::Consumer(format!("cannot rewind to the ack floor: {e}")))?;
    let messages = consumer
        .stream()
        .max_messages_per_batch(config.batch_max)
        // A consumer leader that stops answering (paused, killed, cut off)
        // loses our pull request; two missed heartbeats tell in 2 s.
        .heartbeat(IDLE_HEARTBEAT)
        .expires(PULL_EXPIRES)
        .messages()
        .await
        .map_err(|e| ConsumeError::Stream(e.to_string()))?;
    Ok(Source {
        consumer,
        messages,
        rewound_to: rewound.info.delivered.consumer_sequence,
    })
}
