//! Merchant intake as merchants send it: JSON and XML with one error contract, the
//! original routes, cards sealed and masked, `Idempotency-Key`, rate limits, and
//! keep-alive connections that survive errors.

use std::time::Duration;

use paygate_testkit::{eventually, read_topic, Suite, SuiteOptions};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::api::Api;

/// `value` (an object of strings, numbers and objects) as XML under `root`.
fn xml(root: &str, value: &Value) -> String {
    fn write(name: &str, value: &Value, out: &mut String) {
        out.push_str(&format!("<{name}>"));
        match value {
            Value::Object(fields) => {
                for (key, value) in fields {
                    write(key, value, out);
                }
            }
            Value::String(s) => out.push_str(s),
            other => out.push_str(&other.to_string()),
        }
        out.push_str(&format!("</{name}>"));
    }
    let mut out = String::new();
    write(root, value, &mut out);
    out
}

/// The text of the first `<name>` element in `xml`.
fn xml_text(xml: &str, name: &str) -> Option<String> {
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut inside = false;
    loop {
        match reader.read_event().ok()? {
            quick_xml::events::Event::Start(e) if e.name().as_ref() == name.as_bytes() => {
                inside = true
            }
            quick_xml::events::Event::Text(t) if inside => {
                return Some(t.decode().ok()?.into_owned());
            }
            quick_xml::events::Event::End(_) if inside => return Some(String::new()),
            quick_xml::events::Event::Eof => return None,
            _ => {}
        }
    }
}

fn card(number: &str, month: u32, year: u32, cvv: &str) -> Value {
    json!({"type": "card", "card": {"number": number, "expiry_month": month,
           "expiry_year": year, "cvv": cvv, "holder_name": "Ada Lovelace"}})
}

/// Every validation rule with its status, code and field.
fn rules() -> Vec<(&'static str, Value, StatusCode, &'static str)> {
    let base = || json!({"user_id": "u-1", "amount": "10.00", "currency": "EUR"});
    let with = |key: &str, value: Value| {
        let mut body = base();
        body[key] = value;
        body
    };
    let unprocessable = StatusCode::UNPROCESSABLE_ENTITY;
    vec![
        (
            "amount",
            with("amount", json!("ten")),
            unprocessable,
            "amount",
        ),
        (
            "amount <= 0",
            with("amount", json!("-1.00")),
            unprocessable,
            "amount",
        ),
        (
            "too many decimals",
            with("amount", json!("1.001")),
            unprocessable,
            "amount",
        ),
        (
            "currency",
            with("currency", json!("XYZ")),
            unprocessable,
            "currency",
        ),
        (
            "country",
            with("country", json!("ZZ")),
            unprocessable,
            "country",
        ),
        (
            "unknown field",
            with("referense", json!("x")),
            unprocessable,
            "referense",
        ),
        (
            "luhn",
            with("payment_method", card("4242424242424241", 12, 2031, "123")),
            unprocessable,
            "payment_method.card.number",
        ),
        (
            "expired",
            with("payment_method", card("4242424242424242", 1, 2020, "123")),
            unprocessable,
            "payment_method.card.expiry_year",
        ),
        (
            "cvv",
            with("payment_method", card("4242424242424242", 12, 2031, "12")),
            unprocessable,
            "payment_method.card.cvv",
        ),
        (
            "method",
            with("payment_method", json!({"type": "wire"})),
            unprocessable,
            "payment_method.type",
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_validation_rule_answers_its_status_code_and_field_in_json_and_in_xml() {
    let api = Api::start().await;
    for (rule, body, status, field) in rules() {
        let response = api
            .http
            .post(format!("{}/v1/deposits", api.url))
            .bearer_auth(&api.key)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status, "{rule} in JSON");
        let error: Value = response.json().await.unwrap();
        assert_eq!(
            error["error"]["code"], "validation_failed",
            "{rule}: {error}"
        );
        assert_eq!(error["error"]["field"], field, "{rule}: {error}");
        let message = error["error"]["message"].as_str().unwrap();
        assert!(
            !message.contains("424242424242"),
            "{rule}: the number is never quoted"
        );

        let response = api
            .http
            .post(format!("{}/v1/deposits", api.url))
            .bearer_auth(&api.key)
            .header("content-type", "application/xml")
            .body(xml("deposit", &body))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status, "{rule} in XML");
        assert!(response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/xml"));
        let error = response.text().await.unwrap();
        assert_eq!(
            xml_text(&error, "code").as_deref(),
            Some("validation_failed"),
            "{rule}: {error}"
        );
        assert_eq!(
            xml_text(&error, "field").as_deref(),
            Some(field),
            "{rule}: {error}"
        );
    }
    assert_eq!(
        api.count("transaction").await,
        0,
        "a refusal changes nothing"
    );
    api.running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_card_number_or_cvv_sent_as_a_json_number_is_refused_without_quoting_it() {
    let api = Api::start().await;
    let cases = [
        (
            json!({"number": 4242424242424242_u64, "expiry_month": 12, "expiry_year": 2031, "cvv": "987"}),
            "payment_method.card.number",
        ),
        (
            json!({"number": "4242424242424242", "expiry_month": 12, "expiry_year": 2031, "cvv": 987}),
            "payment_method.card.cvv",
        ),
    ];
    for (card, field) in cases {
        let body = json!({"user_id": "u-1", "amount": "10.00", "currency": "EUR",
                          "payment_method": {"type": "card", "card": card}});
        let (status, error) = api.deposit(&body.to_string(), "application/json").await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{field}");
        assert_eq!(error["error"]["field"], field, "{error}");
        let text = error.to_string();
        assert!(
            !text.contains("4242424242424242") && !text.contains("987"),
            "a rejected card field's value is never quoted: {text}"
        );
    }
    api.running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_xml_a_doctype_an_entity_bomb_and_a_wrong_root_are_refused() {
    let api = Api::start().await;
    let bomb = r#"<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;">]><deposit><user_id>&lol2;</user_id><amount>1</amount><currency>EUR</currency></deposit>"#;
    let external = r#"<?xml version="1.0"?><!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/passwd">]><deposit><user_id>&x;</user_id><amount>1</amount><currency>EUR</currency></deposit>"#;
    let cases = [
        ("<deposit><user_id>u</user_id>", StatusCode::BAD_REQUEST),
        (bomb, StatusCode::BAD_REQUEST),
        (external, StatusCode::BAD_REQUEST),
        (
            "<withdrawal><user_id>u</user_id><amount>1</amount><currency>EUR</currency></withdrawal>",
            StatusCode::BAD_REQUEST,
        ),
    ];
    for (body, status) in cases {
        let response = api
            .http
            .post(format!("{}/v1/deposits", api.url))
            .bearer_auth(&api.key)
            .header("content-type", "application/xml")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status, "{body}");
        let text = response.text().await.unwrap();
        assert_eq!(
            xml_text(&text, "code").as_deref(),
            Some("malformed_body"),
            "{text}"
        );
        assert!(!text.contains("root:"), "nothing was expanded: {text}");
    }
    assert_eq!(api.count("transaction").await, 0);
    api.running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_xml_deposit_is_answered_in_xml_and_reads_back_in_xml_and_json() {
    let api = Api::start().await;
    let body = json!({"user_id": "u-xml", "amount": "12.50", "currency": "EUR", "country": "DE",
                      "reference": "order <7> & co"});
    let response = api
        .http
        .post(format!("{}/v1/deposits", api.url))
        .bearer_auth(&api.key)
        .header("content-type", "application/xml")
        .header("accept", "application/xml")
        .body(xml("deposit", &body).replace("<7> & co", "&lt;7&gt; &amp; co"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let created = response.text().await.unwrap();
    assert!(created.contains("<transaction>"), "{created}");
    let id = xml_text(&created, "id").unwrap();
    assert_eq!(xml_text(&created, "amount").as_deref(), Some("12.50"));
    assert_eq!(xml_text(&created, "status").as_deref(), Some("pending"));

    let again = api
        .http
        .get(format!("{}/v1/transactions/{id}", api.url))
        .bearer_auth(&api.key)
        .header("accept", "application/xml")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(xml_text(&again, "country").as_deref(), Some("DE"));
    let as_json: Value = api
        .http
        .get(format!("{}/v1/transactions/{id}", api.url))
        .bearer_auth(&api.key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(as_json["reference"], "order <7> & co");

    // An XML client gets a 401 in XML too.
    let refused = api
        .http
        .get(format!("{}/v1/transactions/{id}", api.url))
        .header("accept", "application/xml")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    let refused = refused.text().await.unwrap();
    assert_eq!(
        xml_text(&refused, "code").as_deref(),
        Some("unauthorized"),
        "{refused}"
    );
    api.running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_keep_alive_connection_survives_a_415_a_422_and_a_413_and_then_takes_a_deposit() {
    let api = Api::start().await;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .build()
        .unwrap();
    let post = |content_type: &'static str, body: String| {
        http.post(format!("{}/v1/deposits", api.url))
            .bearer_auth(&api.key)
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    let plain = post("text/plain", "hello".to_owned()).await.unwrap();
    assert_eq!(plain.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    plain.bytes().await.unwrap();
    let invalid = post(
        "application/json",
        r#"{"user_id":"u","amount":"0","currency":"EUR"}"#.to_owned(),
    )
    .await
    .unwrap();
    assert_eq!(invalid.status(), StatusCode::UNPROCESSABLE_ENTITY);
    invalid.bytes().await.unwrap();
    let huge = format!(r#"{{"user_id":"{}"}}"#, "x".repeat(1_100_000));
    let too_large = post("application/json", huge).await.unwrap();
    assert_eq!(too_large.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let body: Value = too_large.json().await.unwrap();
    assert_eq!(body["error"]["code"], "payload_too_large");
    let valid = post(
        "application/json",
        r#"{"user_id":"u","amount":"5.00","currency":"EUR"}"#.to_owned(),
    )
    .await
    .unwrap();
    assert_eq!(valid.status(), StatusCode::ACCEPTED);
    api.running.stop().await.unwrap();
}

async fn send_with_key(api: &Api, key: &str, body: &Value) -> reqwest::Response {
    api.http
        .post(format!("{}/v1/deposits", api.url))
        .bearer_auth(&api.key)
        .header("Idempotency-Key", key)
        .json(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_idempotency_key_replays_byte_for_byte_refuses_another_body_and_twenty_racing_requests_make_one_payment(
) {
    let api = Api::start().await;
    let body = json!({"user_id": "u-1", "amount": "10.00", "currency": "EUR"});
    let first = send_with_key(&api, "key-1", &body).await;
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let location = first.headers()["location"].clone();
    let first = first.bytes().await.unwrap();

    let again = send_with_key(&api, "key-1", &body).await;
    assert_eq!(again.status(), StatusCode::ACCEPTED);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.headers()["location"], location);
    assert_eq!(again.bytes().await.unwrap(), first, "byte for byte");

    let other = send_with_key(
        &api,
        "key-1",
        &json!({"user_id": "u-1", "amount": "11.00", "currency": "EUR"}),
    )
    .await;
    assert_eq!(other.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let other: Value = other.json().await.unwrap();
    assert_eq!(other["error"]["field"], "Idempotency-Key");
    assert_eq!(api.count("transaction").await, 1);

    // A claim whose request is still in flight: 409.
    let merchant: String = sqlx::query_scalar("SELECT merchant_id FROM api_key LIMIT 1")
        .fetch_one(&api.pool)
        .await
        .unwrap();
    let in_flight_body = json!({"user_id": "u-2", "amount": "3.00", "currency": "EUR"});
    let first_try = send_with_key(&api, "key-busy", &in_flight_body).await;
    assert_eq!(first_try.status(), StatusCode::ACCEPTED);
    sqlx::query(
        "UPDATE idempotency_key SET status_code = NULL, locked_at = now() WHERE merchant_id = $1 AND key = 'key-busy'",
    )
    .bind(&merchant)
    .execute(&api.pool)
    .await
    .unwrap();
    let busy = send_with_key(&api, "key-busy", &in_flight_body).await;
    assert_eq!(busy.status(), StatusCode::CONFLICT);
    let busy: Value = busy.json().await.unwrap();
    assert_eq!(busy["error"]["code"], "idempotency_in_flight");

    // Twenty identical requests at once: one payment.
    let racing = json!({"user_id": "u-3", "amount": "7.00", "currency": "EUR"});
    let answers = futures_join_all((0..20).map(|_| {
        api.http
            .post(format!("{}/v1/deposits", api.url))
            .bearer_auth(&api.key)
            .header("Idempotency-Key", "key-race")
            .json(&racing)
            .send()
    }))
    .await;
    let mut accepted = Vec::new();
    for answer in answers {
        let answer = answer.unwrap();
        match answer.status() {
            StatusCode::ACCEPTED => accepted.push(answer.bytes().await.unwrap()),
            StatusCode::CONFLICT => {}
            other => panic!("unexpected {other}"),
        }
    }
    assert!(!accepted.is_empty());
    assert!(
        accepted.windows(2).all(|w| w[0] == w[1]),
        "every 202 is the same answer"
    );
    let made: i64 = sqlx::query_scalar("SELECT count(*) FROM transaction WHERE user_id = 'u-3'")
        .fetch_one(&api.pool)
        .await
        .unwrap();
    assert_eq!(made, 1, "exactly one transaction");

    // Another merchant's same key is its own.
    let other_merchant =
        paygate_api::merchants::create(&api.pool, &paygate_testkit::keys(), "other", None, None)
            .await
            .unwrap();
    let theirs = api
        .http
        .post(format!("{}/v1/deposits", api.url))
        .bearer_auth(&other_merchant.api_key)
        .header("Idempotency-Key", "key-1")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(theirs.status(), StatusCode::ACCEPTED);
    assert!(theirs.headers().get("idempotent-replayed").is_none());
    api.running.stop().await.unwrap();
}

/// Runs the futures together.
async fn futures_join_all<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let mut set = tokio::task::JoinSet::new();
    for (i, future) in futures.enumerate() {
        set.spawn(async move { (i, future.await) });
    }
    let mut out = Vec::new();
    while let Some(done) = set.join_next().await {
        out.push(done.unwrap());
    }
    out.sort_by_key(|(i, _)| *i);
    out.into_iter().map(|(_, o)| o).collect()
}

fn strict_limit(settings: &mut paygate_common::Settings) {
    settings.api.rate_limit.requests = 3;
    settings.api.rate_limit.window_ms = 60_000;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merchant_over_its_rate_limit_is_answered_429_with_retry_after() {
    let suite = Suite::start_with(SuiteOptions {
        tweak: Some(strict_limit),
        ..SuiteOptions::default()
    })
    .await;
    for _ in 0..3 {
        let ok = suite.get("/v1/transactions/txn_x").send().await.unwrap();
        assert_eq!(ok.status(), StatusCode::NOT_FOUND);
    }
    let limited = suite.get("/v1/transactions/txn_x").send().await.unwrap();
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after));
    let body: Value = limited.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");
    suite.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_original_deposit_route_takes_a_numeric_user_id_and_the_payment_completes() {
    let suite = Suite::start().await;
    let response = suite
        .post("/deposit")
        .json(&json!({"user_id": 123, "amount": "10.00", "currency": "USD"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let created: Value = response.json().await.unwrap();
    assert_eq!(created["user_id"], "123");
    let id = created["id"].as_str().unwrap().to_owned();
    eventually(
        "the payment to complete",
        Duration::from_secs(30),
        || async {
            let body = paygate_testkit::json_of(suite.get(&format!("/v1/transactions/{id}"))).await;
            (body["status"] == "completed").then_some(())
        },
    )
    .await;
    let withdrawal = suite
        .post("/withdrawal")
        .json(&json!({"user_id": 123, "amount": "4.00", "currency": "USD"}))
        .send()
        .await
        .unwrap();
    assert_eq!(withdrawal.status(), StatusCode::ACCEPTED);
    let as_string = suite
        .post("/deposit")
        .json(&json!({"user_id": "123", "amount": "10.00", "currency": "USD"}))
        .send()
        .await
        .unwrap();
    assert_eq!(as_string.status(), StatusCode::UNPROCESSABLE_ENTITY);
    suite.stop().await;
}

/// Log lines written while a test runs, at every level.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_card_payment_completes_and_its_number_and_cvv_appear_in_no_log_kafka_message_or_row() {
    let logs = Captured::default();
    let writer = logs.clone();
    let _ = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .try_init();
    let suite = Suite::start().await;
    let pan = "4242424242424242";
    let cvv = "987";
    let response = suite
        .post("/v1/deposits")
        .json(
            &json!({"user_id": "card-user", "amount": "31.00", "currency": "EUR",
                      "payment_method": card(pan, 12, 2031, cvv)}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let created: Value = response.json().await.unwrap();
    assert_eq!(
        created["payment_method"]["card"]["number"],
        "424242******4242"
    );
    let id = created["id"].as_str().unwrap().to_owned();
    eventually(
        "the card payment to complete",
        Duration::from_secs(30),
        || async {
            let body = paygate_testkit::json_of(suite.get(&format!("/v1/transactions/{id}"))).await;
            (body["status"] == "completed").then_some(body)
        },
    )
    .await;
    eventually(
        "a webhook showing the card masked",
        Duration::from_secs(30),
        || async {
            suite
                .webhooks
                .received()
                .iter()
                .any(|w| w.body.contains("424242******4242"))
                .then_some(())
        },
    )
    .await;

    let (ciphertext, masked): (Vec<u8>, String) =
        sqlx::query_as("SELECT card_ciphertext, card_masked FROM transaction WHERE id = $1")
            .bind(&id)
            .fetch_one(&suite.pool)
            .await
            .unwrap();
    assert_eq!(masked, "424242******4242");
    let row = String::from_utf8_lossy(&ciphertext);
    assert!(
        !row.contains(pan) && !row.contains(cvv),
        "the row holds ciphertext"
    );
    let everything: Vec<Vec<u8>> =
        sqlx::query_scalar("SELECT payload FROM transaction_event WHERE transaction_id = $1")
            .bind(&id)
            .fetch_all(&suite.pool)
            .await
            .unwrap();
    for payload in &everything {
        let text = String::from_utf8_lossy(payload);
        assert!(
            !text.contains(pan) && !text.contains(&format!("\u{3}{cvv}")),
            "an event carries the card"
        );
    }
    let topics = &suite.settings.kafka.topics;
    for topic in [
        &topics.payments_requested,
        &topics.transactions_status,
        &topics.gateway_callbacks,
    ] {
        let messages = read_topic(&suite.settings, topic, 1, Duration::from_secs(5)).await;
        assert!(!messages.is_empty(), "{topic} was read");
        for message in messages {
            let text = String::from_utf8_lossy(&message.payload);
            assert!(!text.contains(pan), "{topic} carries the number");
            assert!(!message.headers.values().any(|v| v.contains(pan)));
        }
    }
    let logs = String::from_utf8_lossy(&logs.0.lock().unwrap()).into_owned();
    assert!(logs.contains(&id), "the logs were captured");
    assert!(!logs.contains(pan), "a log line shows the number");
    assert!(
        !logs.contains(&format!("\"{cvv}\"")) && !logs.contains(&format!("cvv: {cvv}")),
        "a log line shows the CVV"
    );
    suite.stop().await;
}
