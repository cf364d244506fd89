-- The outbox and the webhook deliveries are queues: every row is updated two or three
-- times within seconds of its insert (claimed, published; attempted, delivered), so
-- under load their dead row versions pile up far faster than the default thresholds
-- (a fifth of the table) let autovacuum clean them, and every claim's index scan
-- wades through them. Vacuumed and analyzed by row count instead.
ALTER TABLE transaction_event SET (
    autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 5000,
    autovacuum_analyze_scale_factor = 0, autovacuum_analyze_threshold = 5000,
    autovacuum_vacuum_cost_delay = 0
);
ALTER TABLE webhook_delivery SET (
    autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 5000,
    autovacuum_analyze_scale_factor = 0, autovacuum_analyze_threshold = 5000,
    autovacuum_vacuum_cost_delay = 0
);
