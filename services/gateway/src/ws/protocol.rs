//! Wire protocol v1 (DESIGN.md §4): `{"event", "data", "ref"}` text frames.
//! Parsing turns a frame into a [`Command`] or an error that names what is
//! wrong, and never fails the connection; every server frame is built here.
//! No I/O: the session reads and writes, this module only translates.

use crate::error::ApiError;
use natter_core::{
    ClientMsgId, ConversationId, DeviceId, GroupId, Message, MessageContent, UserId,
};
use serde::Serialize;
use serde_json::{Map, Value, json};

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

/// Where a message goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Direct(UserId),
    Group(GroupId),
}

/// A validated send command, from a socket frame or a REST body alike.
#[derive(Debug, Clone)]
pub struct SendMessage {
    pub target: Target,
    pub content: MessageContent,
    pub client_msg_id: Option<ClientMsgId>,
}

/// Which targets a send accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    Direct,
    Group,
    Either,
}

impl SendMessage {
    /// Parses `{receiverId | groupId, content, clientMsgId?}`.
    pub fn parse(data: &Value, max_bytes: usize, expect: Expect) -> Result<Self, ApiError> {
        let data = object(data)?;
        let target = target(data, expect)?;
        let content = match data.get("content") {
            Some(Value::String(s)) => MessageContent::parse(s.clone(), max_bytes)?,
            Some(_) => return Err(ApiError::bad_request("content must be a string")),
            None => return Err(ApiError::bad_request("content is required")),
        };
        let client_msg_id = optional_str(data, "clientMsgId")?
            .map(ClientMsgId::parse)
            .transpose()?;
        Ok(Self {
            target,
            content,
            client_msg_id,
        })
    }
}

fn target(data: &Map<String, Value>, expect: Expect) -> Result<Target, ApiError> {
    let receiver = data.get("receiverId").filter(|v| !v.is_null());
    let group = data.get("groupId").filter(|v| !v.is_null());
    match (expect, receiver, group) {
        (Expect::Direct | Expect::Either, Some(receiver), None) => {
            Ok(Target::Direct(UserId(parse_uuid(receiver, "receiverId")?)))
        }
        (Expect::Group | Expect::Either, None, Some(group)) => {
            Ok(Target::Group(GroupId(parse_uuid(group, "groupId")?)))
        }
        (Expect::Either, Some(_), Some(_)) => Err(ApiError::bad_request(
            "give receiverId or groupId, not both",
        )),
        (Expect::Group, _, None) => Err(ApiError::bad_request("groupId is required")),
        (Expect::Either, None, None) => {
            Err(ApiError::bad_request("receiverId or groupId is required"))
        }
        _ => Err(ApiError::bad_request("receiverId is required")),
    }
}

/// A UUID field, or `bad_request` naming it.
pub fn parse_uuid(value: &Value, field: &str) -> Result<uuid::Uuid, ApiError> {
    value
        .as_str()
        .and_then(|s| uuid::Uuid::parse_str(s).ok())
        .ok_or_else(|| ApiError::bad_request(format!("{field} must be a UUID")))
}

/// An optional string field.
pub fn optional_str<'a>(
    data: &'a Map<String, Value>,
    field: &str,
) -> Result<Option<&'a str>, ApiError> {
    match data.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(ApiError::bad_request(format!("{field} must be a string"))),
    }
}

/// An optional non-negative integer field.
pub fn optional_u64(data: &Map<String, Value>, field: &str) -> Result<Option<u64>, ApiError> {
    match data.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or_else(|| {
            ApiError::bad_request(format!("{field} must be a non-negative integer"))
        }),
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

fn conversation_id(data: &Map<String, Value>) -> Result<ConversationId, ApiError> {
    let raw = data
        .get("conversationId")
        .ok_or_else(|| ApiError::bad_request("conversationId is required"))?;
    Ok(ConversationId(parse_uuid(raw, "conversationId")?))
}

fn object(data: &Value) -> Result<&Map<String, Value>, ApiError> {
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

/// The sender's confirmation of an accepted message.
pub fn message_sent(message: &Message, reference: Option<&Value>) -> String {
    frame("message_sent", json!({ "message": message }), reference)
}

/// The first frame of a session: who it is and where its replay starts.
pub fn ready(user: UserId, device: &DeviceId, cursor: u64) -> String {
    frame(
        "ready",
        json!({"userId": user, "deviceId": device, "cursor": cursor}),
        None,
    )
}

/// The device's cursor is older than the delivery log keeps.
pub fn resync_required() -> String {
    frame(
        "resync_required",
        json!({"reason": "the device was away longer than the delivery log is kept; reload over REST"}),
        None,
    )
}

pub fn pong(reference: Option<&Value>) -> String {
    frame("pong", json!({}), reference)
}

/// A contact came online or went offline.
pub fn presence(user: UserId, online: bool, last_seen: chrono::DateTime<chrono::Utc>) -> String {
    frame(
        "presence",
        json!({"userId": user, "online": online, "lastSeen": last_seen}),
        None,
    )
}

/// `user` is typing in `conversation`.
pub fn typing(conversation: ConversationId, user: UserId) -> String {
    frame(
        "typing",
        json!({"conversationId": conversation, "userId": user}),
        None,
    )
}

/// A stored delivery record as its frame, with its top-level `cursor`;
/// `None` if the record is not a JSON object.
pub fn delivery(payload: &[u8], cursor: u64) -> Option<String> {
    natter_core::delivery::frame_with_cursor(payload, cursor)
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
    fn a_send_names_one_target_of_the_kind_its_event_expects() {
        let id = uuid::Uuid::now_v7();
        let both = json!({"receiverId": id, "groupId": id, "content": "x"});
        let group = json!({"groupId": id, "content": "x"});
        assert!(SendMessage::parse(&both, 16, Expect::Either).is_err());
        assert!(SendMessage::parse(&group, 16, Expect::Direct).is_err());
        assert_eq!(
            SendMessage::parse(&group, 16, Expect::Either)
                .map(|s| s.target)
                .ok(),
            Some(Target::Group(GroupId(id)))
        );
    }

    #[test]
    fn reply_echoes_ref() {
        let incoming = parse(r#"{"event":"ping","ref":"r1"}"#, 16);
        let reply = pong(incoming.reference.as_ref());
        let json: Value = serde_json::from_str(&reply).unwrap();
        assert_eq!(json["ref"], "r1");
        assert_eq!(json["event"], "pong");
    }

    #[test]
    fn ready_names_the_user_device_and_cursor() {
        let user = UserId::generate();
        let device = DeviceId::default();
        let json: Value = serde_json::from_str(&ready(user, &device, 42)).unwrap();
        assert_eq!(json["event"], "ready");
        assert_eq!(json["data"]["userId"], user.to_string());
        assert_eq!(json["data"]["deviceId"], device.as_str());
        assert_eq!(json["data"]["cursor"], 42);
    }
}
