//! The payment-processor binary, SIGKILLed while it is talking to a gateway.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use paygate_testkit::{eventually, Process, Service, Suite, SuiteOptions};

const BINARY: &str = env!("CARGO_BIN_EXE_paygate-payment-processor");

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_payment_processor_killed_mid_flow_loses_no_payment_and_charges_none_twice() {
    // A slow gateway: each payment is charged, then answered 150 ms later, so a kill
    // lands between the charge and our record of it; and one payment on the retry topic.
    let suite = Suite::start_with(SuiteOptions {
        external: vec![Service::PaymentProcessor],
        gateway_answer_delay: Duration::from_millis(150),
        ..SuiteOptions::default()
    })
    .await;
    let processor = Process::spawn(BINARY, &suite.env());

    // One payment whose gateway stalls: it is on the retry topic when the kill lands.
    let stalled = suite.deposit("10.07").await;
    let stalled_at = tokio::time::Instant::now();
    let mut ids = vec![stalled.clone()];
    for _ in 0..8 {
        ids.push(suite.deposit("10.00").await);
    }
    let first = ids[1].clone();
    eventually("the first charge", Duration::from_secs(60), || async {
        (suite.charges(&first).await == 1).then_some(())
    })
    .await;
    // Past the stalled payment's first timeout (2 s): it waits for a retry.
    tokio::time::sleep_until(stalled_at + Duration::from_millis(2_600)).await;
    processor.kill().await;

    // More payments arrive while it is dead.
    for _ in 0..8 {
        ids.push(suite.deposit("10.00").await);
    }
    let pending = suite
        .statuses()
        .await
        .iter()
        .filter(|(_, s)| s == "pending")
        .count();
    assert!(
        pending > 8,
        "the kill landed mid-flow ({pending} still pending)"
    );

    let processor = Process::spawn(BINARY, &suite.env());
    // The stalled gateway answers at last; its status query or callback settles it.
    let released = suite
        .http
        .post(format!("{}/control/release/{stalled}", suite.simulator_url))
        .send()
        .await
        .unwrap();
    assert!(released.status().is_success());
    eventually(
        "every payment to complete",
        Duration::from_secs(120),
        || async {
            let statuses = suite.statuses().await;
            statuses.iter().all(|(_, s)| s == "completed").then_some(())
        },
    )
    .await;
    assert_eq!(suite.statuses().await.len(), ids.len(), "no payment lost");
    for id in &ids {
        assert_eq!(suite.charges(id).await, 1, "{id} charged exactly once");
    }
    assert!(processor.terminate().await, "exits cleanly on SIGTERM");
    suite.stop().await;
}
