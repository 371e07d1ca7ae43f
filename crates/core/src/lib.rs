//! natter's domain vocabulary, shared by every service and free of I/O.
//!
//! - [`ids`]: typed identifiers and the rules that derive conversation and
//!   message ids deterministically.
//! - [`values`]: user-supplied values that are parsed once at the edge
//!   (usernames, message content, device ids, …) so invalid ones cannot exist
//!   past it.
//! - [`events`]: what is written to the `CHAT` stream.
//! - [`delivery`]: what is written to a user's delivery log and pushed to sockets.
//! - [`subjects`]: the only place NATS subjects, stream and consumer names are built.

pub mod delivery;
pub mod events;
pub mod ids;
pub mod subjects;
pub mod values;

pub use delivery::{ChangeKind, DeliveryEvent, Group, GroupChange, MAX_GROUP_MEMBERS, Member};
pub use events::{
    ChatEvent, ChatRecord, GroupCreated, GroupDeleted, MemberRemoved, MembersAdded, Message,
    MessageSent, MessagesRead, SCHEMA_VERSION,
};
pub use ids::{ConversationId, GroupId, MessageId, UserId};
pub use values::{
    ClientMsgId, DeviceId, DisplayName, GroupName, MAX_CONTENT_BYTES, MessageContent, Password,
    Username, ValueError,
};
