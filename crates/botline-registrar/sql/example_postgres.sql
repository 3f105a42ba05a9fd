-- An example registration function for botline-registrar's PostgresRegistrar.
--
-- Single-use tokens are kept only as their SHA-256 digests; `sha256()` is built into
-- PostgreSQL 11 and later, so no extension is needed. The function is idempotent for
-- (telegram_user_id, token): Botline may call it again for the same message (at least once),
-- and the user who redeemed a token gets `true` again, while anybody else gets `false`.
--
-- Install:   psql "$DATABASE_URL" -f sql/example_postgres.sql   (safe to run again)
-- Issue a token for alice, valid 24 hours:
--   INSERT INTO party_registration_token (token_digest, username, expires_at)
--   VALUES (sha256(convert_to('the-token-you-hand-out', 'UTF8')), 'alice',
--           now() + interval '24 hours');

CREATE TABLE IF NOT EXISTS party_registration_token (
    token_digest bytea       PRIMARY KEY CHECK (octet_length(token_digest) = 32),
    username     text        NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    redeemed_at  timestamptz,
    redeemed_by  bigint,     -- the Telegram user id that redeemed it
    CHECK ((redeemed_at IS NULL) = (redeemed_by IS NULL))
);

CREATE TABLE IF NOT EXISTS party_telegram_user (
    telegram_user_id bigint      PRIMARY KEY,
    username         text        NOT NULL,
    chat_id          bigint      NOT NULL,
    registered_at    timestamptz NOT NULL DEFAULT now()
);

CREATE OR REPLACE FUNCTION party_telegram_user_register(
    p_username         text,
    p_token            text,
    p_telegram_user_id bigint,
    p_chat_id          bigint
) RETURNS boolean
LANGUAGE plpgsql
AS $$
DECLARE
    v_digest      bytea;
    v_expires_at  timestamptz;
    v_redeemed_by bigint;
BEGIN
    IF p_username IS NULL OR p_token IS NULL OR p_telegram_user_id IS NULL THEN
        RETURN false;
    END IF;
    v_digest := sha256(convert_to(p_token, 'UTF8'));

    -- The row lock makes concurrent calls for one token take turns: one redeems it, the others
    -- then see it redeemed.
    SELECT expires_at, redeemed_by
      INTO v_expires_at, v_redeemed_by
      FROM party_registration_token
     WHERE token_digest = v_digest AND username = p_username
       FOR UPDATE;

    IF NOT FOUND THEN
        RETURN false;                                  -- unknown token, or another username
    END IF;
    IF v_redeemed_by IS NOT NULL THEN
        RETURN v_redeemed_by = p_telegram_user_id;     -- a replay by the same user, or a thief
    END IF;
    IF v_expires_at <= now() THEN
        RETURN false;                                  -- expired before it was redeemed
    END IF;

    UPDATE party_registration_token
       SET redeemed_at = now(), redeemed_by = p_telegram_user_id
     WHERE token_digest = v_digest;

    INSERT INTO party_telegram_user (telegram_user_id, username, chat_id)
    VALUES (p_telegram_user_id, p_username, p_chat_id)
    ON CONFLICT (telegram_user_id) DO UPDATE
       SET username = EXCLUDED.username,
           chat_id = EXCLUDED.chat_id,
           registered_at = now();

    RETURN true;
END
$$;
