//! The callback-dispatcher binary, SIGKILLed while merchants' webhooks are going out.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use paygate_testkit::{eventually, Process, Service, Suite, SuiteOptions};

const BINARY: &str = env!("CARGO_BIN_EXE_paygate-callback-dispatcher");

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dispatcher_killed_mid_flow_still_delivers_every_webhook_under_one_id_per_event() {
    let suite = Suite::start_with(SuiteOptions {
        external: vec![Service::CallbackDispatcher],
        ..SuiteOptions::default()
    })
    .await;
    let dispatcher = Process::spawn(BINARY, &suite.env());

    let mut ids = Vec::new();
    for _ in 0..6 {
        ids.push(suite.deposit("20.00").await);
    }
    eventually("the first webhook", Duration::from_secs(60), || async {
        (!suite.webhooks.received().is_empty()).then_some(())
    })
    .await;
    dispatcher.kill().await;
    for _ in 0..6 {
        ids.push(suite.deposit("20.00").await);
    }
    eventually(
        "every payment to complete",
        Duration::from_secs(60),
        || async {
            let statuses = suite.statuses().await;
            (statuses.len() == ids.len() && statuses.iter().all(|(_, s)| s == "completed"))
                .then_some(())
        },
    )
    .await;

    let dispatcher = Process::spawn(BINARY, &suite.env());
    let expected: HashSet<(String, String)> = ids
        .iter()
        .flat_map(|id| {
            [
                (id.clone(), "transaction.processing".to_owned()),
                (id.clone(), "transaction.completed".to_owned()),
            ]
        })
        .collect();
    let received = eventually(
        "a webhook for every status change",
        Duration::from_secs(60),
        || async {
            let received = suite.webhooks.received();
            let seen: HashSet<(String, String)> = received
                .iter()
                .map(|w| {
                    let body = w.json();
                    (
                        body["data"]["id"].as_str().unwrap().to_owned(),
                        body["type"].as_str().unwrap().to_owned(),
                    )
                })
                .collect();
            (seen == expected).then_some(received)
        },
    )
    .await;

    // A webhook sent again after the crash carries the same webhook-id and body, so the
    // merchant can drop the copy; no event is announced under two ids.
    let mut bodies_by_id: HashMap<String, HashSet<String>> = HashMap::new();
    for webhook in &received {
        bodies_by_id
            .entry(webhook.header("webhook-id").to_owned())
            .or_default()
            .insert(webhook.body.clone());
    }
    assert_eq!(
        bodies_by_id.len(),
        expected.len(),
        "one webhook-id per status change"
    );
    assert!(bodies_by_id.values().all(|bodies| bodies.len() == 1));
    assert!(dispatcher.terminate().await, "exits cleanly on SIGTERM");
    suite.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dispatcher_killed_with_retries_pending_delivers_them_all_after_restart_each_attempt_sent_once(
) {
    let suite = Suite::start_with(SuiteOptions {
        external: vec![Service::CallbackDispatcher],
        ..SuiteOptions::default()
    })
    .await;
    let mut env = suite.env();
    env.push((
        "PAYGATE__CALLBACK_DISPATCHER__RETRY_DELAYS_MS".to_owned(),
        "1500,1500,1500,1500,1500,1500".to_owned(),
    ));
    suite
        .webhooks
        .answer_otherwise(reqwest::StatusCode::SERVICE_UNAVAILABLE);
    let dispatcher = Process::spawn(BINARY, &env);
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(suite.deposit("20.00").await);
    }
    // Every payment's first change has failed at least once and waits for its retry (its
    // second waits behind it, in order), and no send is in flight (each one the merchant
    // saw is recorded).
    let recorded = || async {
        let attempts: i64 = sqlx::query_scalar("SELECT count(*) FROM webhook_attempt")
            .fetch_one(&suite.pool)
            .await
            .unwrap();
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM webhook_delivery WHERE status = 'pending' AND attempt_count > 0",
        )
        .fetch_one(&suite.pool)
        .await
        .unwrap();
        (attempts, waiting)
    };
    eventually(
        "retries pending for every change",
        Duration::from_secs(60),
        || async {
            let (attempts, waiting) = recorded().await;
            let pending: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM webhook_delivery WHERE status = 'pending'",
            )
            .fetch_one(&suite.pool)
            .await
            .unwrap();
            (waiting == 4
                && pending == 8
                && usize::try_from(attempts).unwrap() == suite.webhooks.received().len())
            .then_some(())
        },
    )
    .await;
    dispatcher.kill().await;
    suite.webhooks.answer_otherwise(reqwest::StatusCode::OK);

    let dispatcher = Process::spawn(BINARY, &env);
    eventually(
        "every change delivered",
        Duration::from_secs(60),
        || async {
            let delivered: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM webhook_delivery WHERE status = 'delivered'",
            )
            .fetch_one(&suite.pool)
            .await
            .unwrap();
            (delivered == 8).then_some(())
        },
    )
    .await;
    let (attempts, _) = recorded().await;
    let received = suite.webhooks.received();
    assert_eq!(
        received.len(),
        usize::try_from(attempts).unwrap(),
        "every request the merchant saw is one recorded attempt: none sent twice"
    );
    let per_id: HashSet<String> = received
        .iter()
        .map(|w| w.header("webhook-id").to_owned())
        .collect();
    assert_eq!(per_id.len(), 8, "one webhook-id per status change");
    assert!(dispatcher.terminate().await, "exits cleanly on SIGTERM");
    suite.stop().await;
}
