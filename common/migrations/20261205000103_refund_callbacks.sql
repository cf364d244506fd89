-- A gateway's callback about a refund is kept in the same inbox as the payments',
-- under its payment (`transaction_id`), naming the refund it is about.
ALTER TABLE gateway_callback ADD COLUMN refund_id text REFERENCES refund (id);
