//! All four service binaries under a steady stream of payments, each stopped with
//! SIGTERM in turn and started again, as a rolling deployment does: each exits 0, and
//! every payment ends final, charged once, with one transaction per request and one
//! webhook per status.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use paygate_testkit::{binary, eventually, Process, Service, Suite, SuiteOptions};
use tokio_util::sync::CancellationToken;

const SERVICES: [&str; 4] = [
    "paygate-api",
    "paygate-payment-processor",
    "paygate-callback-processor",
    "paygate-callback-dispatcher",
];

/// Sends deposits until `stop`, each retried with its own `Idempotency-Key` until the
/// api accepts it (it may be restarting); returns the accepted transaction ids.
async fn send_until(suite: Arc<Suite>, stop: CancellationToken) -> Vec<String> {
    let mut accepted = Vec::new();
    let mut n = 0;
    while !stop.is_cancelled() {
        n += 1;
        let key = format!("load-{n}");
        let id = loop {
            let sent = suite
                .post("/v1/deposits")
                .header("Idempotency-Key", &key)
                .json(
                    &serde_json::json!({"user_id": "user-1", "amount": "3.00", "currency": "USD"}),
                )
                .timeout(Duration::from_secs(10))
                .send()
                .await;
            if let Ok(response) = sent {
                if response.status() == 202 {
                    let body: serde_json::Value = response.json().await.unwrap();
                    break body["id"].as_str().unwrap().to_owned();
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        accepted.push(id);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    accepted
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_service_stopped_with_sigterm_under_load_exits_zero_and_no_payment_is_lost_or_doubled()
{
    let suite = Arc::new(
        Suite::start_with(SuiteOptions {
            external: vec![
                Service::Api,
                Service::PaymentProcessor,
                Service::CallbackProcessor,
                Service::CallbackDispatcher,
            ],
            gateway_answer_delay: Duration::from_millis(100),
            ..SuiteOptions::default()
        })
        .await,
    );
    let env = suite.env();
    let mut running: HashMap<&str, Process> = SERVICES
        .into_iter()
        .map(|name| (name, Process::spawn(&binary(name), &env)))
        .collect();

    let stop = CancellationToken::new();
    let load = tokio::spawn(send_until(suite.clone(), stop.clone()));
    for name in SERVICES {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let process = running.remove(name).unwrap();
        let started = tokio::time::Instant::now();
        let status = process.terminate_with_status().await;
        assert!(status.success(), "{name} exits 0 on SIGTERM, not {status}");
        let grace = Duration::from_millis(suite.settings.shutdown.grace_period_ms);
        assert!(
            started.elapsed() < grace,
            "{name} drained within its grace period"
        );
        running.insert(name, Process::spawn(&binary(name), &env));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.cancel();
    let accepted = load.await.unwrap();
    // About ten a second on a quiet machine; far fewer when the machine is busy, but a
    // stream all the same (one every 100 ms, each retried until accepted).
    assert!(accepted.len() >= 8, "payments flowed: {}", accepted.len());

    eventually(
        "every payment to end final",
        Duration::from_secs(120),
        || async {
            let statuses = suite.statuses().await;
            statuses
                .iter()
                .all(|(_, s)| s == "completed" || s == "failed")
                .then_some(())
        },
    )
    .await;
    let statuses = suite.statuses().await;
    let distinct: HashSet<&String> = accepted.iter().collect();
    assert_eq!(distinct.len(), accepted.len(), "each request accepted once");
    assert_eq!(
        statuses.len(),
        accepted.len(),
        "one transaction per request"
    );
    for id in &accepted {
        assert_eq!(suite.charges(id).await, 1, "{id} charged exactly once");
    }
    let final_webhooks = eventually(
        "a final webhook for every payment",
        Duration::from_secs(60),
        || async {
            let finals: Vec<String> = suite
                .webhooks
                .received()
                .iter()
                .map(|w| w.json())
                .filter(|w| {
                    w["type"] == "transaction.completed" || w["type"] == "transaction.failed"
                })
                .map(|w| w["data"]["id"].as_str().unwrap().to_owned())
                .collect();
            (finals.len() >= accepted.len()).then_some(finals)
        },
    )
    .await;
    let mut ids = final_webhooks.clone();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), final_webhooks.len(), "no final webhook twice");

    for (name, process) in running {
        assert!(process.terminate().await, "{name} exits 0 on SIGTERM");
    }
    if let Ok(suite) = Arc::try_unwrap(suite) {
        suite.stop().await;
    }
}
