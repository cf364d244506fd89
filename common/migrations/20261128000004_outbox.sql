-- The outbox relay claims rows with a lease instead of holding a database transaction
-- open while the broker acknowledges them, and sets aside what the broker can never
-- take. Also: indexes for what the relay filters, and a notification when an API
-- key changes, so the api's key cache drops a revoked key at once.

ALTER TABLE transaction_event
    -- A relay owns the row until then (NULL: unclaimed); past it, any relay may claim it.
    ADD COLUMN claimed_until    timestamptz,
    ADD COLUMN claimed_by       text,
    -- Produce attempts that failed, and the last error, for operators.
    ADD COLUMN publish_attempts integer NOT NULL DEFAULT 0,
    ADD COLUMN last_error       text,
    -- The broker refused the row for good (too large, an unknown topic after retries):
    -- it is never published, and no longer holds back the rows after it.
    ADD COLUMN set_aside_at     timestamptz,
    ADD COLUMN set_aside_reason text;

-- What the relay scans: unpublished rows in publish order, and a transaction's earlier
-- unpublished rows (a row waits for them).
DROP INDEX transaction_event_unpublished;
CREATE INDEX transaction_event_unpublished ON transaction_event (seq)
    WHERE published_at IS NULL AND set_aside_at IS NULL;
CREATE INDEX transaction_event_unpublished_by_transaction ON transaction_event (transaction_id, seq)
    WHERE published_at IS NULL AND set_aside_at IS NULL;
CREATE INDEX transaction_event_set_aside ON transaction_event (set_aside_at DESC)
    WHERE set_aside_at IS NOT NULL;

-- Wake the relays only for rows they have to publish: history-only events are stored
-- published, and waking every relay for them cost each one a claim for nothing. (Equal
-- notifications in one transaction are folded into one, so per row is still one per
-- commit.)
DROP TRIGGER transaction_event_notify ON transaction_event;
CREATE TRIGGER transaction_event_notify AFTER INSERT ON transaction_event
    FOR EACH ROW WHEN (NEW.published_at IS NULL) EXECUTE FUNCTION notify_outbox();

-- Every move out of `pending` looks for the transaction's parked callbacks: the
-- console's `gateway_callback_transaction (transaction_id)` (20261128000003) serves that
-- look-up, so no second index is kept on the callback table's hot insert path.

-- The api caches API keys for a short time; a revoked or expiring key tells it at once.
CREATE FUNCTION notify_api_keys() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('paygate_api_keys', '');
    RETURN NULL;
END
$$;
CREATE TRIGGER api_key_notify AFTER UPDATE OR DELETE ON api_key
    FOR EACH STATEMENT EXECUTE FUNCTION notify_api_keys();
