//! How full `CHAT` and `DELIVERY` are: their bytes and `max_bytes`, read
//! every few seconds into gauges, so an alert fires well before `CHAT`
//! fills and refuses sends (or `DELIVERY` starts dropping records younger
//! than its `max_age`).

use crate::metrics;
use async_nats::jetstream;
use natter_core::subjects;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often the streams' sizes are read.
const EVERY: Duration = Duration::from_secs(15);
/// How soon a failed read is tried again: at start the streams may not be
/// declared yet.
const RETRY: Duration = Duration::from_millis(250);

/// Reads both streams' sizes every [`EVERY`] until `shutdown`.
pub async fn watch(js: jetstream::Context, shutdown: CancellationToken) {
    let mut wait = Duration::ZERO;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        let mut read = true;
        for stream in [subjects::CHAT_STREAM, subjects::DELIVERY_STREAM] {
            read &= report(&js, stream).await;
        }
        wait = if read { EVERY } else { RETRY };
    }
}

/// Reads one stream's size into the gauges; `false` if it could not.
async fn report(js: &jetstream::Context, name: &'static str) -> bool {
    let info = match js.get_stream(name).await {
        Ok(mut stream) => stream.info().await.cloned(),
        Err(e) => {
            tracing::debug!(error = %e, stream = name, "cannot find the stream");
            return false;
        }
    };
    match info {
        Ok(info) => {
            metrics::stream_size(name, info.state.bytes, info.config.max_bytes);
            true
        }
        Err(e) => {
            tracing::debug!(error = %e, stream = name, "cannot read the stream's size");
            false
        }
    }
}
