-- Groups are conversations of kind 'group'; group_seq is the CHAT sequence
-- of the last membership event applied, so a writer can wait until its own
-- change is visible.
ALTER TABLE conversations ADD COLUMN group_seq bigint NOT NULL DEFAULT 0;

-- The caller's conversations by latest activity.
CREATE INDEX conversations_by_activity ON conversations (last_activity_at DESC, id);
