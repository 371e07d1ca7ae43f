-- Groups are conversations of kind 'group'; group_seq is the CHAT sequence
-- of the last membership event applied, so a writer can wait until its own
-- change is visible.
ALTER TABLE conversations ADD COLUMN group_seq bigint NOT NULL DEFAULT 0;

-- A member's copy of its conversation's latest activity, so "my
-- conversations, newest first" is one index range scan however many
-- conversations the member has. It is written in the same per-batch pass
-- that moves unread counts.
ALTER TABLE conversation_members ADD COLUMN last_activity_at timestamptz NOT NULL DEFAULT 'epoch';
UPDATE conversation_members m SET last_activity_at = c.last_activity_at
FROM conversations c WHERE c.id = m.conversation_id;
CREATE INDEX conversation_members_by_activity
    ON conversation_members (user_id, last_activity_at DESC, conversation_id);
