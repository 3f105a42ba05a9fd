-- An update's records, its outbox calls, its redacted body and the mark that it is done, written
-- by one statement: one round trip to the server where `Store::apply` took ten (begin, the row
-- lock, each record, each call, the mark, commit). Called outside a transaction, the statement
-- is its own transaction. Sessions and registrations are written by the longer path in the
-- crate, which calls nothing here.
--
-- The row lock comes first, as in the longer path: an apply of the same update running at the
-- same time waits for it, then sees the update done and writes nothing (false).
-- The outbox calls are written one at a time, in the order given, so `seq` orders them.
CREATE FUNCTION botline_apply(
    p_update_id bigint,
    -- The message, when the update has one (p_m_chat_id NULL when not).
    p_m_chat_id text, p_m_message_id bigint, p_m_user_id bigint, p_m_user_name text,
    p_m_text text, p_m_timestamp bigint, p_m_raw text, p_m_created_at text,
    -- The sender, when the update has one (p_u_user_id NULL when not).
    p_u_user_id text, p_u_telegram_id bigint, p_u_username text, p_u_first_name text,
    p_u_last_name text, p_u_language_code text, p_u_created_at text, p_u_updated_at text,
    -- The event.
    p_e_event_id text, p_e_user_id text, p_e_event_type text, p_e_payload json,
    p_e_timestamp text, p_e_processed boolean,
    -- The outbox calls, one array element each.
    p_o_ids text[], p_o_chat_ids bigint[], p_o_actions json[], p_o_send_at bigint[],
    -- The body with the secrets a user typed replaced (NULL when it held none).
    p_redacted_raw text
) RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    st smallint;
BEGIN
    SELECT state INTO st FROM updates WHERE update_id = p_update_id FOR UPDATE;
    IF st = 1 THEN
        RETURN false;
    END IF;
    IF p_m_chat_id IS NOT NULL THEN
        INSERT INTO messages (chat_id, message_id, user_id, user_name, "text", "timestamp", raw,
                              created_at)
        VALUES (p_m_chat_id, p_m_message_id, p_m_user_id, p_m_user_name, p_m_text,
                p_m_timestamp, p_m_raw, p_m_created_at)
        ON CONFLICT DO NOTHING;
    END IF;
    IF p_u_user_id IS NOT NULL THEN
        INSERT INTO users (user_id, telegram_id, username, first_name, last_name, language_code,
                           created_at, updated_at)
        VALUES (p_u_user_id, p_u_telegram_id, p_u_username, p_u_first_name, p_u_last_name,
                p_u_language_code, p_u_created_at, p_u_updated_at)
        ON CONFLICT (user_id) DO UPDATE SET
            telegram_id = excluded.telegram_id, username = excluded.username,
            first_name = excluded.first_name, last_name = excluded.last_name,
            language_code = excluded.language_code, updated_at = excluded.updated_at;
    END IF;
    INSERT INTO events (event_id, user_id, event_type, payload, "timestamp", processed)
    VALUES (p_e_event_id, p_e_user_id, p_e_event_type, p_e_payload, p_e_timestamp,
            p_e_processed)
    ON CONFLICT DO NOTHING;
    IF p_redacted_raw IS NOT NULL THEN
        UPDATE update_bodies SET raw = p_redacted_raw WHERE update_id = p_update_id;
    END IF;
    FOR i IN 1 .. coalesce(array_length(p_o_ids, 1), 0) LOOP
        INSERT INTO outbox (outbox_id, update_id, chat_id, action, due_at, created_at)
        VALUES (p_o_ids[i], p_update_id, p_o_chat_ids[i], p_o_actions[i],
                greatest(botline_now_ms(), p_o_send_at[i]),
                greatest(botline_now_ms(), p_o_send_at[i]))
        ON CONFLICT DO NOTHING;
    END LOOP;
    UPDATE updates SET state = 1, finished_at = botline_now_ms() WHERE update_id = p_update_id;
    RETURN true;
END $$;
