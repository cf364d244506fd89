-- Webhook endpoints with a health of their own, ordered deliveries, and signing secrets
-- that rotate. A merchant has one endpoint (its webhook_url), so its state lives on the
-- merchant row.

ALTER TABLE merchant
    -- When the endpoint started failing without a success since; NULL while healthy.
    ADD COLUMN webhook_failing_since   timestamptz,
    -- Disabled (after 410 Gone, or failing for too long): its deliveries wait, pending,
    -- and it is probed with the oldest of them until it answers 2xx again.
    ADD COLUMN webhook_disabled_at     timestamptz,
    ADD COLUMN webhook_disabled_reason text,
    ADD COLUMN webhook_probe_at        timestamptz,
    -- The secret before the last rotation, which still signs (a second v1 signature)
    -- until webhook_secret_previous_until.
    ADD COLUMN webhook_secret_previous       text,
    ADD COLUMN webhook_secret_previous_until timestamptz,
    -- Optional Ed25519 signing (a `v1a,` signature beside the `v1,` ones): the sealed
    -- 32-byte seed, and the one before the last rotation, which still signs and stays
    -- published in the merchant's JWKS until webhook_signing_key_previous_until.
    ADD COLUMN webhook_signing_key                text,
    ADD COLUMN webhook_signing_key_previous       text,
    ADD COLUMN webhook_signing_key_previous_until timestamptz;

-- Disabled endpoints due for a probe.
CREATE INDEX merchant_webhook_probe ON merchant (webhook_probe_at) WHERE webhook_disabled_at IS NOT NULL;

-- A later version of a transaction waits while an earlier one is pending: the sender
-- asks this for every candidate.
CREATE INDEX webhook_delivery_pending_version ON webhook_delivery (transaction_id, version) WHERE status = 'pending';

-- Probes are attempts like any other, shown as such, but do not spend the delivery's
-- retries.
ALTER TABLE webhook_attempt ADD COLUMN probe boolean NOT NULL DEFAULT false;
