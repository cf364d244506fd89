-- A merchant's webhook endpoints: any number of them, each with its URL, the event types
-- it wants, its own rate limit, secret and health. Every status event becomes one
-- delivery per endpoint that wants it (and one to the payment's own notification_url),
-- so order, retries, probes and recovery now hold per endpoint, not per merchant.
CREATE TABLE webhook_endpoint (
    id              text PRIMARY KEY,                -- whe_<uuid>
    merchant_id     text NOT NULL REFERENCES merchant (id),
    url             text NOT NULL,
    -- The event types it takes ('transaction.completed', or a family 'refund.*');
    -- empty: every type.
    event_types     text[] NOT NULL DEFAULT '{}',
    -- At most this many requests a second, however many dispatchers send (a Redis
    -- limiter); NULL: no limit. Deliveries over it wait, never drop.
    rate_limit      integer CONSTRAINT webhook_endpoint_rate_limit_positive CHECK (rate_limit > 0),
    -- Its own signing secret, sealed; NULL: it signs with the merchant's secret, as the
    -- endpoint migrated from the merchant's single webhook_url does (so the secret and
    -- its rotation stay what they were).
    secret                text CONSTRAINT webhook_endpoint_secret_sealed CHECK (starts_with(secret, 'sealed:v1:')),
    secret_previous       text CONSTRAINT webhook_endpoint_secret_previous_sealed CHECK (starts_with(secret_previous, 'sealed:v1:')),
    secret_previous_until timestamptz,
    -- The endpoint `PUT /merchants/{id}/webhook` sets: today's single URL.
    is_primary      boolean NOT NULL DEFAULT false,
    -- Switched off by an operator: it takes no new events, what it has pending waits.
    enabled         boolean NOT NULL DEFAULT true,
    -- Health, as the merchant row kept it before: failing since (NULL while healthy);
    -- disabled by 410 Gone, a refused destination or failing too long, then probed.
    failing_since   timestamptz,
    disabled_at     timestamptz,
    disabled_reason text,
    probe_at        timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX webhook_endpoint_primary ON webhook_endpoint (merchant_id) WHERE is_primary;
CREATE INDEX webhook_endpoint_merchant ON webhook_endpoint (merchant_id, created_at);
-- Disabled endpoints due for a probe.
CREATE INDEX webhook_endpoint_probe ON webhook_endpoint (probe_at) WHERE disabled_at IS NOT NULL;

-- Each merchant's single URL becomes its first endpoint, with its health as it stands.
INSERT INTO webhook_endpoint (id, merchant_id, url, is_primary, failing_since, disabled_at,
                              disabled_reason, probe_at)
SELECT 'whe_' || replace(gen_random_uuid()::text, '-', ''), id, webhook_url, true,
       webhook_failing_since, webhook_disabled_at, webhook_disabled_reason, webhook_probe_at
  FROM merchant WHERE webhook_url IS NOT NULL;

ALTER TABLE merchant
    DROP COLUMN webhook_url,
    DROP COLUMN webhook_failing_since,
    DROP COLUMN webhook_disabled_at,
    DROP COLUMN webhook_disabled_reason,
    DROP COLUMN webhook_probe_at;

-- A payment's own URL (`notification_url` on the request): its events go there too.
ALTER TABLE transaction ADD COLUMN notification_url text;

-- A delivery belongs to an endpoint. NULL: it goes to its own `url`, signed with the
-- merchant's secret, with no endpoint health: a payment's notification_url
-- (`notification`), or what a removed endpoint still had pending.
ALTER TABLE webhook_delivery
    ADD COLUMN endpoint_id  text REFERENCES webhook_endpoint (id) ON DELETE SET NULL,
    ADD COLUMN notification boolean NOT NULL DEFAULT false;
UPDATE webhook_delivery d SET endpoint_id = e.id
  FROM webhook_endpoint e WHERE e.merchant_id = d.merchant_id;

-- One delivery per event per endpoint (the event id stays the `webhook-id`, the one a
-- merchant deduplicates by), and one to the notification_url.
ALTER TABLE webhook_delivery DROP CONSTRAINT webhook_delivery_event_unique;
CREATE UNIQUE INDEX webhook_delivery_event_endpoint ON webhook_delivery (event_id, endpoint_id)
    WHERE endpoint_id IS NOT NULL;
CREATE UNIQUE INDEX webhook_delivery_event_notification ON webhook_delivery (event_id)
    WHERE notification;
CREATE INDEX webhook_delivery_event ON webhook_delivery (event_id);

-- The dispatcher takes its candidates per endpoint now (see `Sender::claim`), and those
-- without one by the same index (endpoint_id IS NULL).
DROP INDEX webhook_delivery_due_by_merchant;
CREATE INDEX webhook_delivery_due_by_endpoint ON webhook_delivery (endpoint_id, next_attempt_at)
    WHERE status = 'pending';
