//! Typed identifiers. Conversation and message ids are derived, not stored
//! look-ups, so the gateway can compute them on the send path without a query.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use uuid::Uuid;

/// The namespace of natter's UUIDv5 ids (a fixed, random UUID).
const NATTER_NAMESPACE: Uuid = Uuid::from_u128(0x6e61_7474_6572_4d8c_9a3e_2f1b_7c5d_0e41);

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            pub fn as_uuid(&self) -> Uuid {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self)
            }
        }

        impl From<Uuid> for $name {
            fn from(id: Uuid) -> Self {
                Self(id)
            }
        }
    };
}

uuid_id!(
    /// A user; a UUIDv7 assigned at sign-up.
    UserId
);
uuid_id!(
    /// A conversation: a direct pair or a group.
    ConversationId
);
uuid_id!(
    /// A message; see [`MessageId::for_send`].
    MessageId
);
uuid_id!(
    /// A group; a UUIDv7. A group's conversation id is the same UUID.
    GroupId
);

impl UserId {
    pub fn generate() -> Self {
        Self(Uuid::now_v7())
    }
}

impl ConversationId {
    /// The direct conversation of two users: a UUIDv5 of both ids in sorted
    /// order, so either side computes the same id without a look-up.
    pub fn direct(a: UserId, b: UserId) -> Self {
        let (low, high) = if a <= b { (a, b) } else { (b, a) };
        let mut name = [0u8; 32];
        name[..16].copy_from_slice(low.0.as_bytes());
        name[16..].copy_from_slice(high.0.as_bytes());
        Self(Uuid::new_v5(&NATTER_NAMESPACE, &name))
    }
}

impl From<GroupId> for ConversationId {
    fn from(group: GroupId) -> Self {
        Self(group.0)
    }
}

impl GroupId {
    pub fn generate() -> Self {
        Self(Uuid::now_v7())
    }
}

impl MessageId {
    /// A message's id: UUIDv5(sender, clientMsgId) when the client names the
    /// send, so a retry maps to the same id; a fresh UUIDv7 otherwise.
    pub fn for_send(sender: UserId, client_msg_id: Option<&str>) -> Self {
        match client_msg_id {
            Some(client) => Self(Uuid::new_v5(&sender.0, client.as_bytes())),
            None => Self(Uuid::now_v7()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direct_conversation_id_is_symmetric_and_distinct() {
        let a = UserId::generate();
        let b = UserId::generate();
        let c = UserId::generate();
        assert_eq!(ConversationId::direct(a, b), ConversationId::direct(b, a));
        assert_ne!(ConversationId::direct(a, b), ConversationId::direct(a, c));
    }

    #[test]
    fn message_id_is_stable_for_a_client_id_and_unique_without() {
        let sender = UserId::generate();
        let other = UserId::generate();
        assert_eq!(
            MessageId::for_send(sender, Some("m-1")),
            MessageId::for_send(sender, Some("m-1"))
        );
        assert_ne!(
            MessageId::for_send(sender, Some("m-1")),
            MessageId::for_send(other, Some("m-1"))
        );
        assert_ne!(
            MessageId::for_send(sender, None),
            MessageId::for_send(sender, None)
        );
    }
}
