-- What operators do to a payment is part of its history, and withdrawals pay money out
-- only within the limits an operator sets per merchant.

-- An operator's action on a payment (re-drive, release to other gateways, resolving a
-- review, re-sending a set-aside event) is a history event like any other, carrying
-- who took it and why; `created_at` says when. NULL on every event Paygate writes by
-- itself.
ALTER TABLE transaction_event
    ADD COLUMN actor text,
    ADD COLUMN note  text;

-- Per merchant and currency (amounts in different currencies are never added up): the
-- most one withdrawal may pay out, and the most all of a UTC day's withdrawals may. A
-- NULL limit is no limit; no row, no limits.
CREATE TABLE merchant_payout_limit (
    merchant_id text NOT NULL REFERENCES merchant (id),
    currency    char(3) NOT NULL,
    max_payout  numeric CONSTRAINT merchant_payout_limit_max_payout_positive CHECK (max_payout > 0),
    max_daily   numeric CONSTRAINT merchant_payout_limit_max_daily_positive CHECK (max_daily > 0),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (merchant_id, currency)
);

-- What a merchant's withdrawals in a currency took of a UTC day's allowance. Intake adds
-- a withdrawal with one conditional UPDATE (`total + amount <= max_daily`) in the
-- database transaction that creates it: racing payouts queue on the row, each sees the
-- total the one before committed, and what does not fit is refused with nothing
-- written. A withdrawal that later fails keeps its amount counted: `failed` can still
-- turn out to have been paid (a contradiction a human resolves), and the limit bounds
-- what was asked to go out.
CREATE TABLE merchant_payout_day (
    merchant_id text NOT NULL REFERENCES merchant (id),
    currency    char(3) NOT NULL,
    day         date NOT NULL,
    total       numeric NOT NULL DEFAULT 0 CONSTRAINT merchant_payout_day_total_not_negative CHECK (total >= 0),
    PRIMARY KEY (merchant_id, currency, day)
);
