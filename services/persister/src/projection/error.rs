//! How a projection fails: transient (retry the same batch) or permanent
//! (the records themselves are refused), told apart by SQLSTATE, not text.

#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    /// PostgreSQL is unreachable or busy: retry the same batch later.
    #[error("transient database failure: {0}")]
    Transient(#[source] sqlx::Error),
    /// The data itself is refused: retrying the same records will fail again.
    #[error("database refused the batch: {0}")]
    Permanent(#[source] sqlx::Error),
}

impl ProjectionError {
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Transient(_))
    }
}

impl From<sqlx::Error> for ProjectionError {
    fn from(e: sqlx::Error) -> Self {
        // SQLSTATE classes 22 (data exception) and 23 (integrity violation)
        // are about the rows, not the database's health.
        let permanent = match &e {
            sqlx::Error::Database(db) => db
                .code()
                .is_some_and(|code| code.starts_with("22") || code.starts_with("23")),
            sqlx::Error::Encode(_) | sqlx::Error::Decode(_) | sqlx::Error::ColumnDecode { .. } => {
                true
            }
            _ => false,
        };
        if permanent {
            Self::Permanent(e)
        } else {
            Self::Transient(e)
        }
    }
}
