//! The REST API's bodies as types: what the handlers answer, and what the
//! OpenAPI document (`GET /api/openapi.json`) is generated from. Requests the
//! handlers read field by field (to name the field that is wrong) have their
//! shape here too.

use crate::directory::UserRecord;
use crate::presence::ActiveUser;
use chrono::{DateTime, Utc};
use natter_core::delivery::{Group, Member};
use natter_core::{ConversationId, GroupId, Message, UserId};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A user as others see them.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct User {
    pub id: UserId,
    pub username: String,
    pub display_name: String,
}

impl From<&UserRecord> for User {
    fn from(user: &UserRecord) -> Self {
        Self {
            id: user.id,
            username: user.username.clone(),
            display_name: user.display_name.clone(),
        }
    }
}

/// A signed-up or logged-in user's token (a JWT for `Authorization: Bearer`
/// and the socket) and profile.
#[derive(Debug, Serialize, ToSchema)]
pub struct Session {
    pub token: String,
    pub user: User,
}

/// A contact, with whether they are online.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Contact {
    pub id: UserId,
    pub username: String,
    pub display_name: String,
    pub online: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Contacts {
    pub contacts: Vec<Contact>,
}

/// Someone the caller can write to, with their direct conversation.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Person {
    pub id: UserId,
    pub username: String,
    pub display_name: String,
    /// Shown only to people who share a conversation or a contact.
    pub online: bool,
    pub is_contact: bool,
    pub conversation_id: ConversationId,
    pub unread_count: i64,
    pub last_message: Option<Message>,
}

/// One page of people; `next` (a username) asks for the page after.
#[derive(Debug, Serialize, ToSchema)]
pub struct People {
    pub users: Vec<Person>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// The other member of a direct conversation.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Peer {
    pub id: UserId,
    pub username: Option<String>,
    pub display_name: Option<String>,
}

/// A conversation in the caller's list: `name` and `groupId` for a group,
/// `peer` for a direct one.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConversationEntry {
    pub id: ConversationId,
    /// `direct` or `group`.
    pub kind: String,
    pub unread_count: i64,
    pub last_read_seq: i64,
    pub last_activity_at: DateTime<Utc>,
    pub last_message: Option<Message>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group_id: Option<GroupId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<Peer>,
}

/// A page of a conversation's history, in `seq` order.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct History {
    pub messages: Vec<Message>,
    pub has_more: bool,
}

/// An accepted message.
#[derive(Debug, Serialize, ToSchema)]
pub struct Sent {
    pub message: Message,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct GroupBody {
    pub group: Group,
}

/// One page of a group's members; `next` (a user id) asks for the page after.
#[derive(Debug, Serialize, ToSchema)]
pub struct Members {
    pub members: Vec<Member>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<UserId>,
}

/// Everyone connected to any gateway.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ActiveUsers {
    pub active_users: Vec<ActiveUser>,
    pub count: usize,
    pub connections: usize,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Liveness {
    /// Always `ok`.
    pub status: String,
}

/// Whether each dependency answers.
#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    pub nats: bool,
    pub postgres: bool,
}

/// `POST /api/messages`: to one user (`receiverId`) or a group (`groupId`).
#[derive(Debug, Deserialize, ToSchema)]
#[allow(dead_code)] // a schema: the handler reads the fields one by one
#[serde(rename_all = "camelCase")]
pub struct SendMessageRequest {
    pub receiver_id: Option<UserId>,
    pub group_id: Option<GroupId>,
    /// 1 to `MAX_MESSAGE_BYTES` bytes (16 KiB by default).
    pub content: String,
    /// The client's id for the send: a retry with the same one yields the
    /// same message.
    pub client_msg_id: Option<String>,
}

/// `POST /api/groups`: the creator is always a member.
#[derive(Debug, Deserialize, ToSchema)]
#[allow(dead_code)] // a schema: the handler reads the fields one by one
#[serde(rename_all = "camelCase")]
pub struct CreateGroupRequest {
    pub name: String,
    pub member_ids: Option<Vec<UserId>>,
}

/// `POST /api/groups/{id}/members`.
#[derive(Debug, Deserialize, ToSchema)]
#[allow(dead_code)] // a schema: the handler reads the fields one by one
#[serde(rename_all = "camelCase")]
pub struct AddMembersRequest {
    pub user_ids: Vec<UserId>,
}
