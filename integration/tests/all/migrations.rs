use paygate_common::db;
use secrecy::ExposeSecret as _;
use sqlx::postgres::PgPoolOptions;

#[tokio::test]
async fn migrations_apply_to_an_empty_database_and_a_second_run_changes_nothing() {
    let url = paygate_testkit::empty_database().await;
    let pool = PgPoolOptions::new().connect(&url).await.unwrap();

    db::migrate(&pool).await.unwrap();
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    for expected in [
        "api_key",
        "customer",
        "gateway",
        "gateway_callback",
        "gateway_route",
        "merchant",
        "transaction",
        "transaction_event",
        "webhook_attempt",
        "webhook_delivery",
    ] {
        assert!(
            tables.iter().any(|t| t == expected),
            "{expected} missing from {tables:?}"
        );
    }

    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations")
        .fetch_one(&pool)
        .await
        .unwrap();
    db::migrate(&pool).await.unwrap();
    let again: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(applied, again);
    assert!(applied >= 1);
}

#[tokio::test]
async fn the_schema_refuses_a_second_event_with_the_same_version() {
    let settings = paygate_testkit::settings().await;
    let pool = paygate_testkit::pool(&settings).await;
    let merchant = paygate_api::merchants::create(&pool, &paygate_testkit::keys(), "m", None, None)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO transaction (id, merchant_id, kind, status, amount, currency, user_id)
         VALUES ('txn_1', $1, 'deposit', 'pending', 1, 'USD', 'u')",
    )
    .bind(merchant.id.as_str())
    .execute(&pool)
    .await
    .unwrap();
    let insert = "INSERT INTO transaction_event (id, transaction_id, version, event_type, destination, payload)
                  VALUES ($1, 'txn_1', 1, 'transaction.created', 'payments_requested', '')";
    sqlx::query(insert)
        .bind("evt_a")
        .execute(&pool)
        .await
        .unwrap();
    let error = sqlx::query(insert)
        .bind("evt_b")
        .execute(&pool)
        .await
        .unwrap_err();
    assert_eq!(
        db::violated_constraint(&error),
        Some("transaction_event_version_unique")
    );
}

#[tokio::test]
async fn init_migrates_even_with_migrate_on_start_off_and_creates_every_topic_with_the_configured_partitions(
) {
    use rdkafka::consumer::{BaseConsumer, Consumer};

    let mut settings = paygate_testkit::settings().await;
    settings.database.migrate_on_start = false;
    let topics = paygate_common::init::run(&settings).await.unwrap();

    let pool = PgPoolOptions::new()
        .connect(settings.database.url.expose_secret())
        .await
        .unwrap();
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(applied >= 1, "no migration applied");

    let expected = paygate_common::kafka::all_topics(&settings.kafka.topics);
    assert_eq!(topics, expected);
    assert_eq!(
        expected.len(),
        10,
        "five topics (the settlement commands too) and their dead-letter topics"
    );
    let client: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &settings.kafka.brokers)
        .create()
        .unwrap();
    let partitions_of = |topic: &str| -> usize {
        let metadata = client
            .fetch_metadata(Some(topic), std::time::Duration::from_secs(10))
            .unwrap();
        metadata
            .topics()
            .iter()
            .filter(|t| t.name() == topic && t.error().is_none())
            .map(|t| t.partitions().len())
            .sum()
    };
    // The broker does not create a topic by being asked about it, so what follows counts
    // only what init created.
    assert_eq!(partitions_of(&paygate_testkit::unique("never-created-")), 0);
    for topic in &expected {
        let partitions = partitions_of(topic);
        assert_eq!(
            partitions, settings.kafka.partitions as usize,
            "topic {topic} has {partitions} partitions"
        );
    }

    // A second run (the next release's job) changes nothing and succeeds.
    paygate_common::init::run(&settings).await.unwrap();
}

#[tokio::test]
async fn the_endpoints_migration_makes_each_merchants_url_its_first_endpoint_with_its_health_and_deliveries(
) {
    const ENDPOINTS: i64 = 20261205000301;
    let url = paygate_testkit::empty_database().await;
    let pool = PgPoolOptions::new().connect(&url).await.unwrap();
    let before = sqlx::migrate::Migrator {
        migrations: std::borrow::Cow::Owned(
            db::MIGRATOR
                .migrations
                .iter()
                .filter(|m| m.version < ENDPOINTS)
                .cloned()
                .collect(),
        ),
        ..sqlx::migrate::Migrator::DEFAULT
    };
    before.run(&pool).await.unwrap();
    for statement in [
        "INSERT INTO merchant (id, name, webhook_url, webhook_secret, webhook_disabled_at, webhook_disabled_reason, webhook_probe_at)
         VALUES ('mer_a', 'a', 'https://a.example/hooks', 'sealed:v1:x', now(), 'the endpoint answered 410 Gone', now())",
        "INSERT INTO merchant (id, name, webhook_secret) VALUES ('mer_b', 'b', 'sealed:v1:y')",
        "INSERT INTO transaction (id, merchant_id, kind, status, amount, currency, user_id)
         VALUES ('txn_a', 'mer_a', 'deposit', 'processing', 1, 'USD', 'u')",
        "INSERT INTO webhook_delivery (id, event_id, merchant_id, transaction_id, version, event_type, url, body, status, next_attempt_at)
         VALUES ('whd_a', 'evt_a', 'mer_a', 'txn_a', 2, 'transaction.processing', 'https://a.example/hooks', '{}', 'pending', now())",
    ] {
        sqlx::query(statement).execute(&pool).await.unwrap();
    }
    db::migrate(&pool).await.unwrap();

    /// merchant, url, first, disabled, why, event types
    type Endpoint = (String, String, bool, bool, Option<String>, Vec<String>);
    let endpoints: Vec<Endpoint> = sqlx::query_as(
        "SELECT merchant_id, url, is_primary, disabled_at IS NOT NULL, disabled_reason, event_types
           FROM webhook_endpoint ORDER BY merchant_id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        endpoints,
        vec![(
            "mer_a".to_owned(),
            "https://a.example/hooks".to_owned(),
            true,
            true,
            Some("the endpoint answered 410 Gone".to_owned()),
            vec![],
        )],
        "a merchant's URL, with its health, became its first endpoint taking every type; no URL, no endpoint"
    );
    let delivery_endpoint: Option<String> = sqlx::query_scalar(
        "SELECT w.url FROM webhook_delivery d JOIN webhook_endpoint w ON w.id = d.endpoint_id WHERE d.id = 'whd_a'",
    )
    .fetch_optional(&pool)
    .await
    .unwrap();
    assert_eq!(
        delivery_endpoint.as_deref(),
        Some("https://a.example/hooks"),
        "what was pending waits at that endpoint"
    );
}
