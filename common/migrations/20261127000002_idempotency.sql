-- Idempotency-Key, Stripe's semantics: the first request with a key claims it (the
-- primary key decides between racing requests, never a read-then-write); its response
-- is stored in the database transaction that creates the payment, and replayed byte for
-- byte to a repeat of the same request within 24 hours. Keys are per merchant.
CREATE TABLE idempotency_key (
    merchant_id      text NOT NULL REFERENCES merchant (id),
    key              text NOT NULL,
    request_hash     bytea NOT NULL,                 -- SHA-256 of the route and the body
    status_code      integer,                        -- NULL while the first is in flight
    response_headers jsonb,
    response_body    bytea,
    locked_at        timestamptz NOT NULL DEFAULT now(),
    created_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (merchant_id, key)
);
CREATE INDEX idempotency_key_created ON idempotency_key (created_at);
