//! A gateway that may have taken a payment is never bypassed for another one.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use paygate_common::gateway::{self, GatewayConfig, Route};
use paygate_testkit::{eventually, Process, Service, Suite, SuiteOptions, SIM_JSON_SECRET};
use tokio_util::sync::CancellationToken;

const BINARY: &str = env!("CARGO_BIN_EXE_paygate-payment-processor");

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_a_timeout_the_payment_is_settled_by_status_query_at_its_gateway_and_never_sent_to_a_second(
) {
    let suite = Suite::start_with(SuiteOptions {
        external: vec![Service::PaymentProcessor],
        ..SuiteOptions::default()
    })
    .await;
    // A second, healthy gateway behind the first one.
    let second = paygate_testkit::start_simulator(CancellationToken::new(), Duration::ZERO).await;
    let config = GatewayConfig {
        code: "backup".to_owned(),
        protocol: "json".to_owned(),
        base_url: format!("{second}/json"),
        callback_secret: SIM_JSON_SECRET.to_owned().into(),
        timeout_ms: 2_000,
        max_concurrency: 4,
        enabled: true,
        timings: paygate_common::gateway::Timings::default(),
    };
    gateway::upsert(&suite.pool, &paygate_testkit::keys(), &config)
        .await
        .unwrap();
    let route = Route {
        country: None,
        currency: None,
        kind: None,
        priority: 200,
        gateway_code: "backup".to_owned(),
    };
    gateway::upsert_route(&suite.pool, &route).await.unwrap();

    // .02: the first gateway takes the payment and answers after our 2 s timeout.
    let processor = Process::spawn(BINARY, &suite.env());
    let id = suite.deposit("50.02").await;
    eventually(
        "the first gateway to take it",
        Duration::from_secs(30),
        || async { (suite.charges(&id).await == 1).then_some(()) },
    )
    .await;
    // The timeout is ambiguous: the payment waits on the retry topic, then a status
    // query to the same gateway finds the charge and settles it.
    eventually(
        "the payment to complete",
        Duration::from_secs(60),
        || async {
            let (status, gateway): (String, Option<String>) =
                sqlx::query_as("SELECT status, gateway FROM transaction WHERE id = $1")
                    .bind(&id)
                    .fetch_one(&suite.pool)
                    .await
                    .unwrap();
            (status == "completed").then_some(gateway)
        },
    )
    .await
    .filter(|g| g == "simjson")
    .expect("settled at the gateway that took it");

    let backup: serde_json::Value =
        paygate_testkit::json_of(suite.http.get(format!("{second}/charges/{id}"))).await;
    assert_eq!(backup["charges"], 0, "the backup gateway was never asked");
    assert_eq!(
        suite.charges(&id).await,
        1,
        "asking the first gateway again charged nothing more"
    );
    processor.kill().await;
    suite.stop().await;
}
