//! Refunds through all four services and the simulated gateways: intake with the one
//! error contract, the database keeping racing refunds within the charge, the gateway
//! that charged asked once per refund, `refund.*` webhooks, and the gateway's books
//! agreeing with Paygate's.

use std::time::Duration;

use paygate_testkit::{eventually, json_of, Suite};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// A deposit of `amount` USD (the JSON gateway's), waited for until it is final.
async fn settled_deposit(suite: &Suite, body: Value) -> Value {
    let id = suite.deposit_with(&body).await;
    eventually("the deposit to settle", Duration::from_secs(60), || async {
        let t = json_of(suite.get(&format!("/v1/transactions/{id}"))).await;
        matches!(t["status"].as_str(), Some("completed" | "failed")).then_some(t)
    })
    .await
}

async fn completed_deposit(suite: &Suite, amount: &str) -> String {
    let t = settled_deposit(
        suite,
        json!({"user_id": "u-1", "amount": amount, "currency": "USD"}),
    )
    .await;
    assert_eq!(t["status"], "completed", "{t}");
    t["id"].as_str().unwrap().to_owned()
}

async fn refund(
    suite: &Suite,
    payment: &str,
    body: Value,
) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    let response = suite
        .post(&format!("/v1/transactions/{payment}/refunds"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    (status, headers, response.json().await.unwrap())
}

async fn final_refund(suite: &Suite, id: &str) -> Value {
    eventually("the refund to settle", Duration::from_secs(60), || async {
        let r = json_of(suite.get(&format!("/v1/refunds/{id}"))).await;
        matches!(r["status"].as_str(), Some("completed" | "failed")).then_some(r)
    })
    .await
}

/// What the simulated gateways booked for `payment`: `(refunded, refunds)`.
async fn booked(suite: &Suite, payment: &str) -> (String, u64) {
    let books = json_of(suite.http.get(format!("{}/ledger", suite.simulator_url))).await;
    let entry = books
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["reference"] == payment)
        .cloned()
        .unwrap_or_else(|| panic!("{payment} is not in the gateways' books: {books}"));
    (
        entry["refunded"].as_str().unwrap().to_owned(),
        entry["refunds"].as_u64().unwrap(),
    )
}

async fn count(suite: &Suite, sql: &str, id: &str) -> i64 {
    sqlx::query_scalar(sql)
        .bind(id)
        .fetch_one(&suite.pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deposit_is_refunded_in_part_then_the_rest_and_the_merchant_hears_each_refund() {
    let suite = Suite::start().await;
    let payment = completed_deposit(&suite, "20.00").await;

    let (status, headers, first) = refund(
        &suite,
        &payment,
        json!({"amount": "5.00", "reason": "one item back", "metadata": {"rma": "R-3"}}),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{first}");
    let first_id = first["id"].as_str().unwrap().to_owned();
    assert!(first_id.starts_with("rfd_"));
    assert_eq!(
        headers["location"].to_str().unwrap(),
        format!("/v1/refunds/{first_id}")
    );
    assert_eq!(first["status"], "pending");
    assert_eq!(first["amount"], "5.00");
    assert_eq!(first["transaction_id"], payment.as_str());
    assert_eq!(first["metadata"], json!({"rma": "R-3"}));
    assert_eq!(final_refund(&suite, &first_id).await["status"], "completed");

    // No amount: the rest.
    let (status, _, rest) = refund(&suite, &payment, json!({})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{rest}");
    assert_eq!(rest["amount"], "15.00");
    let rest_id = rest["id"].as_str().unwrap().to_owned();
    let done = final_refund(&suite, &rest_id).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert!(done["gateway_refund_id"].as_str().is_some(), "{done}");

    let read = json_of(suite.get(&format!("/v1/transactions/{payment}"))).await;
    assert_eq!(read["amount_refunded"], "20.00");
    assert_eq!(read["status"], "completed");
    let listed = json_of(suite.get(&format!("/v1/transactions/{payment}/refunds"))).await;
    let ids: Vec<&str> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [first_id.as_str(), rest_id.as_str()]);

    // Nothing is left: refused, and nothing written.
    let (status, _, refused) = refund(&suite, &payment, json!({"amount": "0.50"})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(refused["error"]["code"], "refund_exceeds_amount");
    assert_eq!(
        count(
            &suite,
            "SELECT count(*) FROM refund WHERE transaction_id = $1",
            &payment
        )
        .await,
        2
    );

    // The gateway that charged refunded exactly that, once per refund.
    assert_eq!(booked(&suite, &payment).await, ("20.00".to_owned(), 2));

    // The merchant heard `refund.processing` and `refund.completed` of each, signed.
    let heard = eventually(
        "both refunds' webhooks",
        Duration::from_secs(30),
        || async {
            let heard: Vec<(String, String)> = suite
                .webhooks
                .received()
                .iter()
                .filter(|w| {
                    w.json()["type"]
                        .as_str()
                        .unwrap_or_default()
                        .starts_with("refund.")
                })
                .map(|w| {
                    assert!(w.header("webhook-signature").starts_with("v1,"));
                    let body = w.json();
                    (
                        body["data"]["id"].as_str().unwrap().to_owned(),
                        body["type"].as_str().unwrap().to_owned(),
                    )
                })
                .collect();
            (heard.len() >= 4).then_some(heard)
        },
    )
    .await;
    for id in [&first_id, &rest_id] {
        for kind in ["refund.processing", "refund.completed"] {
            assert_eq!(
                heard.iter().filter(|(i, k)| i == id && k == kind).count(),
                1,
                "{id} {kind}: {heard:?}"
            );
        }
    }
    suite.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_racing_partial_refunds_accept_exactly_those_that_fit_and_write_nothing_else() {
    let suite = Suite::start().await;
    let payment = completed_deposit(&suite, "20.00").await;
    let events_before = count(
        &suite,
        "SELECT count(*) FROM transaction_event WHERE transaction_id = $1",
        &payment,
    )
    .await;

    // 20 × 3.00 against 20.00: six fit.
    let answers = futures_join_all((0..20).map(|_| {
        let request = suite
            .post(&format!("/v1/transactions/{payment}/refunds"))
            .json(&json!({"amount": "3.00"}));
        async move {
            let response = request.send().await.unwrap();
            (response.status(), response.json::<Value>().await.unwrap())
        }
    }))
    .await;
    let accepted = answers
        .iter()
        .filter(|(s, _)| *s == StatusCode::ACCEPTED)
        .count();
    assert_eq!(accepted, 6, "{answers:?}");
    for (status, body) in answers.iter().filter(|(s, _)| *s != StatusCode::ACCEPTED) {
        assert_eq!(*status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_eq!(body["error"]["code"], "refund_exceeds_amount", "{body}");
        assert_eq!(body["error"]["field"], "amount", "{body}");
    }
    assert_eq!(
        count(
            &suite,
            "SELECT count(*) FROM refund WHERE transaction_id = $1",
            &payment
        )
        .await,
        6
    );
    let created: i64 = count(
        &suite,
        "SELECT count(*) FROM transaction_event WHERE transaction_id = $1 AND event_type = 'refund.created'",
        &payment,
    )
    .await;
    assert_eq!(created, 6);
    let held: rust_decimal::Decimal =
        sqlx::query_scalar("SELECT refund_held FROM transaction WHERE id = $1")
            .bind(&payment)
            .fetch_one(&suite.pool)
            .await
            .unwrap();
    assert_eq!(held.to_string(), "18.00");
    assert!(
        count(
            &suite,
            "SELECT count(*) FROM transaction_event WHERE transaction_id = $1",
            &payment
        )
        .await
            >= events_before + 6
    );

    // They all complete, and the gateway refunded exactly their sum.
    eventually(
        "every refund to complete",
        Duration::from_secs(60),
        || async {
            let done = count(
                &suite,
                "SELECT count(*) FROM refund WHERE transaction_id = $1 AND status = 'completed'",
                &payment,
            )
            .await;
            (done == 6).then_some(())
        },
    )
    .await;
    assert_eq!(booked(&suite, &payment).await, ("18.00".to_owned(), 6));
    suite.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refunding_anything_but_a_completed_deposit_or_with_bad_input_is_refused_and_writes_nothing(
) {
    let suite = Suite::start().await;
    let payment = completed_deposit(&suite, "10.00").await;
    let failed = settled_deposit(
        &suite,
        json!({"user_id": "u-1", "amount": "10.01", "currency": "USD"}),
    )
    .await;
    assert_eq!(failed["status"], "failed");
    let withdrawal = {
        let response = suite
            .post("/v1/withdrawals")
            .json(&json!({"user_id": "u-1", "amount": "10.00", "currency": "USD"}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        let id = response.json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned();
        eventually(
            "the withdrawal to complete",
            Duration::from_secs(60),
            || async {
                let t = json_of(suite.get(&format!("/v1/transactions/{id}"))).await;
                (t["status"] == "completed").then_some(())
            },
        )
        .await;
        id
    };
    // A stalled payment stays pending.
    let pending = suite.deposit("10.07").await;

    for (what, target) in [
        ("a failed deposit", failed["id"].as_str().unwrap()),
        ("a withdrawal", withdrawal.as_str()),
        ("a pending deposit", pending.as_str()),
    ] {
        let (status, _, body) = refund(&suite, target, json!({"amount": "1.00"})).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{what}: {body}");
        assert_eq!(body["error"]["code"], "not_refundable", "{what}: {body}");
    }
    let bad = [
        (json!({"amount": "ten"}), "amount"),
        (json!({"amount": "1.001"}), "amount"),
        (json!({"amount": "-1.00"}), "amount"),
        (json!({"amount": 1}), "amount"),
        (json!({"amount": "1.00", "colour": "blue"}), "colour"),
        (
            json!({"metadata": {"card": "4242424242424242"}}),
            "metadata.card",
        ),
        (json!({"reason": "r".repeat(256)}), "reason"),
    ];
    for (body, field) in bad {
        let (status, _, answer) = refund(&suite, &payment, body.clone()).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {answer}");
        assert_eq!(
            answer["error"]["code"], "validation_failed",
            "{body}: {answer}"
        );
        assert_eq!(answer["error"]["field"], field, "{body}: {answer}");
    }
    let (status, _, _) = refund(&suite, "txn_00000000000000000000000000000000", json!({})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let missing = suite
        .get("/v1/refunds/rfd_00000000000000000000000000000000")
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);

    let refunds: i64 = sqlx::query_scalar("SELECT count(*) FROM refund")
        .fetch_one(&suite.pool)
        .await
        .unwrap();
    assert_eq!(refunds, 0);
    let held: i64 = sqlx::query_scalar("SELECT count(*) FROM transaction WHERE refund_held <> 0")
        .fetch_one(&suite.pool)
        .await
        .unwrap();
    assert_eq!(held, 0);
    suite.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_xml_refund_is_answered_in_xml_and_its_idempotency_key_replays_it_once() {
    let suite = Suite::start().await;
    let payment = completed_deposit(&suite, "10.00").await;
    let send = || {
        suite
            .post(&format!("/v1/transactions/{payment}/refunds"))
            .header("content-type", "application/xml")
            .header("accept", "application/xml")
            .header("idempotency-key", "refund-once")
            .body("<refund><amount>4.00</amount><metadata><rma>R-9</rma></metadata></refund>")
            .send()
    };
    let first = send().await.unwrap();
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    let first_body = first.text().await.unwrap();
    assert!(first_body.contains("<refund>"), "{first_body}");
    assert!(first_body.contains("<amount>4.00</amount>"), "{first_body}");
    assert!(
        first_body.contains("<metadata><rma>R-9</rma></metadata>"),
        "{first_body}"
    );
    let again = send().await.unwrap();
    assert_eq!(again.status(), StatusCode::ACCEPTED);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.text().await.unwrap(), first_body);
    assert_eq!(
        count(
            &suite,
            "SELECT count(*) FROM refund WHERE transaction_id = $1",
            &payment
        )
        .await,
        1
    );
    suite.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_ambiguous_refund_is_asked_again_and_refunded_once_and_a_declined_one_gives_its_hold_back(
) {
    let suite = Suite::start().await;
    let payment = completed_deposit(&suite, "20.00").await;

    // `.06`: the gateway refunds, then a proxy answers 504.
    let (_, _, ambiguous) = refund(&suite, &payment, json!({"amount": "5.06"})).await;
    let ambiguous = final_refund(&suite, ambiguous["id"].as_str().unwrap()).await;
    assert_eq!(ambiguous["status"], "completed", "{ambiguous}");

    // `.01`: declined, failed with the reason, its hold given back.
    let (_, _, declined) = refund(&suite, &payment, json!({"amount": "1.01"})).await;
    let declined = final_refund(&suite, declined["id"].as_str().unwrap()).await;
    assert_eq!(declined["status"], "failed", "{declined}");
    assert_eq!(declined["failure_reason"], "insufficient_funds");

    // So the rest is 14.94, and it is refunded.
    let (status, _, rest) = refund(&suite, &payment, json!({})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{rest}");
    assert_eq!(rest["amount"], "14.94");
    assert_eq!(
        final_refund(&suite, rest["id"].as_str().unwrap()).await["status"],
        "completed"
    );
    assert_eq!(booked(&suite, &payment).await, ("20.00".to_owned(), 2));
    let read = json_of(suite.get(&format!("/v1/transactions/{payment}"))).await;
    assert_eq!(read["amount_refunded"], "20.00");
    paygate_testkit::assert_money_invariant(
        &suite.pool,
        &[suite.simulator_url.as_str()],
        paygate_testkit::Moment::Settled,
    )
    .await;
    suite.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stalled_refund_is_never_failed_and_settles_once_the_gateway_answers() {
    let suite = Suite::start().await;
    let payment = completed_deposit(&suite, "10.00").await;
    let (_, _, stalled) = refund(&suite, &payment, json!({"amount": "2.07"})).await;
    let id = stalled["id"].as_str().unwrap().to_owned();
    // Past every retry (4 attempts, at most 400 ms apart, 2 s timeouts): still open.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let open = json_of(suite.get(&format!("/v1/refunds/{id}"))).await;
    assert_eq!(open["status"], "pending", "{open}");
    let response = suite
        .http
        .post(format!("{}/control/release/{id}", suite.simulator_url))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success());
    let done = final_refund(&suite, &id).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(booked(&suite, &payment).await, ("2.07".to_owned(), 1));
    suite.stop().await;
}

/// Runs the futures together, each request in flight before any answer is awaited.
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_consoles_payment_page_shows_its_refunds_with_their_history() {
    let suite = Suite::start().await;
    let payment = completed_deposit(&suite, "12.00").await;
    let (_, _, made) = refund(
        &suite,
        &payment,
        json!({"amount": "2.50", "reason": "scuffed box"}),
    )
    .await;
    let id = made["id"].as_str().unwrap().to_owned();
    assert_eq!(final_refund(&suite, &id).await["status"], "completed");

    let mut browser = crate::console::Browser::new(&suite.api_url);
    browser.sign_in_as("Ada").await;
    let page = browser
        .page(&format!("/console/transactions/{payment}"))
        .await;
    for expected in [
        "id=\"refunds\"",
        id.as_str(),
        "scuffed box",
        "2.50",
        "refund.created",
        "refund.attempted",
        "refund.processing",
        "refund.completed",
    ] {
        assert!(page.contains(expected), "no {expected} on the page: {page}");
    }
    suite.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refund_whose_answer_never_comes_is_settled_by_the_gateways_signed_callback() {
    let suite = Suite::start().await;
    let payment = completed_deposit(&suite, "10.00").await;
    // `.02`: refunded at once, called back after 50 ms, answered only after 10 s (past
    // the 2 s timeout): the callback settles it.
    let (_, _, slow) = refund(&suite, &payment, json!({"amount": "3.02"})).await;
    let id = slow["id"].as_str().unwrap().to_owned();
    let done = eventually(
        "the callback to settle the refund",
        Duration::from_secs(30),
        || async {
            let r = json_of(suite.get(&format!("/v1/refunds/{id}"))).await;
            (r["status"] == "completed").then_some(r)
        },
    )
    .await;
    assert!(done["gateway_refund_id"].as_str().is_some(), "{done}");
    let (outcome, refund_id): (Option<String>, Option<String>) = eventually(
        "the callback to be processed",
        Duration::from_secs(30),
        || async {
            sqlx::query_as(
                "SELECT outcome, refund_id FROM gateway_callback
                  WHERE transaction_id = $1 AND refund_id IS NOT NULL AND processed_at IS NOT NULL",
            )
            .bind(&payment)
            .fetch_optional(&suite.pool)
            .await
            .unwrap()
        },
    )
    .await;
    assert_eq!(outcome.as_deref(), Some("applied"));
    assert_eq!(refund_id.as_deref(), Some(id.as_str()));
    assert_eq!(booked(&suite, &payment).await, ("3.02".to_owned(), 1));

    // A refund callback for a refund that does not exist is 404 and stores nothing.
    let body = json!({"event_id": "e-x", "reference": "rfd_00000000000000000000000000000000",
                      "gateway_txn_id": "x", "status": "completed", "amount": "1.00",
                      "currency": "USD", "reason": null})
    .to_string();
    let signature = paygate_common::signature::callback::sign(
        paygate_testkit::SIM_JSON_SECRET,
        chrono::Utc::now().timestamp(),
        body.as_bytes(),
    );
    let answer = suite
        .http
        .post(format!("{}/v1/callbacks/simjson", suite.api_url))
        .header("content-type", "application/json")
        .header(paygate_common::signature::callback::HEADER, signature)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::NOT_FOUND);
    suite.stop().await;
}
