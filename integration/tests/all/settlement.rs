//! Reconciliation against the gateways' settlement reports, end to end: the simulator's
//! books are made to go wrong for real (a lost answer, a different settled amount, a
//! charge booked twice, a refund paid twice, a charge nobody asked for, a payment left
//! out or booked as declined), a run is asked for through the admin API (the command
//! topic), the payment-processor fetches the report over HTTP and finds exactly those
//! differences, each once; a re-run finds nothing new; an unresolved payment settles
//! from the report; a run stopped after one batch is taken up again by another runner
//! once its lease ran out; an unreadable report is retried, then failed, and nothing of
//! it applied.

use std::collections::BTreeSet;
use std::time::Duration;

use paygate_common::domain::Status;
use paygate_common::transactions;
use paygate_testkit::{eventually, json_of, Suite, SuiteOptions, ADMIN_TOKEN};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::interventions::pending;

/// Generous: a run over a handful of payments takes well under a second.
const WAIT: Duration = Duration::from_secs(30);

async fn admin(
    suite: &Suite,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let request = reqwest::Client::new()
        .request(method, format!("{}/admin/v1{path}", suite.api_url))
        .bearer_auth(ADMIN_TOKEN);
    let request = match body {
        Some(body) => request.json(&body),
        None => request,
    };
    let response = request.send().await.unwrap();
    (
        response.status(),
        response.json().await.unwrap_or(Value::Null),
    )
}

/// Replaces the simulator's controls.
async fn control(suite: &Suite, control: Value) {
    let response = suite
        .http
        .put(format!("{}/control", suite.simulator_url))
        .json(&control)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK, "{control}");
}

/// Sends a deposit and waits until it is final; returns its id.
async fn settled_deposit(suite: &Suite, body: Value, status: &str) -> String {
    let id = suite.deposit_with(&body).await;
    eventually(&format!("{id} to be {status}"), WAIT, || async {
        let body = json_of(suite.get(&format!("/v1/transactions/{id}"))).await;
        (body["status"] == status).then_some(())
    })
    .await;
    id
}

async fn usd(suite: &Suite, amount: &str, status: &str) -> String {
    settled_deposit(
        suite,
        json!({"user_id": "u-recon", "amount": amount, "currency": "USD"}),
        status,
    )
    .await
}

fn today() -> String {
    chrono::Utc::now().date_naive().to_string()
}

/// `gateway`'s latest run, if any.
async fn latest_run(suite: &Suite, gateway: &str) -> Value {
    let (_, runs) = admin(
        suite,
        Method::GET,
        &format!("/settlement/runs?gateway={gateway}"),
        None,
    )
    .await;
    runs["data"][0].clone()
}

/// Asks for a run of `gateway`'s today and waits until it ended; returns the run.
async fn run_today(suite: &Suite, gateway: &str) -> Value {
    let before = latest_run(suite, gateway).await["requested_at"].clone();
    let (status, body) = admin(
        suite,
        Method::POST,
        "/settlement/runs",
        Some(json!({"gateway": gateway, "date": today(), "operator": "Ada"})),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["status"], "requested");
    eventually(&format!("the run of {gateway} to end"), WAIT, || async {
        let run = latest_run(suite, gateway).await;
        let ended = run["status"] == "completed" || run["status"] == "failed";
        // Asked again: the row is set back to `requested` once the command is read.
        (ended && run["requested_at"] != before).then_some(run)
    })
    .await
}

/// Every difference (open and resolved) as `(gateway, operation, reference, kind)`.
async fn differences(suite: &Suite) -> Vec<(String, String, String, String)> {
    let (status, body) = admin(
        suite,
        Method::GET,
        "/settlement/differences?status=all&limit=500",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            let s = |k: &str| d[k].as_str().unwrap().to_owned();
            (s("gateway"), s("operation"), s("reference"), s("kind"))
        })
        .collect()
}

async fn refund(suite: &Suite, payment: &str, amount: &str) -> String {
    let response = suite
        .post(&format!("/v1/transactions/{payment}/refunds"))
        .json(&json!({"amount": amount}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let body: Value = response.json().await.unwrap();
    let id = body["id"].as_str().unwrap().to_owned();
    eventually("the refund to complete", WAIT, || async {
        let r = json_of(suite.get(&format!("/v1/refunds/{id}"))).await;
        (r["status"] == "completed").then_some(())
    })
    .await;
    id
}

#[tokio::test]
async fn each_kind_of_difference_made_to_happen_at_the_json_gateway_is_found_exactly_once_and_a_rerun_finds_nothing_new(
) {
    let suite = Suite::start().await;
    let clean = usd(&suite, "10.00", "completed").await;

    control(&suite, json!({"gateways": {"json": {"lost_answer": true}}})).await;
    let charged_but_failed = usd(&suite, "11.00", "failed").await;
    control(
        &suite,
        json!({"gateways": {"json": {"settle_amount_delta": "0.50"}}}),
    )
    .await;
    let other_amount = usd(&suite, "12.00", "completed").await;
    control(
        &suite,
        json!({"gateways": {"json": {"duplicate_charge": true}}}),
    )
    .await;
    let charged_twice = usd(&suite, "13.00", "completed").await;
    control(&suite, json!({"gateways": {"json": {"unbooked": true}}})).await;
    let never_booked = usd(&suite, "14.00", "completed").await;
    control(
        &suite,
        json!({"gateways": {"json": {"booked_declined": true}}}),
    )
    .await;
    let booked_declined = usd(&suite, "15.00", "completed").await;
    control(&suite, json!({})).await;
    let refunded = usd(&suite, "16.00", "completed").await;
    control(
        &suite,
        json!({"gateways": {"json": {"double_refund": true}}}),
    )
    .await;
    let paid_twice = refund(&suite, &refunded, "5.00").await;
    control(&suite, json!({})).await;
    let refunded_once = refund(&suite, &clean, "1.00").await;
    let ghost = "txn_00000000000000000000000000000042";
    let booked = suite
        .http
        .post(format!("{}/control/charges", suite.simulator_url))
        .json(&json!({"gateway": "json", "reference": ghost, "amount": "9.99", "currency": "USD"}))
        .send()
        .await
        .unwrap();
    assert_eq!(booked.status(), StatusCode::CREATED);

    let run = run_today(&suite, "simjson").await;
    assert_eq!(run["status"], "completed", "{run}");
    let expected: BTreeSet<(String, String, String, String)> = [
        ("charge", charged_but_failed.as_str(), "status_mismatch"),
        ("charge", other_amount.as_str(), "amount_mismatch"),
        ("charge", charged_twice.as_str(), "duplicate_charge"),
        ("charge", never_booked.as_str(), "missing_at_gateway"),
        ("charge", booked_declined.as_str(), "status_mismatch"),
        ("charge", ghost, "missing_in_paygate"),
        ("refund", paid_twice.as_str(), "duplicate_refund"),
    ]
    .into_iter()
    .map(|(op, r, k)| {
        (
            "simjson".to_owned(),
            op.to_owned(),
            r.to_owned(),
            k.to_owned(),
        )
    })
    .collect();
    let found = differences(&suite).await;
    assert_eq!(found.len(), expected.len(), "each once: {found:?}");
    assert_eq!(found.into_iter().collect::<BTreeSet<_>>(), expected);
    // The clean payment, its refund, and the refunded payment matched.
    assert_eq!(run["matched"], 3, "{run}");
    let _ = refunded_once;

    // Both sides' evidence.
    let (_, open) = admin(
        &suite,
        Method::GET,
        "/settlement/differences?kind=amount_mismatch",
        None,
    )
    .await;
    let mismatch = &open["data"][0];
    assert_eq!(mismatch["paygate"]["amount"], "12.00");
    assert_eq!(mismatch["gateway_report"][0]["amount"], "12.50");

    // Each open one counted once for a human (the recorder is this process's).
    let metrics = suite
        .http
        .get(format!(
            "{}/metrics",
            suite.metrics_endpoint("payment-processor")
        ))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let counted = |kind: &str| {
        paygate_common::metrics::scrape::sample(
            &metrics,
            "paygate_settlement_differences_total",
            &[
                ("gateway", "simjson"),
                ("kind", kind),
                ("resolution", "open"),
            ],
        )
        .unwrap_or(0.0)
    };
    assert_eq!(counted("status_mismatch"), 2.0);
    assert_eq!(counted("duplicate_refund"), 1.0);

    // The same period again: the same run row, the same differences, nothing new.
    let again = run_today(&suite, "simjson").await;
    assert_eq!(again["id"], run["id"]);
    assert_eq!(again["status"], "completed");
    assert_eq!(again["matched"], run["matched"]);
    assert_eq!(differences(&suite).await.len(), expected.len());
    let metrics = suite
        .http
        .get(format!(
            "{}/metrics",
            suite.metrics_endpoint("payment-processor")
        ))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let recounted = paygate_common::metrics::scrape::sample(
        &metrics,
        "paygate_settlement_differences_total",
        &[
            ("gateway", "simjson"),
            ("kind", "status_mismatch"),
            ("resolution", "open"),
        ],
    );
    assert_eq!(recounted, Some(2.0), "not counted again");
    suite.stop().await;
}

#[tokio::test]
async fn the_soap_report_and_the_card_acquirers_csv_are_read_and_matched_like_the_json_list_with_their_fees_kept(
) {
    let suite = Suite::start().await;
    let soap_clean = settled_deposit(
        &suite,
        json!({"user_id": "u-de", "amount": "20.00", "currency": "EUR", "country": "DE"}),
        "completed",
    )
    .await;
    control(
        &suite,
        json!({"gateways": {"soap": {"settle_amount_delta": "-1.00"}}}),
    )
    .await;
    let soap_short = settled_deposit(
        &suite,
        json!({"user_id": "u-de", "amount": "30.00", "currency": "EUR", "country": "DE"}),
        "completed",
    )
    .await;
    control(
        &suite,
        json!({"gateways": {"card": {"duplicate_charge": true}}}),
    )
    .await;
    let card = |amount: &str| {
        json!({"user_id": "u-card", "amount": amount, "currency": "USD",
               "payment_method": {"type": "card", "card": {
                   "number": "4242424242424242", "expiry_month": 12, "expiry_year": 2031,
                   "cvv": "123", "holder_name": "Ada Lovelace"}}})
    };
    let card_twice = settled_deposit(&suite, card("40.00"), "completed").await;
    control(&suite, json!({})).await;
    let card_clean = settled_deposit(&suite, card("50.00"), "completed").await;

    let soap = run_today(&suite, "simsoap").await;
    assert_eq!(soap["status"], "completed", "{soap}");
    assert_eq!(soap["matched"], 1);
    let card_run = run_today(&suite, "simcard").await;
    assert_eq!(card_run["status"], "completed", "{card_run}");
    assert_eq!(
        card_run["rows_read"], 3,
        "the duplicate is a line of its own"
    );
    assert_eq!(card_run["matched"], 1);
    let found: BTreeSet<_> = differences(&suite).await.into_iter().collect();
    let expected: BTreeSet<_> = [
        ("simsoap", soap_short.as_str(), "amount_mismatch"),
        ("simcard", card_twice.as_str(), "duplicate_charge"),
    ]
    .into_iter()
    .map(|(g, r, k)| {
        (
            g.to_owned(),
            "charge".to_owned(),
            r.to_owned(),
            k.to_owned(),
        )
    })
    .collect();
    assert_eq!(found, expected);

    // Fees per payment, and the books per gateway and day.
    let fee: rust_decimal::Decimal = sqlx::query_scalar(
        "SELECT fee FROM settlement_fee WHERE reference = $1 AND operation = 'charge'",
    )
    .bind(&card_clean)
    .fetch_one(&suite.pool)
    .await
    .unwrap();
    assert_eq!(fee.to_string(), "1.00", "2 % of 50.00");
    let (status, days) = admin(
        &suite,
        Method::GET,
        "/settlement/days?gateway=simsoap",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let day = &days["data"][0];
    assert_eq!(day["charged"], "20.00", "{day}");
    assert_eq!(day["fees"], "0.40");
    assert_eq!(day["net"], "19.60");
    assert_eq!(day["open_differences"], 1);
    assert_eq!(day["matched_rate"], 0.5);
    let _ = soap_clean;
    suite.stop().await;
}

#[tokio::test]
async fn an_unresolved_payment_the_report_says_was_charged_settles_from_the_report_through_the_fence(
) {
    let suite = Suite::start().await;
    // Pending at simjson after an ambiguous attempt, unresolved; the gateway's status
    // queries answer 503 (it cannot settle it), its report says it charged it.
    control(&suite, json!({"force_status": 503})).await;
    let payment = pending(&suite.pool, &suite.merchant.id, Some("simjson")).await;
    let mut conn = suite.pool.acquire().await.unwrap();
    transactions::mark_unresolved(&mut conn, &payment.id, "no answer after the last attempt")
        .await
        .unwrap();
    drop(conn);
    let booked = suite
        .http
        .post(format!("{}/control/charges", suite.simulator_url))
        .json(&json!({"gateway": "json", "reference": payment.id.as_str(), "amount": "21.00", "currency": "USD"}))
        .send()
        .await
        .unwrap();
    assert_eq!(booked.status(), StatusCode::CREATED);
    tokio::time::sleep(Duration::from_secs(1)).await; // the reconciler asks, and learns nothing
    let still: String = sqlx::query_scalar("SELECT status FROM transaction WHERE id = $1")
        .bind(payment.id.as_str())
        .fetch_one(&suite.pool)
        .await
        .unwrap();
    assert_eq!(still, "pending");

    let run = run_today(&suite, "simjson").await;
    assert_eq!(run["status"], "completed", "{run}");
    let record = transactions::find(&suite.pool, &payment.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.status, Status::Completed);
    let completions: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM transaction_event WHERE transaction_id = $1 AND event_type = 'transaction.completed'",
    )
    .bind(payment.id.as_str())
    .fetch_one(&suite.pool)
    .await
    .unwrap();
    assert_eq!(completions, 1);
    let (_, resolved) = admin(
        &suite,
        Method::GET,
        "/settlement/differences?status=resolved",
        None,
    )
    .await;
    let settled = &resolved["data"][0];
    assert_eq!(settled["reference"], payment.id.as_str());
    assert_eq!(settled["kind"], "status_mismatch");
    assert_eq!(settled["resolved_by"], "paygate");
    let (_, open) = admin(&suite, Method::GET, "/settlement/differences", None).await;
    assert_eq!(open["data"], json!([]), "nothing left for a human");

    // Run again: it is completed now, and matches.
    let again = run_today(&suite, "simjson").await;
    assert_eq!(again["matched"], 1);
    assert_eq!(differences(&suite).await.len(), 1);
    suite.stop().await;
}

fn one_reference_a_batch_and_no_runner(settings: &mut paygate_common::Settings) {
    settings.payment_processor.settlement.enabled = false;
    settings.payment_processor.settlement.batch_size = 1;
    settings.payment_processor.settlement.lease_ms = 2_000;
}

/// A settlement runner of the test's own, over the suite's database and gateways.
async fn runner(suite: &Suite) -> paygate_payment_processor::settlement::Runner {
    let mut settings = suite.settings.clone();
    settings.payment_processor.settlement.enabled = true;
    let handler = paygate_payment_processor::PaymentHandler::build(&settings, suite.pool.clone())
        .await
        .unwrap();
    paygate_payment_processor::settlement::Runner::new(handler)
}

#[tokio::test]
async fn a_run_stopped_after_its_first_batch_is_taken_up_after_its_lease_and_finds_nothing_twice() {
    let suite = Suite::start_with(SuiteOptions {
        tweak: Some(one_reference_a_batch_and_no_runner),
        ..SuiteOptions::default()
    })
    .await;
    let clean = usd(&suite, "10.00", "completed").await;
    let mut ghosts = Vec::new();
    for n in 0..3 {
        let reference = format!("txn_0000000000000000000000000000009{n}");
        let booked = suite
            .http
            .post(format!("{}/control/charges", suite.simulator_url))
            .json(&json!({"gateway": "json", "reference": reference, "amount": "1.00", "currency": "USD"}))
            .send()
            .await
            .unwrap();
        assert_eq!(booked.status(), StatusCode::CREATED);
        ghosts.push(reference);
    }
    let (status, _) = admin(
        &suite,
        Method::POST,
        "/settlement/runs",
        Some(json!({"gateway": "simjson", "date": today(), "operator": "Ada"})),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    eventually("the command to be recorded", WAIT, || async {
        let (_, runs) = admin(&suite, Method::GET, "/settlement/runs", None).await;
        (runs["data"][0]["status"] == "requested").then_some(())
    })
    .await;

    let first = runner(&suite).await;
    let never = CancellationToken::new();
    let ended = first.run_next(Some(1), &never).await.unwrap();
    assert_eq!(
        ended,
        Some(paygate_payment_processor::settlement::Ended::Interrupted)
    );
    assert_eq!(
        differences(&suite).await.len(),
        1,
        "the first batch committed"
    );

    let second = runner(&suite).await;
    assert_eq!(
        second.run_next(None, &never).await.unwrap(),
        None,
        "one run per gateway and period at a time: the first runner's lease holds it"
    );
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let ended = second.run_next(None, &never).await.unwrap();
    assert_eq!(
        ended,
        Some(paygate_payment_processor::settlement::Ended::Completed)
    );

    let found = differences(&suite).await;
    assert_eq!(found.len(), 3, "each once: {found:?}");
    let references: BTreeSet<String> = found.into_iter().map(|d| d.2).collect();
    assert_eq!(references, ghosts.into_iter().collect());
    let (_, runs) = admin(&suite, Method::GET, "/settlement/runs", None).await;
    assert_eq!(
        runs["data"][0]["matched"], 1,
        "the clean payment, once: {}",
        runs["data"][0]
    );
    assert_eq!(runs["data"][0]["status"], "completed");
    let _ = clean;
    suite.stop().await;
}

#[tokio::test]
async fn a_report_that_breaks_off_is_retried_then_shown_failed_with_nothing_of_it_applied() {
    let suite = Suite::start().await;
    control(
        &suite,
        json!({"gateways": {"json": {"duplicate_charge": true}}}),
    )
    .await;
    let twice = usd(&suite, "13.00", "completed").await;
    control(
        &suite,
        json!({"gateways": {"json": {"report_garbled": true}}}),
    )
    .await;

    let run = run_today(&suite, "simjson").await;
    assert_eq!(run["status"], "failed", "{run}");
    assert_eq!(run["fetch_attempts"], 3);
    assert!(
        run["error"].as_str().unwrap().contains("cannot be read"),
        "{run}"
    );
    assert_eq!(differences(&suite).await, vec![], "nothing applied");
    let staged: i64 = sqlx::query_scalar("SELECT count(*) FROM settlement_line")
        .fetch_one(&suite.pool)
        .await
        .unwrap();
    assert_eq!(staged, 0);

    control(
        &suite,
        json!({"gateways": {"json": {"report_unavailable": true}}}),
    )
    .await;
    let run = run_today(&suite, "simjson").await;
    assert_eq!(run["status"], "failed");
    assert!(run["error"].as_str().unwrap().contains("503"), "{run}");

    control(&suite, json!({})).await;
    let run = run_today(&suite, "simjson").await;
    assert_eq!(run["status"], "completed", "{run}");
    let found = differences(&suite).await;
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].2, twice);
    suite.stop().await;
}

#[tokio::test]
async fn bad_reconciliation_input_gets_the_json_error_contract_and_changes_nothing() {
    let suite = Suite::start().await;
    let cases = [
        (json!({"gateway": "nope", "date": today()}), "gateway"),
        (json!({"gateway": "simjson", "date": "yesterday"}), "date"),
        (json!({"gateway": "simjson", "date": "2999-01-01"}), "date"),
    ];
    for (body, field) in cases {
        let (status, error) =
            admin(&suite, Method::POST, "/settlement/runs", Some(body.clone())).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_eq!(error["error"]["code"], "validation_failed");
        assert_eq!(error["error"]["field"], field, "{error}");
    }
    let (status, error) = admin(
        &suite,
        Method::POST,
        "/settlement/runs",
        Some(json!({"gateway": "simjson", "date": today(), "extra": 1})),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("extra"),
        "{error}"
    );
    let unauthenticated = suite
        .http
        .post(format!("{}/admin/v1/settlement/runs", suite.api_url))
        .json(&json!({"gateway": "simjson", "date": today()}))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthenticated.status(), StatusCode::UNAUTHORIZED);
    let (status, error) = admin(
        &suite,
        Method::GET,
        "/settlement/differences?status=maybe",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(error["error"]["field"], "status");
    let (status, error) = admin(
        &suite,
        Method::POST,
        "/settlement/differences/424242/resolve",
        Some(json!({"note": "checked"})),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error["error"]["code"], "not_found");

    // Nothing was asked for.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, runs) = admin(&suite, Method::GET, "/settlement/runs", None).await;
    assert_eq!(runs["data"], json!([]));

    // A real difference: an empty note is refused, a note resolves it once.
    let ghost = "txn_00000000000000000000000000000077";
    suite
        .http
        .post(format!("{}/control/charges", suite.simulator_url))
        .json(&json!({"gateway": "json", "reference": ghost, "amount": "2.00", "currency": "USD"}))
        .send()
        .await
        .unwrap();
    run_today(&suite, "simjson").await;
    let (_, open) = admin(&suite, Method::GET, "/settlement/differences", None).await;
    let id = open["data"][0]["id"].as_i64().unwrap();
    let path = format!("/settlement/differences/{id}/resolve");
    let (status, error) = admin(&suite, Method::POST, &path, Some(json!({"note": "  "}))).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(error["error"]["field"], "note");
    let (status, resolved) = admin(
        &suite,
        Method::POST,
        &path,
        Some(json!({"note": "a test charge at the terminal, voided", "operator": "Grace"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{resolved}");
    assert_eq!(resolved["resolved_by"], "admin API: Grace");
    assert!(resolved["resolved_at"].is_string());
    let (status, error) = admin(&suite, Method::POST, &path, Some(json!({"note": "again"}))).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(error["error"]["code"], "already_resolved");
    let (_, after) = admin(
        &suite,
        Method::GET,
        "/settlement/differences?status=resolved",
        None,
    )
    .await;
    assert_eq!(
        after["data"][0]["resolution_note"],
        "a test charge at the terminal, voided"
    );
    suite.stop().await;
}

/// The benchmark (`--run-ignored only`): 100,000 completed payments seeded by SQL at a
/// card acquirer whose report (a 100,000-line CSV) a loopback server serves; one run,
/// fetched, staged and matched, timed. Prints the figure the book states.
#[tokio::test]
#[ignore = "a benchmark: run with --run-ignored only"]
async fn bench_a_run_over_100_000_payments_matches_them_all_within_the_stated_time() {
    const PAYMENTS: usize = 100_000;
    let suite = Suite::start_with(SuiteOptions {
        tweak: Some(|settings| {
            settings.payment_processor.settlement.enabled = false;
            settings.payment_processor.settlement.lease_ms = 600_000;
        }),
        ..SuiteOptions::default()
    })
    .await;
    let now = chrono::Utc::now();
    let ids: Vec<String> = (0..PAYMENTS).map(|n| format!("txn_{n:032x}")).collect();
    let mut csv = String::from(
        "reference,operation,payment_reference,amount,currency,fee,status,settled_at\n",
    );
    for id in &ids {
        csv.push_str(&format!(
            "{id},charge,,10.00,USD,0.20,settled,{}\n",
            now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        ));
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    // A bare HTTP/1.1 server: whatever it is asked, the report.
    let response = std::sync::Arc::new(
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/csv\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{csv}",
            csv.len()
        )
        .into_bytes(),
    );
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        while let Ok((mut socket, _)) = listener.accept().await {
            let response = response.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = socket.write_all(&response).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    let config = paygate_testkit::gateway_config(
        "benchcard",
        "card",
        format!("http://127.0.0.1:{port}/card"),
        "bench-secret",
        2_000,
    );
    paygate_testkit::register_gateway(&suite.pool, &config, None).await;
    let seeding = std::time::Instant::now();
    sqlx::query(
        "INSERT INTO transaction (id, merchant_id, kind, status, amount, currency, user_id, gateway, gateway_txn_id)
         SELECT id, $2, 'deposit', 'completed', 10.00, 'USD', 'u-bench', 'benchcard', 'acq_' || id
           FROM UNNEST($1::text[]) AS id",
    )
    .bind(&ids)
    .bind(suite.merchant.id.as_str())
    .execute(&suite.pool)
    .await
    .unwrap();
    eprintln!(
        "bench: seeded {PAYMENTS} payments in {:?}",
        seeding.elapsed()
    );
    tokio::time::sleep(Duration::from_millis(1_000)).await; // the route cache reloads

    let day = now.date_naive().and_time(chrono::NaiveTime::MIN).and_utc();
    let period = paygate_common::gateway::settlement::Period {
        start: day,
        end: day + chrono::Duration::days(1),
    };
    paygate_payment_processor::settlement::request(&suite.pool, "benchcard", period, "bench")
        .await
        .unwrap();
    let runner = runner(&suite).await;
    let started = std::time::Instant::now();
    let ended = runner
        .run_next(None, &CancellationToken::new())
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(
        ended,
        Some(paygate_payment_processor::settlement::Ended::Completed)
    );
    let (rows, matched): (i64, i64) =
        sqlx::query_as("SELECT rows_read, matched FROM settlement_run WHERE gateway = 'benchcard'")
            .fetch_one(&suite.pool)
            .await
            .unwrap();
    assert_eq!(rows, i64::try_from(PAYMENTS).unwrap());
    assert_eq!(matched, i64::try_from(PAYMENTS).unwrap());
    assert_eq!(differences(&suite).await, vec![]);
    eprintln!(
        "bench: a settlement run over {PAYMENTS} payments (a {PAYMENTS}-line CSV): {took:?}, {:.0} lines/s",
        PAYMENTS as f64 / took.as_secs_f64()
    );
    assert!(took < Duration::from_secs(300), "{took:?}");
    suite.stop().await;
}

#[tokio::test]
async fn the_console_asks_for_a_run_shows_the_books_and_resolves_a_difference_under_the_operators_name(
) {
    let suite = Suite::start().await;
    usd(&suite, "10.00", "completed").await;
    suite
        .http
        .post(format!("{}/control/charges", suite.simulator_url))
        .json(&json!({"gateway": "json", "reference": "txn_00000000000000000000000000000055", "amount": "3.00", "currency": "USD"}))
        .send()
        .await
        .unwrap();
    let mut browser = crate::console::Browser::new(&suite.api_url);
    browser.sign_in_as("Ada").await;
    let page = browser.page("/console/settlement").await;
    let csrf = crate::console::hidden(&page, "csrf");
    let asked = browser
        .post(
            "/console/settlement/runs",
            &[("csrf", &csrf), ("gateway", "simjson"), ("date", &today())],
        )
        .await;
    assert_eq!(asked.status(), StatusCode::SEE_OTHER);
    let run = eventually("the console's run to end", WAIT, || async {
        let run = latest_run(&suite, "simjson").await;
        (run["status"] == "completed").then_some(run)
    })
    .await;
    assert_eq!(run["requested_by"], "console: Ada");
    let page = browser.page("/console/settlement").await;
    assert!(
        page.contains("txn_00000000000000000000000000000055"),
        "the open difference is listed"
    );
    assert!(page.contains("missing_in_paygate"));
    assert!(page.contains("10.00"), "the day's books: charged");
    assert!(page.contains("0.20"), "the day's books: fees");
    let (_, open) = admin(&suite, Method::GET, "/settlement/differences", None).await;
    let id = open["data"][0]["id"].as_i64().unwrap();
    let resolved = browser
        .post(
            &format!("/console/settlement/differences/{id}/resolve"),
            &[("csrf", &csrf), ("note", "a terminal test charge, voided")],
        )
        .await;
    assert_eq!(resolved.status(), StatusCode::SEE_OTHER);
    let (_, after) = admin(
        &suite,
        Method::GET,
        "/settlement/differences?status=resolved",
        None,
    )
    .await;
    assert_eq!(after["data"][0]["resolved_by"], "console: Ada");
    let forged = browser
        .post(
            "/console/settlement/runs",
            &[
                ("csrf", "forged"),
                ("gateway", "simjson"),
                ("date", &today()),
            ],
        )
        .await;
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);
    suite.stop().await;
}

fn a_two_second_schedule(settings: &mut paygate_common::Settings) {
    let settlement = &mut settings.payment_processor.settlement;
    settlement.scheduled = true;
    settlement.period_ms = 2_000;
    settlement.delay_ms = 0;
}

#[tokio::test]
async fn the_schedule_runs_each_enabled_gateways_last_finished_period_by_itself() {
    let suite = Suite::start_with(SuiteOptions {
        tweak: Some(a_two_second_schedule),
        ..SuiteOptions::default()
    })
    .await;
    let runs = eventually("a scheduled run of every gateway", WAIT, || async {
        let (_, runs) = admin(&suite, Method::GET, "/settlement/runs?limit=100", None).await;
        let done: BTreeSet<String> = runs["data"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["requested_by"] == "schedule" && r["status"] == "completed")
            .map(|r| r["gateway"].as_str().unwrap().to_owned())
            .collect();
        (done.len() == 3).then_some(runs)
    })
    .await;
    let run = &runs["data"][0];
    let start =
        chrono::DateTime::parse_from_rfc3339(run["period_start"].as_str().unwrap()).unwrap();
    let end = chrono::DateTime::parse_from_rfc3339(run["period_end"].as_str().unwrap()).unwrap();
    assert_eq!((end - start).num_milliseconds(), 2_000, "{run}");
    suite.stop().await;
}
