//! The contents of messages whose delivery records are stored by reference
//! (a big message into a big group; `natter_core::delivery::CONTENT_OF_HEADER`).
//!
//! Every recipient's record of such a message is the same, so the gateway
//! reads the content from PostgreSQL once, fills it into the record, and
//! hands the whole record to every session that delivers it. The record was
//! committed before its fan-out (persist, then deliver), so the row is
//! there. Concurrent sessions wait for the one lookup in flight; the most
//! recent records are kept, a bounded number.

use super::record::DeliveryError;
use bytes::Bytes;
use natter_core::MessageId;
use sqlx::PgPool;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use tokio::sync::OnceCell;

/// Filled-in records kept: each is at most a message's largest record, so
/// this bounds the cache at a few MiB.
const KEPT: usize = 64;

/// A filled-in record, or `None` when the message is gone or its record is
/// not a message.
type Filled = Arc<OnceCell<Option<Bytes>>>;

pub struct Contents {
    pool: PgPool,
    kept: Mutex<Kept>,
}

#[derive(Default)]
struct Kept {
    records: HashMap<MessageId, Filled>,
    /// Oldest first, for eviction.
    order: VecDeque<MessageId>,
}

impl Contents {
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            kept: Mutex::new(Kept::default()),
        }
    }

    /// `record` (of message `id`, stored by reference) with the message's
    /// content filled in; `None` if the message is not stored or the record
    /// is not a message record.
    pub async fn fill(
        &self,
        id: MessageId,
        record: &Bytes,
    ) -> Result<Option<Bytes>, DeliveryError> {
        let cell = self.cell(id);
        cell.get_or_try_init(|| async {
            let content: Option<String> =
                sqlx::query_scalar("SELECT content FROM messages WHERE id = $1")
                    .bind(id.0)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(|e| DeliveryError::Database(e.to_string()))?;
            Ok(content
                .and_then(|content| natter_core::delivery::with_content(record, content))
                .map(Bytes::from))
        })
        .await
        .cloned()
    }

    fn cell(&self, id: MessageId) -> Filled {
        let mut kept = self
            .kept
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(cell) = kept.records.get(&id) {
            return cell.clone();
        }
        if kept.order.len() >= KEPT
            && let Some(oldest) = kept.order.pop_front()
        {
            kept.records.remove(&oldest);
        }
        let cell = Filled::default();
        kept.records.insert(id, cell.clone());
        kept.order.push_back(id);
        cell
    }
}
