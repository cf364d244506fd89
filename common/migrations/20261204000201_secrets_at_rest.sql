-- What is sealed stays sealed, and what is no longer needed goes.

-- Secrets are stored sealed ("sealed:v1:<key id>:<base64>", see common/src/secrets.rs).
-- Rows from before sealing may still hold a plain value until the api seals them at its
-- next start (it needs the key ring, which SQL has not), so the constraints are NOT
-- VALID: every value written from now on must be sealed, existing rows are judged when
-- they are rewritten. The api validates them once nothing plain is left.
ALTER TABLE merchant
    ADD CONSTRAINT merchant_webhook_secret_sealed
        CHECK (starts_with(webhook_secret, 'sealed:v1:')) NOT VALID,
    ADD CONSTRAINT merchant_webhook_secret_previous_sealed
        CHECK (starts_with(webhook_secret_previous, 'sealed:v1:')) NOT VALID,
    ADD CONSTRAINT merchant_webhook_signing_key_sealed
        CHECK (starts_with(webhook_signing_key, 'sealed:v1:')) NOT VALID,
    ADD CONSTRAINT merchant_webhook_signing_key_previous_sealed
        CHECK (starts_with(webhook_signing_key_previous, 'sealed:v1:')) NOT VALID;
ALTER TABLE gateway
    ADD CONSTRAINT gateway_callback_secret_sealed
        CHECK (starts_with(callback_secret, 'sealed:v1:')) NOT VALID;

-- The purge clears the sealed card of a payment final for long enough: it finds them
-- through this index, never by scanning payments.
CREATE INDEX transaction_sealed_card_final ON transaction (updated_at)
    WHERE card_ciphertext IS NOT NULL AND status IN ('completed', 'failed');
