//! How full `CHAT` and `DELIVERY` are: their bytes and `max_bytes`, read
//! every few seconds into gauges, so an alert fires well before `CHAT`
//! fills and refuses sends (or `DELIVERY` starts dropping records younger
//! than its `max_age`).

use crate::metrics;
use async_nats::jetstream;
use natter_core::subjects;
use natter_runtime::backoff::Backoff;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often the streams' sizes are read.
const EVERY: Duration = Duration::from_secs(15);

/// Reads both streams' sizes every [`EVERY`] until `shutdown`. A failed
/// read is retried soon, with backoff: at start the streams may not be
/// declared yet, and the gauges should not wait a whole period for them.
pub async fn watch(js: jetstream::Context, shutdown: CancellationToken) {
    let mut retry = Backoff::new(Duration::from_millis(10), Duration::from_millis(100));
    loop {
        let mut read = true;
        for stream in [subjects::CHAT_STREAM, subjects::DELIVERY_STREAM] {
            read &= report(&js, stream).await;
        }
        let wait = if read {
            retry.reset();
            EVERY
        } else {
            retry.next_delay()
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
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
