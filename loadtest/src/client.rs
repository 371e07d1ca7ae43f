//! A protocol-v1 connection as the load generator needs it: connect and
//! wait for `ready`, then frames parsed only as far as the accounting needs.

use anyhow::Context;
use futures::StreamExt;
use serde::Deserialize;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long a handshake and its `ready` may take.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Bytes a connection reads at a time; a larger frame grows the buffer.
/// tungstenite's default allocates 128 KiB with every connection, which
/// made the generator, not natter, the largest process of a `connections`
/// run (2.5 GB for 19,000 sockets; BENCHMARKS.md).
const READ_BUFFER: usize = 4 * 1024;

/// The WebSocket URL for a gateway base URL (`http://host:port`).
pub fn ws_url(base: &str, token: &str, device: &str) -> String {
    let base = base
        .replacen("http://", "ws://", 1)
        .replacen("https://", "wss://", 1);
    format!("{base}/ws?token={token}&device={device}")
}

/// Connects and waits for `ready`; returns the socket and the device's cursor.
pub async fn connect(base: &str, token: &str, device: &str) -> anyhow::Result<(Socket, u64)> {
    match open(base, token, device).await? {
        Opened::Ready(socket, cursor) => Ok((*socket, cursor)),
        Opened::Closed { code, reason } => {
            anyhow::bail!("closed before ready (code {code:?}, reason {reason:?})")
        }
    }
}

/// How a connection attempt that got through the handshake ended up.
pub enum Opened {
    /// `ready`, with the device's cursor.
    Ready(Box<Socket>, u64),
    /// Closed by the gateway before `ready` (e.g. 1008 over the
    /// per-user connection limit).
    Closed { code: Option<u16>, reason: String },
}

/// Connects and waits for `ready` or the gateway's close.
pub async fn open(base: &str, token: &str, device: &str) -> anyhow::Result<Opened> {
    let (mut socket, _) = tokio::time::timeout(
        READY_TIMEOUT,
        // Without Nagle, like a browser's socket: a send leaves at once.
        tokio_tungstenite::connect_async_with_config(
            ws_url(base, token, device),
            Some(WebSocketConfig::default().read_buffer_size(READ_BUFFER)),
            true,
        ),
    )
    .await
    .context("handshake timed out")?
    .context("handshake failed")?;
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    loop {
        let frame = tokio::time::timeout_at(deadline, socket.next())
            .await
            .context("no ready frame in time")?;
        match frame {
            None => {
                return Ok(Opened::Closed {
                    code: None,
                    reason: String::new(),
                });
            }
            Some(frame) => match frame? {
                Message::Text(text) => {
                    if let Incoming::Ready { cursor } = parse(text.as_str()) {
                        return Ok(Opened::Ready(Box::new(socket), cursor));
                    }
                }
                Message::Close(close) => {
                    return Ok(Opened::Closed {
                        code: close.as_ref().map(|c| u16::from(c.code)),
                        reason: close.map(|c| c.reason.to_string()).unwrap_or_default(),
                    });
                }
                _ => {}
            },
        }
    }
}

/// A server frame, as far as the load generator reads it.
#[derive(Debug, PartialEq)]
pub enum Incoming {
    Ready {
        cursor: u64,
    },
    /// `message_sent`, with the send's `ref` and the content it echoes.
    Sent {
        reference: Option<u64>,
        content: String,
    },
    /// An `error`, with the `ref` of the command it answers.
    Refused {
        reference: Option<u64>,
        code: String,
    },
    /// A `receive_direct_message` or `receive_group_message`.
    Delivery {
        sender: String,
        conversation: String,
        seq: u64,
        cursor: u64,
        content: String,
    },
    Other,
}

#[derive(Deserialize)]
struct Frame {
    event: String,
    #[serde(default)]
    data: serde_json::Value,
    #[serde(default, rename = "ref")]
    reference: Option<serde_json::Value>,
    #[serde(default)]
    cursor: Option<u64>,
}

fn reference(frame: &Frame) -> Option<u64> {
    match frame.reference.as_ref()? {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

fn text(value: &serde_json::Value) -> String {
    value.as_str().unwrap_or_default().to_owned()
}

/// Whether a frame carries a message whose content starts with `prefix`,
/// told without parsing it (natter writes `"content":"…"` as is; a prefix
/// without characters JSON escapes reads the same inside the string).
pub fn content_starts_with(text_frame: &str, prefix: &str) -> bool {
    text_frame
        .split_once("\"content\":\"")
        .is_some_and(|(_, rest)| rest.starts_with(prefix))
}

pub fn parse(text_frame: &str) -> Incoming {
    let Ok(frame) = serde_json::from_str::<Frame>(text_frame) else {
        return Incoming::Other;
    };
    match frame.event.as_str() {
        "ready" => Incoming::Ready {
            cursor: frame.data["cursor"].as_u64().unwrap_or_default(),
        },
        "message_sent" => Incoming::Sent {
            reference: reference(&frame),
            content: text(&frame.data["message"]["content"]),
        },
        "error" => Incoming::Refused {
            reference: reference(&frame),
            code: text(&frame.data["code"]),
        },
        "receive_direct_message" | "receive_group_message" => {
            let message = &frame.data["message"];
            Incoming::Delivery {
                sender: text(&message["senderId"]),
                conversation: text(&message["conversationId"]),
                seq: message["seq"].as_u64().unwrap_or_default(),
                cursor: frame.cursor.unwrap_or_default(),
                content: text(&message["content"]),
            }
        }
        _ => Incoming::Other,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn frames_are_read_as_far_as_needed() {
        assert_eq!(
            parse(r#"{"event":"ready","data":{"cursor":7}}"#),
            Incoming::Ready { cursor: 7 }
        );
        assert_eq!(
            parse(r#"{"event":"message_sent","data":{"message":{"content":"x"}},"ref":"12"}"#),
            Incoming::Sent {
                reference: Some(12),
                content: "x".into()
            }
        );
        assert_eq!(
            parse(
                r#"{"event":"receive_direct_message","cursor":9,"data":{"message":{"senderId":"s","conversationId":"c","seq":3,"content":"lt|1|2|3"}}}"#
            ),
            Incoming::Delivery {
                sender: "s".into(),
                conversation: "c".into(),
                seq: 3,
                cursor: 9,
                content: "lt|1|2|3".into()
            }
        );
        assert_eq!(parse("garbage"), Incoming::Other);
        let foreign = r#"{"cursor":3,"event":"receive_group_message","data":{"message":{"content":"ab|\"\""}}}"#;
        assert!(content_starts_with(foreign, "ab|"));
        assert!(!content_starts_with(foreign, "lt|"));
        assert!(!content_starts_with(r#"{"event":"pong"}"#, "ab|"));
        assert_eq!(
            ws_url("http://127.0.0.1:8000", "t", "d"),
            "ws://127.0.0.1:8000/ws?token=t&device=d"
        );
    }
}
