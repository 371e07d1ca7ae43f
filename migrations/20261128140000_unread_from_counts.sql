-- Unread counts without a write per member per message. A conversation
-- counts its messages; a member counts the messages it has seen (read, or
-- sent itself). Unread = message_count - seen_count. A message into a
-- 1,000-member group now writes two rows (its conversation, its sender's
-- membership) instead of a thousand.
ALTER TABLE conversations ADD COLUMN message_count bigint NOT NULL DEFAULT 0;
ALTER TABLE conversation_members ADD COLUMN seen_count bigint NOT NULL DEFAULT 0;
UPDATE conversations c
SET message_count = (SELECT count(*) FROM messages m WHERE m.conversation_id = c.id);
UPDATE conversation_members m
SET seen_count = GREATEST(c.message_count - m.unread_count, 0)
FROM conversations c WHERE c.id = m.conversation_id;
ALTER TABLE conversation_members DROP COLUMN unread_count;

-- A member's last_activity_at is now when it joined, and no longer a copy
-- of every message's time: lists order by the later of it and the
-- conversation's own last_activity_at.
DROP INDEX conversation_members_by_activity;
