//! Replay of a user's delivery log: records by subject from a sequence, with
//! one batched JetStream direct get and no consumer created.

use super::record::{DeliveryError, Stored, header_u64};
use async_nats::jetstream;
use bytes::Bytes;
use futures::StreamExt;
use natter_core::{UserId, subjects};
use std::time::Duration;

/// How long a direct get's next reply may take. Any replica of `DELIVERY`
/// answers a direct get; one that hangs (a paused node still in the
/// cluster) answers nothing, and the request is sent again.
const REPLY_TIMEOUT: Duration = Duration::from_secs(2);
/// Direct gets sent before a read gives up.
const READ_ATTEMPTS: usize = 3;

/// Reads up to `limit` records of `user`'s log with sequence ≥ `from`, in
/// order, with one batched direct get.
pub async fn read_log(
    nats: &async_nats::Client,
    user: UserId,
    from: u64,
    limit: usize,
) -> Result<Vec<Stored>, DeliveryError> {
    let inbox = nats.new_inbox();
    let mut replies = nats
        .subscribe(inbox.clone())
        .await
        .map_err(|e| DeliveryError::Nats(e.to_string()))?;
    let request = serde_json::json!({
        "seq": from.max(1),
        "next_by_subj": subjects::deliver(user),
        "batch": limit,
    });
    nats.publish_with_reply(
        format!("$JS.API.DIRECT.GET.{}", subjects::DELIVERY_STREAM),
        inbox,
        Bytes::from(request.to_string()),
    )
    .await
    .map_err(|e| DeliveryError::Nats(e.to_string()))?;

    let mut records = Vec::new();
    loop {
        let message = tokio::time::timeout(REPLY_TIMEOUT, replies.next())
            .await
            .map_err(|_| DeliveryError::Timeout)?
            .ok_or_else(|| DeliveryError::Nats("reply subscription closed".into()))?;
        match message.status.map(|s| s.as_u16()) {
            None => {
                let seq = message
                    .headers
                    .as_ref()
                    .and_then(|h| header_u64(h, "Nats-Sequence"))
                    .ok_or_else(|| {
                        DeliveryError::Protocol("record without Nats-Sequence".into())
                    })?;
                records.push(Stored::new(
                    seq,
                    None,
                    message.headers.as_ref(),
                    message.payload,
                ));
                if records.len() >= limit {
                    break;
                }
            }
            // 204: end of batch; 404: nothing at or after `from`.
            Some(204) | Some(404) => break,
            Some(other) => {
                return Err(DeliveryError::Protocol(format!(
                    "status {other} {}",
                    message.description.unwrap_or_default()
                )));
            }
        }
    }
    let _ = replies.unsubscribe().await;
    Ok(records)
}

/// The `DELIVERY` stream, as sessions read it.
#[derive(Clone)]
pub struct DeliveryLog {
    nats: async_nats::Client,
    stream: jetstream::stream::Stream,
}

impl DeliveryLog {
    pub fn new(nats: async_nats::Client, stream: jetstream::stream::Stream) -> Self {
        Self { nats, stream }
    }

    /// The first and last sequence the stream holds.
    pub async fn bounds(&self) -> Result<(u64, u64), DeliveryError> {
        let info = self
            .stream
            .get_info()
            .await
            .map_err(|e| DeliveryError::Nats(e.to_string()))?;
        Ok((info.state.first_sequence, info.state.last_sequence))
    }

    /// The name of the stream's leader, as the leader itself answers (none
    /// on a server without clustering).
    pub async fn leader(&self) -> Result<Option<String>, DeliveryError> {
        let info = self
            .stream
            .get_info()
            .await
            .map_err(|e| DeliveryError::Nats(e.to_string()))?;
        Ok(info.cluster.and_then(|cluster| cluster.leader))
    }

    /// Up to `limit` of `user`'s records with sequence ≥ `from`, in order.
    pub async fn read(
        &self,
        user: UserId,
        from: u64,
        limit: usize,
    ) -> Result<Vec<Stored>, DeliveryError> {
        let mut attempt = 1;
        loop {
            match read_log(&self.nats, user, from, limit).await {
                Err(DeliveryError::Timeout) if attempt < READ_ATTEMPTS => {
                    tracing::debug!(%user, attempt, "delivery log read timed out; asking again");
                    attempt += 1;
                }
                read => return read,
            }
        }
    }
}
