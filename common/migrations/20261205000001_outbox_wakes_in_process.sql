-- The outbox no longer wakes relays with NOTIFY. A transaction that sends NOTIFY takes
-- a database-wide lock from its pre-commit until its commit record is flushed, so every
-- event-writing commit (intake, each status change, each stored callback) waited for the
-- one before it: no group commit. pgbench on the same box with the trigger's NOTIFY
-- added to a two-statement transaction: 4,145 -> 2,224 TPS, 8 clients. The service that
-- commits an event now wakes its own relay in-process (`outbox::commit`), and the poll
-- picks up what a process that died left behind.
DROP TRIGGER IF EXISTS transaction_event_notify ON transaction_event;
DROP FUNCTION IF EXISTS notify_outbox();
