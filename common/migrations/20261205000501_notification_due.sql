-- The dispatcher's claim of deliveries to a payment's own notification_url (no
-- endpoint) walked webhook_delivery_due, every pending delivery in due order, to find
-- the few without an endpoint: under a backlog of endpoint deliveries each claim read
-- them all (256 index entries a claim in the benchmark, where none had no endpoint).
-- Those deliveries get an index of their own; endpoint deliveries are claimed through
-- webhook_delivery_due_by_endpoint, so the old index only cost every delivery a write.
CREATE INDEX webhook_delivery_due_notification ON webhook_delivery (next_attempt_at)
    WHERE status = 'pending' AND endpoint_id IS NULL;
DROP INDEX webhook_delivery_due;
