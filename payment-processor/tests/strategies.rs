//! Routing strategies and merchant-chosen gateways (issue 29), end to end: policies set
//! through the admin API, payments through the api, the payment-processor choosing, the
//! simulator's gateways declining at the rates its `PUT /control` sets, over real HTTP.
//!
//! The suite's routes: `simsoap` first for `DE` (priority 10), then `simjson` (the
//! default route); `simcard` the default route for cards. So a German payment goes to
//! `simsoap` unless a policy, a rule or the merchant says otherwise.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::time::Duration;

use paygate_common::events::proto;
use paygate_testkit::{attempted_gateways, eventually, json_of, misbehave, Suite, ADMIN_TOKEN};
use prost::Message as _;
use secrecy::ExposeSecret as _;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

const LONG: Duration = Duration::from_secs(60);

/// Sets `route_set`'s policy through the admin API and lets the processor reload.
async fn set_policy(suite: &Suite, route_set: &str, policy: Value) {
    let response = reqwest::Client::new()
        .put(format!("{}/admin/v1/routing/{route_set}", suite.api_url))
        .bearer_auth(ADMIN_TOKEN)
        .json(&policy)
        .send()
        .await
        .unwrap();
    let status = response.status();
    assert!(
        status.is_success(),
        "{status}: {}",
        response.text().await.unwrap()
    );
    // The processor reloads on the change notification (and every 500 ms in tests).
    tokio::time::sleep(Duration::from_millis(700)).await;
}

/// Posts a deposit; its id.
async fn deposit(suite: &Suite, body: Value) -> String {
    let answer = json_of(suite.post("/v1/deposits").json(&body)).await;
    answer["id"]
        .as_str()
        .unwrap_or_else(|| panic!("refused: {answer}"))
        .to_owned()
}

fn german(amount: &str) -> Value {
    json!({"user_id": "u-1", "amount": amount, "currency": "EUR", "country": "DE"})
}

/// Once `ids` all left `pending`: the gateway each was settled at.
async fn settled_gateways(suite: &Suite, ids: &[String]) -> Vec<String> {
    eventually("the payments to leave pending", LONG, || async {
        let rows: Vec<(String, Option<String>)> =
            sqlx::query_as("SELECT status, gateway FROM transaction WHERE id = ANY($1)")
                .bind(ids)
                .fetch_all(&suite.pool)
                .await
                .unwrap();
        rows.iter().all(|(status, _)| status != "pending").then(|| {
            rows.into_iter()
                .map(|(_, g)| g.unwrap_or_default())
                .collect()
        })
    })
    .await
}

/// Sends `count` German deposits, `batch` at a time (each batch settled before the
/// next, so the success rates are read as they move); where each went, counted.
async fn send_german(suite: &Suite, count: usize, batch: usize) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    let mut sent = 0;
    while sent < count {
        let n = batch.min(count - sent);
        let mut ids = Vec::new();
        for _ in 0..n {
            ids.push(deposit(suite, german("10.00")).await);
        }
        for gateway in settled_gateways(suite, &ids).await {
            *counts.entry(gateway).or_default() += 1;
        }
        sent += n;
    }
    counts
}

/// The routing decision the first `gateway.attempted` event of `id` recorded.
async fn decision(suite: &Suite, id: &str) -> proto::RoutingDecision {
    let payload: Vec<u8> = sqlx::query_scalar(
        "SELECT payload FROM transaction_event
          WHERE transaction_id = $1 AND event_type = 'gateway.attempted' ORDER BY seq LIMIT 1",
    )
    .bind(id)
    .fetch_one(&suite.pool)
    .await
    .unwrap();
    proto::StatusChanged::decode(payload.as_slice())
        .unwrap()
        .routing
        .expect("the attempt records its routing decision")
}

fn at(counts: &HashMap<String, usize>, gateway: &str) -> usize {
    counts.get(gateway).copied().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn success_rate_routing_sends_most_payments_to_the_gateway_that_declines_less_and_still_explores_the_other(
) {
    let suite = Suite::start().await;
    // The priority route (simsoap) is the worse one: by priority it would get them all.
    misbehave(
        &suite.simulator_url,
        json!({"soap": {"decline_percent": 50}, "json": {"decline_percent": 5}}),
    )
    .await;
    set_policy(
        &suite,
        "DE",
        json!({"strategy": "success_rate", "exploration_percent": 10, "min_sample": 10, "window_size": 50, "operator": "test"}),
    )
    .await;

    // Past the minimum sample of both.
    send_german(&suite, 40, 10).await;
    let counts = send_german(&suite, 100, 10).await;
    assert!(at(&counts, "simjson") >= 80, "{counts:?}");
    assert!(
        at(&counts, "simsoap") >= 1,
        "exploration still reaches the worse gateway: {counts:?}"
    );

    let id = deposit(&suite, german("10.00")).await;
    settled_gateways(&suite, std::slice::from_ref(&id)).await;
    let why = decision(&suite, &id).await;
    assert_eq!(why.strategy, "success_rate");
    assert_eq!(why.route_set, "DE");
    assert_eq!(why.scores.len(), 2, "{why:?}");
    assert!(
        why.scores.iter().all(|s| s.counted && s.samples >= 10),
        "{why:?}"
    );
    suite.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn when_the_better_gateway_degrades_its_traffic_moves_back_within_the_window() {
    let suite = Suite::start().await;
    // simsoap, the priority route, starts as the better one: it keeps the traffic.
    misbehave(
        &suite.simulator_url,
        json!({"soap": {"decline_percent": 5}, "json": {"decline_percent": 50}}),
    )
    .await;
    set_policy(
        &suite,
        "DE",
        json!({"strategy": "success_rate", "exploration_percent": 10, "min_sample": 10, "window_size": 30}),
    )
    .await;
    send_german(&suite, 30, 10).await;
    let before = send_german(&suite, 30, 10).await;
    assert!(at(&before, "simsoap") >= 20, "{before:?}");

    // simsoap now declines most payments, simjson hardly any.
    misbehave(
        &suite.simulator_url,
        json!({"soap": {"decline_percent": 80}, "json": {"decline_percent": 5}}),
    )
    .await;
    // Within the window (30 outcomes of simsoap) its score falls below simjson's.
    send_german(&suite, 60, 10).await;
    let after = send_german(&suite, 50, 10).await;
    assert!(at(&after, "simjson") >= 35, "{after:?}");
    suite.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_volume_split_sends_each_gateway_its_share_within_the_stated_tolerance() {
    let suite = Suite::start().await;
    set_policy(
        &suite,
        "DE",
        json!({"strategy": "volume_split", "splits": {"simsoap": 20, "simjson": 80}}),
    )
    .await;
    let counts = send_german(&suite, 200, 20).await;
    // 40 expected at simsoap, standard deviation ~5.7: ±20 is over three and a half.
    let soap = at(&counts, "simsoap");
    assert!((20..=60).contains(&soap), "{counts:?}");
    assert_eq!(
        at(&counts, "simsoap") + at(&counts, "simjson"),
        200,
        "{counts:?}"
    );
    suite.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rules_by_amount_and_method_pick_the_candidate_set_and_the_attempt_says_which_matched() {
    let suite = Suite::start().await;
    set_policy(
        &suite,
        "*",
        json!({"rules": [{"max_amount": "50.00", "method": "other", "gateways": ["simsoap"]}]}),
    )
    .await;
    let usd = |amount: &str| json!({"user_id": "u-2", "amount": amount, "currency": "USD"});
    let small = deposit(&suite, usd("20.00")).await;
    let large = deposit(&suite, usd("80.00")).await;
    let mut card = usd("20.00");
    card["payment_method"] = json!({"type": "card", "card": {
        "number": "4242424242424242", "expiry_month": 12, "expiry_year": 2031}});
    let card = deposit(&suite, card).await;
    let gateways = settled_gateways(&suite, &[small.clone(), large.clone(), card.clone()]).await;
    assert_eq!(
        attempted_gateways(&suite.pool, &small).await,
        ["simsoap"],
        "{gateways:?}"
    );
    assert_eq!(attempted_gateways(&suite.pool, &large).await, ["simjson"]);
    assert_eq!(attempted_gateways(&suite.pool, &card).await, ["simcard"]);

    let why = decision(&suite, &small).await;
    assert_eq!(
        (why.strategy.as_str(), why.route_set.as_str(), why.rule),
        ("priority", "*", 1)
    );
    assert!(
        why.rule_summary.contains("amount ..50.00"),
        "{}",
        why.rule_summary
    );
    assert_eq!(decision(&suite, &large).await.rule, 0, "no rule matched");
    suite.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pinned_gateway_is_used_even_where_the_routes_prefer_another() {
    let suite = Suite::start().await;
    let mut body = german("12.00");
    body["gateway"] = json!("simjson");
    let id = deposit(&suite, body).await;
    settled_gateways(&suite, std::slice::from_ref(&id)).await;
    assert_eq!(attempted_gateways(&suite.pool, &id).await, ["simjson"]);
    let why = decision(&suite, &id).await;
    assert_eq!((why.strategy.as_str(), why.fallback), ("pinned", false));
    suite.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pinned_gateway_that_is_down_is_never_fallen_back_from_unless_the_request_allows_it() {
    let suite = Suite::start().await;
    let down = paygate_testkit::start_simulator(CancellationToken::new(), Duration::ZERO).await;
    paygate_testkit::control_simulator(&down, Some(503), None).await;
    let config = paygate_testkit::gateway_config(
        "down",
        "json",
        format!("{down}/json"),
        paygate_testkit::SIM_JSON_SECRET,
        2_000,
    );
    paygate_testkit::register_gateway(&suite.pool, &config, Some((Some("DE"), 1))).await;
    tokio::time::sleep(Duration::from_millis(700)).await;

    let mut pinned = german("13.00");
    pinned["gateway"] = json!("down");
    let pinned = deposit(&suite, pinned).await;
    let mut allowed = german("14.00");
    allowed["gateway"] = json!(["down"]);
    allowed["gateway_fallback"] = json!(true);
    let allowed = deposit(&suite, allowed).await;

    let gateways = settled_gateways(&suite, std::slice::from_ref(&allowed)).await;
    assert_eq!(
        gateways,
        ["simsoap"],
        "the routed gateways followed the pinned one"
    );
    assert_eq!(
        attempted_gateways(&suite.pool, &allowed).await,
        ["down", "simsoap"]
    );
    // Meanwhile the pinned payment was retried at its gateway, and only there.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let attempted = attempted_gateways(&suite.pool, &pinned).await;
    assert!(!attempted.is_empty(), "it was offered to its gateway");
    assert!(attempted.iter().all(|g| g == "down"), "{attempted:?}");
    let status: String = sqlx::query_scalar("SELECT status FROM transaction WHERE id = $1")
        .bind(&pinned)
        .fetch_one(&suite.pool)
        .await
        .unwrap();
    assert_ne!(status, "completed");
    suite.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_gateway_that_cannot_take_the_payment_is_refused_at_intake_and_nothing_is_stored() {
    let suite = Suite::start().await;
    for (gateway, why) in [
        (json!("simcard"), "payment method"),
        (json!("nosuch"), "no such gateway"),
        (json!(["simjson", "simsoap"]), "not routed"),
    ] {
        let mut body =
            json!({"user_id": "u-3", "amount": "10.00", "currency": "USD", "country": "US"});
        body["gateway"] = gateway;
        let response = suite.post("/v1/deposits").json(&body).send().await.unwrap();
        assert_eq!(response.status(), 422);
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"]["code"], "gateway_not_available", "{error}");
        assert_eq!(error["error"]["field"], "gateway", "{error}");
        assert!(
            error["error"]["message"].as_str().unwrap().contains(why),
            "{error}"
        );
    }
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM transaction")
        .fetch_one(&suite.pool)
        .await
        .unwrap();
    assert_eq!(stored, 0);
    suite.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_customers_own_decline_does_not_count_against_the_gateway_but_its_own_declines_do() {
    let suite = Suite::start().await;
    set_policy(
        &suite,
        "DE",
        json!({"strategy": "success_rate", "exploration_percent": 0, "min_sample": 50}),
    )
    .await;
    // `.01`: insufficient funds, the customer's decline, at simsoap (first by priority).
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(deposit(&suite, german("10.01")).await);
    }
    // The gateway's own refusals.
    misbehave(
        &suite.simulator_url,
        json!({"soap": {"decline_percent": 100}}),
    )
    .await;
    for _ in 0..3 {
        ids.push(deposit(&suite, german("10.00")).await);
    }
    settled_gateways(&suite, &ids).await;

    let id = deposit(&suite, german("10.00")).await;
    settled_gateways(&suite, std::slice::from_ref(&id)).await;
    let why = decision(&suite, &id).await;
    let soap = why.scores.iter().find(|s| s.gateway == "simsoap").unwrap();
    assert_eq!((soap.successes, soap.samples), (0, 3), "{why:?}");
    // The window is kept only while attempts touch it.
    let redis = redis::Client::open(suite.settings.redis.url.expose_secret()).unwrap();
    let mut redis = redis.get_multiplexed_async_connection().await.unwrap();
    let key = format!(
        "{}:score:simsoap:DE:EUR:plain",
        suite.settings.redis.key_prefix
    );
    let ttl: i64 = redis::cmd("TTL")
        .arg(&key)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(
        (1..=7 * 24 * 3600).contains(&ttl),
        "{key} expires in {ttl}s"
    );
    suite.stop().await;
}
