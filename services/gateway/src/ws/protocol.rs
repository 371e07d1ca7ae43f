//! Wire protocol v1: `{"event", "data", "ref"}` text frames. Parsing turns a
//! frame into a [`Command`] or an error that names what is wrong; it never
//! fails the connection.

use crate::chat::{Expect, SendMessage, optional_u64, parse_uuid};
use crate::error::ApiError;
use natter_core::{ConversationId, Message};
use serde::Serialize;
use serde_json::{Value, json};

/// A client's command.
#[derive(Debug)]
pub enum Command {
    SendMessage(SendMessage),
    /// The seed's client joins socket rooms; membership is the server's
    /// business here, so this is accepted and does nothing.
    JoinGroup,
    MarkRead {
        conversation_id: ConversationId,
        up_to_seq: Option<u64>,
    },
    Ack {
        cursor: u64,
    },
    Typing {
        conversation_id: ConversationId,
    },
    Ping,
}

impl Command {
    /// The command's name, a label for metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Self::SendMessage(_) => "send_message",
            Self::JoinGroup => "join_group",
            Self::MarkRead { .. } => "mark_read",
            Self::Ack { .. } => "ack",
            Self::Typing { .. } => "typing",
            Self::Ping => "ping",
        }
    }
}

/// A parsed frame: its `ref` (echoed in the reply) and the command.
#[derive(Debug)]
pub struct Incoming {
    pub reference: Option<Value>,
    pub command: Result<Command, ApiError>,
}

/// Parses one text frame.
pub fn parse(text: &str, max_message_bytes: usize) -> Incoming {
    let frame: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(_) => {
            return Incoming {
                reference: None,
                command: Err(ApiError::bad_request("frame is not valid JSON")),
            };
        }
    };
    let Some(object) = frame.as_object() else {
        return Incoming {
            reference: None,
            command: Err(ApiError::bad_request("frame must be a JSON object")),
        };
    };
    let reference = object.get("ref").filter(|r| !r.is_null()).cloned();
    let command = match object.get("event").and_then(Value::as_str) {
        None => Err(ApiError::bad_request("event is required")),
        Some(event) => {
            let data = object.get("data").cloned().unwrap_or(Value::Null);
            command(event, &data, max_message_bytes)
        }
    };
    Incoming { reference, command }
}

fn command(event: &str, data: &Value, max_message_bytes: usize) -> Result<Command, ApiError> {
    match event {
        "send_direct_message" => Ok(Command::SendMessage(SendMessage::parse(
            data,
            max_message_bytes,
            Expect::Direct,
        )?)),
        "send_group_message" => Ok(Command::SendMessage(SendMessage::parse(
            data,
            max_message_bytes,
            Expect::Group,
        )?)),
        "join_group" => Ok(Command::JoinGroup),
        "mark_read" => {
            let data = object(data)?;
            Ok(Command::MarkRead {
                conversation_id: conversation_id(data)?,
                up_to_seq: optional_u64(data, "upToSeq")?,
            })
        }
        "typing" => Ok(Command::Typing {
            conversation_id: conversation_id(object(data)?)?,
        }),
        "ack" => {
            let data = object(data)?;
            let cursor = optional_u64(data, "cursor")?
                .ok_or_else(|| ApiError::bad_request("cursor is required"))?;
            Ok(Command::Ack { cursor })
        }
        "ping" => Ok(Command::Ping),
        other => Err(ApiError::bad_request(format!("unknown event {other:?}"))),
    }
}

fn conversation_id(data: &serde_json::Map<String, Value>) -> Result<ConversationId, ApiError> {
    let raw = data
        .get("conversationId")
        .ok_or_else(|| ApiError::bad_request("conversationId is required"))?;
    Ok(ConversationId(parse_uuid(raw, "conversationId")?))
}

fn object(data: &Value) -> Result<&serde_json::Map<String, Value>, ApiError> {
    data.as_object()
        .ok_or_else(|| ApiError::bad_request("data must be an object"))
}

/// A server frame with `data` and, for a reply, the command's `ref`.
pub fn frame(event: &str, data: impl Serialize, reference: Option<&Value>) -> String {
    let mut frame = json!({"event": event, "data": data});
    if let (Some(reference), Some(object)) = (reference, frame.as_object_mut()) {
        object.insert("ref".into(), reference.clone());
    }
    frame.to_string()
}

/// The `error` frame answering a command; every one is counted.
pub fn error_frame(error: &ApiError, reference: Option<&Value>) -> String {
    crate::metrics::error(error.code());
    frame("error", error.body(), reference)
}

pub fn message_sent(message: &Message, reference: Option<&Value>) -> String {
    frame("message_sent", json!({ "message": message }), reference)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(text: &str) -> &'static str {
        match parse(text, 16).command {
            Err(e) => e.code(),
            Ok(_) => "ok",
        }
    }

    #[test]
    fn bad_frames_get_precise_codes() {
        let id = uuid::Uuid::now_v7();
        assert_eq!(code("not json"), "bad_request");
        assert_eq!(code("[1]"), "bad_request");
        assert_eq!(code(r#"{"event":"nope"}"#), "bad_request");
        assert_eq!(
            code(r#"{"event":"send_direct_message","data":{"content":"x"}}"#),
            "bad_request"
        );
        assert_eq!(
            code(
                r#"{"event":"send_direct_message","data":{"receiverId":"fake-user-id-12345","content":"x"}}"#
            ),
            "bad_request"
        );
        let with = |content: &str| {
            format!(
                r#"{{"event":"send_direct_message","data":{{"receiverId":"{id}","content":{content}}}}}"#
            )
        };
        assert_eq!(code(&with("\"  \"")), "bad_request");
        assert_eq!(code(&with("42")), "bad_request");
        assert_eq!(
            code(&with(&format!("\"{}\"", "x".repeat(17)))),
            "payload_too_large"
        );
        assert_eq!(code(&with("\"hello\"")), "ok");
        assert_eq!(
            code(r#"{"event":"ack","data":{"cursor":-1}}"#),
            "bad_request"
        );
        assert_eq!(code(r#"{"event":"ping"}"#), "ok");
    }

    #[test]
    fn reply_echoes_ref() {
        let incoming = parse(r#"{"event":"ping","ref":"r1"}"#, 16);
        let reply = frame("pong", json!({}), incoming.reference.as_ref());
        let json: Value = serde_json::from_str(&reply).unwrap();
        assert_eq!(json["ref"], "r1");
        assert_eq!(json["event"], "pong");
    }
}
