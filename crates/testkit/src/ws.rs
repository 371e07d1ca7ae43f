//! A protocol-v1 WebSocket client for tests, with timeouts on every wait.

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long a test waits for an expected frame.
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(15);

pub struct WsClient {
    stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// The `data` of the `ready` frame.
    pub ready: Value,
    /// The subprotocol the server answered (`Sec-WebSocket-Protocol`).
    pub protocol: Option<String>,
    /// Frames that arrived before `ready` was taken (none are expected).
    buffered: Vec<Value>,
}

/// Why a handshake failed: the HTTP status, if it got that far.
#[derive(Debug)]
pub struct HandshakeError {
    pub status: Option<u16>,
    pub message: String,
}

impl std::fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "handshake failed ({:?}): {}", self.status, self.message)
    }
}

impl std::error::Error for HandshakeError {}

impl WsClient {
    /// Connects and waits for `ready`.
    pub async fn connect(url: &str) -> Result<Self, HandshakeError> {
        Self::connect_with(url, &[]).await
    }

    /// Connects with extra handshake headers (`Origin`, `Authorization`).
    pub async fn connect_with(url: &str, headers: &[(&str, &str)]) -> Result<Self, HandshakeError> {
        let mut request = url.into_client_request().map_err(|e| HandshakeError {
            status: None,
            message: e.to_string(),
        })?;
        for (name, value) in headers {
            let name: tokio_tungstenite::tungstenite::http::HeaderName =
                name.parse().map_err(|_| HandshakeError {
                    status: None,
                    message: format!("bad header name {name}"),
                })?;
            let value = value.parse().map_err(|_| HandshakeError {
                status: None,
                message: format!("bad header value {value}"),
            })?;
            request.headers_mut().insert(name, value);
        }
        let (stream, response) = tokio_tungstenite::connect_async(request)
            .await
            .map_err(|e| match e {
                tokio_tungstenite::tungstenite::Error::Http(response) => HandshakeError {
                    status: Some(response.status().as_u16()),
                    message: String::from_utf8_lossy(
                        response.body().as_deref().unwrap_or_default(),
                    )
                    .into_owned(),
                },
                other => HandshakeError {
                    status: None,
                    message: other.to_string(),
                },
            })?;
        let protocol = response
            .headers()
            .get("sec-websocket-protocol")
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        let mut client = Self {
            stream,
            ready: Value::Null,
            protocol,
            buffered: Vec::new(),
        };
        let ready = client.next_event("ready").await;
        client.ready = ready["data"].clone();
        Ok(client)
    }

    /// The cursor replay started from.
    pub fn ready_cursor(&self) -> u64 {
        self.ready["cursor"]
            .as_u64()
            .expect("ready carries a cursor")
    }

    pub async fn send(&mut self, event: &str, data: Value) {
        self.send_frame(json!({"event": event, "data": data})).await;
    }

    pub async fn send_ref(&mut self, event: &str, data: Value, reference: &str) {
        self.send_frame(json!({"event": event, "data": data, "ref": reference}))
            .await;
    }

    pub async fn send_frame(&mut self, frame: Value) {
        self.send_text(frame.to_string()).await;
    }

    pub async fn send_text(&mut self, text: String) {
        self.stream
            .send(Message::Text(text.into()))
            .await
            .expect("frame sent");
    }

    /// Sends a direct message with a ref and returns the `message_sent`
    /// (or `error`) reply to it.
    pub async fn send_direct(
        &mut self,
        receiver: impl ToString,
        content: &str,
        reference: &str,
    ) -> Value {
        self.send_ref(
            "send_direct_message",
            json!({"receiverId": receiver.to_string(), "content": content}),
            reference,
        )
        .await;
        self.reply_to(reference).await
    }

    /// The next frame echoing `reference`; other frames are kept for later.
    pub async fn reply_to(&mut self, reference: &str) -> Value {
        let mut skipped = Vec::new();
        loop {
            let frame = self.next().await;
            if frame["ref"] == reference {
                self.buffered.splice(0..0, skipped);
                return frame;
            }
            skipped.push(frame);
        }
    }

    /// The next frame, or panics after [`FRAME_TIMEOUT`].
    pub async fn next(&mut self) -> Value {
        if !self.buffered.is_empty() {
            return self.buffered.remove(0);
        }
        self.try_next(FRAME_TIMEOUT)
            .await
            .expect("a frame within the timeout")
    }

    /// The next frame within `wait`, if any.
    pub async fn try_next(&mut self, wait: Duration) -> Option<Value> {
        if !self.buffered.is_empty() {
            return Some(self.buffered.remove(0));
        }
        loop {
            let message = tokio::time::timeout(wait, self.stream.next())
                .await
                .ok()??;
            match message {
                Ok(Message::Text(text)) => {
                    return Some(
                        serde_json::from_str(text.as_str()).expect("server frames are JSON"),
                    );
                }
                Ok(Message::Close(frame)) => {
                    return Some(json!({"event": "__closed", "data": {
                        "code": frame.as_ref().map(|f| u16::from(f.code)),
                        "reason": frame.as_ref().map(|f| f.reason.to_string()),
                    }}));
                }
                Ok(_) => continue,
                Err(_) => return Some(json!({"event": "__closed", "data": {}})),
            }
        }
    }

    /// The next frame of `event`, skipping (and dropping) others.
    pub async fn next_event(&mut self, event: &str) -> Value {
        loop {
            let frame = self.next().await;
            if frame["event"] == event {
                return frame;
            }
        }
    }

    /// Collects `n` received direct messages, in arrival order.
    pub async fn receive_messages(&mut self, n: usize) -> Vec<Value> {
        let mut messages = Vec::with_capacity(n);
        while messages.len() < n {
            let frame = self.next().await;
            if frame["event"] == "receive_direct_message" {
                messages.push(frame);
            }
        }
        messages
    }

    /// Frames that arrive within `wait` (all of them).
    pub async fn drain(&mut self, wait: Duration) -> Vec<Value> {
        let mut frames = Vec::new();
        while let Some(frame) = self.try_next(wait).await {
            frames.push(frame);
        }
        frames
    }

    pub async fn ack(&mut self, cursor: u64) {
        self.send("ack", json!({"cursor": cursor})).await;
    }

    /// A clean close with a close frame.
    pub async fn close(mut self) {
        let _ = self.stream.close(None).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while self.stream.next().await.is_some() {}
        })
        .await;
    }

    /// Drops the TCP connection without a close frame, as a lost network does.
    pub fn drop_connection(self) {
        drop(self.stream);
    }
}

/// The `content` of each message frame (`receive_*_message`), in order.
pub fn contents(frames: &[Value]) -> Vec<String> {
    frames
        .iter()
        .map(|f| {
            f["data"]["message"]["content"]
                .as_str()
                .expect("a message frame")
                .to_owned()
        })
        .collect()
}

/// `prefix0`, `prefix1`, … `prefix{n-1}`: what a test sent, in order.
pub fn numbered(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}
