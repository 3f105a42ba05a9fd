-- Botline's embedded store, version 1. Queue and records live in one file so that enqueue and
-- dedupe are one statement, and applying an update's records and marking it done one
-- transaction.

-- The queue and the dedupe set: one row per update_id seen within the dedupe window.
-- state: 0 pending (visible at visible_at; leased while receipt is set and visible_at is ahead;
--          parked behind its chat's head while visible_at is the largest integer), 1 done,
--        2 dead letter.
-- The body lives in update_bodies, so that leasing and finishing rewrite a short row.
CREATE TABLE IF NOT EXISTS updates (
    update_id   INTEGER PRIMARY KEY,
    entry_id    TEXT    NOT NULL,
    order_key   TEXT    NOT NULL,
    kind        TEXT    NOT NULL,
    received_at INTEGER NOT NULL,
    state       INTEGER NOT NULL DEFAULT 0,
    attempts    INTEGER NOT NULL DEFAULT 0,
    visible_at  INTEGER NOT NULL,
    receipt     TEXT,
    last_error  TEXT,
    finished_at INTEGER
) STRICT;
CREATE INDEX IF NOT EXISTS updates_pending_by_key ON updates (order_key, update_id) WHERE state = 0;
CREATE INDEX IF NOT EXISTS updates_pending_by_time ON updates (visible_at) WHERE state = 0;
-- A pending update queued behind another of its chat waits parked: visible_at is the largest
-- integer, out of the range `receive` scans, so `receive` reads chat heads only however long a
-- chat's backlog. When a chat's update leaves the pending state (done, dead), the chat's next
-- one, if parked, becomes visible then. The lowest pending update of a chat is never parked.
CREATE TRIGGER IF NOT EXISTS updates_next_of_chat AFTER UPDATE OF state ON updates
WHEN OLD.state = 0 AND NEW.state <> 0
BEGIN
    UPDATE updates SET visible_at = coalesce(NEW.finished_at, 0)
    WHERE update_id = (SELECT min(update_id) FROM updates
                       WHERE state = 0 AND order_key = OLD.order_key)
      AND visible_at = 9223372036854775807;
END;
-- The oldest unfinished update, for `stats` (one index entry read, however many are done).
CREATE INDEX IF NOT EXISTS updates_pending_by_receipt ON updates (received_at) WHERE state = 0;
CREATE INDEX IF NOT EXISTS updates_done ON updates (received_at) WHERE state = 1;
CREATE INDEX IF NOT EXISTS updates_dead ON updates (finished_at) WHERE state = 2;

-- How far the ingestion journal (journal.rs) is imported: every record before this segment and
-- byte offset is in the queue. Written in the transaction that imports the records.
CREATE TABLE IF NOT EXISTS journal_position (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    segment     INTEGER NOT NULL,
    byte_offset INTEGER NOT NULL
) STRICT;

-- Each queued update's body as received, written once.
CREATE TABLE IF NOT EXISTS update_bodies (
    update_id INTEGER PRIMARY KEY,
    raw       TEXT    NOT NULL
) STRICT;

-- Seed 000's messages table.
CREATE TABLE IF NOT EXISTS messages (
    chat_id    TEXT    NOT NULL,
    message_id INTEGER NOT NULL,
    user_id    INTEGER,
    user_name  TEXT,
    text       TEXT,
    timestamp  INTEGER NOT NULL,
    raw        TEXT    NOT NULL,
    created_at TEXT    NOT NULL,
    PRIMARY KEY (chat_id, message_id)
) STRICT;
CREATE INDEX IF NOT EXISTS messages_by_time ON messages (timestamp);

-- Seed 001's users, events and sessions tables.
CREATE TABLE IF NOT EXISTS users (
    user_id       TEXT    PRIMARY KEY,
    telegram_id   INTEGER NOT NULL,
    username      TEXT,
    first_name    TEXT,
    last_name     TEXT,
    language_code TEXT,
    created_at    TEXT    NOT NULL,
    updated_at    TEXT    NOT NULL
) STRICT;

CREATE TABLE IF NOT EXISTS events (
    event_id   TEXT    PRIMARY KEY,
    user_id    TEXT,
    event_type TEXT    NOT NULL,
    payload    TEXT    NOT NULL,
    timestamp  TEXT    NOT NULL,
    processed  INTEGER NOT NULL
) STRICT;
CREATE INDEX IF NOT EXISTS events_by_user ON events (user_id, timestamp);

CREATE TABLE IF NOT EXISTS sessions (
    session_id TEXT    PRIMARY KEY,
    user_id    TEXT    NOT NULL,
    chat_id    INTEGER NOT NULL,
    state      TEXT    NOT NULL,
    data       TEXT    NOT NULL,
    created_at TEXT    NOT NULL,
    updated_at TEXT    NOT NULL,
    expires_at INTEGER NOT NULL
) STRICT;
CREATE INDEX IF NOT EXISTS sessions_by_user ON sessions (user_id);
CREATE INDEX IF NOT EXISTS sessions_by_expiry ON sessions (expires_at);

-- Bot API calls to make once (transactional outbox), written with the update that asked for
-- them. state: 0 pending (handed out while due_at is ahead), 1 done, 2 failed for good.
CREATE TABLE IF NOT EXISTS outbox (
    outbox_id           TEXT    PRIMARY KEY,
    update_id           INTEGER NOT NULL,
    chat_id             INTEGER NOT NULL,
    action              TEXT    NOT NULL,
    state               INTEGER NOT NULL DEFAULT 0,
    attempts            INTEGER NOT NULL DEFAULT 0,
    due_at              INTEGER NOT NULL,
    created_at          INTEGER NOT NULL,
    finished_at         INTEGER,
    telegram_message_id INTEGER,
    last_error          TEXT
) STRICT;
CREATE INDEX IF NOT EXISTS outbox_pending_by_chat ON outbox (chat_id, created_at, outbox_id) WHERE state = 0;
CREATE INDEX IF NOT EXISTS outbox_pending_by_time ON outbox (due_at) WHERE state = 0;

-- Single-use registration tokens (`botline tokens issue`), kept only as SHA-256 digests.
CREATE TABLE IF NOT EXISTS registration_tokens (
    token_digest TEXT    PRIMARY KEY,
    username     TEXT    NOT NULL,
    created_at   INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL,
    used_at      INTEGER,
    used_by      INTEGER
) STRICT;

-- Who registered as whom.
CREATE TABLE IF NOT EXISTS registrations (
    telegram_user_id INTEGER PRIMARY KEY,
    username         TEXT    NOT NULL,
    chat_id          INTEGER NOT NULL,
    registered_at    TEXT    NOT NULL
) STRICT;

PRAGMA user_version = 1;
