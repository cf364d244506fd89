-- Paygate's one schema. Every table is the system of record for one thing; Kafka only
-- carries what these tables already say. Constraints are named so that code can map a
-- violation to a precise API error instead of selecting before inserting.

-- Merchants: who sends payments and where their webhooks go.
CREATE TABLE merchant (
    id             text PRIMARY KEY,                 -- mer_<uuid>
    name           text NOT NULL,
    webhook_url    text,                             -- NULL: the merchant takes no webhooks
    webhook_secret text NOT NULL,                    -- whsec_<base64>, signs webhooks
    created_at     timestamptz NOT NULL DEFAULT now()
);

-- API keys are shown once and stored as their SHA-256: a key is 32 random bytes, so a
-- fast hash is enough and lookups stay one index probe.
CREATE TABLE api_key (
    id          text PRIMARY KEY,                    -- key_<uuid>
    merchant_id text NOT NULL REFERENCES merchant (id),
    key_hash    bytea NOT NULL CONSTRAINT api_key_hash_unique UNIQUE,
    prefix      text NOT NULL,                       -- the first characters, for people
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);

-- The merchant's user and the country we route their payments by.
CREATE TABLE customer (
    merchant_id text NOT NULL REFERENCES merchant (id),
    user_id     text NOT NULL,
    country     char(2) NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (merchant_id, user_id)
);

-- External payment gateways and how to reach them.
CREATE TABLE gateway (
    code            text PRIMARY KEY,
    protocol        text NOT NULL CONSTRAINT gateway_protocol_known CHECK (protocol IN ('json', 'soap', 'card')),
    base_url        text NOT NULL,
    callback_secret text NOT NULL,                   -- verifies X-Paygate-Signature on callbacks
    timeout_ms      integer NOT NULL DEFAULT 10000 CHECK (timeout_ms > 0),
    enabled         boolean NOT NULL DEFAULT true,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- Routing: for a (country, currency, kind) the gateways to try, lowest priority first.
-- A NULL column matches anything; a row with country NULL is the default route.
CREATE TABLE gateway_route (
    id           bigserial PRIMARY KEY,
    country      char(2),
    currency     char(3),
    kind         text CHECK (kind IN ('deposit', 'withdrawal')),
    priority     integer NOT NULL,
    gateway_code text NOT NULL REFERENCES gateway (code),
    CONSTRAINT gateway_route_unique UNIQUE NULLS NOT DISTINCT (country, currency, kind, gateway_code)
);

-- One payment. `version` counts status changes from 1 and is the fencing token of
-- every update: UPDATE ... WHERE status IN (allowed) AND version = $seen.
CREATE TABLE transaction (
    id             text PRIMARY KEY,                 -- txn_<uuid>
    merchant_id    text NOT NULL REFERENCES merchant (id),
    kind           text NOT NULL CHECK (kind IN ('deposit', 'withdrawal')),
    status         text NOT NULL CHECK (status IN ('pending', 'processing', 'completed', 'failed')),
    amount         numeric NOT NULL CONSTRAINT transaction_amount_positive CHECK (amount > 0),
    currency       char(3) NOT NULL,
    user_id        text NOT NULL,
    country        char(2),
    reference      text,
    gateway        text REFERENCES gateway (code),
    gateway_txn_id text,
    failure_reason text,
    version        integer NOT NULL DEFAULT 1,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX transaction_merchant_newest ON transaction (merchant_id, created_at DESC, id DESC);

-- The append-only history of every transaction, and the outbox: an event is written in
-- the same database transaction as the change it describes, and the relay publishes it
-- to Kafka afterwards. `destination` is a logical stream, mapped to a topic name by
-- configuration when the event is published.
CREATE TABLE transaction_event (
    seq            bigserial PRIMARY KEY,            -- publish order
    id             text NOT NULL CONSTRAINT transaction_event_id_unique UNIQUE, -- evt_<uuid>
    transaction_id text NOT NULL REFERENCES transaction (id),
    version        integer,                          -- NULL for events that change no status
    event_type     text NOT NULL,
    status         text,
    destination    text NOT NULL CHECK (destination IN ('payments_requested', 'gateway_callbacks', 'transactions_status')),
    payload        bytea NOT NULL,                   -- the protobuf message
    created_at     timestamptz NOT NULL DEFAULT now(),
    published_at   timestamptz,
    CONSTRAINT transaction_event_version_unique UNIQUE (transaction_id, version)
);
CREATE INDEX transaction_event_unpublished ON transaction_event (seq) WHERE published_at IS NULL;
CREATE INDEX transaction_event_history ON transaction_event (transaction_id, seq);

-- Wake the relays as soon as an event is committed; they also poll, so a missed
-- notification only delays an event.
CREATE FUNCTION notify_outbox() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('paygate_outbox', '');
    RETURN NULL;
END
$$;
CREATE TRIGGER transaction_event_notify AFTER INSERT ON transaction_event
    FOR EACH STATEMENT EXECUTE FUNCTION notify_outbox();

-- The inbox of gateway callbacks: stored raw after the signature checked out, once per
-- (gateway, dedup_key), and processed by the callback-processor.
CREATE TABLE gateway_callback (
    id             text PRIMARY KEY,                 -- cb_<uuid>
    gateway        text NOT NULL REFERENCES gateway (code),
    transaction_id text REFERENCES transaction (id),
    dedup_key      text NOT NULL,
    content_type   text NOT NULL,
    body           bytea NOT NULL,
    received_at    timestamptz NOT NULL DEFAULT now(),
    processed_at   timestamptz,
    outcome        text CHECK (outcome IN ('applied', 'ignored', 'rejected')),
    outcome_reason text,
    CONSTRAINT gateway_callback_dedup UNIQUE (gateway, dedup_key)
);

-- Webhooks to merchants: one delivery per status event (event_id is the webhook-id),
-- the exact body that is signed, and every attempt.
CREATE TABLE webhook_delivery (
    id              text PRIMARY KEY,                -- whd_<uuid>
    event_id        text NOT NULL CONSTRAINT webhook_delivery_event_unique UNIQUE,
    merchant_id     text NOT NULL REFERENCES merchant (id),
    transaction_id  text NOT NULL REFERENCES transaction (id),
    version         integer NOT NULL,
    event_type      text NOT NULL,
    url             text NOT NULL,
    body            text NOT NULL,
    status          text NOT NULL CHECK (status IN ('pending', 'delivered', 'failed')),
    attempt_count   integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_delivery_due ON webhook_delivery (next_attempt_at) WHERE status = 'pending';
CREATE INDEX webhook_delivery_transaction ON webhook_delivery (transaction_id, created_at);

CREATE TABLE webhook_attempt (
    id           bigserial PRIMARY KEY,
    delivery_id  text NOT NULL REFERENCES webhook_delivery (id),
    attempted_at timestamptz NOT NULL DEFAULT now(),
    status_code  integer,
    error        text,
    duration_ms  integer NOT NULL
);
CREATE INDEX webhook_attempt_delivery ON webhook_attempt (delivery_id, attempted_at);
