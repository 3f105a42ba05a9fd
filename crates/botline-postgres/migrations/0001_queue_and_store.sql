-- Botline's Postgres store, version 1: the queue and the records in one database, so that
-- enqueue and dedupe are one statement, and an update's records commit together with the mark
-- that it is done. The same tables as the embedded SQLite store (botline-sqlite's schema.sql).
--
-- Times the queue keeps (received_at, visible_at, finished_at, due_at, ...) are unix
-- milliseconds of the database's clock, which every instance shares. Text that is compared or
-- ordered (keys, ISO 8601 times) uses the "C" collation: byte order, as SQLite compares.

-- The queue's clock: unix milliseconds at the start of the current transaction.
CREATE FUNCTION botline_now_ms() RETURNS bigint
    LANGUAGE sql STABLE PARALLEL SAFE
    AS $$ SELECT (extract(epoch FROM now()) * 1000)::bigint $$;

-- The queue and the dedupe set: one row per update_id seen within the dedupe window.
-- state: 0 pending (visible at visible_at; leased while receipt is set and visible_at is ahead),
--        1 done, 2 dead letter.
-- The body lives in update_bodies, so that leasing and finishing rewrite a short row.
CREATE TABLE updates (
    update_id   bigint   PRIMARY KEY,
    entry_id    text     NOT NULL,
    order_key   text     COLLATE "C" NOT NULL,
    kind        text     NOT NULL,
    received_at bigint   NOT NULL,
    state       smallint NOT NULL DEFAULT 0 CHECK (state IN (0, 1, 2)),
    attempts    integer  NOT NULL DEFAULT 0,
    visible_at  bigint   NOT NULL,
    receipt     text,
    last_error  text,
    finished_at bigint
);
CREATE INDEX updates_pending_by_key ON updates (order_key, update_id) WHERE state = 0;
CREATE INDEX updates_pending_by_time ON updates (visible_at, update_id) WHERE state = 0;
CREATE INDEX updates_done ON updates (received_at) WHERE state = 1;
CREATE INDEX updates_dead ON updates (finished_at, update_id) WHERE state = 2;

-- Each queued update's body as received (redacted once the update is done); forgotten with it.
CREATE TABLE update_bodies (
    update_id bigint PRIMARY KEY REFERENCES updates (update_id) ON DELETE CASCADE,
    raw       text   NOT NULL
);

-- Seed 000's messages table.
CREATE TABLE messages (
    chat_id     text   COLLATE "C" NOT NULL,
    message_id  bigint NOT NULL,
    user_id     bigint,
    user_name   text,
    "text"      text,
    "timestamp" bigint NOT NULL,
    raw         text   NOT NULL,
    created_at  text   NOT NULL,
    PRIMARY KEY (chat_id, message_id)
);
CREATE INDEX messages_by_time ON messages ("timestamp");

-- Seed 001's users, events and sessions tables.
CREATE TABLE users (
    user_id       text   COLLATE "C" PRIMARY KEY,
    telegram_id   bigint NOT NULL,
    username      text,
    first_name    text,
    last_name     text,
    language_code text,
    created_at    text   NOT NULL,
    updated_at    text   NOT NULL
);

CREATE TABLE events (
    event_id    text    COLLATE "C" PRIMARY KEY,
    user_id     text    COLLATE "C",
    event_type  text    NOT NULL,
    payload     json    NOT NULL,
    "timestamp" text    COLLATE "C" NOT NULL,
    processed   boolean NOT NULL
);
CREATE INDEX events_by_user ON events (user_id, "timestamp");

CREATE TABLE sessions (
    session_id text   COLLATE "C" PRIMARY KEY,
    user_id    text   COLLATE "C" NOT NULL,
    chat_id    bigint NOT NULL,
    state      text   NOT NULL,
    data       json   NOT NULL,
    created_at text   COLLATE "C" NOT NULL,
    updated_at text   NOT NULL,
    -- Unix seconds (DynamoDB's TTL unit).
    expires_at bigint NOT NULL
);
CREATE INDEX sessions_by_user ON sessions (user_id);
CREATE INDEX sessions_by_expiry ON sessions (expires_at);

-- Bot API calls to make once (transactional outbox), written with the update that asked for
-- them. state: 0 pending (handed out while due_at is ahead), 1 done, 2 failed for good.
-- seq orders the calls of a chat: the order they were written in.
CREATE TABLE outbox (
    outbox_id           text     COLLATE "C" PRIMARY KEY,
    seq                 bigint   GENERATED ALWAYS AS IDENTITY UNIQUE,
    update_id           bigint   NOT NULL,
    chat_id             bigint   NOT NULL,
    action              json     NOT NULL,
    state               smallint NOT NULL DEFAULT 0 CHECK (state IN (0, 1, 2)),
    attempts            integer  NOT NULL DEFAULT 0,
    due_at              bigint   NOT NULL,
    created_at          bigint   NOT NULL,
    finished_at         bigint,
    telegram_message_id bigint,
    last_error          text
);
CREATE INDEX outbox_pending_by_chat ON outbox (chat_id, seq) WHERE state = 0;
CREATE INDEX outbox_pending_by_time ON outbox (due_at, seq) WHERE state = 0;

-- Single-use registration tokens (`botline tokens issue`), kept only as SHA-256 digests.
-- Times are unix milliseconds of the issuing process's clock.
CREATE TABLE registration_tokens (
    token_digest text   COLLATE "C" PRIMARY KEY,
    username     text   NOT NULL,
    created_at   bigint NOT NULL,
    expires_at   bigint NOT NULL,
    used_at      bigint,
    used_by      bigint
);

-- Who registered as whom.
CREATE TABLE registrations (
    telegram_user_id bigint PRIMARY KEY,
    username         text   NOT NULL,
    chat_id          bigint NOT NULL,
    registered_at    text   NOT NULL
);
