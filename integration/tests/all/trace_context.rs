//! One payment's trace across the four service binaries: its Kafka messages carry a
//! W3C `traceparent` of the payment's trace, and each service's log lines about it
//! carry that `trace_id` and the `transaction_id`.

use std::time::Duration;

use paygate_testkit::{binary, eventually, read_topic, Process, Service, Suite, SuiteOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_payment_is_found_under_one_trace_id_in_the_logs_of_all_four_services() {
    let suite = Suite::start_with(SuiteOptions {
        external: vec![
            Service::Api,
            Service::PaymentProcessor,
            Service::CallbackProcessor,
            Service::CallbackDispatcher,
        ],
        ..SuiteOptions::default()
    })
    .await;
    let env = suite.env();
    let services: Vec<(&str, Process)> = [
        "paygate-api",
        "paygate-payment-processor",
        "paygate-callback-processor",
        "paygate-callback-dispatcher",
    ]
    .into_iter()
    .map(|name| (name, Process::spawn_logged(&binary(name), &env)))
    .collect();
    let readyz = format!("{}/readyz", suite.api_url);
    eventually("the api to be ready", Duration::from_secs(60), || async {
        let response = suite.http.get(&readyz).send().await.ok()?;
        (response.status() == 200).then_some(())
    })
    .await;

    let id = suite.deposit("7.00").await;
    let trace_id = id.strip_prefix("txn_").unwrap().to_owned();
    eventually("the completed webhook", Duration::from_secs(60), || async {
        suite
            .webhooks
            .received()
            .iter()
            .any(|w| w.json()["type"] == "transaction.completed")
            .then_some(())
    })
    .await;

    let requested = read_topic(
        &suite.settings,
        &suite.settings.kafka.topics.payments_requested,
        1,
        Duration::from_secs(10),
    )
    .await;
    let traceparent = requested[0]
        .headers
        .get("traceparent")
        .cloned()
        .unwrap_or_default();
    assert!(
        traceparent.starts_with(&format!("00-{trace_id}-")),
        "the Kafka message carries the payment's trace: {traceparent:?}"
    );

    let field = format!("\"trace_id\":\"{trace_id}\"");
    let transaction = format!("\"transaction_id\":\"{id}\"");
    for (name, process) in &services {
        let logs = eventually(
            "the service to log the payment",
            Duration::from_secs(10),
            || async {
                let logs = process.logs();
                logs.contains(&field).then_some(logs)
            },
        )
        .await;
        let line = logs.lines().find(|l| l.contains(&field)).unwrap();
        assert!(
            line.contains(&transaction),
            "{name} logs the transaction id beside the trace id: {line}"
        );
    }
    for (_, process) in services {
        assert!(process.terminate().await);
    }
    suite.stop().await;
}
