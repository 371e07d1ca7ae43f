-- A deleted group keeps its row (and its messages, out of every member's
-- reach: its members are removed) with the CHAT sequence of its deletion,
-- so later events for it are ignored alike live and on replay.
ALTER TABLE conversations ADD COLUMN deleted_seq bigint;
