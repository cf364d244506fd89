//! Money at the edges, each reproduced with the simulator misbehaving the way a real
//! gateway does: an overloaded gateway that does not know a payment it is still working
//! on, a callback that never comes, a charge on a payment Paygate failed, a callback from
//! a gateway never asked, a late callback for an unresolved payment, and card payments
//! that cannot be sent. After each, the money invariant holds.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use paygate_common::domain::{Country, Currency, Kind, Money};
use paygate_common::gateway::{GatewayConfig, Timings};
use paygate_common::signature::callback;
use paygate_common::transactions::{self, NewTransaction};
use paygate_testkit::{
    assert_money_invariant, eventually, gateway_config, json_of, misbehave, register_gateway,
    Moment, Process, Service, Suite, SuiteOptions, SIM_JSON_SECRET,
};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

const LONG: Duration = Duration::from_secs(45);
const PROCESSOR: &str = env!("CARGO_BIN_EXE_paygate-payment-processor");

/// The transaction as its merchant sees it.
async fn view(suite: &Suite, id: &str) -> Value {
    json_of(suite.get(&format!("/v1/transactions/{id}"))).await
}

/// The transaction's view once `check` holds for it.
async fn until(suite: &Suite, id: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    eventually(&format!("{id}: {what}"), LONG, || async {
        let view = view(suite, id).await;
        check(&view).then_some(view)
    })
    .await
}

async fn deposit(suite: &Suite, amount: &str, country: &str) -> String {
    suite
        .deposit_with(
            &json!({"user_id": "u-1", "amount": amount, "currency": "EUR", "country": country}),
        )
        .await
}

/// Lets the payment-processor's route cache see a change made after it started.
async fn routes_reload() {
    tokio::time::sleep(Duration::from_millis(700)).await;
}

/// Makes the JSON gateway lose its callbacks, with `simjson`'s timings `set` (SQL).
async fn lose_callbacks(suite: &Suite, set: &str) {
    sqlx::query(&format!("UPDATE gateway SET {set} WHERE code = 'simjson'"))
        .execute(&suite.pool)
        .await
        .unwrap();
    misbehave(
        &suite.simulator_url,
        json!({"json": {"lost_callback": true}}),
    )
    .await;
    routes_reload().await;
}

/// Sends a callback signed with `secret` as gateway `code` would.
async fn send_callback(suite: &Suite, code: &str, secret: &str, body: &Value) -> u16 {
    let body = body.to_string();
    let signature = callback::sign(secret, chrono::Utc::now().timestamp(), body.as_bytes());
    suite
        .http
        .post(format!("{}/v1/callbacks/{code}", suite.api_url))
        .header("content-type", "application/json")
        .header(callback::HEADER, signature)
        .body(body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

fn json_callback(id: &str, status: &str, amount: &str) -> Value {
    json!({
        "event_id": format!("evt-{}", uuid()),
        "reference": id, "gateway_txn_id": "gw-late", "status": status,
        "amount": amount, "currency": "EUR", "reason": null,
    })
}

fn uuid() -> String {
    paygate_testkit::unique("e")
}

async fn callback_outcome(suite: &Suite, id: &str, gateway: &str) -> Option<(String, String)> {
    sqlx::query_as(
        "SELECT outcome, COALESCE(outcome_reason, '') FROM gateway_callback
          WHERE transaction_id = $1 AND gateway = $2 AND processed_at IS NOT NULL",
    )
    .bind(id)
    .bind(gateway)
    .fetch_optional(&suite.pool)
    .await
    .unwrap()
}

/// The webhook types the merchant received about `id`, in the order they arrived.
fn webhook_types(suite: &Suite, id: &str) -> Vec<String> {
    suite
        .webhooks
        .received()
        .iter()
        .map(|r| r.json())
        .filter(|body| body["data"]["id"] == id)
        .map(|body| body["type"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_overloaded_gateway_keeps_the_payment_until_it_answers_and_the_next_gateway_never_charges(
) {
    let suite = Suite::start().await;
    // A gateway that, overloaded, stores a payment only 4 s after it was sent (our
    // timeout is 1 s), does not know it meanwhile, and answers 409 to a re-submit.
    let busy = paygate_testkit::start_simulator(CancellationToken::new(), Duration::ZERO).await;
    misbehave(
        &busy,
        json!({"json": {"overloaded_ms": 4000, "duplicate_in_flight": true}}),
    )
    .await;
    // Its settle window is shorter than the overload: the re-submit is answered 409 and
    // proves nothing.
    let config = GatewayConfig {
        timings: Timings {
            settle_window_ms: 1_500,
            ..Timings::default()
        },
        ..gateway_config(
            "busy",
            "json",
            format!("{busy}/json"),
            SIM_JSON_SECRET,
            1_000,
        )
    };
    register_gateway(&suite.pool, &config, Some((Some("FR"), 1))).await;
    routes_reload().await;

    let id = deposit(&suite, "41.00", "FR").await;
    let done = until(&suite, &id, "completed", |v| v["status"] == "completed").await;
    assert_eq!(done["gateway"], "busy", "settled where the money is");
    let resubmits: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM transaction_event WHERE transaction_id = $1 AND event_type = 'gateway.attempted'",
    )
    .bind(&id)
    .fetch_one(&suite.pool)
    .await
    .unwrap();
    assert!(
        resubmits >= 2,
        "after its settle window the same gateway was sent it again ({resubmits} attempts)"
    );
    let backup = json_of(
        suite
            .http
            .get(format!("{}/charges/{id}", suite.simulator_url)),
    )
    .await;
    assert_eq!(backup["charges"], 0, "the default route was never asked");
    assert_money_invariant(&suite.pool, &[&suite.simulator_url, &busy], Moment::Settled).await;
    suite.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_payment_whose_callback_is_lost_completes_through_a_status_query() {
    let suite = Suite::start().await;
    lose_callbacks(&suite, "callback_deadline_ms = 1000").await;

    let id = deposit(&suite, "42.00", "FR").await;
    until(&suite, &id, "completed", |v| v["status"] == "completed").await;
    assert_eq!(
        callback_outcome(&suite, &id, "simjson").await,
        None,
        "no callback ever came"
    );
    let types = eventually("the completed webhook", LONG, || async {
        let types = webhook_types(&suite, &id);
        types
            .contains(&"transaction.completed".to_owned())
            .then_some(types)
    })
    .await;
    assert_eq!(
        types,
        ["transaction.processing", "transaction.completed"],
        "one event, one webhook"
    );
    assert_money_invariant(&suite.pool, &[&suite.simulator_url], Moment::Settled).await;
    suite.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_payment_that_no_callback_or_status_query_settles_is_flagged_no_callback_for_a_human() {
    let suite = Suite::start().await;
    lose_callbacks(
        &suite,
        "callback_deadline_ms = 1000, review_after_ms = 2500",
    )
    .await;

    let id = deposit(&suite, "43.00", "FR").await;
    until(&suite, &id, "processing", |v| v["status"] == "processing").await;
    // From now on the gateway is down for status queries too.
    paygate_testkit::put_control(
        &suite.simulator_url,
        json!({"force_status": 503, "answer_delay_ms": null, "gateways": {"json": {"lost_callback": true}}}),
    )
    .await;
    let flagged = until(&suite, &id, "under review", |v| !v["review"].is_null()).await;
    assert_eq!(flagged["status"], "processing", "the status is not touched");
    assert_eq!(flagged["review"]["reason"], "no_callback");
    assert!(
        flagged["review"]["detail"]
            .as_str()
            .unwrap()
            .contains("simjson"),
        "{flagged}"
    );
    eventually("the review webhook", LONG, || async {
        webhook_types(&suite, &id)
            .contains(&"transaction.review_required".to_owned())
            .then_some(())
    })
    .await;

    // Once the gateway answers again, the next status query settles it.
    misbehave(
        &suite.simulator_url,
        json!({"json": {"lost_callback": true}}),
    )
    .await;
    let done = until(&suite, &id, "completed", |v| v["status"] == "completed").await;
    assert_eq!(done["review"]["reason"], "no_callback", "the record stays");
    assert_money_invariant(&suite.pool, &[&suite.simulator_url], Moment::Settled).await;
    suite.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_charge_reported_on_a_failed_payment_is_a_contradiction_for_a_human_not_ignored() {
    let suite = Suite::start().await;
    // .01: the JSON gateway declines.
    let id = deposit(&suite, "44.01", "FR").await;
    until(&suite, &id, "failed", |v| v["status"] == "failed").await;

    // Then the gateway says it charged it after all.
    let status = send_callback(
        &suite,
        "simjson",
        SIM_JSON_SECRET,
        &json_callback(&id, "approved", "44.01"),
    )
    .await;
    assert_eq!(status, 200);
    let flagged = until(&suite, &id, "under review", |v| !v["review"].is_null()).await;
    assert_eq!(flagged["status"], "failed", "a final status never changes");
    assert_eq!(flagged["review"]["reason"], "charged_but_failed");
    let (outcome, evidence) = callback_outcome(&suite, &id, "simjson").await.unwrap();
    assert_eq!(outcome, "contradiction");
    assert!(evidence.contains("charged"), "{evidence}");
    let listed = json_of(
        suite
            .http
            .get(format!("{}/admin/v1/payments/under-review", suite.api_url))
            .bearer_auth(paygate_testkit::ADMIN_TOKEN),
    )
    .await;
    assert_eq!(
        listed["data"][0]["id"],
        id.as_str(),
        "listed for operators: {listed}"
    );
    assert_eq!(listed["data"][0]["review_reason"], "charged_but_failed");
    eventually("the review webhook", LONG, || async {
        webhook_types(&suite, &id)
            .contains(&"transaction.review_required".to_owned())
            .then_some(())
    })
    .await;
    suite.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_callback_from_a_gateway_never_offered_the_payment_is_rejected_even_when_it_names_none() {
    let suite = Suite::start().await;
    // Every gateway down: the payment fails after its retries, naming no gateway.
    paygate_testkit::control_simulator(&suite.simulator_url, Some(503), None).await;
    let id = deposit(&suite, "45.00", "FR").await;
    let failed = until(&suite, &id, "failed", |v| v["status"] == "failed").await;
    assert!(failed["gateway"].is_null(), "{failed}");

    // Another gateway, configured but never routed this payment, says it charged it.
    let stranger = gateway_config(
        "stranger",
        "json",
        format!("{}/json", suite.simulator_url),
        SIM_JSON_SECRET,
        1_000,
    );
    register_gateway(&suite.pool, &stranger, None).await;
    let status = send_callback(
        &suite,
        "stranger",
        SIM_JSON_SECRET,
        &json_callback(&id, "approved", "45.00"),
    )
    .await;
    assert_eq!(status, 200);
    let (outcome, reason) = eventually("the callback judged", LONG, || async {
        callback_outcome(&suite, &id, "stranger").await
    })
    .await;
    assert_eq!(outcome, "rejected", "{reason}");
    assert!(reason.contains("never offered"), "{reason}");
    assert!(view(&suite, &id).await["review"].is_null());
    suite.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_late_callback_from_the_gateway_that_holds_an_unresolved_payment_settles_it() {
    let suite = Suite::start().await;
    // .07: the gateway takes it and holds every answer: each attempt times out.
    let id = deposit(&suite, "46.07", "FR").await;
    eventually("the payment to be unresolved", LONG, || async {
        let (unresolved, reason): (bool, Option<String>) = sqlx::query_as(
            "SELECT unresolved_since IS NOT NULL, unresolved_reason FROM transaction WHERE id = $1",
        )
        .bind(&id)
        .fetch_one(&suite.pool)
        .await
        .unwrap();
        unresolved.then_some(reason)
    })
    .await
    .expect("unresolved with its reason");

    let status = send_callback(
        &suite,
        "simjson",
        SIM_JSON_SECRET,
        &json_callback(&id, "approved", "46.07"),
    )
    .await;
    assert_eq!(status, 200);
    let done = until(&suite, &id, "completed", |v| v["status"] == "completed").await;
    assert_eq!(done["gateway"], "simjson");
    assert_eq!(
        callback_outcome(&suite, &id, "simjson").await.unwrap().0,
        "applied"
    );
    let unresolved: bool =
        sqlx::query_scalar("SELECT unresolved_since IS NOT NULL FROM transaction WHERE id = $1")
            .bind(&id)
            .fetch_one(&suite.pool)
            .await
            .unwrap();
    assert!(!unresolved, "settled, so no longer listed");
    assert_money_invariant(&suite.pool, &[&suite.simulator_url], Moment::Settled).await;
    suite.stop().await;
}

/// A card deposit through the api, with the payment-processor not yet running.
async fn card_deposit(suite: &Suite) -> String {
    suite
        .deposit_with(&json!({
            "user_id": "u-1", "amount": "47.00", "currency": "EUR", "country": "FR",
            "payment_method": {"type": "card", "card": {
                "number": "4242424242424242", "expiry_month": 12, "expiry_year": 2040,
                "cvv": "123", "holder_name": "A Customer"}},
        }))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_card_payment_whose_card_cannot_be_opened_is_marked_unresolved_with_its_reason() {
    let suite = Suite::start_with(SuiteOptions {
        external: vec![Service::PaymentProcessor],
        ..SuiteOptions::default()
    })
    .await;
    let id = card_deposit(&suite).await;
    // Its key left the key ring.
    sqlx::query("UPDATE transaction SET card_key_id = 'retired-key' WHERE id = $1")
        .bind(&id)
        .execute(&suite.pool)
        .await
        .unwrap();
    let processor = Process::spawn(PROCESSOR, &suite.env());
    let reason: String = eventually("the payment to be listed for a human", LONG, || async {
        sqlx::query_scalar::<_, Option<String>>(
            "SELECT unresolved_reason FROM transaction WHERE id = $1 AND unresolved_since IS NOT NULL",
        )
        .bind(&id)
        .fetch_optional(&suite.pool)
        .await
        .unwrap()
        .flatten()
    })
    .await;
    assert!(reason.contains("permanent"), "{reason}");
    assert_eq!(view(&suite, &id).await["status"], "pending");
    processor.kill().await;
    assert_money_invariant(&suite.pool, &[&suite.simulator_url], Moment::Settled).await;
    suite.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_card_payment_whose_cvv_expired_before_any_gateway_was_asked_fails_with_a_typed_reason() {
    let suite = Suite::start_with(SuiteOptions {
        external: vec![Service::PaymentProcessor],
        tweak: Some(|settings| settings.cards.cvv_ttl_ms = 300),
        ..SuiteOptions::default()
    })
    .await;
    let id = card_deposit(&suite).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let processor = Process::spawn(PROCESSOR, &suite.env());
    let failed = until(&suite, &id, "failed", |v| v["status"] == "failed").await;
    assert!(
        failed["failure_reason"]
            .as_str()
            .unwrap()
            .starts_with("cvv_expired"),
        "{failed}"
    );
    assert_eq!(suite.charges(&id).await, 0, "never sent without its CVV");
    processor.kill().await;
    suite.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_payment_whose_request_never_reached_the_processor_is_swept_up_and_settled() {
    let suite = Suite::start_with(SuiteOptions {
        tweak: Some(|settings| settings.payment_processor.stale_pending_ms = 1_500),
        ..SuiteOptions::default()
    })
    .await;
    // A payment whose `payments.requested` message was lost: its event is marked
    // published, and nothing will ever deliver it.
    let mut tx = suite.pool.begin().await.unwrap();
    let record = transactions::create(
        &mut tx,
        NewTransaction {
            merchant_id: suite.merchant.id.clone(),
            kind: Kind::Deposit,
            money: Money::parse("48.00", "EUR".parse::<Currency>().unwrap()).unwrap(),
            user_id: "u-1".to_owned(),
            country: Some("FR".parse::<Country>().unwrap()),
            reference: None,
            card: None,
            metadata: Default::default(),
        },
    )
    .await
    .unwrap();
    sqlx::query("UPDATE transaction_event SET published_at = now() WHERE transaction_id = $1")
        .bind(record.id.as_str())
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let id = record.id.to_string();

    let done = until(&suite, &id, "completed", |v| v["status"] == "completed").await;
    assert_eq!(done["gateway"], "simjson");
    assert_eq!(suite.charges(&id).await, 1);
    assert_money_invariant(&suite.pool, &[&suite.simulator_url], Moment::Settled).await;
    suite.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_definite_answer_that_reaches_a_fenced_out_worker_is_recorded_never_dropped() {
    let suite = Suite::start().await;
    // The gateway takes 2 s to answer (within its 5 s timeout).
    sqlx::query("UPDATE gateway SET timeout_ms = 5000 WHERE code = 'simjson'")
        .execute(&suite.pool)
        .await
        .unwrap();
    paygate_testkit::control_simulator(&suite.simulator_url, None, Some(2_000)).await;
    routes_reload().await;

    let id = deposit(&suite, "49.00", "FR").await;
    eventually("the gateway to be asked", LONG, || async {
        let attempts: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM transaction_event WHERE transaction_id = $1 AND event_type = 'gateway.attempted'",
        )
        .bind(&id)
        .fetch_one(&suite.pool)
        .await
        .unwrap();
        (attempts > 0).then_some(())
    })
    .await;
    // While the call is out, someone else moves the payment: the worker's write will be
    // refused by the version fence when the gateway's "accepted" arrives.
    sqlx::query(
        "UPDATE transaction SET status = 'failed', failure_reason = 'failed elsewhere',
                version = version + 1 WHERE id = $1 AND status = 'pending'",
    )
    .bind(&id)
    .execute(&suite.pool)
    .await
    .unwrap();

    let flagged = until(&suite, &id, "under review", |v| !v["review"].is_null()).await;
    assert_eq!(flagged["status"], "failed", "the fence held");
    assert_eq!(flagged["review"]["reason"], "charged_but_failed");
    // The gateway's callback may reach the callback-processor first and flag the same
    // contradiction; the worker's answer is then recorded a moment later, never dropped.
    let recorded = eventually("the gateway's answer in the history", LONG, || async {
        let recorded: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM transaction_event WHERE transaction_id = $1 AND event_type = 'gateway.answer_recorded'",
        )
        .bind(&id)
        .fetch_one(&suite.pool)
        .await
        .unwrap();
        (recorded > 0).then_some(recorded)
    })
    .await;
    assert_eq!(recorded, 1, "the gateway's answer is in the history once");
    assert_money_invariant(&suite.pool, &[&suite.simulator_url], Moment::Settled).await;
    suite.stop().await;
}
