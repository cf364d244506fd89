//! Routing policies through the admin API (issue 29): checked whole, refused with the
//! one error contract and nothing stored, every change recorded with who made it, and
//! announced to the payment-processors on the routing change notification.

use paygate_common::transactions::TransactionRecord;
use paygate_payment_processor::routing::{Snapshot, CHANNEL};
use paygate_testkit::{route_everything_to_simulator, ADMIN_TOKEN};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::api::Api;

async fn put_policy(api: &Api, route_set: &str, body: Value) -> (StatusCode, Value) {
    let response = api
        .http
        .put(format!("{}/admin/v1/routing/{route_set}", api.url))
        .bearer_auth(ADMIN_TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn get(api: &Api, path: &str) -> Value {
    api.http
        .get(format!("{}/admin/v1{path}", api.url))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_routing_policy_that_breaks_a_rule_is_refused_naming_the_input_and_changes_nothing() {
    let api = Api::start().await;
    route_everything_to_simulator(&api.pool, "http://127.0.0.1:9").await;
    for (route_set, body, field) in [
        (
            "DE",
            json!({"strategy": "volume_split", "splits": {"simjson": 90, "simsoap": 20}}),
            "splits",
        ),
        (
            "DE",
            json!({"rules": [{"max_amount": "10.00", "gateways": []}]}),
            "rules[0].gateways",
        ),
        (
            "DE",
            json!({"rules": [{"method": "card", "gateways": ["nosuch"]}]}),
            "rules[0].gateways",
        ),
        (
            "DE",
            json!({"rules": [{"min_amount": "10.00", "max_amount": "5.00", "gateways": ["simjson"]}]}),
            "rules[0].max_amount",
        ),
        (
            "DE",
            json!({"strategy": "success_rate", "exploration_percent": 101}),
            "exploration_percent",
        ),
        ("Germany", json!({"strategy": "priority"}), "route_set"),
    ] {
        let (status, error) = put_policy(&api, route_set, body.clone()).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {error}");
        assert_eq!(error["error"]["code"], "validation_failed", "{error}");
        assert_eq!(error["error"]["field"], field, "{body}: {error}");
    }
    let (status, error) = put_policy(&api, "DE", json!({"strategy": "fastest"})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{error}");
    assert_eq!(api.count("routing_policy").await, 0);
    assert_eq!(api.count("routing_change").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_routing_policy_is_stored_recorded_with_who_changed_it_announced_and_applied_by_the_cache(
) {
    let api = Api::start().await;
    route_everything_to_simulator(&api.pool, "http://127.0.0.1:9").await;
    let mut listener = sqlx::postgres::PgListener::connect_with(&api.pool)
        .await
        .unwrap();
    listener.listen(CHANNEL).await.unwrap();

    let policy = json!({
        "strategy": "volume_split", "splits": {"simjson": 90, "simsoap": 10},
        "rules": [{"min_amount": "100.00", "currency": "EUR", "method": "other", "kind": "deposit",
                   "gateways": ["simsoap"]}],
        "operator": "Ada"});
    let (status, stored) = put_policy(&api, "*", policy).await;
    assert_eq!(status, StatusCode::OK, "{stored}");
    assert_eq!(stored["route_set"], "*");
    assert_eq!(stored["updated_by"], "admin API: Ada");
    tokio::time::timeout(std::time::Duration::from_secs(5), listener.recv())
        .await
        .expect("the processors are told at once")
        .unwrap();

    let listed = get(&api, "/routing").await;
    assert_eq!(listed["data"][0]["strategy"], "volume_split", "{listed}");
    assert_eq!(listed["data"][0]["splits"]["simjson"], 90, "{listed}");
    let changes = get(&api, "/routing/changes").await;
    assert_eq!(changes["data"][0]["actor"], "admin API: Ada", "{changes}");
    assert_eq!(changes["data"][0]["route_set"], "*", "{changes}");
    assert_eq!(
        changes["data"][0]["policy"]["rules"][0]["gateways"][0],
        "simsoap"
    );

    // The processors' cache reads it: a large euro deposit matches the rule.
    let snapshot = Snapshot::load(&api.pool).await.unwrap();
    let large = payment(&api, "150.00").await;
    let plan = snapshot.plan(&large);
    assert_eq!(plan.rule, Some(0));
    assert_eq!(
        plan.routed
            .iter()
            .map(|g| g.code.as_str())
            .collect::<Vec<_>>(),
        ["simsoap"]
    );
    let small = payment(&api, "15.00").await;
    assert_eq!(snapshot.plan(&small).rule, None);

    let deleted = api
        .http
        .delete(format!("{}/admin/v1/routing/*", api.url))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    assert_eq!(api.count("routing_policy").await, 0);
    assert_eq!(
        api.count("routing_change").await,
        2,
        "the removal is recorded too"
    );
}

/// A pending euro deposit of `amount`, as stored through the api.
async fn payment(api: &Api, amount: &str) -> TransactionRecord {
    let (status, answer) = api
        .deposit(
            &json!({"user_id": "u-1", "amount": amount, "currency": "EUR"}).to_string(),
            "application/json",
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    let id = answer["id"].as_str().unwrap().parse().unwrap();
    paygate_common::transactions::find(&api.pool, &id)
        .await
        .unwrap()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_describes_pinned_gateways_and_routing_policies() {
    let api = Api::start().await;
    let document: Value = api
        .http
        .get(format!("{}/openapi.json", api.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let schemas = &document["components"]["schemas"];
    for field in ["gateway", "gateway_fallback"] {
        assert!(
            schemas["PaymentRequest"]["properties"][field].is_object(),
            "{field}"
        );
    }
    for field in [
        "strategy",
        "exploration_percent",
        "min_sample",
        "window_size",
        "splits",
        "rules",
    ] {
        assert!(
            schemas["RoutingPolicy"]["properties"][field].is_object(),
            "{field}"
        );
    }
    assert!(schemas["Rule"]["properties"]["gateways"].is_object());
}
