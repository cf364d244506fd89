-- A dispatcher's claim on a delivery is a lease of its own, `leased_until`, which no index
-- reads. The claim used to move `next_attempt_at` past the lease instead; two indexes key
-- on it, so every claim wrote a new entry into each of the table's indexes (five for a
-- pending delivery) and left a dead one in each for the next claim's scan to step over.
-- Now a claim changes no indexed column: kept on the row's own page, it is a heap-only
-- (HOT) update. New pages keep a quarter free for it, as the outbox's do.
--
-- `next_attempt_at` keeps one meaning, when the delivery is due; a due delivery is free
-- to claim while it has no lease or its lease ran out. Deliveries claimed the old way
-- (their `next_attempt_at` moved past the lease) are claimed again when it passes, as
-- before. While dispatchers of the old build still run beside new ones, an old one does
-- not see a new one's lease and may send a delivery in flight a second time: the same
-- `webhook-id`, and only the first record of that attempt number counts.
ALTER TABLE webhook_delivery ADD COLUMN leased_until timestamptz;
ALTER TABLE webhook_delivery SET (fillfactor = 75);
