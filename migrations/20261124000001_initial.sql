-- natter's projections. Everything except `users` and `device_cursors` is
-- rebuilt by replaying the CHAT stream into an empty database.

CREATE TABLE users (
    id            uuid PRIMARY KEY,
    username      text NOT NULL UNIQUE,
    display_name  text NOT NULL,
    password_hash text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE conversations (
    id          uuid PRIMARY KEY,
    kind        text NOT NULL CHECK (kind IN ('direct', 'group')),
    name        text,
    created_by  uuid,
    created_at  timestamptz NOT NULL,
    -- the newest message, for list views ordered by activity
    last_seq    bigint NOT NULL DEFAULT 0,
    last_activity_at timestamptz NOT NULL
);

CREATE TABLE conversation_members (
    conversation_id uuid NOT NULL REFERENCES conversations (id),
    user_id         uuid NOT NULL,
    joined_seq      bigint NOT NULL DEFAULT 0,
    last_read_seq   bigint NOT NULL DEFAULT 0,
    unread_count    integer NOT NULL DEFAULT 0 CHECK (unread_count >= 0),
    PRIMARY KEY (conversation_id, user_id)
);
CREATE INDEX conversation_members_by_user ON conversation_members (user_id, conversation_id);

CREATE TABLE messages (
    id              uuid PRIMARY KEY,
    conversation_id uuid NOT NULL REFERENCES conversations (id),
    seq             bigint NOT NULL,
    sender_id       uuid NOT NULL,
    receiver_id     uuid,
    group_id        uuid,
    content         text NOT NULL,
    client_msg_id   text,
    created_at      timestamptz NOT NULL,
    UNIQUE (sender_id, client_msg_id)
);
CREATE UNIQUE INDEX messages_by_conversation ON messages (conversation_id, seq);

-- A device's delivery cursor: the DELIVERY sequence up to which it has
-- processed its user's log.
CREATE TABLE device_cursors (
    user_id       uuid NOT NULL REFERENCES users (id),
    device_id     text NOT NULL,
    delivered_seq bigint NOT NULL DEFAULT 0,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, device_id)
);

-- CHAT records that could never be projected, kept for an operator.
CREATE TABLE dead_letters (
    chat_seq    bigint PRIMARY KEY,
    subject     text NOT NULL,
    payload     bytea NOT NULL,
    error       text NOT NULL,
    deliveries  integer NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
