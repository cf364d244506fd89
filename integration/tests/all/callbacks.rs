//! Callbacks under fire: conflicting copies racing through two callback-processors, and
//! Redis going away mid-flow.

use std::time::Duration;

use paygate_common::domain::{Currency, Kind, Money};
use paygate_common::signature::callback;
use paygate_common::transactions::{self, Change, NewTransaction};
use paygate_testkit::{eventually, PrivateRedis, Running, Suite, SuiteOptions, SIM_JSON_SECRET};
use serde_json::json;

/// A transaction already `processing` at `simjson`, as if the gateway had taken it.
async fn processing(suite: &Suite, amount: &str) -> String {
    let mut tx = suite.pool.begin().await.unwrap();
    let created = transactions::create(
        &mut tx,
        NewTransaction {
            merchant_id: suite.merchant.id.clone(),
            kind: Kind::Deposit,
            money: Money::parse(amount, "USD".parse::<Currency>().unwrap()).unwrap(),
            user_id: "race".to_owned(),
            country: None,
            reference: None,
            card: None,
        },
    )
    .await
    .unwrap();
    let attempted = transactions::record_attempt(&mut tx, &created, "simjson")
        .await
        .unwrap();
    let change = Change {
        gateway: Some("simjson".to_owned()),
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
    assert_eq!((applied, ignored), (1, 99));

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
