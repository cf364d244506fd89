-- transaction_event_history (transaction_id, seq) repeated what the unique
-- (transaction_id, version) index already offers every reader of a payment's events:
-- all of them ask by transaction_id, and a payment has a handful of events to put in
-- seq order. Each event wrote it at least twice (its insert, the relay's mark), three
-- times when the claim was not heap-only.
DROP INDEX transaction_event_history;
