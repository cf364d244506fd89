-- The most one payment of either kind (deposit or withdrawal) may be, per merchant and
-- currency: a stolen API key or a merchant's bug cannot push one huge payment through.
-- NULL: no such limit. Intake refuses a payment over it with 422 limit_exceeded.
ALTER TABLE merchant_payout_limit
    ADD COLUMN max_payment numeric
        CONSTRAINT merchant_payout_limit_max_payment_positive CHECK (max_payment > 0);
