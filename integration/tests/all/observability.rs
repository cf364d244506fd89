//! What an operator watches: `/metrics` of every service moving with a payment, and
//! `/readyz` following what a service depends on.
//!
//! Services started in one process share one metrics recorder, so these tests assert
//! on labels only their run has (their own topic names) or on a change they caused.

use std::time::Duration;

use paygate_common::metrics::scrape::sample;
use paygate_testkit::{eventually, Suite, SuiteOptions, TcpRelay};
use reqwest::StatusCode;
use secrecy::{ExposeSecret as _, SecretString};
use serde_json::Value;

async fn metrics_of(suite: &Suite, service: &str) -> String {
    let response = suite
        .http
        .get(format!("{}/metrics", suite.metrics_endpoint(service)))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "{service} serves /metrics"
    );
    response.text().await.unwrap()
}

/// A sample's value, 0 when the series does not exist yet.
fn value(page: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    sample(page, name, labels).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_service_serves_metrics_and_a_payment_moves_its_counters() {
    let suite = Suite::start_with(SuiteOptions {
        tweak: Some(|settings| settings.kafka.statistics_interval_ms = 300),
        ..SuiteOptions::default()
    })
    .await;
    let topics = suite.settings.kafka.topics.clone();
    let before = metrics_of(&suite, "api").await;
    let counted = |page: &str, name: &str, labels: &[(&str, &str)]| {
        value(page, name, labels) - value(&before, name, labels)
    };

    let id = suite.deposit("12.00").await;
    eventually("the completed webhook", Duration::from_secs(60), || async {
        suite
            .webhooks
            .received()
            .iter()
            .any(|w| {
                w.json()["data"]["id"] == id.as_str() && w.json()["type"] == "transaction.completed"
            })
            .then_some(())
    })
    .await;

    // Each service renders its own page; in this process they show the same recorder.
    for service in [
        "api",
        "payment-processor",
        "callback-processor",
        "callback-dispatcher",
    ] {
        let page = metrics_of(&suite, service).await;
        assert!(page.contains("# TYPE"), "{service}: {page}");
    }
    let page = eventually(
        "the webhook attempt and the consumer lag to be recorded",
        Duration::from_secs(30),
        || async {
            let page = metrics_of(&suite, "callback-dispatcher").await;
            // Reported once a partition has a committed offset (committed every second).
            let lag = [
                &topics.payments_requested,
                &topics.gateway_callbacks,
                &topics.transactions_status,
            ]
            .iter()
            .all(|topic| sample(&page, "paygate_consumer_lag", &[("topic", topic)]).is_some());
            let delivered = counted(
                &page,
                "paygate_webhook_attempts_total",
                &[("outcome", "delivered")],
            );
            (lag && delivered >= 1.0).then_some(page)
        },
    )
    .await;

    for topic in [
        &topics.payments_requested,
        &topics.gateway_callbacks,
        &topics.transactions_status,
    ] {
        assert!(
            value(&page, "paygate_messages_handled_total", &[("topic", topic)]) >= 1.0,
            "a message of {topic} handled:\n{page}"
        );
        assert!(
            sample(&page, "paygate_consumer_lag", &[("topic", topic)]).is_some(),
            "lag of {topic} reported:\n{page}"
        );
    }
    let deposits = [("route", "/v1/deposits"), ("status", "202")];
    assert!(
        counted(
            &page,
            "paygate_http_request_duration_seconds_count",
            &deposits
        ) >= 1.0
    );
    let callbacks = [("route", "/v1/callbacks/{gateway}")];
    assert!(
        counted(
            &page,
            "paygate_http_request_duration_seconds_count",
            &callbacks
        ) >= 1.0,
        "the gateway's callback reached the api:\n{page}"
    );
    let accepted = [("operation", "submit"), ("outcome", "accepted")];
    assert!(counted(&page, "paygate_gateway_calls_total", &accepted) >= 1.0);
    assert!(
        counted(
            &page,
            "paygate_gateway_call_duration_seconds_count",
            &[("operation", "submit")]
        ) >= 1.0
    );
    assert!(
        sample(&page, "paygate_circuit_state", &[]).is_some(),
        "{page}"
    );
    assert!(
        counted(&page, "paygate_outbox_published_total", &[]) >= 3.0,
        "requested, processing, completed"
    );
    assert!(counted(&page, "paygate_outbox_publish_duration_seconds_count", &[]) >= 1.0);
    assert!(
        sample(&page, "paygate_outbox_backlog", &[]).is_some(),
        "{page}"
    );
    assert!(
        counted(
            &page,
            "paygate_lock_wait_duration_seconds_count",
            &[("outcome", "acquired")]
        ) >= 1.0,
        "the processor took the lock (the callback-processor takes none: its row locks decide)"
    );
    assert!(value(&page, "paygate_consumer_assigned_partitions", &[]) >= 1.0);
    suite.stop().await;
}

async fn readiness(http: &reqwest::Client, url: &str) -> (StatusCode, Value) {
    let response = http.get(format!("{url}/readyz")).send().await.unwrap();
    (response.status(), response.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readiness_fails_naming_postgres_while_it_is_unreachable_and_recovers_when_it_returns() {
    // The callback-processor reaches PostgreSQL only through a relay this test controls;
    // the machine's shared PostgreSQL is never stopped.
    let suite = Suite::start_with(SuiteOptions {
        external: vec![paygate_testkit::Service::CallbackProcessor],
        ..SuiteOptions::default()
    })
    .await;
    let url = suite.settings.database.url.expose_secret().to_owned();
    let (server, database) = url.rsplit_once('/').unwrap();
    let address = server.rsplit_once('@').map_or(server, |(_, a)| a);
    let address = address.trim_start_matches("postgres://");
    let relay = TcpRelay::start(address).await;
    let mut settings = suite.settings.clone();
    settings.database.url = SecretString::from(format!(
        "{}{}:{}/{database}",
        server.strip_suffix(address).unwrap(),
        "127.0.0.1",
        relay.port
    ));
    let app = paygate_callback_processor::Application::build(settings)
        .await
        .unwrap();
    let health = format!("http://127.0.0.1:{}", app.port());
    let service = paygate_testkit::Running::spawn(|s| app.run(s));

    let (status, body) = readiness(&suite.http, &health).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for check in ["postgres", "broker", "consumer"] {
        assert_eq!(body["checks"][check], "ok", "{body}");
    }
    // It takes no Redis lock, so Redis is not what it needs to be ready.
    assert!(body["checks"].get("redis").is_none(), "{body}");

    relay.cut();
    let body = eventually("readiness to fail", Duration::from_secs(20), || async {
        let (status, body) = readiness(&suite.http, &health).await;
        (status == StatusCode::SERVICE_UNAVAILABLE).then_some(body)
    })
    .await;
    assert_eq!(body["failed"], serde_json::json!(["postgres"]), "{body}");
    for check in ["broker", "consumer"] {
        assert_eq!(
            body["checks"][check], "ok",
            "only PostgreSQL is away: {body}"
        );
    }

    relay.restore();
    eventually("readiness to return", Duration::from_secs(30), || async {
        let (status, _) = readiness(&suite.http, &health).await;
        (status == StatusCode::OK).then_some(())
    })
    .await;
    service.stop().await.unwrap();
    suite.stop().await;
}
