//! One payment through all four services, the simulator and a merchant endpoint, over
//! the real broker, PostgreSQL and Redis.

use std::time::Duration;

use paygate_common::signature::webhook;
use paygate_testkit::{eventually, json_of, Suite};
use reqwest::StatusCode;
use serde_json::{json, Value};

async fn transaction(suite: &Suite, id: &str) -> Value {
    json_of(suite.get(&format!("/v1/transactions/{id}"))).await
}

async fn settled(suite: &Suite, id: &str) -> Value {
    eventually(
        "the transaction to reach a final status",
        Duration::from_secs(60),
        || async {
            let t = transaction(suite, id).await;
            matches!(t["status"].as_str(), Some("completed" | "failed")).then_some(t)
        },
    )
    .await
}

/// Waits for the webhook of `kind`, then a little longer so a duplicate would show.
/// How many `transaction.completed` webhooks arrived, once the first has.
async fn completed_webhooks(suite: &Suite) -> usize {
    webhooks_until(suite, "transaction.completed")
        .await
        .iter()
        .filter(|w| w.json()["type"] == "transaction.completed")
        .count()
}

async fn webhooks_until(suite: &Suite, kind: &str) -> Vec<paygate_testkit::Received> {
    eventually("the webhook", Duration::from_secs(30), || async {
        suite
            .webhooks
            .received()
            .iter()
            .any(|w| w.json()["type"] == kind)
            .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    suite.webhooks.received()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deposit_completes_and_the_merchant_gets_each_status_once_signed_with_its_secret() {
    let suite = Suite::start().await;
    let id = suite
        .deposit_with(
            &json!({"user_id": "user-42", "amount": "25.00", "currency": "EUR", "country": "DE"}),
        )
        .await;

    let done = settled(&suite, &id).await;
    assert_eq!(done["status"], "completed", "{done}");
    // German payments go to the SOAP gateway first.
    assert_eq!(done["gateway"], "simsoap");
    assert!(done["gateway_txn_id"]
        .as_str()
        .is_some_and(|g| g.starts_with("soap_")));
    assert_eq!(suite.charges(&id).await, 1, "charged exactly once");

    let received = webhooks_until(&suite, "transaction.completed").await;
    let kinds: Vec<String> = received
        .iter()
        .map(|w| w.json()["type"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        kinds
            .iter()
            .filter(|k| *k == "transaction.completed")
            .count(),
        1,
        "exactly one completed webhook: {kinds:?}"
    );
    let mut ids: Vec<&str> = received.iter().map(|w| w.header(webhook::ID)).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), received.len(), "no event delivered twice");
    for delivery in &received {
        let timestamp: i64 = delivery.header(webhook::TIMESTAMP).parse().unwrap();
        assert!(
            webhook::verify(
                &suite.merchant.webhook_secret,
                delivery.header(webhook::ID),
                timestamp,
                delivery.body.as_bytes(),
                delivery.header(webhook::SIGNATURE),
            ),
            "the signature verifies with the merchant's secret"
        );
        assert!(!webhook::verify(
            "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
            delivery.header(webhook::ID),
            timestamp,
            delivery.body.as_bytes(),
            delivery.header(webhook::SIGNATURE),
        ));
        let body = delivery.json();
        assert_eq!(body["id"], delivery.header(webhook::ID));
        assert_eq!(body["data"]["id"], id.as_str());
    }
    let completed = received
        .iter()
        .find(|w| w.json()["type"] == "transaction.completed")
        .unwrap()
        .json();
    assert_eq!(completed["data"]["status"], "completed");
    assert_eq!(completed["data"]["amount"], "25.00");
    assert_eq!(completed["data"]["version"], 4);

    let history: Vec<(Option<i32>, String)> = sqlx::query_as(
        "SELECT version, event_type FROM transaction_event WHERE transaction_id = $1 ORDER BY seq",
    )
    .bind(&id)
    .fetch_all(&suite.pool)
    .await
    .unwrap();
    let status_history: Vec<(i32, &str)> = history
        .iter()
        .filter_map(|(v, t)| v.map(|v| (v, t.as_str())))
        .collect();
    assert_eq!(
        status_history,
        [
            (1, "transaction.created"),
            (2, "gateway.attempted"),
            (3, "transaction.processing"),
            (4, "transaction.completed")
        ]
    );
    let unpublished: i64 =
        sqlx::query_scalar("SELECT count(*) FROM transaction_event WHERE published_at IS NULL")
            .fetch_one(&suite.pool)
            .await
            .unwrap();
    assert_eq!(unpublished, 0, "the relay published every event");
    suite.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_declined_deposit_fails_with_the_gateways_reason_and_the_merchant_hears_of_it() {
    let suite = Suite::start().await;
    let id = suite.deposit("10.01").await;

    let done = settled(&suite, &id).await;
    assert_eq!(done["status"], "failed");
    assert_eq!(done["failure_reason"], "insufficient_funds");
    assert_eq!(suite.charges(&id).await, 0);

    let received = webhooks_until(&suite, "transaction.failed").await;
    assert_eq!(received.len(), 1, "only the failure is announced");
    assert_eq!(
        received[0].json()["data"]["failure_reason"],
        "insufficient_funds"
    );
    suite.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_callback_sent_twice_is_applied_once() {
    let suite = Suite::start().await;
    let id = suite.deposit("30.04").await;
    assert_eq!(settled(&suite, &id).await["status"], "completed");

    assert_eq!(completed_webhooks(&suite).await, 1);
    let stored: i64 =
        sqlx::query_scalar("SELECT count(*) FROM gateway_callback WHERE transaction_id = $1")
            .bind(&id)
            .fetch_one(&suite.pool)
            .await
            .unwrap();
    assert_eq!(
        stored, 1,
        "the second delivery of the same callback is deduplicated"
    );
    suite.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_completed_payment_stays_completed_whatever_later_callbacks_say_and_they_are_kept() {
    use paygate_common::signature::callback;

    let suite = Suite::start().await;
    let id = suite.deposit("40.00").await;
    assert_eq!(settled(&suite, &id).await["status"], "completed");

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let late = [
        ("late-decline", "declined", "40.00"),
        ("wrong-amount", "approved", "4000.00"),
    ];
    for (event_id, status, amount) in late {
        let body = json!({
            "event_id": event_id, "reference": id, "gateway_txn_id": null,
            "status": status, "amount": amount, "currency": "USD", "reason": "changed my mind"
        })
        .to_string();
        let response = suite
            .http
            .post(format!("{}/v1/callbacks/simjson", suite.api_url))
            .header("content-type", "application/json")
            .header(
                callback::HEADER,
                callback::sign(paygate_testkit::SIM_JSON_SECRET, now, body.as_bytes()),
            )
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }

    let outcomes: Vec<(String, String)> = eventually("both late callbacks processed", Duration::from_secs(30), || async {
        let rows: Vec<(String, Option<String>)> = sqlx::query_as(
            "SELECT dedup_key, outcome FROM gateway_callback WHERE dedup_key IN ('late-decline', 'wrong-amount') ORDER BY dedup_key",
        )
        .fetch_all(&suite.pool)
        .await
        .unwrap();
        let done: Vec<(String, String)> = rows.into_iter().filter_map(|(k, o)| Some((k, o?))).collect();
        (done.len() == 2).then_some(done)
    })
    .await;
    assert_eq!(
        outcomes,
        [
            // The gateway now says it declined what Paygate told the merchant was
            // paid: a contradiction for a human, never a status change.
            ("late-decline".to_owned(), "contradiction".to_owned()),
            ("wrong-amount".to_owned(), "rejected".to_owned())
        ]
    );
    let after = transaction(&suite, &id).await;
    assert_eq!(after["status"], "completed");
    assert_eq!(after["review"]["reason"], "contradicting_answer", "{after}");
    assert_eq!(
        after["version"], 5,
        "no transition was recorded, only the review"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        suite
            .webhooks
            .received()
            .iter()
            .all(|w| w.json()["type"] != "transaction.failed"),
        "the merchant is never told a completed payment failed"
    );
    suite.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_callback_that_overtakes_the_gateways_answer_is_parked_then_applied() {
    // .05: the simulator sends the callback before it answers the payment request.
    let suite = Suite::start().await;
    let id = suite.deposit("60.05").await;
    assert_eq!(settled(&suite, &id).await["status"], "completed");
    let outcome: Option<String> =
        sqlx::query_scalar("SELECT outcome FROM gateway_callback WHERE transaction_id = $1")
            .bind(&id)
            .fetch_one(&suite.pool)
            .await
            .unwrap();
    assert_eq!(outcome.as_deref(), Some("applied"));
    assert_eq!(completed_webhooks(&suite).await, 1);
    suite.stop().await;
}
