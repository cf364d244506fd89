-- What the operator console reads, each through an index that holds only what it asks
-- for, so its pages stay well under a second however many transactions there are.

-- Payments per minute by final status: only payments that reached a final state, by
-- when they did (a final state never changes, so updated_at is that moment). Added to
-- once per payment, at its final transition.
CREATE INDEX transaction_final_recent ON transaction (updated_at, status)
    WHERE status IN ('completed', 'failed');

-- The list across merchants, newest first, with the merchant API's row-value cursor.
CREATE INDEX transaction_newest ON transaction (created_at DESC, id DESC);

-- Filtering the list by an in-flight status (rare, so a filter on the index above would
-- read far): pending and processing payments only, newest first.
CREATE INDEX transaction_in_flight_newest ON transaction (created_at DESC, id DESC)
    WHERE status IN ('pending', 'processing');

-- Payments failed because every gateway stayed down (Needs a human, and the admin API's
-- dead-lettered list, which scanned the table until now).
CREATE INDEX transaction_dead_lettered ON transaction (updated_at DESC)
    WHERE status = 'failed' AND failure_reason LIKE 'failed after %';

-- Gateway attempts of the last minutes, for each gateway's success rate and latency.
CREATE INDEX transaction_event_attempts ON transaction_event (created_at)
    WHERE event_type = 'gateway.attempted';

-- A transaction's callbacks (its detail page; also the callback-processor's look-up of
-- parked callbacks, which scanned the table until now).
CREATE INDEX gateway_callback_transaction ON gateway_callback (transaction_id);

-- Webhooks that ran out of attempts.
CREATE INDEX webhook_delivery_failed ON webhook_delivery (updated_at DESC)
    WHERE status = 'failed';
