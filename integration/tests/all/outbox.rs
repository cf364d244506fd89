//! The outbox relay: several relays on one database, a row the broker refuses for good,
//! and a relay that dies between publishing and marking.

use std::collections::HashMap;
use std::time::Duration;

use paygate_common::domain::MerchantId;
use paygate_common::kafka::headers;
use paygate_common::outbox::Relay;
use paygate_common::transactions;
use paygate_common::Settings;
use paygate_testkit::{
    eventually, plain_deposit, pool, read_topic, route_everything_to_simulator, settings,
    start_simulator, Running, WebhookReceiver,
};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

fn relay(settings: &Settings, pool: &PgPool) -> Relay {
    Relay::new(pool.clone(), &settings.kafka, &settings.outbox).unwrap()
}

/// The status topic the rows go to, and a merchant for their transactions.
async fn status_topic_and_merchant(settings: &Settings, pool: &PgPool) -> MerchantId {
    paygate_common::kafka::ensure_topics(
        &settings.kafka,
        &[settings.kafka.topics.transactions_status.as_str()],
    )
    .await
    .unwrap();
    paygate_api::merchants::create(pool, &paygate_testkit::keys(), "m", None, None)
        .await
        .unwrap()
        .id
}

/// A bare transaction row for events to hang on.
async fn bare_transaction(pool: &PgPool, merchant: &MerchantId, id: &str) {
    sqlx::query(
        "INSERT INTO transaction (id, merchant_id, kind, status, amount, currency, user_id)
         VALUES ($1, $2, 'deposit', 'pending', 1, 'USD', 'u')",
    )
    .bind(id)
    .bind(merchant.as_str())
    .execute(pool)
    .await
    .unwrap();
}

/// Appends a status event (`transactions_status`) for `transaction` at `version`.
async fn status_event(
    conn: impl sqlx::PgExecutor<'_>,
    transaction: &str,
    version: i32,
    payload: &[u8],
) -> String {
    let id = format!("evt_{transaction}_{version}");
    sqlx::query(
        "INSERT INTO transaction_event (id, transaction_id, version, event_type, status, destination, payload)
         VALUES ($1, $2, $3, 'transaction.processing', 'processing', 'transactions_status', $4)",
    )
    .bind(&id)
    .bind(transaction)
    .bind(version)
    .bind(payload)
    .execute(conn)
    .await
    .unwrap();
    id
}

async fn unpublished(pool: &PgPool) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM transaction_event WHERE published_at IS NULL AND set_aside_at IS NULL",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_relays_on_one_database_publish_every_row_once_and_each_transaction_in_order() {
    let mut settings = settings().await;
    // Small batches, so one transaction's rows are spread over many claims.
    settings.outbox.batch_size = 7;
    let pool = pool(&settings).await;
    let merchant = status_topic_and_merchant(&settings, &pool).await;
    let transactions: Vec<String> = (0..20).map(|i| format!("txn_order_{i}")).collect();
    for id in &transactions {
        bare_transaction(&pool, &merchant, id).await;
    }

    let shutdown = CancellationToken::new();
    let relays = [relay(&settings, &pool), relay(&settings, &pool)]
        .map(|relay| tokio::spawn(relay.run(shutdown.clone())));

    // Events arrive while both relays run: each round commits one to three more
    // versions of every transaction at once, so rows of one transaction wait together.
    let mut version_of: HashMap<String, (String, i32)> = HashMap::new();
    let mut next = vec![1; transactions.len()];
    for round in 0..6 {
        let mut tx = pool.begin().await.unwrap();
        for (i, id) in transactions.iter().enumerate() {
            for _ in 0..=((round + i) % 3) {
                let event = status_event(&mut *tx, id, next[i], b"snapshot").await;
                version_of.insert(event, (id.clone(), next[i]));
                next[i] += 1;
            }
        }
        tx.commit().await.unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let total = version_of.len();
    eventually("every row published", Duration::from_secs(60), || async {
        (unpublished(&pool).await == 0).then_some(())
    })
    .await;
    shutdown.cancel();
    for relay in relays {
        relay.await.unwrap();
    }

    let relays_at_work: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT claimed_by) FROM transaction_event WHERE published_at IS NOT NULL",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(relays_at_work, 2, "both relays published rows");

    let messages = read_topic(
        &settings,
        &settings.kafka.topics.transactions_status,
        total,
        Duration::from_secs(8),
    )
    .await;
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut last_version: HashMap<String, i32> = HashMap::new();
    for message in &messages {
        let event = &message.headers[headers::EVENT_ID];
        *seen.entry(event.clone()).or_default() += 1;
        let (transaction, version) = &version_of[event];
        assert_eq!(&message.key, transaction);
        let last = last_version
            .insert(transaction.clone(), *version)
            .unwrap_or(0);
        assert!(
            *version > last,
            "{transaction}: version {version} published after version {last}"
        );
    }
    assert_eq!(seen.len(), total, "every row published");
    assert!(
        seen.values().all(|&n| n == 1),
        "no row published twice: {:?}",
        seen.iter().filter(|(_, &n)| n > 1).collect::<Vec<_>>()
    );
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_row_the_broker_refuses_for_good_is_set_aside_with_its_reason_and_the_rows_after_it_still_go_out(
) {
    let settings = settings().await;
    let pool = pool(&settings).await;
    let merchant = status_topic_and_merchant(&settings, &pool).await;
    for id in ["txn_before", "txn_poison", "txn_after"] {
        bare_transaction(&pool, &merchant, id).await;
    }
    let before = status_event(&pool, "txn_before", 1, b"fine").await;
    // Bigger than any message the producer may send (message.max.bytes, 1 MB).
    let poison = status_event(&pool, "txn_poison", 1, &vec![7u8; 2_000_000]).await;
    let after = status_event(&pool, "txn_after", 1, b"fine").await;
    let same_transaction_later = status_event(&pool, "txn_poison", 2, b"fine").await;

    let relay = relay(&settings, &pool);
    relay.drain().await.unwrap();

    let (set_aside, reason): (bool, Option<String>) = sqlx::query_as(
        "SELECT set_aside_at IS NOT NULL, set_aside_reason FROM transaction_event WHERE id = $1",
    )
    .bind(&poison)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(set_aside, "the poison row is set aside");
    let reason = reason.unwrap_or_default();
    assert!(
        reason.to_lowercase().contains("too large"),
        "the reason says why: {reason}"
    );
    assert_eq!(relay.set_aside_count(), 1, "and it is counted");
    assert_eq!(unpublished(&pool).await, 0, "nothing else waits");

    let messages = read_topic(
        &settings,
        &settings.kafka.topics.transactions_status,
        3,
        Duration::from_secs(8),
    )
    .await;
    let mut published: Vec<&str> = messages
        .iter()
        .map(|m| m.headers[headers::EVENT_ID].as_str())
        .collect();
    published.sort_unstable();
    let mut expected = vec![
        before.as_str(),
        after.as_str(),
        same_transaction_later.as_str(),
    ];
    expected.sort_unstable();
    assert_eq!(published, expected, "every other row went out, once");
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_relay_killed_between_publish_and_mark_is_published_again_and_the_payment_takes_effect_once(
) {
    let mut settings = settings().await;
    // A short claim, so the dead relay's row is taken over within seconds.
    settings.kafka.message_timeout_ms = 3_000;
    settings.outbox.lease_ms = 4_000;
    let pool = pool(&settings).await;
    let stop = CancellationToken::new();
    let simulator = start_simulator(stop.clone(), Duration::ZERO).await;
    route_everything_to_simulator(&pool, &simulator).await;
    let webhooks = WebhookReceiver::start().await;
    let merchant = paygate_api::merchants::create(
        &pool,
        &paygate_testkit::keys(),
        "m",
        Some(&webhooks.url),
        None,
    )
    .await
    .unwrap();

    // The api (and its relay) is built, not yet running: nothing else claims the row.
    let api = paygate_api::Application::build(settings.clone())
        .await
        .unwrap();
    settings.api.public_url = format!("http://127.0.0.1:{}", api.port());
    let mut tx = pool.begin().await.unwrap();
    let payment = transactions::create(&mut tx, plain_deposit(&merchant.id, "12.00", "u-1"))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let id = payment.id.to_string();

    // A relay claims the row and the broker acknowledges it; then the relay dies.
    let dying = relay(&settings, &pool);
    let claimed = dying.claim().await.unwrap();
    assert_eq!(claimed.len(), 1);
    let event = claimed[0].id.clone();
    let published = dying.publish(&claimed).await;
    assert_eq!(published.acknowledged, vec![claimed[0].seq]);
    drop(dying);
    let still_unpublished: bool = sqlx::query_scalar(
        "SELECT published_at IS NULL AND claimed_until > now() FROM transaction_event WHERE id = $1",
    )
    .bind(&event)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(
        still_unpublished,
        "the row is claimed, published, not marked"
    );

    let mut services = vec![Running::spawn(|s| api.run(s))];
    let app = paygate_payment_processor::Application::build(settings.clone())
        .await
        .unwrap();
    services.push(Running::spawn(|s| app.run(s)));
    let app = paygate_callback_processor::Application::build(settings.clone())
        .await
        .unwrap();
    services.push(Running::spawn(|s| app.run(s)));
    let app = paygate_callback_dispatcher::Application::build(settings.clone())
        .await
        .unwrap();
    services.push(Running::spawn(|s| app.run(s)));

    eventually(
        "the claim to run out and the row to be published again",
        Duration::from_secs(60),
        || async {
            let published: bool = sqlx::query_scalar(
                "SELECT published_at IS NOT NULL FROM transaction_event WHERE id = $1",
            )
            .bind(&event)
            .fetch_one(&pool)
            .await
            .unwrap();
            published.then_some(())
        },
    )
    .await;
    let copies = read_topic(
        &settings,
        &settings.kafka.topics.payments_requested,
        2,
        Duration::from_secs(8),
    )
    .await
    .iter()
    .filter(|m| m.headers[headers::EVENT_ID] == event)
    .count();
    assert_eq!(copies, 2, "the event went out twice (at least once)");

    eventually("the completed webhook", Duration::from_secs(60), || async {
        webhooks
            .received()
            .iter()
            .any(|w| w.json()["type"] == "transaction.completed")
            .then_some(())
    })
    .await;
    // Time for the duplicate to pass through every consumer.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let charges =
        paygate_testkit::json_of(reqwest::Client::new().get(format!("{simulator}/charges/{id}")))
            .await["charges"]
            .as_u64()
            .unwrap();
    assert_eq!(charges, 1, "charged once");
    let versions: Vec<i32> = sqlx::query_scalar(
        "SELECT version FROM transaction_event WHERE transaction_id = $1 AND version IS NOT NULL ORDER BY seq",
    )
    .bind(&id)
    .fetch_all(&pool)
    .await
    .unwrap();
    let expected: Vec<i32> = (1..=i32::try_from(versions.len()).unwrap()).collect();
    assert_eq!(versions, expected, "one history, no step taken twice");
    let mut kinds: Vec<String> = webhooks
        .received()
        .iter()
        .map(|w| w.json()["type"].as_str().unwrap().to_owned())
        .collect();
    kinds.sort();
    assert_eq!(
        kinds,
        ["transaction.completed", "transaction.processing"],
        "the merchant heard of each status once"
    );
    for service in services.into_iter().rev() {
        service.stop().await.unwrap();
    }
    stop.cancel();
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_bookkeeping_that_is_redone_anyway_commits_without_waiting_for_the_flush() {
    let settings = settings().await;
    let pool = pool(&settings).await;
    let show = |pool: sqlx::PgPool| async move {
        sqlx::query_scalar::<_, String>("SHOW synchronous_commit")
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    // Payments, statuses, callbacks and deliveries: flushed before anyone is told.
    assert_eq!(show(pool.clone()).await, "on");
    // A relay's claims and marks, the dispatcher's attempts: redone after a crash.
    let unflushed = paygate_common::db::connect_unflushed(&settings.database, 1)
        .await
        .unwrap();
    assert_eq!(show(unflushed).await, "off");
}
