-- Gateways for real: any protocol an adapter speaks, per-gateway concurrency, card
-- payments stored encrypted, payments left unresolved at a gateway, and a history of
-- every gateway about to be asked.

-- The adapter registry in code decides which protocols exist (one module and one line
-- there add a gateway); the api refuses a protocol no adapter speaks.
ALTER TABLE gateway DROP CONSTRAINT gateway_protocol_known;
ALTER TABLE gateway ADD COLUMN max_concurrency integer NOT NULL DEFAULT 32
    CONSTRAINT gateway_max_concurrency_positive CHECK (max_concurrency > 0);

-- How a payment is paid. A card is stored only encrypted (AEAD; the key id beside it,
-- so keys can rotate) and shown only masked.
ALTER TABLE transaction
    ADD COLUMN payment_method  text NOT NULL DEFAULT 'plain'
        CONSTRAINT transaction_payment_method_known CHECK (payment_method IN ('plain', 'card')),
    ADD COLUMN card_masked     text,
    ADD COLUMN card_key_id     text,
    ADD COLUMN card_ciphertext bytea,
    -- A pending payment whose gateway gave no definite answer before its attempts ran
    -- out: the gateway may hold the money, so it is never failed; it is asked again on
    -- a slow schedule until it settles.
    ADD COLUMN unresolved_since      timestamptz,
    ADD COLUMN unresolved_checked_at timestamptz;
CREATE INDEX transaction_unresolved ON transaction (unresolved_checked_at)
    WHERE status = 'pending' AND unresolved_since IS NOT NULL;

-- History-only events (a gateway about to be asked, its version bump the fencing token
-- of that choice) are stored published: nothing consumes them.
ALTER TABLE transaction_event DROP CONSTRAINT transaction_event_destination_check;
ALTER TABLE transaction_event ADD CONSTRAINT transaction_event_destination_check
    CHECK (destination IN ('payments_requested', 'gateway_callbacks', 'transactions_status', 'history'));

-- Payment-processors cache gateways and routes and reload them on this notification.
CREATE FUNCTION notify_routes() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('paygate_routes', '');
    RETURN NULL;
END
$$;
CREATE TRIGGER gateway_notify AFTER INSERT OR UPDATE OR DELETE ON gateway
    FOR EACH STATEMENT EXECUTE FUNCTION notify_routes();
CREATE TRIGGER gateway_route_notify AFTER INSERT OR UPDATE OR DELETE ON gateway_route
    FOR EACH STATEMENT EXECUTE FUNCTION notify_routes();
