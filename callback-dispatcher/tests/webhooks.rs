//! The webhook sender against real merchant endpoints over HTTP(S), on its own database:
//! retries on schedule, endpoint health (410, probe, re-enable), order per transaction,
//! isolation per endpoint, TLS, the egress guard, and two senders sharing the work;
//! a merchant's several endpoints (event filters, rate limits held across senders) and a
//! payment's own notification URL, fed through the recorder as the consumer would.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::StatusCode;
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use paygate_callback_dispatcher::limit::RateLimiter;
use paygate_callback_dispatcher::{http_client, Sender, StatusHandler};
use paygate_common::egress::GuardedResolver;
use paygate_common::events::proto;
use paygate_common::kafka::{headers, Batched, Handler as _, Inbound};
use paygate_common::signature::webhook;
use paygate_common::Settings;
use paygate_testkit::{eventually, keys, pool, settings, unique, Reply, WebhookReceiver};

/// A merchant's endpoint and deliveries on a fresh database, and senders to run on it.
struct Fixture {
    settings: Settings,
    pool: PgPool,
    stop: CancellationToken,
}

/// One delivery as the test stored it.
struct Stored {
    id: String,
    event_id: String,
}

impl Fixture {
    async fn new(tweak: impl FnOnce(&mut Settings)) -> Self {
        let mut settings = settings().await;
        tweak(&mut settings);
        let pool = pool(&settings).await;
        Fixture {
            settings,
            pool,
            stop: CancellationToken::new(),
        }
    }

    /// Starts a sender resolving names with the system resolver, guarded.
    async fn start_sender(&self) {
        let policy = self.settings.callback_dispatcher.egress_policy();
        self.start_sender_with(GuardedResolver::system(policy))
            .await;
    }

    async fn start_sender_with(&self, resolver: GuardedResolver) {
        let http = http_client(&self.settings, resolver).unwrap();
        let limiter = RateLimiter::new(&self.settings.redis);
        let sender = Sender::new(
            self.pool.clone(),
            &self.settings.callback_dispatcher,
            keys(),
            http,
            Arc::new(Notify::new()),
            limiter,
        );
        tokio::spawn(sender.run(self.stop.child_token()));
    }

    /// A merchant whose webhooks go to `url` (its first endpoint, which signs with the
    /// merchant's secret); returns its id and signing secret.
    async fn merchant(&self, url: &str) -> (String, String) {
        let id = format!("mer_{}", uuid::Uuid::now_v7().simple());
        let secret = webhook::generate_secret();
        sqlx::query("INSERT INTO merchant (id, name, webhook_secret) VALUES ($1, 'm', $2)")
            .bind(&id)
            .bind(keys().seal_secret(&secret).unwrap().as_stored())
            .execute(&self.pool)
            .await
            .unwrap();
        sqlx::query(
            "INSERT INTO webhook_endpoint (id, merchant_id, url, is_primary) VALUES ($1, $2, $3, true)",
        )
        .bind(unique("whe"))
        .bind(&id)
        .bind(url)
        .execute(&self.pool)
        .await
        .unwrap();
        (id, secret)
    }

    /// Another endpoint of `merchant`, taking `types` (none: all) at most `rate_limit`
    /// requests a second; returns its id.
    async fn endpoint(
        &self,
        merchant: &str,
        url: &str,
        types: &[&str],
        rate_limit: Option<i32>,
    ) -> String {
        let id = unique("whe");
        sqlx::query(
            "INSERT INTO webhook_endpoint (id, merchant_id, url, event_types, rate_limit)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&id)
        .bind(merchant)
        .bind(url)
        .bind(types)
        .bind(rate_limit)
        .execute(&self.pool)
        .await
        .unwrap();
        id
    }

    /// A payment of `merchant`, with nothing to deliver yet.
    async fn transaction(&self, merchant: &str) -> String {
        let id = format!("txn_{}", uuid::Uuid::now_v7().simple());
        sqlx::query(
            "INSERT INTO transaction (id, merchant_id, kind, status, amount, currency, user_id)
             VALUES ($1, $2, 'deposit', 'processing', 10, 'EUR', 'u1')",
        )
        .bind(&id)
        .bind(merchant)
        .execute(&self.pool)
        .await
        .unwrap();
        id
    }

    /// A due delivery of `version` of `transaction`, to `merchant`'s first endpoint.
    async fn delivery(&self, merchant: &str, transaction: &str, version: i32) -> Stored {
        let endpoint: String = sqlx::query_scalar(
            "SELECT id FROM webhook_endpoint WHERE merchant_id = $1 AND is_primary",
        )
        .bind(merchant)
        .fetch_one(&self.pool)
        .await
        .unwrap();
        self.delivery_to(&endpoint, transaction, version).await
    }

    /// A due delivery of `version` of `transaction`, to `endpoint`.
    async fn delivery_to(&self, endpoint: &str, transaction: &str, version: i32) -> Stored {
        let (id, event_id) = (unique("whd"), unique("evt"));
        let (merchant, url): (String, String) =
            sqlx::query_as("SELECT merchant_id, url FROM webhook_endpoint WHERE id = $1")
                .bind(endpoint)
                .fetch_one(&self.pool)
                .await
                .unwrap();
        let body = serde_json::json!({
            "id": event_id, "type": "transaction.processing", "created_at": "2026-11-28T00:00:00.000Z",
            "data": {"id": transaction, "version": version},
        })
        .to_string();
        sqlx::query(
            "INSERT INTO webhook_delivery
                 (id, event_id, merchant_id, endpoint_id, transaction_id, version, event_type, url, body, status, next_attempt_at)
             VALUES ($1, $2, $3, $8, $4, $5, 'transaction.processing', $6, $7, 'pending', now())",
        )
        .bind(&id)
        .bind(&event_id)
        .bind(&merchant)
        .bind(transaction)
        .bind(version)
        .bind(&url)
        .bind(&body)
        .bind(endpoint)
        .execute(&self.pool)
        .await
        .unwrap();
        Stored { id, event_id }
    }

    /// When `delivery` is due (as text, to compare exactly) and whether a sender holds
    /// its lease now.
    async fn due_and_leased(&self, delivery: &str) -> (String, bool) {
        sqlx::query_as(
            "SELECT next_attempt_at::text, coalesce(leased_until > now(), false)
               FROM webhook_delivery WHERE id = $1",
        )
        .bind(delivery)
        .fetch_one(&self.pool)
        .await
        .unwrap()
    }

    async fn status(&self, delivery: &str) -> (String, i32) {
        sqlx::query_as("SELECT status, attempt_count FROM webhook_delivery WHERE id = $1")
            .bind(delivery)
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    /// Every recorded attempt of `delivery`: (status code, error, probe), oldest first.
    async fn attempts(&self, delivery: &str) -> Vec<(Option<i32>, Option<String>, bool)> {
        sqlx::query_as(
            "SELECT status_code, error, probe FROM webhook_attempt WHERE delivery_id = $1 ORDER BY id",
        )
        .bind(delivery)
        .fetch_all(&self.pool)
        .await
        .unwrap()
    }

    async fn all_delivered(&self, deliveries: &[&Stored]) -> bool {
        for delivery in deliveries {
            if self.status(&delivery.id).await.0 != "delivered" {
                return false;
            }
        }
        true
    }

    async fn endpoint_disabled(&self, merchant: &str) -> bool {
        sqlx::query_scalar(
            "SELECT disabled_at IS NOT NULL FROM webhook_endpoint WHERE merchant_id = $1 AND is_primary",
        )
            .bind(merchant)
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The data.id and data.version of each webhook `receiver` got, in arrival order.
fn arrivals(receiver: &WebhookReceiver) -> Vec<(String, i64)> {
    receiver
        .received()
        .iter()
        .map(|w| {
            let body = w.json();
            (
                body["data"]["id"].as_str().unwrap().to_owned(),
                body["data"]["version"].as_i64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_failing_endpoint_is_retried_on_schedule_then_delivered_once_under_one_id() {
    let fixture = Fixture::new(|s| {
        // The longest delay (3 s) caps how long a Retry-After may postpone a retry.
        s.callback_dispatcher.retry_delays_ms = vec![300, 300, 300, 3000];
    })
    .await;
    let receiver = WebhookReceiver::scripted(vec![
        StatusCode::INTERNAL_SERVER_ERROR.into(),
        Reply::RetryAfter(StatusCode::SERVICE_UNAVAILABLE, "1".to_owned()),
        StatusCode::BAD_GATEWAY.into(),
    ])
    .await;
    let (merchant, secret) = fixture.merchant(&receiver.url).await;
    let transaction = fixture.transaction(&merchant).await;
    let delivery = fixture.delivery(&merchant, &transaction, 1).await;
    fixture.start_sender().await;

    eventually(
        "the delivery to succeed",
        Duration::from_secs(20),
        || async {
            (fixture.status(&delivery.id).await == ("delivered".to_owned(), 4)).then_some(())
        },
    )
    .await;
    let received = receiver.received();
    assert_eq!(received.len(), 4, "three failures and one success");
    for webhook in &received {
        assert_eq!(webhook.header("webhook-id"), delivery.event_id);
        assert!(
            webhook
                .header("traceparent")
                .contains(transaction.trim_start_matches("txn_")),
            "the merchant's request joins the payment's trace"
        );
        let timestamp: i64 = webhook.header("webhook-timestamp").parse().unwrap();
        assert!(webhook::verify(
            &secret,
            &delivery.event_id,
            timestamp,
            webhook.body.as_bytes(),
            webhook.header("webhook-signature")
        ));
    }
    let gaps: Vec<Duration> = received.windows(2).map(|w| w[1].at - w[0].at).collect();
    assert!(
        gaps[0] >= Duration::from_millis(240),
        "the first retry waits its delay (300 ms ± 20 %): {gaps:?}"
    );
    assert!(
        gaps[1] >= Duration::from_millis(1000),
        "Retry-After: 1 is honoured: {gaps:?}"
    );
    let codes: Vec<Option<i32>> = fixture
        .attempts(&delivery.id)
        .await
        .into_iter()
        .map(|(code, _, _)| code)
        .collect();
    assert_eq!(codes, [Some(500), Some(503), Some(502), Some(200)]);
}

/// A 2xx from an endpoint that was failing is not recorded with the plain 2xx answers
/// of its moment (`delivered.rs`): it goes through the full record, which makes the
/// endpoint healthy again, so a failure days later starts a new failing spell instead
/// of disabling it at once.
#[tokio::test]
async fn an_endpoint_that_answers_again_after_failing_is_healthy_once_more() {
    let fixture = Fixture::new(|s| {
        s.callback_dispatcher.retry_delays_ms = vec![200, 200];
    })
    .await;
    let receiver = WebhookReceiver::scripted(vec![StatusCode::INTERNAL_SERVER_ERROR.into()]).await;
    let (merchant, _) = fixture.merchant(&receiver.url).await;
    let transaction = fixture.transaction(&merchant).await;
    let delivery = fixture.delivery(&merchant, &transaction, 1).await;
    let failing = || async {
        sqlx::query_scalar::<_, bool>(
            "SELECT failing_since IS NOT NULL FROM webhook_endpoint WHERE merchant_id = $1 AND is_primary",
        )
        .bind(&merchant)
        .fetch_one(&fixture.pool)
        .await
        .unwrap()
    };
    fixture.start_sender().await;

    eventually(
        "the delivery to succeed on its retry",
        Duration::from_secs(20),
        || async {
            (fixture.status(&delivery.id).await == ("delivered".to_owned(), 2)).then_some(())
        },
    )
    .await;
    assert!(
        !failing().await,
        "the endpoint's failing spell ended with its 2xx"
    );
    assert!(!fixture.endpoint_disabled(&merchant).await);
}

#[tokio::test]
async fn a_gone_endpoint_is_disabled_then_probed_and_sent_what_it_missed_in_order() {
    let fixture = Fixture::new(|s| {
        s.callback_dispatcher.probe_interval_ms = 300;
    })
    .await;
    let receiver = WebhookReceiver::start().await;
    receiver.answer_otherwise(StatusCode::GONE);
    let (merchant, _) = fixture.merchant(&receiver.url).await;
    let mut deliveries = Vec::new();
    for _ in 0..3 {
        let transaction = fixture.transaction(&merchant).await;
        for version in 1..=3 {
            deliveries.push(fixture.delivery(&merchant, &transaction, version).await);
        }
    }
    fixture.start_sender().await;

    eventually(
        "the endpoint to be disabled",
        Duration::from_secs(10),
        || async { fixture.endpoint_disabled(&merchant).await.then_some(()) },
    )
    .await;
    // Probes go out, slowly, one at a time, and change nothing while it answers 410.
    eventually("a probe", Duration::from_secs(10), || async {
        let probes: i64 = sqlx::query_scalar("SELECT count(*) FROM webhook_attempt WHERE probe")
            .fetch_one(&fixture.pool)
            .await
            .unwrap();
        (probes >= 2).then_some(())
    })
    .await;
    assert!(fixture.endpoint_disabled(&merchant).await);
    let pending: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM webhook_delivery WHERE merchant_id = $1 AND status = 'pending'",
    )
    .bind(&merchant)
    .fetch_one(&fixture.pool)
    .await
    .unwrap();
    assert_eq!(pending, 9, "every delivery waits, visible, none spent");

    receiver.answer_otherwise(StatusCode::OK);
    let all: Vec<&Stored> = deliveries.iter().collect();
    eventually(
        "everything missed to arrive",
        Duration::from_secs(20),
        || async { fixture.all_delivered(&all).await.then_some(()) },
    )
    .await;
    assert!(
        !fixture.endpoint_disabled(&merchant).await,
        "re-enabled without an operator"
    );
    let mut last_version: HashMap<String, i64> = HashMap::new();
    for (transaction, version) in arrivals(&receiver) {
        let before = last_version
            .insert(transaction.clone(), version)
            .unwrap_or(0);
        assert!(
            version >= before,
            "{transaction} v{version} was sent after v{before}: order per transaction holds through probes"
        );
    }
}

#[tokio::test]
async fn a_slow_transaction_never_reorders_and_never_holds_up_another() {
    let fixture = Fixture::new(|s| {
        s.callback_dispatcher.retry_delays_ms = vec![400, 400, 400];
    })
    .await;
    let receiver = WebhookReceiver::start().await;
    let (merchant, _) = fixture.merchant(&receiver.url).await;
    let slow = fixture.transaction(&merchant).await;
    receiver.answer_matching(
        &format!("\"id\":\"{slow}\",\"version\":1"),
        vec![
            StatusCode::INTERNAL_SERVER_ERROR.into(),
            StatusCode::INTERNAL_SERVER_ERROR.into(),
        ],
    );
    let mut deliveries = vec![
        fixture.delivery(&merchant, &slow, 1).await,
        fixture.delivery(&merchant, &slow, 2).await,
    ];
    let mut others = Vec::new();
    for _ in 0..5 {
        let transaction = fixture.transaction(&merchant).await;
        deliveries.push(fixture.delivery(&merchant, &transaction, 1).await);
        deliveries.push(fixture.delivery(&merchant, &transaction, 2).await);
        others.push(transaction);
    }
    fixture.start_sender().await;

    let all: Vec<&Stored> = deliveries.iter().collect();
    eventually("every delivery", Duration::from_secs(20), || async {
        fixture.all_delivered(&all).await.then_some(())
    })
    .await;
    let order = arrivals(&receiver);
    let first_success_of_slow_v1 = order
        .iter()
        .rposition(|(t, v)| *t == slow && *v == 1)
        .unwrap();
    let first_slow_v2 = order
        .iter()
        .position(|(t, v)| *t == slow && *v == 2)
        .unwrap();
    assert!(
        first_slow_v2 > first_success_of_slow_v1,
        "v2 waits until v1 is delivered: {order:?}"
    );
    assert_eq!(
        order.iter().filter(|(t, v)| *t == slow && *v == 2).count(),
        1,
        "v2 is sent once, after v1"
    );
    for transaction in &others {
        let v1 = order
            .iter()
            .position(|(t, v)| t == transaction && *v == 1)
            .unwrap();
        let v2 = order
            .iter()
            .position(|(t, v)| t == transaction && *v == 2)
            .unwrap();
        assert!(v1 < v2, "{transaction}: v1 before v2");
        assert!(
            v2 < first_success_of_slow_v1,
            "{transaction} was not held up by the slow one: {order:?}"
        );
    }
}

#[tokio::test]
async fn a_hanging_endpoint_costs_only_its_own_deliveries() {
    let fixture = Fixture::new(|s| {
        s.callback_dispatcher.request_timeout_ms = 3_000;
        s.callback_dispatcher.endpoint_concurrency = 2;
    })
    .await;
    let hanging = WebhookReceiver::start().await;
    hanging.answer_otherwise(Reply::Hang(Duration::from_secs(30)));
    let prompt = WebhookReceiver::start().await;
    let (slow_merchant, _) = fixture.merchant(&hanging.url).await;
    let (merchant, _) = fixture.merchant(&prompt.url).await;
    let mut slow = Vec::new();
    let mut fast = Vec::new();
    for _ in 0..6 {
        let transaction = fixture.transaction(&slow_merchant).await;
        slow.push(fixture.delivery(&slow_merchant, &transaction, 1).await);
    }
    fixture.start_sender().await;
    eventually(
        "the hanging endpoint to be called",
        Duration::from_secs(5),
        || async { (hanging.received().len() == 2).then_some(()) },
    )
    .await;
    for _ in 0..6 {
        let transaction = fixture.transaction(&merchant).await;
        fast.push(fixture.delivery(&merchant, &transaction, 1).await);
    }
    let fast_refs: Vec<&Stored> = fast.iter().collect();
    eventually(
        "the prompt endpoint's deliveries",
        Duration::from_secs(10),
        || async { fixture.all_delivered(&fast_refs).await.then_some(()) },
    )
    .await;
    let recorded: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM webhook_attempt a JOIN webhook_delivery d ON d.id = a.delivery_id
          WHERE d.merchant_id = $1",
    )
    .bind(&slow_merchant)
    .fetch_one(&fixture.pool)
    .await
    .unwrap();
    assert_eq!(
        recorded, 0,
        "the prompt merchant was served while the hanging one's first attempts were still waiting"
    );
    assert_eq!(
        hanging.received().len(),
        2,
        "at most endpoint_concurrency sends hang at once"
    );
    eventually(
        "the hanging attempts to time out",
        Duration::from_secs(10),
        || async {
            let timed_out: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM webhook_attempt WHERE error = 'timed out'",
            )
            .fetch_one(&fixture.pool)
            .await
            .unwrap();
            (timed_out >= 2).then_some(())
        },
    )
    .await;
    assert_eq!(slow.len(), 6);
}

/// A claim is a lease of its own, which no index reads: the delivery keeps its due time,
/// and the claim is a heap-only update, writing no index entry (it moved the due time
/// once, which wrote an entry into each of the table's indexes).
#[tokio::test]
async fn a_claim_keeps_the_due_time_and_writes_no_index_entry() {
    let fixture = Fixture::new(|s| s.callback_dispatcher.request_timeout_ms = 10_000).await;
    let hanging = WebhookReceiver::start().await;
    hanging.answer_otherwise(Reply::Hang(Duration::from_secs(30)));
    let (merchant, _) = fixture.merchant(&hanging.url).await;
    let transaction = fixture.transaction(&merchant).await;
    let delivery = fixture.delivery(&merchant, &transaction, 1).await;
    let (due, leased) = fixture.due_and_leased(&delivery.id).await;
    assert!(!leased, "a stored delivery is nobody's yet");
    fixture.start_sender().await;
    eventually(
        "the endpoint to be called",
        Duration::from_secs(5),
        || async { (hanging.received().len() == 1).then_some(()) },
    )
    .await;
    let (due_now, leased) = fixture.due_and_leased(&delivery.id).await;
    assert!(leased, "the delivery in flight is leased");
    assert_eq!(due_now, due, "the claim leaves the due time alone");
    // The sender's connection reports its counts to the statistics when it is idle.
    let (updates, heap_only): (i64, i64) = eventually(
        "the claim in the table's statistics",
        Duration::from_secs(20),
        || async {
            let counts: (i64, i64) = sqlx::query_as(
                "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables
                  WHERE relname = 'webhook_delivery'",
            )
            .fetch_one(&fixture.pool)
            .await
            .unwrap();
            (counts.0 > 0).then_some(counts)
        },
    )
    .await;
    assert_eq!(
        (updates, heap_only),
        (1, 1),
        "one update, the claim, and it was heap-only"
    );
}

#[tokio::test]
async fn a_backlog_at_one_endpoint_does_not_starve_another() {
    let fixture = Fixture::new(|s| {
        s.callback_dispatcher.endpoint_concurrency = 2;
        s.callback_dispatcher.max_in_flight = 8;
    })
    .await;
    // An endpoint that refuses connections: every attempt fails at once, so the
    // merchant is never saturated and its due backlog is always the oldest.
    let refused = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/hooks", listener.local_addr().unwrap())
    };
    let (backlogged, _) = fixture.merchant(&refused).await;
    sqlx::query(
        "WITH t AS (
             INSERT INTO transaction (id, merchant_id, kind, status, amount, currency, user_id)
             SELECT 'txn_backlog_' || n, $1, 'deposit', 'processing', 10, 'EUR', 'u1'
               FROM generate_series(1, 3000) n
             RETURNING id)
         INSERT INTO webhook_delivery
             (id, event_id, merchant_id, transaction_id, version, event_type, url, body, status, next_attempt_at)
         SELECT 'whd_' || t.id, 'evt_' || t.id, $1, t.id, 1, 'transaction.processing', $2, '{}',
                'pending', now() - interval '1 minute'
           FROM t",
    )
    .bind(&backlogged)
    .bind(&refused)
    .execute(&fixture.pool)
    .await
    .unwrap();
    let prompt = WebhookReceiver::start().await;
    let (merchant, _) = fixture.merchant(&prompt.url).await;
    let transaction = fixture.transaction(&merchant).await;
    let waiting = fixture.delivery(&merchant, &transaction, 1).await;
    fixture.start_sender().await;
    eventually(
        "the other endpoint's delivery",
        Duration::from_secs(3),
        || async { fixture.all_delivered(&[&waiting]).await.then_some(()) },
    )
    .await;
    let untried: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM webhook_delivery WHERE merchant_id = $1 AND attempt_count = 0",
    )
    .bind(&backlogged)
    .fetch_one(&fixture.pool)
    .await
    .unwrap();
    assert!(
        untried > 1_000,
        "it went out while most of the older backlog was still untried ({untried} left)"
    );
}

#[tokio::test]
async fn https_webhooks_reach_a_receiver_whose_ca_is_configured_and_no_other() {
    let tls = WebhookReceiver::start_tls().await;
    let ca = std::env::temp_dir().join(format!("{}.pem", unique("paygate-test-ca")));
    std::fs::write(&ca, &tls.ca_pem).unwrap();

    let untrusting = Fixture::new(|_| {}).await;
    let (merchant, _) = untrusting.merchant(&tls.receiver.url).await;
    let transaction = untrusting.transaction(&merchant).await;
    let refused = untrusting.delivery(&merchant, &transaction, 1).await;
    untrusting.start_sender().await;
    eventually("an attempt", Duration::from_secs(10), || async {
        (!untrusting.attempts(&refused.id).await.is_empty()).then_some(())
    })
    .await;
    assert!(
        tls.receiver.received().is_empty(),
        "a certificate from an unknown CA is refused"
    );

    let trusting = Fixture::new(|s| {
        s.tls.extra_root_certificates = ca.to_string_lossy().into_owned();
    })
    .await;
    let (merchant, secret) = trusting.merchant(&tls.receiver.url).await;
    let transaction = trusting.transaction(&merchant).await;
    let delivery = trusting.delivery(&merchant, &transaction, 1).await;
    trusting.start_sender().await;
    eventually("delivery over HTTPS", Duration::from_secs(10), || async {
        (trusting.status(&delivery.id).await.0 == "delivered").then_some(())
    })
    .await;
    let received = tls.receiver.received();
    assert_eq!(received.len(), 1);
    let webhook = &received[0];
    assert!(webhook::verify(
        &secret,
        &delivery.event_id,
        webhook.header("webhook-timestamp").parse().unwrap(),
        webhook.body.as_bytes(),
        webhook.header("webhook-signature"),
    ));
    std::fs::remove_file(ca).ok();
}

/// Resolves names to the addresses a test chose.
struct FixedNames(HashMap<String, Vec<SocketAddr>>);

impl Resolve for FixedNames {
    fn resolve(&self, name: Name) -> Resolving {
        let addresses = self.0.get(name.as_str()).cloned().unwrap_or_default();
        Box::pin(async move {
            let addrs: Addrs = Box::new(addresses.into_iter());
            Ok(addrs)
        })
    }
}

#[tokio::test]
async fn every_forbidden_range_is_refused_at_send_time_without_a_connection() {
    let fixture = Fixture::new(|s| {
        s.callback_dispatcher.allow_http = true;
        s.callback_dispatcher.allow_loopback = false;
        s.callback_dispatcher.allow_private = false;
        s.callback_dispatcher.retry_delays_ms = vec![];
    })
    .await;
    // A real endpoint on loopback: any connection to it would be seen.
    let witness = WebhookReceiver::start().await;
    let witness_port: u16 = witness
        .url
        .split(':')
        .nth(2)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let cases = [
        (
            "loopback.merchant.test",
            vec![format!("127.0.0.1:{witness_port}")],
            "loopback",
        ),
        (
            "v6-loopback.merchant.test",
            vec![format!("[::1]:{witness_port}")],
            "loopback",
        ),
        (
            "private.merchant.test",
            vec!["10.0.0.7:80".to_owned()],
            "private",
        ),
        (
            "home.merchant.test",
            vec!["192.168.1.1:80".to_owned()],
            "private",
        ),
        (
            "shared.merchant.test",
            vec!["100.64.0.1:80".to_owned()],
            "shared",
        ),
        (
            "metadata.merchant.test",
            vec!["169.254.169.254:80".to_owned()],
            "link-local",
        ),
        (
            "mapped.merchant.test",
            vec!["[::ffff:169.254.169.254]:80".to_owned()],
            "link-local",
        ),
        (
            "v6-link.merchant.test",
            vec!["[fe80::1]:80".to_owned()],
            "link-local",
        ),
        (
            "ula.merchant.test",
            vec!["[fd00:ec2::254]:80".to_owned()],
            "unique-local",
        ),
        // One forbidden address among public ones is enough to refuse the name.
        (
            "mixed.merchant.test",
            vec![
                "93.184.215.14:80".to_owned(),
                format!("127.0.0.1:{witness_port}"),
            ],
            "loopback",
        ),
    ];
    let names = FixedNames(
        cases
            .iter()
            .map(|(name, addresses, _)| {
                (
                    (*name).to_owned(),
                    addresses.iter().map(|a| a.parse().unwrap()).collect(),
                )
            })
            .collect(),
    );
    let policy = fixture.settings.callback_dispatcher.egress_policy();
    fixture
        .start_sender_with(GuardedResolver::over(policy, Arc::new(names)))
        .await;

    let mut expected = Vec::new();
    for (name, _, range) in &cases {
        // Registered as a name: whatever it resolved to then, it is judged now.
        let url = format!("http://{name}:{witness_port}/webhooks");
        let (merchant, _) = fixture.merchant(&url).await;
        let transaction = fixture.transaction(&merchant).await;
        expected.push((fixture.delivery(&merchant, &transaction, 1).await, *range));
    }
    for (literal, range) in [
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://[::1]:1/", "loopback"),
        ("http://10.1.1.1/", "private"),
    ] {
        let (merchant, _) = fixture.merchant(literal).await;
        let transaction = fixture.transaction(&merchant).await;
        expected.push((fixture.delivery(&merchant, &transaction, 1).await, range));
    }

    for (delivery, range) in &expected {
        let attempts = eventually("the refused attempt", Duration::from_secs(10), || async {
            let attempts = fixture.attempts(&delivery.id).await;
            (!attempts.is_empty()).then_some(attempts)
        })
        .await;
        let (code, error, _) = &attempts[0];
        assert_eq!(*code, None);
        let error = error.as_deref().unwrap();
        assert!(
            error.starts_with("refused: ") && error.contains(&format!("a {range} address")),
            "{error}"
        );
        assert_eq!(fixture.status(&delivery.id).await.0, "failed");
    }
    assert!(
        witness.received().is_empty(),
        "no request reached the loopback endpoint"
    );
}

#[tokio::test]
async fn two_senders_on_one_database_send_every_attempt_once() {
    let fixture = Fixture::new(|s| {
        s.callback_dispatcher.endpoint_concurrency = 4;
    })
    .await;
    let receivers = [
        WebhookReceiver::start().await,
        WebhookReceiver::start().await,
    ];
    let mut deliveries = Vec::new();
    for receiver in &receivers {
        let (merchant, _) = fixture.merchant(&receiver.url).await;
        for _ in 0..20 {
            let transaction = fixture.transaction(&merchant).await;
            deliveries.push(fixture.delivery(&merchant, &transaction, 1).await);
            deliveries.push(fixture.delivery(&merchant, &transaction, 2).await);
        }
    }
    fixture.start_sender().await;
    fixture.start_sender().await;
    let all: Vec<&Stored> = deliveries.iter().collect();
    eventually("every delivery", Duration::from_secs(30), || async {
        fixture.all_delivered(&all).await.then_some(())
    })
    .await;
    let mut sent: HashMap<String, usize> = HashMap::new();
    for receiver in &receivers {
        for webhook in receiver.received() {
            *sent
                .entry(webhook.header("webhook-id").to_owned())
                .or_default() += 1;
        }
    }
    assert_eq!(sent.len(), deliveries.len());
    assert!(
        sent.values().all(|n| *n == 1),
        "each attempt sent once: {sent:?}"
    );
    let attempts: i64 = sqlx::query_scalar("SELECT count(*) FROM webhook_attempt")
        .fetch_one(&fixture.pool)
        .await
        .unwrap();
    assert_eq!(attempts, 80);
}

/// Hands the recorder a status event of `transaction` at `version`, as the consumer of
/// `paygate.transactions.status` would: `transaction.<status>`, or with `refund` (its
/// status) `refund.<status>`. Returns the event id.
async fn announce(
    fixture: &Fixture,
    merchant: &str,
    transaction: &str,
    version: i32,
    status: &str,
    refund: Option<&str>,
) -> String {
    let event_id = unique("evt");
    let event = proto::StatusChanged {
        event_id: event_id.clone(),
        transaction: Some(proto::Transaction {
            id: transaction.to_owned(),
            merchant_id: merchant.to_owned(),
            kind: "deposit".to_owned(),
            status: status.to_owned(),
            version,
            updated_at: "2026-12-05T00:00:00.000Z".to_owned(),
            ..Default::default()
        }),
        refund: refund.map(|refund_status| proto::Refund {
            id: unique("rfd"),
            transaction_id: transaction.to_owned(),
            merchant_id: merchant.to_owned(),
            status: refund_status.to_owned(),
            version,
            ..Default::default()
        }),
        ..Default::default()
    };
    let kind = match refund {
        Some(refund_status) => format!("refund.{refund_status}"),
        None => format!("transaction.{status}"),
    };
    let message = Inbound {
        topic: "paygate.transactions.status".to_owned(),
        partition: 0,
        offset: 0,
        key: Some(transaction.to_owned()),
        payload: prost::Message::encode_to_vec(&event),
        headers: vec![(headers::EVENT_TYPE.to_owned(), kind.into_bytes())],
    };
    Batched::new(
        StatusHandler::new(fixture.pool.clone(), Arc::new(Notify::new())),
        1,
        1,
    )
    .handle(&message)
    .await
    .unwrap();
    event_id
}

/// The (event type, data.id) of each webhook `receiver` got, sorted.
fn kinds(receiver: &WebhookReceiver) -> Vec<(String, String)> {
    let mut kinds: Vec<(String, String)> = receiver
        .received()
        .iter()
        .map(|w| {
            let body = w.json();
            (
                body["type"].as_str().unwrap().to_owned(),
                body["data"]["transaction_id"]
                    .as_str()
                    .or(body["data"]["id"].as_str())
                    .unwrap()
                    .to_owned(),
            )
        })
        .collect();
    kinds.sort();
    kinds
}

impl Fixture {
    async fn pending(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM webhook_delivery WHERE status = 'pending'")
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    /// `count` due deliveries to `endpoint`, each of its own new payment.
    async fn backlog(&self, endpoint: &str, count: usize) -> Vec<Stored> {
        let merchant: String =
            sqlx::query_scalar("SELECT merchant_id FROM webhook_endpoint WHERE id = $1")
                .bind(endpoint)
                .fetch_one(&self.pool)
                .await
                .unwrap();
        let mut stored = Vec::with_capacity(count);
        for _ in 0..count {
            let transaction = self.transaction(&merchant).await;
            stored.push(self.delivery_to(endpoint, &transaction, 1).await);
        }
        stored
    }
}

/// Asserts that no `per_second + 1` of `received` arrived within one second (a little
/// less, for the loopback's jitter), and returns how long they took from first to last.
fn assert_within_rate(received: &[paygate_testkit::Received], per_second: usize) -> Duration {
    let mut at: Vec<Duration> = received.iter().map(|w| w.at).collect();
    at.sort();
    for (i, window) in at.windows(per_second + 1).enumerate() {
        let span = window[per_second] - window[0];
        assert!(
            span >= Duration::from_millis(950),
            "{} requests within {span:?} from the {i}th: faster than {per_second}/s",
            per_second + 1
        );
    }
    at.last().copied().unwrap_or_default() - at.first().copied().unwrap_or_default()
}

#[tokio::test]
async fn two_endpoints_with_different_filters_each_receive_exactly_their_events() {
    let fixture = Fixture::new(|_| {}).await;
    let completions = WebhookReceiver::start().await;
    let the_rest = WebhookReceiver::start().await;
    let (merchant, secret) = fixture.merchant(&completions.url).await;
    sqlx::query(
        "UPDATE webhook_endpoint SET event_types = '{transaction.completed}' WHERE merchant_id = $1",
    )
    .bind(&merchant)
    .execute(&fixture.pool)
    .await
    .unwrap();
    fixture
        .endpoint(
            &merchant,
            &the_rest.url,
            &["transaction.failed", "refund.*"],
            None,
        )
        .await;
    fixture.start_sender().await;

    let (paid, declined) = (
        fixture.transaction(&merchant).await,
        fixture.transaction(&merchant).await,
    );
    announce(&fixture, &merchant, &paid, 2, "processing", None).await;
    let completed = announce(&fixture, &merchant, &paid, 3, "completed", None).await;
    announce(
        &fixture,
        &merchant,
        &paid,
        4,
        "completed",
        Some("completed"),
    )
    .await;
    announce(&fixture, &merchant, &declined, 2, "failed", None).await;
    eventually("every delivery", Duration::from_secs(20), || async {
        (fixture.pending().await == 0
            && completions.received().len() + the_rest.received().len() >= 3)
            .then_some(())
    })
    .await;

    assert_eq!(
        kinds(&completions),
        vec![("transaction.completed".to_owned(), paid.clone())]
    );
    let mut expected = vec![
        ("refund.completed".to_owned(), paid.clone()),
        ("transaction.failed".to_owned(), declined.clone()),
    ];
    expected.sort();
    assert_eq!(kinds(&the_rest), expected);
    let webhook = &completions.received()[0];
    assert_eq!(
        webhook.header("webhook-id"),
        completed,
        "the event id is its webhook-id"
    );
    assert!(webhook::verify(
        &secret,
        webhook.header("webhook-id"),
        webhook.header("webhook-timestamp").parse().unwrap(),
        webhook.body.as_bytes(),
        webhook.header("webhook-signature"),
    ));
}

#[tokio::test]
async fn one_endpoint_down_does_not_delay_the_other() {
    let fixture = Fixture::new(|s| {
        s.callback_dispatcher.request_timeout_ms = 5_000;
        s.callback_dispatcher.endpoint_concurrency = 2;
    })
    .await;
    let down = WebhookReceiver::scripted(vec![]).await;
    down.answer_otherwise(Reply::Hang(Duration::from_secs(30)));
    let up = WebhookReceiver::start().await;
    let (merchant, _) = fixture.merchant(&down.url).await;
    fixture.endpoint(&merchant, &up.url, &[], None).await;
    fixture.start_sender().await;

    let started = std::time::Instant::now();
    for _ in 0..10 {
        let transaction = fixture.transaction(&merchant).await;
        announce(&fixture, &merchant, &transaction, 2, "processing", None).await;
    }
    eventually(
        "every event at the endpoint that is up",
        Duration::from_secs(20),
        || async { (up.received().len() == 10).then_some(()) },
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the endpoint that is up had everything before one request to the other timed out: {:?}",
        started.elapsed()
    );
    assert!(
        !down.received().is_empty(),
        "the other endpoint was being tried"
    );
}

#[tokio::test]
async fn a_per_payment_notification_url_receives_that_payments_events_only() {
    let fixture = Fixture::new(|_| {}).await;
    let endpoint = WebhookReceiver::start().await;
    let notified = WebhookReceiver::start().await;
    let (merchant, secret) = fixture.merchant(&endpoint.url).await;
    let (with_url, without) = (
        fixture.transaction(&merchant).await,
        fixture.transaction(&merchant).await,
    );
    sqlx::query("UPDATE transaction SET notification_url = $2 WHERE id = $1")
        .bind(&with_url)
        .bind(&notified.url)
        .execute(&fixture.pool)
        .await
        .unwrap();
    fixture.start_sender().await;
    for transaction in [&with_url, &without] {
        announce(&fixture, &merchant, transaction, 2, "processing", None).await;
        announce(&fixture, &merchant, transaction, 3, "completed", None).await;
    }
    eventually("every delivery", Duration::from_secs(20), || async {
        (fixture.pending().await == 0
            && endpoint.received().len() == 4
            && notified.received().len() == 2)
            .then_some(())
    })
    .await;

    assert_eq!(
        kinds(&notified),
        vec![
            ("transaction.completed".to_owned(), with_url.clone()),
            ("transaction.processing".to_owned(), with_url.clone()),
        ]
    );
    assert_eq!(
        arrivals(&notified),
        vec![(with_url.clone(), 2), (with_url.clone(), 3)],
        "in order"
    );
    for webhook in notified.received() {
        assert!(
            webhook::verify(
                &secret,
                webhook.header("webhook-id"),
                webhook.header("webhook-timestamp").parse().unwrap(),
                webhook.body.as_bytes(),
                webhook.header("webhook-signature"),
            ),
            "signed with the merchant's secret"
        );
    }
    let listed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM webhook_delivery WHERE transaction_id = $1 AND notification AND url = $2",
    )
    .bind(&with_url)
    .bind(&notified.url)
    .fetch_one(&fixture.pool)
    .await
    .unwrap();
    assert_eq!(
        listed, 2,
        "its deliveries are recorded beside the endpoint's"
    );
}

/// Sends a backlog of `events` to one endpoint limited to `per_second`, through
/// `senders` dispatchers of `concurrency` each; asserts every event arrived once, no
/// faster than the limit, and answers how long the backlog took.
async fn drain_a_limited_backlog(
    events: usize,
    per_second: usize,
    senders: usize,
    concurrency: usize,
) -> Duration {
    let fixture = Fixture::new(|s| {
        s.callback_dispatcher.endpoint_concurrency = concurrency;
    })
    .await;
    let receiver = WebhookReceiver::start().await;
    let (merchant, _) = fixture.merchant(&WebhookReceiver::start().await.url).await;
    let limited = fixture
        .endpoint(
            &merchant,
            &receiver.url,
            &[],
            Some(i32::try_from(per_second).unwrap()),
        )
        .await;
    let backlog = fixture.backlog(&limited, events).await;
    for _ in 0..senders {
        fixture.start_sender().await;
    }

    let all: Vec<&Stored> = backlog.iter().collect();
    eventually("the whole backlog", Duration::from_secs(60), || async {
        fixture.all_delivered(&all).await.then_some(())
    })
    .await;
    let received = receiver.received();
    let ids: std::collections::HashSet<&str> =
        received.iter().map(|w| w.header("webhook-id")).collect();
    assert_eq!(ids.len(), events, "every event arrived");
    assert_eq!(received.len(), events, "each once");
    assert_within_rate(&received, per_second)
}

#[tokio::test]
async fn a_rate_limited_endpoint_receives_a_500_event_backlog_no_faster_than_its_limit_and_all_of_it(
) {
    let took = drain_a_limited_backlog(500, 100, 1, 16).await;
    assert!(
        took >= Duration::from_millis(4_900),
        "500 at 100/s took {took:?}"
    );
}

#[tokio::test]
async fn two_dispatchers_respect_one_endpoints_limit_together() {
    let took = drain_a_limited_backlog(100, 20, 2, 8).await;
    assert!(
        took >= Duration::from_millis(4_900),
        "100 at 20/s took {took:?}"
    );
}

#[tokio::test]
async fn a_gone_endpoint_is_disabled_alone_and_the_merchants_other_endpoint_goes_on() {
    let fixture = Fixture::new(|_| {}).await;
    let gone = WebhookReceiver::start_with(vec![StatusCode::GONE; 50]).await;
    let up = WebhookReceiver::start().await;
    let (merchant, _) = fixture.merchant(&gone.url).await;
    let other = fixture.endpoint(&merchant, &up.url, &[], None).await;
    fixture.start_sender().await;
    for _ in 0..3 {
        let transaction = fixture.transaction(&merchant).await;
        announce(&fixture, &merchant, &transaction, 2, "processing", None).await;
    }
    eventually(
        "the gone endpoint disabled",
        Duration::from_secs(20),
        || async { fixture.endpoint_disabled(&merchant).await.then_some(()) },
    )
    .await;
    eventually(
        "every event at the other endpoint",
        Duration::from_secs(20),
        || async { (up.received().len() == 3).then_some(()) },
    )
    .await;
    let other_disabled: bool =
        sqlx::query_scalar("SELECT disabled_at IS NOT NULL FROM webhook_endpoint WHERE id = $1")
            .bind(&other)
            .fetch_one(&fixture.pool)
            .await
            .unwrap();
    assert!(!other_disabled, "health is the endpoint's own");
    let waiting: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM webhook_delivery d JOIN webhook_endpoint w ON w.id = d.endpoint_id
          WHERE w.merchant_id = $1 AND w.is_primary AND d.status = 'pending'",
    )
    .bind(&merchant)
    .fetch_one(&fixture.pool)
    .await
    .unwrap();
    assert_eq!(waiting, 3, "the gone endpoint's deliveries wait for it");
}

#[tokio::test]
async fn a_payments_webhooks_arrive_in_order_at_each_endpoint_and_one_never_waits_for_another() {
    let fixture = Fixture::new(|s| {
        s.callback_dispatcher.request_timeout_ms = 3_000;
        s.callback_dispatcher.retry_delays_ms = vec![100, 100, 100];
    })
    .await;
    let slow = WebhookReceiver::scripted(vec![Reply::Hang(Duration::from_secs(10))]).await;
    let prompt = WebhookReceiver::start().await;
    let (merchant, _) = fixture.merchant(&slow.url).await;
    fixture.endpoint(&merchant, &prompt.url, &[], None).await;
    let transaction = fixture.transaction(&merchant).await;
    fixture.start_sender().await;

    let started = std::time::Instant::now();
    announce(&fixture, &merchant, &transaction, 2, "processing", None).await;
    announce(&fixture, &merchant, &transaction, 3, "completed", None).await;
    eventually(
        "both at the prompt endpoint",
        Duration::from_secs(10),
        || async { (prompt.received().len() == 2).then_some(()) },
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the prompt endpoint did not wait for the slow one's first attempt: {:?}",
        started.elapsed()
    );
    eventually(
        "both at the slow endpoint",
        Duration::from_secs(20),
        || async { (fixture.pending().await == 0).then_some(()) },
    )
    .await;
    let expected = vec![(transaction.clone(), 2), (transaction.clone(), 3)];
    assert_eq!(arrivals(&prompt), expected);
    let versions: Vec<i64> = arrivals(&slow).into_iter().map(|(_, v)| v).collect();
    assert!(
        versions.windows(2).all(|w| w[0] <= w[1]) && versions.last() == Some(&3),
        "the slow endpoint had version 3 only after version 2: {versions:?}"
    );
}
