-- A chat's calls go out in the order of (created_at, seq): a delayed call (a reminder) is
-- written with its time as created_at, so it holds up none of its chat's calls that are due
-- before it.
CREATE INDEX outbox_pending_by_chat_time ON outbox (chat_id, created_at, seq) WHERE state = 0;
DROP INDEX outbox_pending_by_chat;
