//! What merchants read and what operators steer: transaction lists, histories and
//! webhook deliveries scoped to their merchant, and the admin API behind its token.

use paygate_common::secrets::Sealed;
use std::time::Duration;

use paygate_testkit::{eventually, json_of, Suite, ADMIN_TOKEN};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::api::Api;

async fn deposit(api: &Api, key: &str, amount: &str, kind: &str) -> String {
    let body: Value = api
        .http
        .post(format!("{}/v1/{kind}", api.url))
        .bearer_auth(key)
        .json(&json!({"user_id": "u", "amount": amount, "currency": "EUR"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["id"].as_str().unwrap().to_owned()
}

async fn get(api: &Api, key: &str, path: &str) -> (StatusCode, Value) {
    let response = api
        .http
        .get(format!("{}{path}", api.url))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    (
        response.status(),
        response.json().await.unwrap_or(Value::Null),
    )
}

fn ids(page: &Value) -> Vec<String> {
    page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_list_newest_first_a_page_at_a_time_with_filters_and_only_the_merchants_own() {
    let api = Api::start().await;
    let other =
        paygate_api::merchants::create(&api.pool, &paygate_testkit::keys(), "other", None, None)
            .await
            .unwrap();
    let mut mine = Vec::new();
    for (i, kind) in [
        "deposits",
        "withdrawals",
        "deposits",
        "deposits",
        "withdrawals",
    ]
    .iter()
    .enumerate()
    {
        mine.push(deposit(&api, &api.key, &format!("{}.00", i + 1), kind).await);
    }
    let theirs = deposit(&api, &other.api_key, "9.00", "deposits").await;
    mine.reverse(); // newest first

    let (status, first) = get(&api, &api.key, "/v1/transactions?limit=2").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ids(&first), mine[..2]);
    assert_eq!(first["has_more"], true);
    let (_, second) = get(
        &api,
        &api.key,
        &format!("/v1/transactions?limit=2&starting_after={}", mine[1]),
    )
    .await;
    assert_eq!(ids(&second), mine[2..4]);
    assert_eq!(second["has_more"], true);
    let (_, last) = get(
        &api,
        &api.key,
        &format!("/v1/transactions?limit=2&starting_after={}", mine[3]),
    )
    .await;
    assert_eq!(ids(&last), mine[4..]);
    assert_eq!(last["has_more"], false, "the page boundary");

    let (_, withdrawals) = get(&api, &api.key, "/v1/transactions?kind=withdrawal").await;
    assert_eq!(ids(&withdrawals).len(), 2);
    let (_, pending) = get(&api, &api.key, "/v1/transactions?status=pending&limit=100").await;
    assert_eq!(ids(&pending).len(), 5);
    let (_, none) = get(&api, &api.key, "/v1/transactions?status=completed").await;
    assert!(ids(&none).is_empty());
    let (_, future) = get(
        &api,
        &api.key,
        "/v1/transactions?created_after=2100-01-01T00:00:00Z",
    )
    .await;
    assert!(ids(&future).is_empty());
    assert!(
        !ids(&pending).contains(&theirs),
        "never another merchant's rows"
    );

    let (status, error) = get(&api, &api.key, "/v1/transactions?limit=101").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(error["error"]["field"], "limit");
    let (status, error) = get(
        &api,
        &api.key,
        &format!("/v1/transactions?starting_after={theirs}"),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "another's cursor is unknown"
    );
    assert_eq!(error["error"]["field"], "starting_after");
    let (status, _) = get(&api, &api.key, "/v1/transactions?status=lost").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    api.running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_payments_history_and_webhook_deliveries_read_in_order_and_a_replay_resends_the_same_webhook_id(
) {
    let suite = Suite::start().await;
    let id = suite.deposit("12.00").await;
    eventually("both webhooks", Duration::from_secs(30), || async {
        (suite.webhooks.received().len() == 2).then_some(())
    })
    .await;

    let history = json_of(suite.get(&format!("/v1/transactions/{id}/events"))).await;
    let steps: Vec<(i64, &str)> = history["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["version"].as_i64().unwrap(), e["type"].as_str().unwrap()))
        .collect();
    assert_eq!(
        steps,
        [
            (1, "transaction.created"),
            (2, "gateway.attempted"),
            (3, "transaction.processing"),
            (4, "transaction.completed")
        ]
    );

    // The receiver has both; the dispatcher records each as delivered a moment after
    // the receiver's answer reaches it.
    let deliveries = eventually(
        "both deliveries recorded",
        Duration::from_secs(30),
        || async {
            let page =
                json_of(suite.get(&format!("/v1/webhook-deliveries?transaction_id={id}"))).await;
            let deliveries = page["data"].as_array().cloned().unwrap_or_default();
            (deliveries.len() == 2 && deliveries.iter().all(|d| d["status"] != "pending"))
                .then_some(deliveries)
        },
    )
    .await;
    assert_eq!(deliveries.len(), 2);
    assert_eq!(deliveries[0]["type"], "transaction.processing");
    assert_eq!(deliveries[1]["type"], "transaction.completed");
    for delivery in &deliveries {
        assert_eq!(delivery["status"], "delivered");
        assert_eq!(delivery["attempts"][0]["status_code"], 200);
        assert!(delivery["attempts"][0]["duration_ms"].is_number());
    }

    let completed = &deliveries[1];
    let replay = suite
        .post(&format!(
            "/v1/webhook-deliveries/{}/replay",
            completed["id"].as_str().unwrap()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status(), StatusCode::ACCEPTED);
    let again = eventually("the replayed webhook", Duration::from_secs(30), || async {
        let received = suite.webhooks.received();
        (received.len() == 3).then(|| received[2].clone())
    })
    .await;
    assert_eq!(
        again.header("webhook-id"),
        completed["event_id"].as_str().unwrap()
    );
    // The dispatcher records an attempt once the merchant has answered: wait for it.
    eventually(
        "the new attempt is recorded",
        Duration::from_secs(10),
        || async {
            let after =
                json_of(suite.get(&format!("/v1/webhook-deliveries?transaction_id={id}"))).await;
            (after["data"][1]["attempts"].as_array().unwrap().len() == 2).then_some(())
        },
    )
    .await;

    // Another merchant sees none of it.
    let other =
        paygate_api::merchants::create(&suite.pool, &paygate_testkit::keys(), "other", None, None)
            .await
            .unwrap();
    let as_other = |path: String| {
        suite
            .http
            .get(format!("{}{path}", suite.api_url))
            .bearer_auth(&other.api_key)
            .send()
    };
    for path in [
        format!("/v1/transactions/{id}"),
        format!("/v1/transactions/{id}/events"),
        format!("/v1/webhook-deliveries?transaction_id={id}"),
    ] {
        assert_eq!(
            as_other(path.clone()).await.unwrap().status(),
            StatusCode::NOT_FOUND,
            "{path}"
        );
    }
    let replay_as_other = suite
        .http
        .post(format!(
            "{}/v1/webhook-deliveries/{}/replay",
            suite.api_url,
            completed["id"].as_str().unwrap()
        ))
        .bearer_auth(&other.api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(replay_as_other.status(), StatusCode::NOT_FOUND);
    suite.stop().await;
}

/// country, currency, kind, priority, gateway.
type RouteRow = (Option<String>, Option<String>, Option<String>, i32, String);

fn admin(api: &Api, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
    api.http
        .request(method, format!("{}/admin/v1{path}", api.url))
        .bearer_auth(ADMIN_TOKEN)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_admin_route_refuses_a_missing_or_wrong_token() {
    let api = Api::start().await;
    use reqwest::Method;
    let routes = [
        (Method::POST, "/merchants"),
        (Method::POST, "/merchants/mer_x/api-keys"),
        (Method::PUT, "/merchants/mer_x/webhook"),
        (Method::PUT, "/customers"),
        (Method::GET, "/gateways"),
        (Method::PUT, "/gateways/g"),
        (Method::POST, "/gateways/g/enable"),
        (Method::POST, "/gateways/g/disable"),
        (Method::GET, "/routes"),
        (Method::PUT, "/routes"),
        (Method::DELETE, "/routes/1"),
        (Method::GET, "/callbacks/rejected"),
        (Method::GET, "/payments/dead-lettered"),
        (Method::GET, "/payments/under-review"),
        (Method::GET, "/merchants/mer_x/webhook"),
        (Method::POST, "/merchants/mer_x/webhook-secret"),
        (Method::POST, "/merchants/mer_x/webhook-signing-key"),
        (Method::POST, "/transactions/txn_x/redrive"),
        (Method::POST, "/transactions/txn_x/release"),
        (Method::POST, "/transactions/txn_x/review/resolve"),
        (Method::GET, "/outbox/set-aside"),
        (Method::POST, "/outbox/evt_x/resend"),
        (Method::PUT, "/merchants/mer_x/limits"),
        (Method::GET, "/merchants/mer_x/limits"),
    ];
    for (method, path) in routes {
        for token in [None, Some("wrong"), Some(api.key.as_str())] {
            let mut request = api
                .http
                .request(method.clone(), format!("{}/admin/v1{path}", api.url))
                .json(&json!({}));
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            let response = request.send().await.unwrap();
            assert_eq!(
                response.status(),
                StatusCode::UNAUTHORIZED,
                "{method} {path} with {token:?}"
            );
            let body: Value = response.json().await.unwrap();
            assert_eq!(body["error"]["code"], "unauthorized");
        }
    }
    api.running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_creates_a_merchant_whose_rotated_key_overlaps_then_expires() {
    let api = Api::start().await;
    let created = admin(&api, reqwest::Method::POST, "/merchants")
        .json(&json!({"name": "Acme", "webhook_url": "https://acme.example/hooks"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let created: Value = created.json().await.unwrap();
    let merchant = created["id"].as_str().unwrap().to_owned();
    let old_key = created["api_key"].as_str().unwrap().to_owned();
    assert!(created["webhook_secret"]
        .as_str()
        .unwrap()
        .starts_with("whsec_"));
    let stored: Vec<u8> = sqlx::query_scalar("SELECT key_hash FROM api_key WHERE merchant_id = $1")
        .bind(&merchant)
        .fetch_one(&api.pool)
        .await
        .unwrap();
    assert_ne!(stored, old_key.as_bytes(), "stored hashed");

    // A rotation, whose overlap is then cut to one second on the stored rows.
    let rotated: Value = admin(
        &api,
        reqwest::Method::POST,
        &format!("/merchants/{merchant}/api-keys"),
    )
    .send()
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let new_key = rotated["api_key"].as_str().unwrap().to_owned();
    sqlx::query("UPDATE api_key SET expires_at = now() + interval '1 second' WHERE merchant_id = $1 AND expires_at IS NOT NULL")
        .bind(&merchant)
        .execute(&api.pool)
        .await
        .unwrap();
    let id = deposit(&api, &old_key, "1.00", "deposits").await;
    assert!(
        id.starts_with("txn_"),
        "the old key works during the overlap"
    );
    let (status, _) = get(&api, &new_key, &format!("/v1/transactions/{id}")).await;
    assert_eq!(status, StatusCode::OK, "the new key works at once");
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let (status, _) = get(&api, &old_key, &format!("/v1/transactions/{id}")).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "the old key stops after the overlap"
    );
    let (status, _) = get(&api, &new_key, &format!("/v1/transactions/{id}")).await;
    assert_eq!(status, StatusCode::OK);

    // Webhook URL and customers' countries.
    let set = admin(
        &api,
        reqwest::Method::PUT,
        &format!("/merchants/{merchant}/webhook"),
    )
    .json(&json!({"webhook_url": "not a url"}))
    .send()
    .await
    .unwrap();
    assert_eq!(set.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let customer = admin(&api, reqwest::Method::PUT, "/customers")
        .json(&json!({"merchant_id": merchant, "user_id": "u-fr", "country": "FR"}))
        .send()
        .await
        .unwrap();
    assert_eq!(customer.status(), StatusCode::OK);
    let routed: Value = api
        .http
        .post(format!("{}/v1/deposits", api.url))
        .bearer_auth(&new_key)
        .json(&json!({"user_id": "u-fr", "amount": "3.00", "currency": "EUR"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(routed["country"], "FR", "the customer's country on record");
    api.running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_seed_and_the_admin_api_make_the_same_gateways_and_routes() {
    let seeded = Api::start().await;
    let secrets = paygate_api::demo::SimulatorSecrets {
        json: "json-callback-secret".into(),
        soap: "soap-callback-secret".into(),
        card: "card-callback-secret".into(),
    };
    paygate_api::demo::register_simulator(
        &seeded.pool,
        &paygate_testkit::keys(),
        "http://127.0.0.1:8090",
        &secrets,
        5_000,
        paygate_api::demo::DEMO_TIMINGS,
    )
    .await
    .unwrap();

    let operated = Api::start().await;
    for (code, protocol, secret) in [
        ("simjson", "json", "json-callback-secret"),
        ("simsoap", "soap", "soap-callback-secret"),
        ("simcard", "card", "card-callback-secret"),
    ] {
        let put = admin(&operated, reqwest::Method::PUT, &format!("/gateways/{code}"))
            .json(&json!({"protocol": protocol, "base_url": format!("http://127.0.0.1:8090/{protocol}"),
                          "callback_secret": secret, "timeout_ms": 5000, "max_concurrency": 64, "enabled": true,
                          "settle_window_ms": 30000, "callback_deadline_ms": 60000, "review_after_ms": 600000}))
            .send()
            .await
            .unwrap();
        assert_eq!(put.status(), StatusCode::OK);
    }
    for (country, priority, code) in [
        (None, 100, "simjson"),
        (Some("DE"), 10, "simsoap"),
        (None, 100, "simcard"),
    ] {
        let put = admin(&operated, reqwest::Method::PUT, "/routes")
            .json(&json!({"country": country, "currency": null, "kind": null, "priority": priority, "gateway_code": code}))
            .send()
            .await
            .unwrap();
        assert_eq!(put.status(), StatusCode::OK);
    }
    let unknown = admin(&operated, reqwest::Method::PUT, "/gateways/acme")
        .json(&json!({"protocol": "carrier-pigeon", "base_url": "http://127.0.0.1:1", "callback_secret": "a-long-enough-secret",
                      "timeout_ms": 1000, "enabled": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        unknown.status(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "no adapter speaks it"
    );

    let rows = |pool: sqlx::PgPool| async move {
        let stored: Vec<(String, String, String, Sealed, i32, i32, bool)> = sqlx::query_as(
            "SELECT code, protocol, base_url, callback_secret, timeout_ms, max_concurrency, enabled FROM gateway ORDER BY code",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        // Callback secrets are stored sealed, each under its own nonce: compare what
        // they open to.
        let gateways: Vec<_> = stored
            .into_iter()
            .map(
                |(code, protocol, url, secret, timeout, concurrency, enabled)| {
                    assert!(
                        secret.is_sealed(),
                        "{code}'s callback secret is sealed at rest"
                    );
                    let secret = paygate_testkit::keys().open_secret(&secret).unwrap();
                    let secret = secrecy::ExposeSecret::expose_secret(&secret).to_owned();
                    (code, protocol, url, secret, timeout, concurrency, enabled)
                },
            )
            .collect();
        let routes: Vec<RouteRow> = sqlx::query_as(
            "SELECT country, currency, kind, priority, gateway_code FROM gateway_route ORDER BY gateway_code, country",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        (gateways, routes)
    };
    assert_eq!(
        rows(seeded.pool.clone()).await,
        rows(operated.pool.clone()).await
    );

    let listed: Value = admin(&operated, reqwest::Method::GET, "/gateways")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["data"].as_array().unwrap().len(), 3);
    assert_eq!(listed["data"][0]["circuit"], "closed");
    assert!(
        listed["data"][0].get("callback_secret").is_none(),
        "secrets are not listed"
    );
    let disabled = admin(
        &operated,
        reqwest::Method::POST,
        "/gateways/simsoap/disable",
    )
    .send()
    .await
    .unwrap();
    assert_eq!(disabled.status(), StatusCode::OK);
    let enabled: bool = sqlx::query_scalar("SELECT enabled FROM gateway WHERE code = 'simsoap'")
        .fetch_one(&operated.pool)
        .await
        .unwrap();
    assert!(!enabled);
    seeded.running.stop().await.unwrap();
    operated.running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_gateway_an_operator_disables_is_passed_over_for_the_next_payment() {
    let suite = Suite::start().await;
    let disable = suite
        .http
        .post(format!(
            "{}/admin/v1/gateways/simsoap/disable",
            suite.api_url
        ))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(disable.status(), StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(700)).await;
    let id = suite
        .deposit_with(
            &json!({"user_id": "u", "amount": "8.00", "currency": "EUR", "country": "DE"}),
        )
        .await;
    let done = eventually(
        "the payment to complete",
        Duration::from_secs(30),
        || async {
            let body = json_of(suite.get(&format!("/v1/transactions/{id}"))).await;
            (body["status"] == "completed").then_some(body)
        },
    )
    .await;
    assert_eq!(
        done["gateway"], "simjson",
        "the SOAP gateway is off; JSON is next"
    );
    suite.stop().await;
}
