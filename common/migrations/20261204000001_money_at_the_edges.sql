-- Money at the edges: an ambiguous payment stays with its gateway, `processing` never
-- rots, and every contradiction is recorded for a human instead of being ignored.

-- Per gateway: how long "I don't know this reference" is not yet an answer after an
-- ambiguous attempt (a gateway still working on an overloaded request may not have
-- stored it), how long a `processing` payment waits for its callback before it is
-- asked by status query, and how long it may stay unknown before a human looks.
ALTER TABLE gateway
    ADD COLUMN settle_window_ms     integer NOT NULL DEFAULT 600000
        CONSTRAINT gateway_settle_window_positive CHECK (settle_window_ms > 0),
    ADD COLUMN callback_deadline_ms integer NOT NULL DEFAULT 300000
        CONSTRAINT gateway_callback_deadline_positive CHECK (callback_deadline_ms > 0),
    ADD COLUMN review_after_ms      integer NOT NULL DEFAULT 86400000
        CONSTRAINT gateway_review_after_positive CHECK (review_after_ms > 0);

ALTER TABLE transaction
    -- When the gateway the transaction names was first asked (kept across re-submits
    -- to that same gateway): the start of its settle window.
    ADD COLUMN attempted_at       timestamptz,
    -- Every gateway ever offered this payment: a callback from any other is refused.
    ADD COLUMN attempted_gateways text[] NOT NULL DEFAULT '{}',
    -- Why a pending payment is unresolved (its gateway gave no definite answer, a
    -- permanent error after a gateway was chosen, …): shown to operators.
    ADD COLUMN unresolved_reason  text,
    -- A `processing` payment whose callback is late is asked by status query: when
    -- next (NULL: its gateway's callback deadline after it became `processing`).
    ADD COLUMN status_check_at    timestamptz,
    ADD COLUMN status_checks      integer NOT NULL DEFAULT 0,
    -- A contradiction or a payment Paygate cannot settle alone (`charged_but_failed`,
    -- `no_callback`, …): shown to the merchant as `review` and to operators in
    -- "needs a human". Final statuses still never change.
    ADD COLUMN review_reason      text,
    ADD COLUMN review_since       timestamptz,
    ADD COLUMN review_detail      text;

-- The gateway an earlier attempt named is the one known to have been offered it.
UPDATE transaction SET attempted_gateways = ARRAY[gateway] WHERE gateway IS NOT NULL;

-- The processing payments whose callback is due to be chased.
CREATE INDEX transaction_processing ON transaction (updated_at)
    WHERE status = 'processing';
-- "Needs a human": payments under review.
CREATE INDEX transaction_review ON transaction (review_since DESC)
    WHERE review_reason IS NOT NULL;

-- A callback that contradicts a final status (charged, but the payment is `failed`) is
-- no longer `ignored`: it is a contradiction, and its payment is flagged for review.
ALTER TABLE gateway_callback DROP CONSTRAINT gateway_callback_outcome_check;
ALTER TABLE gateway_callback ADD CONSTRAINT gateway_callback_outcome_known
    CHECK (outcome IN ('applied', 'ignored', 'rejected', 'contradiction'));
