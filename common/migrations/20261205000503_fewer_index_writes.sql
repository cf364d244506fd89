-- Index writes that every payment paid for and no query needs.
--
-- webhook_delivery_event (event_id): no statement looks a delivery up by its event
-- alone (the unique indexes on (event_id, endpoint_id) and on event_id WHERE
-- notification keep one delivery per event and endpoint). Each delivery wrote it
-- three times: at its insert, its claim and its outcome, none a heap-only update.
DROP INDEX webhook_delivery_event;

-- transaction_metadata: each of a payment's row versions (its intake, its attempt, two
-- status changes) put an entry in the GIN index, an "empty item" for a payment with no
-- metadata, which is most of them. Only payments with metadata are indexed now; the
-- metadata search says `metadata <> '{}'`, which any containment it asks for implies.
DROP INDEX transaction_metadata;
CREATE INDEX transaction_metadata ON transaction USING gin (metadata jsonb_path_ops)
    WHERE metadata <> '{}'::jsonb;
