-- The gateway deletes the cursors of devices not seen for the DELIVERY
-- stream's retention: each new device name would otherwise leave a row
-- forever. It remembers, one row a user, whose cursors it deleted, so a
-- device of theirs that comes back unknown is told to resync instead of
-- silently starting at the end of the log (DESIGN.md §1, invariant 4).
CREATE TABLE device_cursor_prunes (
    user_id   uuid PRIMARY KEY REFERENCES users (id),
    pruned_at timestamptz NOT NULL
);

-- The pruner reads the oldest cursors first.
CREATE INDEX device_cursors_by_updated_at ON device_cursors (updated_at);
