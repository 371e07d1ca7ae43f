//! The `dead_letters` table: records that can never be projected, set aside
//! for an operator so they hold up nobody else's delivery.

use super::error::ProjectionError;
use sqlx::PgConnection;

/// Stores a record that can never be projected, for an operator to inspect.
pub async fn store(
    conn: &mut PgConnection,
    chat_seq: u64,
    subject: &str,
    payload: &[u8],
    error: &str,
    deliveries: i64,
) -> Result<(), ProjectionError> {
    sqlx::query(
        "INSERT INTO dead_letters (chat_seq, subject, payload, error, deliveries)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (chat_seq) DO UPDATE SET error = EXCLUDED.error, deliveries = EXCLUDED.deliveries",
    )
    .bind(chat_seq as i64)
    .bind(subject)
    .bind(payload)
    .bind(error)
    .bind(deliveries as i32)
    .execute(&mut *conn)
    .await?;
    Ok(())
}
