//! The broker crashes (SIGKILL) while payments arrive and comes back on the same data.
//!
//! The outage outlasts the producers' message timeout, so the relays' deliveries time
//! out while it is down: librdkafka's idempotent producer then bumps its epoch, which
//! tansu cannot take (see `common/src/store/outbox.rs`), and the relays must renew their
//! producers for anything to be published after the broker returns.

use std::time::Duration;

use paygate_testkit::{eventually, Broker, Suite, SuiteOptions};

/// The producers' message timeout in this test; the broker stays away twice as long.
const PRODUCE_TIMEOUT: Duration = Duration::from_secs(3);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn intake_keeps_accepting_while_the_broker_is_down_and_every_payment_completes_when_it_returns(
) {
    let mut broker = Broker::start().await;
    let suite = Suite::start_with(SuiteOptions {
        brokers: Some(broker.address.clone()),
        tweak: Some(|s| {
            s.kafka.message_timeout_ms = PRODUCE_TIMEOUT.as_millis() as u32;
            s.outbox.lease_ms = 5_000;
        }),
        ..SuiteOptions::default()
    })
    .await;
    let before = suite.deposit("5.00").await;
    eventually(
        "the first payment to complete",
        Duration::from_secs(60),
        || async {
            suite
                .statuses()
                .await
                .iter()
                .all(|(_, s)| s == "completed")
                .then_some(())
        },
    )
    .await;

    broker.kill().await;
    let killed = tokio::time::Instant::now();
    let mut during = Vec::new();
    for _ in 0..5 {
        during.push(suite.deposit("6.00").await);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let unpublished: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM transaction_event WHERE published_at IS NULL AND transaction_id = ANY($1)",
    )
    .bind(&during)
    .fetch_one(&suite.pool)
    .await
    .unwrap();
    assert_eq!(
        unpublished, 5,
        "the events wait in the outbox while the broker is down"
    );
    let readyz = format!("{}/readyz", suite.endpoint("api"));
    let unready: serde_json::Value = eventually(
        "the api to report the broker unreachable",
        Duration::from_secs(20),
        || async {
            let response = suite.http.get(&readyz).send().await.unwrap();
            (response.status() == 503).then_some(())?;
            response.json().await.ok()
        },
    )
    .await;
    assert_eq!(
        unready["error"]["message"], "not ready: broker",
        "only the broker is away: {unready}"
    );

    tokio::time::sleep_until(killed + 2 * PRODUCE_TIMEOUT).await;
    broker.restart().await;
    eventually(
        "the api to be ready again",
        Duration::from_secs(30),
        || async {
            let response = suite.http.get(&readyz).send().await.unwrap();
            (response.status() == 200).then_some(())
        },
    )
    .await;
    eventually(
        "every payment to complete",
        Duration::from_secs(90),
        || async {
            let statuses = suite.statuses().await;
            (statuses.len() == 6 && statuses.iter().all(|(_, s)| s == "completed")).then_some(())
        },
    )
    .await;
    for id in during.iter().chain([&before]) {
        assert_eq!(suite.charges(id).await, 1, "{id} charged exactly once");
    }
    eventually(
        "a completed webhook for every payment",
        Duration::from_secs(30),
        || async {
            let completed = suite
                .webhooks
                .received()
                .iter()
                .filter(|w| w.json()["type"] == "transaction.completed")
                .count();
            (completed >= 6).then_some(())
        },
    )
    .await;
    suite.stop().await;
}
