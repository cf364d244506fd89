-- A relay's claim sets claimed_until and claimed_by, which no index reads: kept on the
-- row's own page, the new version is a heap-only (HOT) update that writes none of the
-- outbox's nine indexes. With every page filled at insert there was no room, so each
-- claim wrote a new entry into every index (and left a dead one in each for the next
-- claim's scan to step over). New pages keep a quarter free for it.
ALTER TABLE transaction_event SET (fillfactor = 75);
