//! The api on its own: what it accepts, what it refuses, and that a refusal changes nothing.

use paygate_common::signature::callback;
use paygate_testkit::{json_of, route_everything_to_simulator, Running, SIM_JSON_SECRET};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;

/// The api alone, on its own database, with one merchant.
pub(crate) struct Api {
    pub(crate) url: String,
    pub(crate) pool: PgPool,
    pub(crate) key: String,
    pub(crate) http: reqwest::Client,
    pub(crate) running: Running,
}

impl Api {
    pub(crate) async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// [`Api::start`] with `tweak` applied to its settings.
    pub(crate) async fn start_with(tweak: impl FnOnce(&mut paygate_common::Settings)) -> Self {
        let mut settings = paygate_testkit::settings().await;
        tweak(&mut settings);
        let pool = paygate_testkit::pool(&settings).await;
        let app = paygate_api::Application::build(settings).await.unwrap();
        let url = format!("http://127.0.0.1:{}", app.port());
        let running = Running::spawn(|s| app.run(s));
        let merchant =
            paygate_api::merchants::create(&pool, &paygate_testkit::keys(), "m", None, None)
                .await
                .unwrap();
        Api {
            url,
            pool,
            key: merchant.api_key,
            http: reqwest::Client::new(),
            running,
        }
    }

    pub(crate) async fn deposit(&self, body: &str, content_type: &str) -> (StatusCode, Value) {
        let response = self
            .http
            .post(format!("{}/v1/deposits", self.url))
            .bearer_auth(&self.key)
            .header("content-type", content_type)
            .body(body.to_owned())
            .send()
            .await
            .unwrap();
        let status = response.status();
        (status, response.json().await.unwrap())
    }

    pub(crate) async fn count(&self, table: &str) -> i64 {
        sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposit_is_stored_pending_with_its_first_event_and_answered_202() {
    let api = Api::start().await;
    let response = api
        .http
        .post(format!("{}/v1/deposits", api.url))
        .bearer_auth(&api.key)
        .json(&json!({"user_id": "u-1", "amount": "100.5", "currency": "EUR", "country": "DE", "reference": "order-7"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let body: Value = response.json().await.unwrap();
    let id = body["id"].as_str().unwrap();
    assert!(id.starts_with("txn_"));
    assert_eq!(location, format!("/v1/transactions/{id}"));
    assert_eq!(body["status"], "pending");
    assert_eq!(
        body["amount"], "100.50",
        "scaled to the currency's minor units"
    );
    assert_eq!(body["kind"], "deposit");
    assert_eq!(body["reference"], "order-7");

    let (event_type, version, destination): (String, i32, String) = sqlx::query_as(
        "SELECT event_type, version, destination FROM transaction_event WHERE transaction_id = $1",
    )
    .bind(id)
    .fetch_one(&api.pool)
    .await
    .unwrap();
    assert_eq!(
        (event_type.as_str(), version, destination.as_str()),
        ("transaction.created", 1, "payments_requested")
    );

    let fetched = json_of(
        api.http
            .get(format!("{}{location}", api.url))
            .bearer_auth(&api.key),
    )
    .await;
    assert_eq!(fetched, body);
    api.running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_deposits_get_a_typed_error_naming_the_field_and_store_nothing() {
    let api = Api::start().await;
    let json = "application/json";
    let cases = [
        (
            r#"{"user_id":"u","amount":"0","currency":"USD"}"#,
            json,
            422,
            "validation_failed",
            Some("amount"),
        ),
        (
            r#"{"user_id":"u","amount":"1.001","currency":"USD"}"#,
            json,
            422,
            "validation_failed",
            Some("amount"),
        ),
        (
            r#"{"user_id":"u","amount":10.5,"currency":"USD"}"#,
            json,
            422,
            "validation_failed",
            Some("amount"),
        ),
        (
            r#"{"user_id":"u","amount":"10","currency":"XYZ"}"#,
            json,
            422,
            "validation_failed",
            Some("currency"),
        ),
        (
            r#"{"user_id":"u","amount":"10","currency":"USD","country":"XX"}"#,
            json,
            422,
            "validation_failed",
            Some("country"),
        ),
        (
            r#"{"user_id":"u","amount":"10","currency":"USD","colour":"red"}"#,
            json,
            422,
            "validation_failed",
            Some("colour"),
        ),
        (
            r#"{"user_id":"u","currency":"USD"}"#,
            json,
            422,
            "validation_failed",
            Some("amount"),
        ),
        (
            r#"{"user_id":"","amount":"10","currency":"USD"}"#,
            json,
            422,
            "validation_failed",
            Some("user_id"),
        ),
        (
            r#"{"user_id":"u","amount":"10","#,
            json,
            400,
            "malformed_body",
            None,
        ),
        (
            r#"{"user_id":"u","amount":"10","currency":"USD"} trailing"#,
            json,
            400,
            "malformed_body",
            None,
        ),
        (
            r#"user_id=u"#,
            "application/x-www-form-urlencoded",
            415,
            "unsupported_media_type",
            None,
        ),
    ];
    for (body, content_type, status, code, field) in cases {
        let (got, error) = api.deposit(body, content_type).await;
        assert_eq!(got.as_u16(), status, "{body}: {error}");
        assert_eq!(error["error"]["code"], code, "{body}: {error}");
        assert_eq!(error["error"]["field"].as_str(), field, "{body}: {error}");
        assert!(error["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    }
    assert_eq!(api.count("transaction").await, 0);
    assert_eq!(api.count("transaction_event").await, 0);
    api.running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_routes_and_wrong_methods_answer_in_the_error_contract() {
    let api = Api::start().await;
    let missing = api
        .http
        .get(format!("{}/v1/nothing-here", api.url))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    let error: Value = missing.json().await.unwrap();
    assert_eq!(error["error"]["code"], "not_found");
    let wrong = api
        .http
        .delete(format!("{}/v1/deposits", api.url))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::METHOD_NOT_ALLOWED);
    let error: Value = wrong.json().await.unwrap();
    assert_eq!(error["error"]["code"], "method_not_allowed");
    api.running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_limit_is_refused_with_413() {
    let api = Api::start().await;
    let huge = format!(
        r#"{{"user_id":"{}","amount":"1","currency":"USD"}}"#,
        "x".repeat(2 * 1024 * 1024)
    );
    let (status, error) = api.deposit(&huge, "application/json").await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(error["error"]["code"], "payload_too_large");
    assert_eq!(api.count("transaction").await, 0);
    api.running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_a_valid_key_are_401_and_other_merchants_transactions_are_404() {
    let api = Api::start().await;
    let body = json!({"user_id": "u", "amount": "5", "currency": "USD"});
    for key in [None, Some("pgk_not_a_real_key")] {
        let mut request = api
            .http
            .post(format!("{}/v1/deposits", api.url))
            .json(&body);
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"]["code"], "unauthorized");
    }

    let (_, created) = api.deposit(&body.to_string(), "application/json").await;
    let other =
        paygate_api::merchants::create(&api.pool, &paygate_testkit::keys(), "other", None, None)
            .await
            .unwrap();
    let response = api
        .http
        .get(format!(
            "{}/v1/transactions/{}",
            api.url,
            created["id"].as_str().unwrap()
        ))
        .bearer_auth(&other.api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    api.running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsigned_or_mis_signed_callback_is_401_and_leaves_no_trace() {
    let api = Api::start().await;
    route_everything_to_simulator(&api.pool, "http://127.0.0.1:9").await;
    let (_, created) = api
        .deposit(
            r#"{"user_id":"u","amount":"5.00","currency":"USD"}"#,
            "application/json",
        )
        .await;
    let body = json!({
        "event_id": "e-1", "reference": created["id"], "gateway_txn_id": "g-1",
        "status": "approved", "amount": "5.00", "currency": "USD", "reason": null
    })
    .to_string();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let url = format!("{}/v1/callbacks/simjson", api.url);
    for signature in [
        None,
        Some(callback::sign("not-the-secret", now, body.as_bytes())),
        Some(callback::sign(SIM_JSON_SECRET, now - 3600, body.as_bytes())),
        Some(callback::sign(SIM_JSON_SECRET, now, b"another body")),
    ] {
        let mut request = api
            .http
            .post(&url)
            .header("content-type", "application/json")
            .body(body.clone());
        if let Some(signature) = signature {
            request = request.header(callback::HEADER, signature);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
    // An unknown gateway code answers exactly like a bad signature: no caller learns
    // which codes exist.
    let unknown = api
        .http
        .post(format!("{}/v1/callbacks/no-such-gateway", api.url))
        .header("content-type", "application/json")
        .header(
            callback::HEADER,
            callback::sign(SIM_JSON_SECRET, now, body.as_bytes()),
        )
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), StatusCode::UNAUTHORIZED);
    let unknown: Value = unknown.json().await.unwrap();
    assert_eq!(
        unknown["error"]["message"],
        "the callback signature is missing, stale or wrong"
    );
    assert_eq!(api.count("gateway_callback").await, 0);

    // Correctly signed, twice: stored once, acknowledged twice alike.
    for _ in 0..2 {
        let response = api
            .http
            .post(&url)
            .header("content-type", "application/json")
            .header(
                callback::HEADER,
                callback::sign(SIM_JSON_SECRET, now, body.as_bytes()),
            )
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.text().await.unwrap(), r#"{"received":true}"#);
    }
    assert_eq!(api.count("gateway_callback").await, 1);
    let events: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM transaction_event WHERE event_type = 'callback.received'",
    )
    .fetch_one(&api.pool)
    .await
    .unwrap();
    assert_eq!(events, 1);
    api.running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_held_up_by_the_database_is_answered_503_request_timeout_within_the_deadline() {
    let api = Api::start_with(|s| s.api.request_timeout_ms = 500).await;
    let (status, body) = api
        .deposit(
            r#"{"user_id":"u1","amount":"5.00","currency":"USD"}"#,
            "application/json",
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let path = format!(
        "{}/v1/transactions/{}",
        api.url,
        body["id"].as_str().unwrap()
    );
    let get = || api.http.get(&path).bearer_auth(&api.key).send();

    // Someone holds the transaction table: every read of it waits.
    let mut blocker = api.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE transaction IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *blocker)
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let response = get().await.unwrap();
    let waited = started.elapsed();
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "request_timeout", "{body}");
    assert!(
        waited < std::time::Duration::from_secs(3),
        "answered at the deadline, not when the database let go ({waited:?})"
    );
    blocker.rollback().await.unwrap();

    let response = get().await.unwrap();
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "the abandoned request left nothing behind"
    );
}
