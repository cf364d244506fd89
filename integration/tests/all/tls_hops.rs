//! The hops to PostgreSQL and Redis can be encrypted and authenticated: against
//! servers of the test's own that take TLS only, with certificates made in the test,
//! `verify-full` connects (and the connection is TLS, as the server reports it), a
//! server whose certificate another CA issued is refused, and Redis demanding a client
//! certificate gets the configured one. Kafka likewise, through a TLS front put before
//! a broker of the test's own (tansu speaks no TLS itself) that advertises the front.
//! (SASL is passed to librdkafka as configured; no local broker speaks it.)

use std::time::Duration;

use paygate_common::kafka::Producer;
use paygate_common::{db, redis_connection};
use paygate_testkit::{eventually, Broker, PrivatePostgres, Running, TestPki, TlsFront, TlsRedis};
use reqwest::StatusCode;

fn path(p: &std::path::Path) -> String {
    p.to_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_is_reached_over_verified_tls_and_a_server_from_another_ca_is_refused() {
    let pki = TestPki::new();
    let postgres = PrivatePostgres::start_with_tls(&pki).await;
    let mut settings = paygate_testkit::settings_on(&postgres.admin_url).await;
    settings.database.tls.mode = "verify-full".to_owned();
    settings.database.tls.ca_file = path(&pki.ca);

    let pool = db::connect(&settings.database).await.unwrap();
    let (ssl, version): (bool, String) =
        sqlx::query_as("SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(ssl, "the connection is not TLS");
    assert!(version.starts_with("TLSv1."), "{version}");
    pool.close().await;

    // The server takes nothing in clear, and a certificate from another CA is refused.
    let mut clear = settings.database.clone();
    clear.tls.mode = "disable".to_owned();
    clear.migrate_on_start = false;
    assert!(
        db::connect(&clear).await.is_err(),
        "a connection in clear was taken"
    );
    let mut stranger = settings.database.clone();
    stranger.tls.ca_file = path(&pki.stranger_ca());
    stranger.migrate_on_start = false;
    let refused = db::connect(&stranger).await.unwrap_err();
    assert!(
        format!("{refused:#}")
            .to_lowercase()
            .contains("certificate"),
        "{refused:#}"
    );

    // A whole service runs on it: the api answers ready over the TLS connection.
    let app = paygate_api::Application::build(settings).await.unwrap();
    let url = format!("http://127.0.0.1:{}/readyz", app.port());
    let running = Running::spawn(|s| app.run(s));
    let ready = reqwest::get(&url).await.unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_is_reached_over_verified_tls_with_the_configured_client_certificate() {
    let pki = TestPki::new();
    let redis = TlsRedis::start(&pki).await;
    let mut settings = paygate_testkit::settings().await;
    settings.redis.url = redis.url.clone().into();
    settings.redis.command_timeout_ms = 2000;
    settings.redis.tls.ca_file = path(&pki.ca);
    settings.redis.tls.client_cert_file = path(&pki.client_cert);
    settings.redis.tls.client_key_file = path(&pki.client_key);

    let mut connection = redis_connection::connect(&settings.redis).await.unwrap();
    let _: () = redis::cmd("SET")
        .arg("paygate-tls-test")
        .arg("sealed")
        .query_async(&mut connection)
        .await
        .unwrap();
    let read: String = redis::cmd("GET")
        .arg("paygate-tls-test")
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!(read, "sealed");

    // Without the client certificate, or trusting another CA, no connection.
    let mut anonymous = settings.redis.clone();
    anonymous.command_timeout_ms = 500;
    anonymous.tls.client_cert_file = String::new();
    anonymous.tls.client_key_file = String::new();
    let refused = tokio::time::timeout(Duration::from_secs(10), async {
        match redis_connection::connect(&anonymous).await {
            Ok(mut connection) => redis::cmd("PING")
                .query_async::<String>(&mut connection)
                .await
                .is_err(),
            Err(_) => true,
        }
    })
    .await
    .unwrap_or(true);
    assert!(refused, "Redis took a client without a certificate");
    let mut stranger = settings.redis.clone();
    stranger.tls.ca_file = path(&pki.stranger_ca());
    stranger.command_timeout_ms = 500;
    assert!(redis_connection::connect(&stranger).await.is_err());

    // A whole service runs on it: the api's rate limits, CVV vault and readiness.
    let app = paygate_api::Application::build(settings).await.unwrap();
    let url = format!("http://127.0.0.1:{}/readyz", app.port());
    let running = Running::spawn(|s| app.run(s));
    let ready: serde_json::Value = reqwest::get(&url).await.unwrap().json().await.unwrap();
    assert_eq!(ready["checks"]["redis"], "ok", "{ready}");
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_is_reached_over_verified_tls_and_a_broker_from_another_ca_is_refused() {
    let pki = TestPki::new();
    let (mut front, listener) = TlsFront::bind().await;
    let broker = Broker::start_advertising(Some(front.port)).await;
    front.relay_to(listener, &pki, &broker.address);
    let mut settings = paygate_testkit::settings().await;
    settings.kafka.brokers = format!("127.0.0.1:{}", front.port);
    settings.kafka.security_protocol = "ssl".to_owned();
    settings.kafka.tls.ca_file = path(&pki.ca);

    // The api over TLS: it creates the topics and publishes a deposit's event.
    let pool = paygate_testkit::pool(&settings).await;
    let app = paygate_api::Application::build(settings.clone())
        .await
        .unwrap();
    let url = format!("http://127.0.0.1:{}", app.port());
    let running = Running::spawn(|s| app.run(s));
    let merchant = paygate_api::merchants::create(&pool, &paygate_testkit::keys(), "m", None, None)
        .await
        .unwrap();
    let accepted = reqwest::Client::new()
        .post(format!("{url}/v1/deposits"))
        .bearer_auth(&merchant.api_key)
        .json(&serde_json::json!({"user_id": "u", "amount": "5.00", "currency": "EUR"}))
        .send()
        .await
        .unwrap();
    assert_eq!(accepted.status(), StatusCode::ACCEPTED);
    eventually(
        "the deposit's event to be published over TLS",
        Duration::from_secs(30),
        || async {
            let unpublished: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM transaction_event WHERE published_at IS NULL",
            )
            .fetch_one(&pool)
            .await
            .unwrap();
            (unpublished == 0).then_some(())
        },
    )
    .await;
    running.stop().await.unwrap();

    // The same broker behind a certificate from a CA not trusted: nothing gets through.
    let topic = settings.kafka.topics.payments_requested.clone();
    let trusted = Producer::new(&settings.kafka).unwrap();
    trusted
        .reachable(&topic, Duration::from_secs(10))
        .await
        .unwrap();
    let mut stranger = settings.kafka.clone();
    stranger.tls.ca_file = path(&pki.stranger_ca());
    let refused = Producer::new(&stranger).unwrap();
    assert!(refused
        .reachable(&topic, Duration::from_secs(3))
        .await
        .is_err());
    let mut clear = settings.kafka.clone();
    clear.security_protocol = "plaintext".to_owned();
    let clear = Producer::new(&clear).unwrap();
    assert!(clear
        .reachable(&topic, Duration::from_secs(3))
        .await
        .is_err());
}
