-- What operators steer through the admin API.

-- A rotated API key keeps working until expires_at (the overlap), then stops.
ALTER TABLE api_key ADD COLUMN expires_at timestamptz;

-- Each gateway's circuit as its payment-processor last reported a change (several
-- replicas each judge for themselves; this is the latest word from any of them).
CREATE TABLE gateway_circuit (
    gateway_code text PRIMARY KEY REFERENCES gateway (code) ON DELETE CASCADE,
    state        text NOT NULL CHECK (state IN ('closed', 'open', 'half_open')),
    changed_at   timestamptz NOT NULL DEFAULT now()
);

-- Operators list what needs them: rejected callbacks, unresolved payments.
CREATE INDEX gateway_callback_rejected ON gateway_callback (received_at DESC) WHERE outcome = 'rejected';
