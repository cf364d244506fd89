-- A merchant's own key/value pairs on a payment (its order id, …): a flat object of
-- strings, checked at the edge (at most 50 keys, keys up to 40 characters, values up to
-- 500, nothing that looks like a card number). Paygate shows it and never reads it.
ALTER TABLE transaction
    ADD COLUMN metadata jsonb NOT NULL DEFAULT '{}'::jsonb
        CONSTRAINT transaction_metadata_is_object CHECK (jsonb_typeof(metadata) = 'object');

-- The merchant list's filter by one key and value (`metadata[order]=A-17`) is a
-- containment test, `metadata @> '{"order": "A-17"}'`, answered by this index.
CREATE INDEX transaction_metadata ON transaction USING gin (metadata jsonb_path_ops);
