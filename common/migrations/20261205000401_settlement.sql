-- Reconciliation against the gateways' settlement reports (the payment-processor's
-- `settlement` module; not `reconcile.rs`, which re-asks gateways about payments that
-- wait). A run compares one gateway's report for one period with Paygate's payments and
-- refunds. It is one row per gateway and period: a re-run of the period takes up the
-- same row again, so whatever it found keeps its id and nothing is found twice.
CREATE TABLE settlement_run (
    id            bigserial PRIMARY KEY,
    gateway       text NOT NULL REFERENCES gateway (code),
    period_start  timestamptz NOT NULL,
    period_end    timestamptz NOT NULL,
    status        text NOT NULL DEFAULT 'requested'
        CONSTRAINT settlement_run_status CHECK (status IN ('requested', 'fetching', 'matching', 'completed', 'failed')),
    -- Who asked: 'schedule', or the operator named in the admin request.
    requested_by  text NOT NULL,
    requested_at  timestamptz NOT NULL DEFAULT now(),
    -- The replica working on it, until when: one run per gateway and period at a time,
    -- across replicas. A replica that dies leaves its lease to run out; another then
    -- takes the run up where its last committed batch left it.
    lease_owner   text,
    lease_until   timestamptz,
    -- Fetches of the report tried in this run (a report that cannot be fetched or read
    -- is tried again, then the run is `failed` with the reason, nothing applied).
    fetch_attempts integer NOT NULL DEFAULT 0,
    rows_read     bigint NOT NULL DEFAULT 0,
    matched       bigint NOT NULL DEFAULT 0,
    -- The last report reference matched, committed with that batch's results: where a
    -- resumed run goes on from.
    cursor        text,
    error         text,
    started_at    timestamptz,
    finished_at   timestamptz,
    CONSTRAINT settlement_run_period CHECK (period_end > period_start),
    CONSTRAINT settlement_run_once UNIQUE (gateway, period_start, period_end)
);
-- Runs waiting or held, for the runner's claim.
CREATE INDEX settlement_run_open ON settlement_run (requested_at) WHERE status IN ('requested', 'fetching', 'matching');
CREATE INDEX settlement_run_newest ON settlement_run (period_start DESC, id DESC);

-- A report as fetched, one row per line, before anything is matched: a run only matches
-- a report it read whole, so a report that breaks off is never half-applied.
CREATE TABLE settlement_line (
    run_id            bigint NOT NULL REFERENCES settlement_run (id) ON DELETE CASCADE,
    line              integer NOT NULL,
    reference         text NOT NULL,
    operation         text NOT NULL CONSTRAINT settlement_line_operation CHECK (operation IN ('charge', 'refund')),
    -- A refund's payment, by the reference it was charged under.
    payment_reference text,
    amount            numeric NOT NULL,
    currency          char(3) NOT NULL,
    fee               numeric NOT NULL DEFAULT 0,
    -- 'settled' (the money moved) or 'declined' (the gateway says nothing moved).
    status            text NOT NULL CONSTRAINT settlement_line_status CHECK (status IN ('settled', 'declined')),
    settled_at        timestamptz NOT NULL,
    PRIMARY KEY (run_id, line)
);
CREATE INDEX settlement_line_reference ON settlement_line (run_id, reference);

-- What a run found that does not match: each once per gateway, operation, reference and
-- kind, whichever run found it first (and however often the period is run again), with
-- both sides' evidence. Open until an operator resolves it with a note, or until the
-- report itself settled the payment (`resolved_by = 'paygate'`).
CREATE TABLE settlement_difference (
    id              bigserial PRIMARY KEY,
    run_id          bigint NOT NULL REFERENCES settlement_run (id),
    gateway         text NOT NULL REFERENCES gateway (code),
    operation       text NOT NULL CONSTRAINT settlement_difference_operation CHECK (operation IN ('charge', 'refund')),
    reference       text NOT NULL,
    kind            text NOT NULL CONSTRAINT settlement_difference_kind CHECK (kind IN (
        'missing_at_gateway', 'missing_in_paygate', 'amount_mismatch', 'status_mismatch',
        'duplicate_charge', 'duplicate_refund')),
    detail          text NOT NULL,
    paygate         jsonb,
    gateway_report  jsonb,
    found_at        timestamptz NOT NULL DEFAULT now(),
    resolved_at     timestamptz,
    resolved_by     text,
    resolution_note text,
    CONSTRAINT settlement_difference_once UNIQUE (gateway, operation, reference, kind)
);
CREATE INDEX settlement_difference_open ON settlement_difference (found_at, id) WHERE resolved_at IS NULL;
CREATE INDEX settlement_difference_of_run ON settlement_difference (run_id);

-- What each payment and refund cost at its gateway, and when the money moved, from the
-- reports: the per-gateway, per-day books (charged, refunded, fees, net) read these.
CREATE TABLE settlement_fee (
    gateway     text NOT NULL REFERENCES gateway (code),
    operation   text NOT NULL CONSTRAINT settlement_fee_operation CHECK (operation IN ('charge', 'refund')),
    reference   text NOT NULL,
    amount      numeric NOT NULL,
    currency    char(3) NOT NULL,
    fee         numeric NOT NULL,
    settled_at  timestamptz NOT NULL,
    run_id      bigint NOT NULL REFERENCES settlement_run (id),
    PRIMARY KEY (gateway, operation, reference)
);
CREATE INDEX settlement_fee_day ON settlement_fee (gateway, settled_at);
