-- A user's contact list (the seed's contacts/add and contacts/remove):
-- private to its owner, so not an event of CHAT.
CREATE TABLE contacts (
    owner_id   uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    contact_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (owner_id, contact_id),
    CHECK (owner_id <> contact_id)
);

-- People are searched by the prefix of their username or display name.
CREATE INDEX users_by_username_prefix ON users (username text_pattern_ops);
CREATE INDEX users_by_display_name_prefix ON users (lower(display_name) text_pattern_ops);
