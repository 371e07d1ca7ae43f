//! Earlier sends, looked up by message id: every send with a `clientMsgId` asks whether the
//! projection already has its message (a retry the broker has forgotten). One task asks
//! PostgreSQL for many sends at once: while one query is out, the ids asked for meanwhile wait
//! and go together in the next, so an idle gateway answers in one round trip and a busy one
//! makes one query per round trip instead of one per send.
//!
//! The task holds one connection of its own, where the query stays prepared and planned once:
//! parsing and planning it anew each time cost PostgreSQL more than the lookup. On that
//! connection PostgreSQL always uses its generic plan (left to choose, it planned each lookup
//! for its ids again), and sequential scans are off, so that plan reads `messages` by its key
//! even if it was made while the table was nearly empty.

use std::collections::HashMap;
use std::time::Duration;

use natter_core::{ConversationId, GroupId, Message, MessageId, UserId};
use sqlx::pool::PoolConnection;
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgPool, Postgres};
use tokio::sync::{mpsc, oneshot};

/// The most ids one query asks for.
const BATCH: usize = 256;
/// Lookups waiting for the task; beyond this a send goes without (JetStream's duplicate
/// window still catches a retry within two minutes).
const QUEUE: usize = 4 * BATCH;

type Answer = Result<Option<Message>, String>;

/// A handle on the lookup task; the task ends when every handle is dropped.
pub struct Earlier {
    requests: mpsc::Sender<(MessageId, oneshot::Sender<Answer>)>,
}

impl Earlier {
    /// Starts the task (on the current Tokio runtime) with a connection of its own to `pool`'s
    /// database; each query may take `patience`.
    pub fn start(pool: &PgPool, patience: Duration) -> Self {
        let (requests, queue) = mpsc::channel(QUEUE);
        tokio::spawn(serve(lookup_pool(pool, patience), queue, patience));
        Self { requests }
    }

    /// The message stored under `id`, if the projection has it.
    pub async fn stored(&self, id: MessageId) -> Answer {
        let (answer, answered) = oneshot::channel();
        self.requests
            .try_send((id, answer))
            .map_err(|_| "too many lookups waiting".to_owned())?;
        answered
            .await
            .unwrap_or_else(|_| Err("the lookup task stopped".to_owned()))
    }
}

/// One connection to `pool`'s database on which a statement is planned once and no plan scans
/// a table whole, opened when first used and again after a failure.
fn lookup_pool(pool: &PgPool, patience: Duration) -> PgPool {
    let options = (*pool.connect_options()).clone().options([
        ("enable_seqscan", "off"),
        ("plan_cache_mode", "force_generic_plan"),
    ]);
    PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(patience)
        .connect_lazy_with(options)
}

async fn serve(
    pool: PgPool,
    mut queue: mpsc::Receiver<(MessageId, oneshot::Sender<Answer>)>,
    patience: Duration,
) {
    // Held between lookups: taking it from the pool for each would first
    // ping it, a round trip as dear as the lookup.
    let mut held: Option<PoolConnection<Postgres>> = None;
    let mut batch = Vec::with_capacity(BATCH);
    while queue.recv_many(&mut batch, BATCH).await > 0 {
        let ids: Vec<uuid::Uuid> = batch.iter().map(|(id, _)| id.0).collect();
        let answer = match tokio::time::timeout(patience, stored(&pool, &mut held, &ids)).await {
            Ok(Ok(found)) => Ok(found),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("no answer in time".to_owned()),
        };
        if answer.is_err()
            && let Some(mut connection) = held.take()
        {
            // Its state is unknown (a query cut off, a server gone): the
            // next lookup opens another.
            connection.close_on_drop();
        }
        for (id, reply) in batch.drain(..) {
            let _ = reply.send(match &answer {
                Ok(found) => Ok(found.get(&id.0).cloned()),
                Err(e) => Err(e.clone()),
            });
        }
    }
}

/// The stored messages among `ids`, by id, asked on the `held` connection,
/// or on a fresh one from `pool` if none is held or the held one fails (a
/// PostgreSQL restarted since it was opened).
async fn stored(
    pool: &PgPool,
    held: &mut Option<PoolConnection<Postgres>>,
    ids: &[uuid::Uuid],
) -> Result<HashMap<uuid::Uuid, Message>, sqlx::Error> {
    if let Some(connection) = held.as_mut() {
        match stored_on(connection, ids).await {
            Ok(found) => return Ok(found),
            Err(e) => {
                tracing::debug!(error = %e, "lookup connection failed; opening another");
                if let Some(mut broken) = held.take() {
                    broken.close_on_drop();
                }
            }
        }
    }
    let connection = held.insert(pool.acquire().await?);
    stored_on(connection, ids).await
}

/// The stored messages among `$1` (ids), with their senders' names.
const LOOKUP: &str =
    "SELECT m.id, m.conversation_id, m.seq, m.sender_id, s.display_name AS sender_name,
        m.receiver_id, m.group_id, m.content, m.client_msg_id, m.created_at
    FROM messages m JOIN users s ON s.id = m.sender_id WHERE m.id = ANY($1)";

async fn stored_on(
    connection: &mut PoolConnection<Postgres>,
    ids: &[uuid::Uuid],
) -> Result<HashMap<uuid::Uuid, Message>, sqlx::Error> {
    let rows: Vec<MessageRow> = sqlx::query_as(LOOKUP)
        .bind(ids)
        .fetch_all(&mut **connection)
        .await?;
    Ok(rows.into_iter().map(|row| (row.id, row.into())).collect())
}

/// A stored message's row, as every query of `messages` joined with its
/// sender's name reads it.
#[derive(sqlx::FromRow)]
pub(crate) struct MessageRow {
    id: uuid::Uuid,
    conversation_id: uuid::Uuid,
    seq: i64,
    sender_id: uuid::Uuid,
    sender_name: String,
    receiver_id: Option<uuid::Uuid>,
    group_id: Option<uuid::Uuid>,
    content: String,
    client_msg_id: Option<String>,
    created_at: chrono::DateTime<chrono::Utc>,
}

impl From<MessageRow> for Message {
    fn from(row: MessageRow) -> Self {
        Message {
            id: MessageId(row.id),
            conversation_id: ConversationId(row.conversation_id),
            seq: row.seq.max(0) as u64,
            sender_id: UserId(row.sender_id),
            sender_name: row.sender_name,
            receiver_id: row.receiver_id.map(UserId),
            group_id: row.group_id.map(GroupId),
            content: row.content,
            client_msg_id: row.client_msg_id,
            created_at: row.created_at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_lookup_plan_reads_messages_by_key_even_when_made_on_an_empty_table() {
        let db = natter_testkit::database::TestDatabase::create(false)
            .await
            .unwrap();
        let pool = lookup_pool(&db.pool().await.unwrap(), Duration::from_secs(5));
        let mut connection = pool.acquire().await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "PREPARE probe(uuid[]) AS {LOOKUP}"
        )))
        .execute(&mut *connection)
        .await
        .unwrap();
        // Past the executions PostgreSQL plans for their values before it
        // may settle on one plan for all.
        for _ in 0..8 {
            sqlx::query("EXECUTE probe(ARRAY[gen_random_uuid()])")
                .execute(&mut *connection)
                .await
                .unwrap();
        }
        let plan: Vec<String> =
            sqlx::query_scalar("EXPLAIN EXECUTE probe(ARRAY[gen_random_uuid()])")
                .fetch_all(&mut *connection)
                .await
                .unwrap();
        let plan = plan.join("\n");
        assert!(plan.contains("messages_pkey"), "{plan}");
        assert!(!plan.contains("Seq Scan"), "{plan}");
        // The generic plan, made once: its condition names the parameter.
        assert!(plan.contains("$1"), "{plan}");
    }
}
