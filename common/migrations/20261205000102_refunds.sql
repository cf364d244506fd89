-- Refunds: money a completed deposit gives back, in part or in whole, through the
-- gateway that charged it.
--
-- The rule that matters most is kept here, not in the api: the refunds of a payment
-- that are not `failed` never add up to more than its amount. Every refund first holds
-- its amount on the payment (`refund_held`, an UPDATE of the payment's row, so racing
-- requests queue on its lock), and `refund_within_amount` refuses the hold that would
-- pass the amount; a failed refund gives its hold back in the database transaction that
-- fails it. `amount_refunded` is what completed refunds gave back.
ALTER TABLE transaction
    ADD COLUMN refund_held     numeric NOT NULL DEFAULT 0,
    ADD COLUMN amount_refunded numeric NOT NULL DEFAULT 0,
    ADD CONSTRAINT refund_within_amount
        CHECK (0 <= amount_refunded AND amount_refunded <= refund_held AND refund_held <= amount);

-- One refund, with its own status machine (pending -> processing -> completed | failed,
-- and pending -> failed) and its own version, the fencing token of every update, as a
-- payment's. It is asked of the gateway that charged the payment, and of no other.
CREATE TABLE refund (
    id                text PRIMARY KEY,              -- rfd_<uuid>: the gateway's idempotency reference
    transaction_id    text NOT NULL REFERENCES transaction (id),
    merchant_id       text NOT NULL REFERENCES merchant (id),
    status            text NOT NULL DEFAULT 'pending'
        CONSTRAINT refund_status CHECK (status IN ('pending', 'processing', 'completed', 'failed')),
    amount            numeric NOT NULL CONSTRAINT refund_amount_positive CHECK (amount > 0),
    currency          char(3) NOT NULL,
    reason            text,
    metadata          jsonb NOT NULL DEFAULT '{}'::jsonb
        CONSTRAINT refund_metadata_is_object CHECK (jsonb_typeof(metadata) = 'object'),
    gateway           text NOT NULL REFERENCES gateway (code),
    gateway_refund_id text,
    failure_reason    text,
    version           integer NOT NULL DEFAULT 1,
    -- When the gateway was first asked: from then on it may hold the refund, so it is
    -- asked about it (status query) before it is ever sent it again.
    attempted_at      timestamptz,
    -- Set while nobody could get a definite answer about it from the gateway.
    unresolved_since  timestamptz,
    unresolved_reason text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);
-- A payment's refunds, oldest first.
CREATE INDEX refund_of_transaction ON refund (transaction_id, created_at, id);
-- Refunds not yet final, for the reconciler's sweep.
CREATE INDEX refund_open ON refund (updated_at) WHERE status IN ('pending', 'processing');

-- A refund's changes are versions of its payment's history too (the payment's view
-- changes: `amount_refunded`), so its webhooks go out in order with the payment's; the
-- refund they are about is named here.
ALTER TABLE transaction_event ADD COLUMN refund_id text REFERENCES refund (id);
CREATE INDEX transaction_event_refund ON transaction_event (refund_id, seq) WHERE refund_id IS NOT NULL;
