-- A chat's backlog drains in linear time. A pending update queued behind another of its key is
-- parked: visible_at is the largest bigint, out of the range `receive` scans, so `receive`
-- reads keys' heads only, however long a key's backlog. When an update leaves the pending state
-- (done, dead), its key's next one, if parked, becomes visible then. The lowest pending update
-- of a key is never left parked; `receive` still takes only an update with no lower one of its
-- key pending, so parking is an optimisation, and rows an older build queued (none parked) work.
--
-- Parking and bringing forward serialise per key on an advisory lock (namespace "BL" 3), held
-- to the end of the transaction: an update enqueued while its key's head finishes in another
-- transaction is either seen by the finisher (and brought forward) or sees the head gone (and
-- is not left parked). Each statement below reads in a snapshot taken after the lock is held
-- (READ COMMITTED, one snapshot per statement). Enqueueing takes the lock last, once its own
-- rows are written, and waits for nothing while it holds it: a redelivery of an update that is
-- finishing waits on that update's row lock without holding the key's lock, so the two cannot
-- deadlock. The row is written parked or not from a first look without the lock, so that the
-- usual case writes it once (an update of visible_at leaves a dead entry in the time index);
-- the look under the lock corrects the rare case where the head finished in between.

-- Queues update `p_update_id` with its body unless it is queued already; true when it was new.
CREATE FUNCTION botline_enqueue(p_update_id bigint, p_entry_id text, p_order_key text,
                                p_kind text, p_raw text) RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    behind boolean := EXISTS (SELECT 1 FROM updates WHERE state = 0 AND order_key = p_order_key
                                                      AND update_id < p_update_id);
BEGIN
    INSERT INTO updates (update_id, entry_id, order_key, kind, received_at, visible_at)
    VALUES (p_update_id, p_entry_id, p_order_key, p_kind, botline_now_ms(),
            CASE WHEN behind THEN 9223372036854775807 ELSE botline_now_ms() END)
    ON CONFLICT (update_id) DO NOTHING;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    INSERT INTO update_bodies (update_id, raw) VALUES (p_update_id, p_raw);
    IF behind THEN
        PERFORM pg_advisory_xact_lock(1112276995, hashtext(p_order_key));
        UPDATE updates SET visible_at = botline_now_ms()
        WHERE update_id = p_update_id
          AND NOT EXISTS (SELECT 1 FROM updates
                          WHERE state = 0 AND order_key = p_order_key
                            AND update_id < p_update_id);
    END IF;
    RETURN true;
END $$;

-- After an update leaves the pending state: its key's lowest pending update, if parked, is
-- visible from now.
CREATE FUNCTION botline_next_of_key() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(1112276995, hashtext(OLD.order_key));
    UPDATE updates SET visible_at = botline_now_ms()
    WHERE update_id = (SELECT min(update_id) FROM updates
                       WHERE state = 0 AND order_key = OLD.order_key)
      AND visible_at = 9223372036854775807;
    RETURN NULL;
END $$;

CREATE TRIGGER updates_next_of_key AFTER UPDATE OF state ON updates
FOR EACH ROW WHEN (OLD.state = 0 AND NEW.state <> 0)
EXECUTE FUNCTION botline_next_of_key();
