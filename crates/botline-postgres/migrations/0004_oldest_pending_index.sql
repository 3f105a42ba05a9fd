-- When the oldest unfinished update was received, for `stats` at every scrape of `/metrics`:
-- the first entry of this partial index (an index-only read), never a scan of the done updates
-- kept for dedupe.
CREATE INDEX updates_pending_by_receipt ON updates (received_at) WHERE state = 0;
