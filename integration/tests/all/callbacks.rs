//! Callbacks under fire: conflicting copies racing through two callback-processors, and
//! Redis going away mid-flow.

use std::time::Duration;

use paygate_common::signature::callback;
use paygate_common::transactions::{self, Change};
use paygate_testkit::{
    eventually, plain_deposit, read_topic, PrivateRedis, Running, Suite, SuiteOptions,
    SIM_JSON_SECRET,
};
use serde_json::json;

/// A transaction already `processing` at `simjson`, as if the gateway had taken it.
async fn processing(suite: &Suite, amount: &str) -> String {
    processing_at(suite, amount, "simjson").await
}

/// A transaction already `processing` at `gateway`.
async fn processing_at(suite: &Suite, amount: &str, gateway: &str) -> String {
    let mut tx = suite.pool.begin().await.unwrap();
    let created = transactions::create(&mut tx, plain_deposit(&suite.merchant.id, amount, "race"))
        .await
        .unwrap();
    let attempted = transactions::record_attempt(&mut tx, &created, gateway, None)
        .await
        .unwrap();
    let change = Change {
        gateway: Some(gateway.to_owned()),
        gateway_txn_id: Some("sim_race".to_owned()),
        ..Change::default()
    };
    transactions::transition(
        &mut tx,
        &attempted,
        paygate_common::domain::Status::Processing,
        change,
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    created.id.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 6)]
async fn two_hundred_conflicting_callbacks_through_two_processors_settle_once_with_one_event_and_one_webhook(
) {
    let suite = Suite::start().await;
    let second = paygate_callback_processor::Application::build(suite.settings.clone())
        .await
        .unwrap();
    let second = Running::spawn(|s| second.run(s));
    let id = processing(&suite, "25.00").await;

    // 100 gateway events, half saying approved and half declined, each sent twice under
    // two signatures (other timestamps), all in a shuffled order from many tasks.
    let mut sends = Vec::new();
    for n in 0..100 {
        let status = if n % 2 == 0 { "approved" } else { "declined" };
        let body =
            json!({"event_id": format!("race-{n}"), "reference": id, "gateway_txn_id": "sim_race",
                          "status": status, "amount": "25.00", "currency": "USD", "reason": "race"})
            .to_string();
        let now = chrono::Utc::now().timestamp();
        sends.push((
            body.clone(),
            callback::sign(SIM_JSON_SECRET, now, body.as_bytes()),
        ));
        sends.push((
            body.clone(),
            callback::sign(SIM_JSON_SECRET, now - 1, body.as_bytes()),
        ));
    }
    // A fixed shuffle: odd positions first, then even ones reversed.
    let shuffled: Vec<_> = sends
        .iter()
        .skip(1)
        .step_by(2)
        .chain(sends.iter().step_by(2).rev())
        .cloned()
        .collect();
    let mut tasks = tokio::task::JoinSet::new();
    for (body, signature) in shuffled {
        let request = suite
            .http
            .post(format!("{}/v1/callbacks/simjson", suite.api_url))
            .header("content-type", "application/json")
            .header(callback::HEADER, signature)
            .body(body);
        tasks.spawn(async move { request.send().await.unwrap().status() });
    }
    while let Some(status) = tasks.join_next().await {
        assert!(status.unwrap().is_success());
    }

    let processed = eventually(
        "every callback processed",
        Duration::from_secs(60),
        || async {
            let rows: Vec<(String, Option<String>)> = sqlx::query_as(
                "SELECT dedup_key, outcome FROM gateway_callback WHERE transaction_id = $1",
            )
            .bind(&id)
            .fetch_all(&suite.pool)
            .await
            .unwrap();
            rows.iter().all(|(_, o)| o.is_some()).then_some(rows)
        },
    )
    .await;
    assert_eq!(processed.len(), 100, "each gateway event stored once");
    let applied = processed
        .iter()
        .filter(|(_, o)| o.as_deref() == Some("applied"))
        .count();
    let ignored = processed
        .iter()
        .filter(|(_, o)| o.as_deref() == Some("ignored"))
        .count();
    let contradictions = processed
        .iter()
        .filter(|(_, o)| o.as_deref() == Some("contradiction"))
        .count();
    // The first applied; its 49 twins are duplicates; the 50 that say the opposite
    // contradict the final status and are kept for a human, never applied.
    assert_eq!((applied, ignored, contradictions), (1, 49, 50));
    let review: (Option<String>, String) =
        sqlx::query_as("SELECT review_reason, status FROM transaction WHERE id = $1")
            .bind(&id)
            .fetch_one(&suite.pool)
            .await
            .unwrap();
    let expected = if review.1 == "failed" {
        "charged_but_failed"
    } else {
        "contradicting_answer"
    };
    assert_eq!(
        review.0.as_deref(),
        Some(expected),
        "flagged once, for a human"
    );

    let finals: Vec<String> = sqlx::query_scalar(
        "SELECT event_type FROM transaction_event
          WHERE transaction_id = $1 AND event_type IN ('transaction.completed', 'transaction.failed')",
    )
    .bind(&id)
    .fetch_all(&suite.pool)
    .await
    .unwrap();
    assert_eq!(
        finals.len(),
        1,
        "one event for the one transition: {finals:?}"
    );

    let final_type = finals[0].clone();
    eventually("the final webhook", Duration::from_secs(30), || async {
        suite
            .webhooks
            .received()
            .iter()
            .any(|w| w.json()["type"] == final_type.as_str())
            .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let webhooks: Vec<_> = suite
        .webhooks
        .received()
        .into_iter()
        .filter(|w| w.json()["data"]["id"] == id.as_str())
        .collect();
    let final_webhooks = webhooks
        .iter()
        .filter(|w| w.json()["type"] == final_type.as_str())
        .count();
    assert_eq!(
        final_webhooks, 1,
        "one merchant webhook for the one transition"
    );
    assert!(
        webhooks
            .iter()
            .all(|w| w.json()["type"] != "transaction.completed")
            || webhooks
                .iter()
                .all(|w| w.json()["type"] != "transaction.failed"),
        "never both final states"
    );
    second.stop().await.unwrap();
    suite.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_redis_killed_and_restarted_mid_flow_every_payment_still_ends_right_once() {
    let mut redis = PrivateRedis::start().await;
    let suite = Suite::start_with(SuiteOptions {
        redis: Some(redis.url.clone()),
        ..SuiteOptions::default()
    })
    .await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(suite.deposit("11.00").await);
    }
    redis.kill().await;
    for _ in 0..3 {
        ids.push(suite.deposit("12.00").await);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    redis.restart().await;
    eventually(
        "every payment to complete",
        Duration::from_secs(90),
        || async {
            let statuses = suite.statuses().await;
            (statuses.len() == ids.len() && statuses.iter().all(|(_, s)| s == "completed"))
                .then_some(())
        },
    )
    .await;
    for id in &ids {
        assert_eq!(suite.charges(id).await, 1, "{id} charged once");
    }
    suite.stop().await;
}

async fn status_of(suite: &Suite, id: &str) -> String {
    sqlx::query_scalar("SELECT status FROM transaction WHERE id = $1")
        .bind(id)
        .fetch_one(&suite.pool)
        .await
        .unwrap()
}

async fn stored_callbacks(suite: &Suite, id: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM gateway_callback WHERE transaction_id = $1")
        .bind(id)
        .fetch_one(&suite.pool)
        .await
        .unwrap()
}

/// Posts a legacy callback `body` to `/callback/{id}`, signed (when `secret` is given)
/// for the transaction `signed_for`.
async fn legacy_callback(
    suite: &Suite,
    id: &str,
    body: &str,
    secret: Option<&str>,
    signed_for: &str,
) -> reqwest::StatusCode {
    let mut request = suite
        .http
        .post(format!("{}/callback/{id}", suite.api_url))
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(secret) = secret {
        let now = chrono::Utc::now().timestamp();
        let payload = paygate_common::gateway::legacy::signed_payload(signed_for, body.as_bytes());
        request = request.header(callback::HEADER, callback::sign(secret, now, &payload));
    }
    request.send().await.unwrap().status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_original_callback_route_signed_with_the_gateways_secret_over_its_transaction_settles_the_payment_and_an_unsigned_one_is_401(
) {
    let suite = Suite::start().await;
    let id = processing(&suite, "33.00").await;
    let body = r#"{"gateway_txn_id":"sim_race","status":"completed","amount":"33.00"}"#;
    let unsigned = legacy_callback(&suite, &id, body, None, &id).await;
    assert_eq!(unsigned, reqwest::StatusCode::UNAUTHORIZED);
    let wrong = legacy_callback(&suite, &id, body, Some("not-the-secret"), &id).await;
    assert_eq!(wrong, reqwest::StatusCode::UNAUTHORIZED);
    let unknown = "txn_01a00000000070008000000000000000";
    let status = legacy_callback(&suite, unknown, body, Some(SIM_JSON_SECRET), unknown).await;
    assert_eq!(status, reqwest::StatusCode::UNAUTHORIZED);
    // Signed over the body alone, as before the id was bound in: refused.
    let now = chrono::Utc::now().timestamp();
    let body_only = suite
        .http
        .post(format!("{}/callback/{id}", suite.api_url))
        .header("content-type", "application/json")
        .header(
            callback::HEADER,
            callback::sign(SIM_JSON_SECRET, now, body.as_bytes()),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(body_only.status(), reqwest::StatusCode::UNAUTHORIZED);
    assert_eq!(stored_callbacks(&suite, &id).await, 0, "nothing stored");

    // The book's line (gateways/callbacks.md): HMAC over "<t>.<transaction id>.<body>".
    for _ in 0..2 {
        let signed = legacy_callback(&suite, &id, body, Some(SIM_JSON_SECRET), &id).await;
        assert_eq!(signed, reqwest::StatusCode::OK);
    }
    eventually(
        "the payment to complete",
        Duration::from_secs(30),
        || async { (status_of(&suite, &id).await == "completed").then_some(()) },
    )
    .await;
    assert_eq!(
        stored_callbacks(&suite, &id).await,
        1,
        "the same body twice is one callback"
    );
    suite.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn identical_original_callbacks_to_two_transactions_are_both_applied() {
    let suite = Suite::start().await;
    let first = processing(&suite, "36.00").await;
    let second = processing(&suite, "36.00").await;
    let body =
        r#"{"gateway_txn_id":"sim_race","status":"completed","amount":"36.00","currency":"USD"}"#;
    for id in [&first, &second] {
        let status = legacy_callback(&suite, id, body, Some(SIM_JSON_SECRET), id).await;
        assert_eq!(status, reqwest::StatusCode::OK, "{id}");
    }
    eventually(
        "both payments to complete",
        Duration::from_secs(30),
        || async {
            (status_of(&suite, &first).await == "completed"
                && status_of(&suite, &second).await == "completed")
                .then_some(())
        },
    )
    .await;
    assert_eq!(stored_callbacks(&suite, &first).await, 1);
    assert_eq!(stored_callbacks(&suite, &second).await, 1);
    suite.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_original_callback_signed_for_one_transaction_is_401_on_anothers_path_and_stores_nothing(
) {
    let suite = Suite::start().await;
    let a = processing(&suite, "37.00").await;
    let b = processing(&suite, "37.00").await;
    let body = r#"{"gateway_txn_id":"sim_race","status":"completed","amount":"37.00"}"#;
    let replayed = legacy_callback(&suite, &b, body, Some(SIM_JSON_SECRET), &a).await;
    assert_eq!(replayed, reqwest::StatusCode::UNAUTHORIZED);
    assert_eq!(stored_callbacks(&suite, &b).await, 0, "nothing stored");
    assert_eq!(stored_callbacks(&suite, &a).await, 0);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(status_of(&suite, &b).await, "processing");
    suite.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_original_callback_whose_amount_disagrees_with_its_transaction_is_rejected_and_kept() {
    let suite = Suite::start().await;
    let id = processing(&suite, "38.00").await;
    let body = r#"{"gateway_txn_id":"sim_race","status":"completed","amount":"3800.00"}"#;
    let status = legacy_callback(&suite, &id, body, Some(SIM_JSON_SECRET), &id).await;
    assert_eq!(status, reqwest::StatusCode::OK, "stored, then judged");
    let (outcome, reason) = eventually(
        "the callback to be judged",
        Duration::from_secs(30),
        || async {
            let judged: (Option<String>, Option<String>) = sqlx::query_as(
                "SELECT outcome, outcome_reason FROM gateway_callback WHERE transaction_id = $1",
            )
            .bind(&id)
            .fetch_one(&suite.pool)
            .await
            .unwrap();
            judged.0.is_some().then_some(judged)
        },
    )
    .await;
    assert_eq!(outcome.as_deref(), Some("rejected"));
    assert!(
        reason.as_deref().unwrap_or_default().contains("amount"),
        "{reason:?}"
    );
    assert_eq!(status_of(&suite, &id).await, "processing", "not applied");

    // No amount at all is unreadable: kept, rejected, never applied.
    let second = processing(&suite, "39.00").await;
    let bare = r#"{"gateway_txn_id":"sim_race","status":"completed"}"#;
    let status = legacy_callback(&suite, &second, bare, Some(SIM_JSON_SECRET), &second).await;
    assert_eq!(status, reqwest::StatusCode::OK);
    eventually(
        "the bare callback to be rejected",
        Duration::from_secs(30),
        || async {
            let outcome: Option<String> = sqlx::query_scalar(
                "SELECT outcome FROM gateway_callback WHERE transaction_id = $1",
            )
            .bind(&second)
            .fetch_one(&suite.pool)
            .await
            .unwrap();
            (outcome.as_deref() == Some("rejected")).then_some(())
        },
    )
    .await;
    assert_eq!(status_of(&suite, &second).await, "processing");
    suite.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn soap_and_card_callbacks_are_refused_unsigned_wrong_or_stale_and_acknowledged_in_their_own_format(
) {
    let suite = Suite::start().await;
    let soap_id = processing_at(&suite, "34.00", "simsoap").await;
    let soap = format!(
        r#"<?xml version="1.0"?><soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/" xmlns:pay="urn:paygate:sim:payments"><soap:Body><pay:PaymentNotification><pay:EventId>soap-1</pay:EventId><pay:Reference>{soap_id}</pay:Reference><pay:GatewayTxnId>soap_x</pay:GatewayTxnId><pay:Status>approved</pay:Status><pay:Amount>34.00</pay:Amount><pay:Currency>USD</pay:Currency></pay:PaymentNotification></soap:Body></soap:Envelope>"#
    );
    let card_id = processing_at(&suite, "35.00", "simcard").await;
    let card =
        json!({"event_id": "card-1", "reference": card_id, "transaction_id": "acq_x", "code": "0",
                      "amount": "35.00", "currency": "USD", "message": "approved"})
        .to_string();
    let cases = [
        (
            "simsoap",
            soap_id.clone(),
            soap,
            "text/xml",
            paygate_testkit::SIM_SOAP_SECRET,
        ),
        (
            "simcard",
            card_id.clone(),
            card,
            "application/json",
            paygate_testkit::SIM_CARD_SECRET,
        ),
    ];
    for (gateway, id, body, content_type, secret) in cases {
        let now = chrono::Utc::now().timestamp();
        let send = |signature: Option<String>| {
            let mut request = suite
                .http
                .post(format!("{}/v1/callbacks/{gateway}", suite.api_url))
                .header("content-type", content_type)
                .body(body.clone());
            if let Some(signature) = signature {
                request = request.header(callback::HEADER, signature);
            }
            request.send()
        };
        for bad in [
            None,
            Some(callback::sign("not-the-secret", now, body.as_bytes())),
            Some(callback::sign(secret, now - 3_600, body.as_bytes())),
            Some(callback::sign(SIM_JSON_SECRET, now, body.as_bytes())),
        ] {
            let refused = send(bad).await.unwrap();
            assert_eq!(
                refused.status(),
                reqwest::StatusCode::UNAUTHORIZED,
                "{gateway}"
            );
        }
        assert_eq!(
            stored_callbacks(&suite, &id).await,
            0,
            "{gateway}: nothing stored"
        );

        let signature = callback::sign(secret, now, body.as_bytes());
        let mut answers = Vec::new();
        for _ in 0..2 {
            // The same signed callback twice (a replay): the same answer, stored once.
            let accepted = send(Some(signature.clone())).await.unwrap();
            assert_eq!(accepted.status(), reqwest::StatusCode::OK, "{gateway}");
            let kind = accepted.headers()["content-type"]
                .to_str()
                .unwrap()
                .to_owned();
            answers.push((kind, accepted.text().await.unwrap()));
        }
        assert_eq!(answers[0], answers[1]);
        let (kind, ack) = &answers[0];
        if gateway == "simsoap" {
            assert!(kind.starts_with("text/xml"), "{kind}");
            let mut reader = quick_xml::NsReader::from_str(ack);
            let mut names = Vec::new();
            loop {
                match reader.read_resolved_event().unwrap() {
                    (
                        quick_xml::name::ResolveResult::Bound(ns),
                        quick_xml::events::Event::Start(e),
                    ) => names.push((
                        String::from_utf8(ns.as_ref().to_vec()).unwrap(),
                        String::from_utf8(e.local_name().as_ref().to_vec()).unwrap(),
                    )),
                    (_, quick_xml::events::Event::Eof) => break,
                    _ => {}
                }
            }
            assert_eq!(
                names[0],
                (
                    "http://schemas.xmlsoap.org/soap/envelope/".to_owned(),
                    "Envelope".to_owned()
                ),
                "a SOAP envelope: {ack}"
            );
        } else {
            assert!(kind.starts_with("application/json"), "{kind}");
            assert_eq!(
                serde_json::from_str::<serde_json::Value>(ack).unwrap()["received"],
                true
            );
        }
        eventually(
            "the payment to complete",
            Duration::from_secs(30),
            || async { (status_of(&suite, &id).await == "completed").then_some(()) },
        )
        .await;
        assert_eq!(
            stored_callbacks(&suite, &id).await,
            1,
            "{gateway}: stored once"
        );
    }
    suite.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_whose_lock_expired_mid_update_has_its_stale_write_refused_by_the_version_fence() {
    use paygate_common::domain::Status;
    use paygate_common::lock::Locks;
    use paygate_common::transactions::TransitionError;

    let suite = Suite::start().await;
    let id = processing(&suite, "36.00").await;
    let id_typed = id.parse().unwrap();
    let locks = Locks::connect(&suite.settings.redis)
        .await
        .unwrap()
        .with_ttl(Duration::from_millis(300));

    // The first holder reads, then pauses past its lock's life.
    let first = locks.try_acquire(&id).await.unwrap().expect("free");
    let seen = transactions::find(&suite.pool, &id_typed)
        .await
        .unwrap()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;

    // The lock expired, so a second holder gets it and settles the payment.
    let second = locks
        .try_acquire(&id)
        .await
        .unwrap()
        .expect("expired, so free");
    let fresh = transactions::find(&suite.pool, &id_typed)
        .await
        .unwrap()
        .unwrap();
    let mut tx = suite.pool.begin().await.unwrap();
    transactions::transition(&mut tx, &fresh, Status::Completed, Change::default())
        .await
        .unwrap();
    tx.commit().await.unwrap();

    // The first wakes up and writes what it decided on its stale read: refused.
    let mut tx = suite.pool.begin().await.unwrap();
    let stale = transactions::transition(
        &mut tx,
        &seen,
        Status::Failed,
        Change {
            failure_reason: Some("stale".to_owned()),
            ..Change::default()
        },
    )
    .await;
    assert!(matches!(stale, Err(TransitionError::Stale(_))), "{stale:?}");
    drop(tx);
    assert!(
        !locks.release(first).await.unwrap(),
        "its lock was no longer its own"
    );
    assert!(
        locks.release(second).await.unwrap(),
        "and it left the new holder's alone"
    );
    assert_eq!(status_of(&suite, &id).await, "completed");
    suite.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_callback_that_can_never_be_read_is_kept_rejected_with_its_reason_and_dead_lettered() {
    let suite = Suite::start().await;
    let id = processing(&suite, "37.00").await;
    let body = json!({"event_id": "odd-1", "reference": id, "status": "maybe",
                      "amount": "37.00", "currency": "USD"})
    .to_string();
    let signature = callback::sign(
        SIM_JSON_SECRET,
        chrono::Utc::now().timestamp(),
        body.as_bytes(),
    );
    let answer = suite
        .http
        .post(format!("{}/v1/callbacks/simjson", suite.api_url))
        .header("content-type", "application/json")
        .header(callback::HEADER, signature)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(
        answer.status(),
        reqwest::StatusCode::OK,
        "stored: its identity reads"
    );
    let reason = eventually(
        "the callback to be judged",
        Duration::from_secs(30),
        || async {
            let row: Option<(Option<String>, Option<String>)> = sqlx::query_as(
                "SELECT outcome, outcome_reason FROM gateway_callback WHERE dedup_key = 'odd-1'",
            )
            .fetch_optional(&suite.pool)
            .await
            .unwrap();
            row.filter(|(outcome, _)| outcome.is_some())
                .map(|(outcome, reason)| (outcome.unwrap(), reason.unwrap_or_default()))
        },
    )
    .await;
    assert_eq!(reason.0, "rejected");
    assert!(reason.1.contains("maybe"), "{}", reason.1);
    let dlq = format!("{}.dlq", suite.settings.kafka.topics.gateway_callbacks);
    let dead = read_topic(&suite.settings, &dlq, 1, Duration::from_secs(10)).await;
    let dead = dead.iter().find(|m| m.key == id).expect("dead-lettered");
    assert!(
        dead.headers["dlq-reason"].contains("unreadable callback"),
        "{:?}",
        dead.headers
    );
    assert_eq!(
        status_of(&suite, &id).await,
        "processing",
        "the payment is left alone"
    );
    suite.stop().await;
}
