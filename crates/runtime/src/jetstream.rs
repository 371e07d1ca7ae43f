//! Connecting to NATS and declaring natter's streams (DESIGN.md §2).
//! Declaring is idempotent: every process may do it at start.

pub use crate::config::StreamSettings;

use crate::config::NatsArgs;
use async_nats::jetstream::{self, stream};
use natter_core::subjects;
use std::time::Duration;

/// How long NATS remembers a `Nats-Msg-Id` to drop a duplicate publish.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// The largest record either stream accepts.
pub const MAX_RECORD_BYTES: i32 = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum JetStreamError {
    #[error("cannot connect to NATS at {url}: {source}")]
    Connect {
        url: String,
        source: async_nats::ConnectError,
    },
    #[error("cannot read NATS credentials: {0}")]
    Credentials(std::io::Error),
    #[error("cannot declare stream {stream}: {source}")]
    Stream {
        stream: &'static str,
        source: jetstream::context::CreateStreamError,
    },
}

/// How often an idle connection pings its server. Three unanswered pings
/// drop the connection (async-nats's limit), so a server that hangs
/// without closing its sockets (a paused process, a dead machine) is left
/// for another node within about 2 s instead of the default 2–3 minutes.
/// Any traffic from the server resets the clock, so busy connections do
/// not ping at all.
pub const PING_INTERVAL: Duration = Duration::from_millis(600);

/// Connects with unlimited reconnects, so a NATS restart is ridden out.
/// Connection events (reconnects, slow-consumer drops) go to `events`.
/// Replies come to `<inbox_prefix>.…`, a prefix of the service's own that
/// `deploy/nats/accounts.conf` lets no other user subscribe to.
pub async fn connect(
    args: &NatsArgs,
    name: &str,
    inbox_prefix: &str,
    events: Option<tokio::sync::mpsc::UnboundedSender<async_nats::Event>>,
) -> Result<async_nats::Client, JetStreamError> {
    let mut options = async_nats::ConnectOptions::new()
        .name(name)
        .custom_inbox_prefix(inbox_prefix)
        .retry_on_initial_connect()
        .max_reconnects(None)
        .ping_interval(PING_INTERVAL)
        .connection_timeout(Duration::from_secs(5));
    if let Some(events) = events {
        options = options.event_callback(move |event| {
            let events = events.clone();
            async move {
                let _ = events.send(event);
            }
        });
    }
    if let Some(ca) = &args.nats_ca_file {
        options = options.add_root_certificates(ca.clone()).require_tls(true);
    }
    if let Some(creds) = &args.nats_creds {
        options = options
            .credentials_file(creds)
            .await
            .map_err(JetStreamError::Credentials)?;
    }
    let urls: Vec<&str> = args.nats_url.split(',').map(str::trim).collect();
    let servers: Vec<async_nats::ServerAddr> = urls.iter().filter_map(|u| u.parse().ok()).collect();
    // async-nats parses `nats://user:password@host` but does not send the
    // credentials: hand them over (the first URL that has them wins).
    if let Some((user, password)) = servers
        .iter()
        .find_map(|s| Some((s.username()?, s.password().unwrap_or_default())))
    {
        options = options.user_and_password(user.to_owned(), password.to_owned());
    }
    options
        .connect(servers)
        .await
        .map_err(|source| JetStreamError::Connect {
            url: redacted(&args.nats_url),
            source,
        })
}

/// The JetStream context on `client`, with at most `args.nats_publish_window`
/// publishes awaiting their ack. A publish beyond that waits until an
/// earlier ack is in, so whoever holds ack futures must keep polling them
/// (or drop them) while it publishes more.
pub fn context(client: async_nats::Client, args: &NatsArgs) -> jetstream::Context {
    jetstream::context::ContextBuilder::new()
        .max_ack_inflight(args.nats_publish_window as usize)
        .build(client)
}

/// NATS URLs with their passwords blanked, fit for logs and errors.
pub fn redacted(urls: &str) -> String {
    urls.split(',')
        .map(|url| match (url.find("://"), url.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => {
                let credentials = &url[scheme + 3..at];
                let user = credentials.split(':').next().unwrap_or_default();
                format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
            }
            _ => url.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// JetStream's `max_bytes`: -1 is no limit.
fn max_bytes(limit: Option<u64>) -> i64 {
    limit.map_or(-1, |bytes| i64::try_from(bytes).unwrap_or(i64::MAX))
}

/// `CHAT` is the source of truth (DESIGN.md §3: the projections are
/// rebuilt from it), so when full it refuses new records (`discard: new`;
/// a send is answered `unavailable`) instead of silently dropping the
/// oldest.
pub fn chat_stream_config(settings: &StreamSettings) -> stream::Config {
    stream::Config {
        name: subjects::CHAT_STREAM.to_owned(),
        subjects: subjects::CHAT_SUBJECTS
            .iter()
            .map(|s| (*s).to_owned())
            .collect(),
        storage: stream::StorageType::File,
        num_replicas: settings.replicas,
        duplicate_window: DUPLICATE_WINDOW,
        max_message_size: MAX_RECORD_BYTES,
        max_bytes: max_bytes(settings.chat_max_bytes),
        allow_direct: true,
        discard: stream::DiscardPolicy::New,
        retention: stream::RetentionPolicy::Limits,
        ..Default::default()
    }
}

/// `DELIVERY` is a cache of the fan-out: when full it drops its oldest
/// records, as `max_age` does, and a device whose cursor fell behind them
/// is told `resync_required` (invariant 4). Refusing new records instead
/// would stall every user's delivery.
pub fn delivery_stream_config(settings: &StreamSettings) -> stream::Config {
    stream::Config {
        name: subjects::DELIVERY_STREAM.to_owned(),
        subjects: vec![subjects::DELIVER_ALL.to_owned()],
        storage: stream::StorageType::File,
        num_replicas: settings.replicas,
        duplicate_window: DUPLICATE_WINDOW,
        max_message_size: MAX_RECORD_BYTES,
        max_age: settings.delivery_max_age,
        max_bytes: max_bytes(settings.delivery_max_bytes),
        allow_direct: true,
        republish: Some(stream::Republish {
            source: subjects::DELIVER_ALL.to_owned(),
            destination: subjects::LIVE_DELIVER_ALL.to_owned(),
            headers_only: false,
        }),
        discard: stream::DiscardPolicy::Old,
        retention: stream::RetentionPolicy::Limits,
        ..Default::default()
    }
}

/// How long one declaration of a stream may take. Creating a replicated
/// stream takes tens of milliseconds, but when two processes create the
/// same one at once, a cluster answers only one of them: the other's
/// request would wait out the context's whole timeout before its retry
/// found the stream there.
const DECLARE_TIMEOUT: Duration = Duration::from_secs(2);

/// Creates or updates `CHAT` and `DELIVERY` to the settings.
pub async fn ensure_streams(
    js: &jetstream::Context,
    settings: &StreamSettings,
) -> Result<(), JetStreamError> {
    declare(js, subjects::CHAT_STREAM, chat_stream_config(settings)).await?;
    declare(
        js,
        subjects::DELIVERY_STREAM,
        delivery_stream_config(settings),
    )
    .await
}

async fn declare(
    js: &jetstream::Context,
    stream: &'static str,
    config: stream::Config,
) -> Result<(), JetStreamError> {
    let declared = tokio::time::timeout(DECLARE_TIMEOUT, js.create_or_update_stream(config))
        .await
        .unwrap_or_else(|_| {
            Err(jetstream::context::CreateStreamError::new(
                jetstream::context::CreateStreamErrorKind::TimedOut,
            ))
        });
    declared
        .map(|_| ())
        .map_err(|source| JetStreamError::Stream { stream, source })
}

/// Hands every message on `subject` (core NATS) to `handle`, in order,
/// until `shutdown` or the subscription ends.
pub async fn for_each_message<F, Fut>(
    client: &async_nats::Client,
    subject: &'static str,
    shutdown: tokio_util::sync::CancellationToken,
    mut handle: F,
) where
    F: FnMut(async_nats::Message) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    use futures::StreamExt;
    let mut subscription = match client.subscribe(subject).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, subject, "cannot subscribe");
            return;
        }
    };
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            message = subscription.next() => match message {
                Some(message) => handle(message).await,
                None => return,
            },
        }
    }
}

/// The JetStream error code of a publish the stream refused (`Other`, with
/// the server's error as its source), if it has one.
pub fn publish_error_code(
    error: &jetstream::context::PublishError,
) -> Option<jetstream::ErrorCode> {
    std::error::Error::source(error)
        .and_then(|s| s.downcast_ref::<jetstream::Error>())
        .map(|e| e.error_code())
}

/// A publish refused by the stream with JetStream error `code`, as the
/// server's reply makes it (for tests of how publish errors are told apart).
pub fn refused_publish(code: u64) -> jetstream::context::PublishError {
    let error: jetstream::Error = serde_json::from_value(serde_json::json!({
        "code": 400, "err_code": code, "description": "refused"
    }))
    .unwrap_or_else(|_| unreachable!("a JetStream error's JSON shape"));
    jetstream::context::PublishError::with_source(
        jetstream::context::PublishErrorKind::Other,
        error,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_publish_tells_its_jetstream_error_code() {
        assert_eq!(
            publish_error_code(&refused_publish(10158)),
            Some(jetstream::ErrorCode::STREAM_DUPLICATE_MESSAGE_CONFLICT)
        );
        assert_eq!(
            publish_error_code(&jetstream::context::PublishError::new(
                jetstream::context::PublishErrorKind::TimedOut
            )),
            None
        );
    }

    #[test]
    fn passwords_never_reach_an_error_message() {
        assert_eq!(
            redacted("nats://gateway:s3cret@n1:4222, nats://gateway:s3cret@n2:4222"),
            "nats://gateway:***@n1:4222, nats://gateway:***@n2:4222"
        );
        assert_eq!(redacted("nats://127.0.0.1:4222"), "nats://127.0.0.1:4222");
    }
}
