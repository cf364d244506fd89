-- Routing strategies and rules (issue 29). A route set is the routes of one country, or
-- the default routes (`route_set = '*'`); each may have one policy. Without a policy a
-- set routes by priority, as before.
--
-- A policy is written whole (strategy, its parameters and the ordered rules) by one
-- admin request, so it is one row: the rules are an ordered JSON list read only by
-- the payment-processors' cache, never queried by their parts. The api validates it
-- (percentages summing to 100, no rule without candidates, known gateways) before it is
-- stored; the checks here keep a hand-written row from breaking the cache.
CREATE TABLE routing_policy (
    route_set           text PRIMARY KEY
        CONSTRAINT routing_policy_route_set_shape CHECK (route_set = '*' OR route_set ~ '^[A-Z]{2}$'),
    strategy            text NOT NULL
        CONSTRAINT routing_policy_strategy_known CHECK (strategy IN ('priority', 'success_rate', 'volume_split')),
    -- success_rate: the share of payments sent to a gateway other than the best, so the
    -- others keep being measured; the outcomes a score needs before it counts; how many
    -- of a gateway's latest outcomes make its score.
    exploration_percent integer NOT NULL DEFAULT 10
        CONSTRAINT routing_policy_exploration_share CHECK (exploration_percent BETWEEN 0 AND 100),
    min_sample          integer NOT NULL DEFAULT 20
        CONSTRAINT routing_policy_min_sample_positive CHECK (min_sample > 0),
    window_size         integer NOT NULL DEFAULT 200
        CONSTRAINT routing_policy_window_holds_sample CHECK (window_size >= min_sample),
    -- volume_split: {"gateway code": percent, ...}, summing to 100.
    splits              jsonb NOT NULL DEFAULT '{}',
    -- [{"min_amount", "max_amount", "currency", "method", "kind", "gateways": [...]}, ...]
    rules               jsonb NOT NULL DEFAULT '[]',
    updated_at          timestamptz NOT NULL DEFAULT now(),
    updated_by          text NOT NULL
);

-- Every change of a policy: who, when, and what it became (`policy` NULL: deleted).
-- Append-only, like transaction_event.
CREATE TABLE routing_change (
    id         bigserial PRIMARY KEY,
    route_set  text NOT NULL,
    changed_at timestamptz NOT NULL DEFAULT now(),
    actor      text NOT NULL,
    policy     jsonb
);
CREATE INDEX routing_change_by_set ON routing_change (route_set, id);

-- The payment-processors reload their routing cache on the existing notification.
CREATE TRIGGER routing_policy_notify AFTER INSERT OR UPDATE OR DELETE ON routing_policy
    FOR EACH STATEMENT EXECUTE FUNCTION notify_routes();

-- The gateways a merchant pinned on a payment, in order (NULL: routed as usual), and
-- whether the routed gateways may be tried after them.
ALTER TABLE transaction
    ADD COLUMN pinned_gateways  text[],
    ADD COLUMN gateway_fallback boolean NOT NULL DEFAULT false;
