//! What natter has written to JetStream: the bytes held by `CHAT` and
//! `DELIVERY`, read before and after a run to put a cost on each message.

use anyhow::Context;
use natter_core::subjects::{CHAT_STREAM, DELIVERY_STREAM};

/// Bytes in the two streams at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamBytes {
    pub chat: u64,
    pub delivery: u64,
}

impl StreamBytes {
    /// What was written between `earlier` and this reading (streams that
    /// only grow during a run: nothing is old enough to be discarded).
    pub fn since(self, earlier: Self) -> Self {
        Self {
            chat: self.chat.saturating_sub(earlier.chat),
            delivery: self.delivery.saturating_sub(earlier.delivery),
        }
    }

    pub fn total(self) -> u64 {
        self.chat + self.delivery
    }
}

/// A connection to the natter's NATS, for reading stream state.
pub struct Streams {
    jetstream: async_nats::jetstream::Context,
}

impl Streams {
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        let client = async_nats::connect(url)
            .await
            .context("connecting to NATS_URL")?;
        Ok(Self {
            jetstream: async_nats::jetstream::new(client),
        })
    }

    pub async fn bytes(&self) -> anyhow::Result<StreamBytes> {
        Ok(StreamBytes {
            chat: self.stream_bytes(CHAT_STREAM).await?,
            delivery: self.stream_bytes(DELIVERY_STREAM).await?,
        })
    }

    async fn stream_bytes(&self, name: &str) -> anyhow::Result<u64> {
        let mut stream = self
            .jetstream
            .get_stream(name)
            .await
            .with_context(|| format!("looking up stream {name}"))?;
        let info = stream
            .info()
            .await
            .with_context(|| format!("reading stream {name}"))?;
        Ok(info.state.bytes)
    }
}
