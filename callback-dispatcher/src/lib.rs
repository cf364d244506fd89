//! Paygate's callback-dispatcher: tells merchants about every status change.
//!
//! Two halves, joined by the `webhook_delivery` table:
//! - the consumer of `paygate.transactions.status` records one delivery per status
//!   event (the event id is the `webhook-id`, so a redelivered message adds nothing)
//!   with the exact body that will be signed;
//! - the sender claims due deliveries with a lease (`FOR UPDATE SKIP LOCKED`, then a
//!   `next_attempt_at` in the future), POSTs them signed Standard-Webhooks style, records
//!   every attempt, and reschedules failures on the configured delays (+-20 % jitter,
//!   honouring `Retry-After`) until the last one, when the delivery is `failed`.
//!
//! A crash mid-send loses nothing: the lease runs out and the delivery is sent again with
//! the same `webhook-id`, which is how merchants deduplicate.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use prost::Message;
use serde::Serialize;
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use paygate_common::config::DispatcherSettings;
use paygate_common::domain::{DeliveryId, Status};
use paygate_common::events::{event_type, proto, TransactionView};
use paygate_common::kafka::{Handler, HandlerError, Inbound};
use paygate_common::retry::jitter;
use paygate_common::service::Worker;
use paygate_common::signature::webhook;
use paygate_common::Settings;

pub struct Application {
    worker: Worker,
    handler: StatusHandler,
    sender: Sender,
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let topics = [settings.kafka.topics.transactions_status.as_str()];
        let worker = Worker::build(
            &settings,
            "callback-dispatcher",
            &settings.callback_dispatcher.listen,
            &topics,
        )
        .await?;
        let wake = Arc::new(Notify::new());
        let handler = StatusHandler {
            pool: worker.pool.clone(),
            wake: wake.clone(),
        };
        let sender = Sender::new(worker.pool.clone(), &settings.callback_dispatcher, wake)?;
        Ok(Application {
            worker,
            handler,
            sender,
        })
    }

    pub fn port(&self) -> u16 {
        self.worker.port()
    }

    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let sender = tokio::spawn(self.sender.run(shutdown.clone()));
        self.worker.run(self.handler, vec![sender], shutdown).await
    }
}

/// The body merchants receive.
#[derive(Serialize)]
struct WebhookBody<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    created_at: &'a str,
    data: TransactionView,
}

/// Records a delivery for each status event.
pub struct StatusHandler {
    pool: PgPool,
    /// Wakes the sender as soon as a delivery is recorded.
    wake: Arc<Notify>,
}

impl Handler for StatusHandler {
    async fn handle(&self, message: &Inbound) -> Result<(), HandlerError> {
        let event = proto::StatusChanged::decode(message.payload.as_slice())
            .map_err(HandlerError::permanent)?;
        let transaction = event.transaction.as_ref().ok_or_else(|| {
            HandlerError::permanent(anyhow::anyhow!(
                "status event {} has no transaction",
                event.event_id
            ))
        })?;
        let status: Status = transaction
            .status
            .parse()
            .map_err(HandlerError::permanent)?;
        if status == Status::Pending {
            return Ok(());
        }
        let webhook_url: Option<Option<String>> =
            sqlx::query_scalar("SELECT webhook_url FROM merchant WHERE id = $1")
                .bind(&transaction.merchant_id)
                .fetch_optional(&self.pool)
                .await
                .map_err(HandlerError::transient)?;
        let Some(Some(url)) = webhook_url else {
            tracing::info!(transaction_id = %transaction.id, "merchant takes no webhooks");
            return Ok(());
        };

        let kind = event_type::for_status(status);
        let body = serde_json::to_string(&WebhookBody {
            id: &event.event_id,
            kind: &kind,
            created_at: &transaction.updated_at,
            data: TransactionView::from(transaction),
        })
        .map_err(HandlerError::permanent)?;
        let inserted = sqlx::query(
            "INSERT INTO webhook_delivery
                 (id, event_id, merchant_id, transaction_id, version, event_type, url, body, status, next_attempt_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'pending', now())
             ON CONFLICT ON CONSTRAINT webhook_delivery_event_unique DO NOTHING",
        )
        .bind(DeliveryId::new().as_str())
        .bind(&event.event_id)
        .bind(&transaction.merchant_id)
        .bind(&transaction.id)
        .bind(transaction.version)
        .bind(&kind)
        .bind(&url)
        .bind(&body)
        .execute(&self.pool)
        .await
        .map_err(HandlerError::transient)?;
        if inserted.rows_affected() == 1 {
            tracing::info!(transaction_id = %transaction.id, event_id = %event.event_id, %kind, "webhook scheduled");
            self.wake.notify_one();
        }
        Ok(())
    }
}

/// Sends due deliveries.
pub struct Sender {
    pool: PgPool,
    http: reqwest::Client,
    /// Delays before each retry; the delivery fails after the last.
    delays: Vec<Duration>,
    /// The longest of `delays`: the most a merchant's Retry-After can postpone a retry.
    longest_delay: Duration,
    /// How long a claimed delivery is ours before another sender may take it.
    lease: Duration,
    poll_interval: Duration,
    wake: Arc<Notify>,
}

#[derive(sqlx::FromRow)]
struct Due {
    id: String,
    event_id: String,
    url: String,
    body: String,
    attempt_count: i32,
    webhook_secret: String,
}

/// What one attempt came to.
struct Attempt {
    status_code: Option<u16>,
    error: Option<String>,
    retry_after: Option<Duration>,
    duration: Duration,
}

impl Attempt {
    fn delivered(&self) -> bool {
        self.status_code.is_some_and(|c| (200..300).contains(&c))
    }
}

const BATCH: i64 = 50;

impl Sender {
    pub fn new(
        pool: PgPool,
        settings: &DispatcherSettings,
        wake: Arc<Notify>,
    ) -> anyhow::Result<Self> {
        let timeout = Duration::from_millis(settings.request_timeout_ms);
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent("Paygate-Webhooks/1")
            .build()
            .context("building the webhook HTTP client")?;
        let delays = settings.retry_delays();
        Ok(Sender {
            pool,
            http,
            longest_delay: delays.iter().max().copied().unwrap_or_default(),
            delays,
            // Longer than any attempt can take, so a live sender never loses its claim.
            lease: timeout + Duration::from_secs(5),
            poll_interval: Duration::from_millis(settings.poll_interval_ms),
            wake,
        })
    }

    pub async fn run(self, shutdown: CancellationToken) {
        let this = Arc::new(self);
        while !shutdown.is_cancelled() {
            let claimed = match this.send_due().await {
                Ok(claimed) => claimed,
                Err(error) => {
                    tracing::warn!(error = %format!("{error:#}"), "webhook sender failed; retrying");
                    0
                }
            };
            if claimed as i64 == BATCH {
                continue;
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = this.wake.notified() => {}
                _ = tokio::time::sleep(this.poll_interval) => {}
            }
        }
    }

    /// Claims up to one batch of due deliveries and sends them concurrently.
    async fn send_due(self: &Arc<Self>) -> anyhow::Result<usize> {
        let lease_ms = i64::try_from(self.lease.as_millis()).unwrap_or(i64::MAX);
        let due: Vec<Due> = sqlx::query_as(
            "UPDATE webhook_delivery d
                SET next_attempt_at = now() + make_interval(secs => $2::double precision / 1000)
               FROM merchant m
              WHERE d.id IN (SELECT id FROM webhook_delivery
                              WHERE status = 'pending' AND next_attempt_at <= now()
                              ORDER BY next_attempt_at
                              LIMIT $1
                                FOR UPDATE SKIP LOCKED)
                AND m.id = d.merchant_id
          RETURNING d.id, d.event_id, d.url, d.body, d.attempt_count, m.webhook_secret",
        )
        .bind(BATCH)
        .bind(lease_ms)
        .fetch_all(&self.pool)
        .await
        .context("claiming due webhook deliveries")?;
        let claimed = due.len();
        let mut sends = JoinSet::new();
        for delivery in due {
            let this = Arc::clone(self);
            sends.spawn(async move {
                let attempt = this.attempt(&delivery).await;
                if let Err(error) = this.record(&delivery, &attempt).await {
                    tracing::warn!(error = %format!("{error:#}"), delivery_id = %delivery.id, "could not record a webhook attempt; its lease will expire and it is sent again");
                }
            });
        }
        while sends.join_next().await.is_some() {}
        Ok(claimed)
    }

    async fn attempt(&self, delivery: &Due) -> Attempt {
        let timestamp = chrono::Utc::now().timestamp();
        let started = Instant::now();
        let signature = match webhook::sign(
            &delivery.webhook_secret,
            &delivery.event_id,
            timestamp,
            delivery.body.as_bytes(),
        ) {
            Ok(signature) => signature,
            Err(error) => {
                return Attempt {
                    status_code: None,
                    error: Some(error.to_string()),
                    retry_after: None,
                    duration: started.elapsed(),
                }
            }
        };
        let sent = self
            .http
            .post(&delivery.url)
            .header("content-type", "application/json")
            .header(webhook::ID, &delivery.event_id)
            .header(webhook::TIMESTAMP, timestamp.to_string())
            .header(webhook::SIGNATURE, signature)
            .body(delivery.body.clone())
            .send()
            .await;
        match sent {
            Ok(response) => {
                let retry_after = response
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs);
                Attempt {
                    status_code: Some(response.status().as_u16()),
                    error: None,
                    retry_after,
                    duration: started.elapsed(),
                }
            }
            Err(error) => {
                let error = if error.is_timeout() {
                    "timed out".to_owned()
                } else if error.is_connect() {
                    "connection failed".to_owned()
                } else {
                    "request failed".to_owned()
                };
                Attempt {
                    status_code: None,
                    error: Some(error),
                    retry_after: None,
                    duration: started.elapsed(),
                }
            }
        }
    }

    /// Records the attempt and what follows: delivered, retried later, or failed.
    async fn record(&self, delivery: &Due, attempt: &Attempt) -> anyhow::Result<()> {
        let attempts = delivery.attempt_count + 1;
        let (status, next): (&str, Option<Duration>) = if attempt.delivered() {
            ("delivered", None)
        } else {
            match self
                .delays
                .get(usize::try_from(delivery.attempt_count).unwrap_or(usize::MAX))
            {
                Some(delay) => {
                    // Honour Retry-After, but never past the longest configured delay.
                    let asked = attempt
                        .retry_after
                        .unwrap_or_default()
                        .min(self.longest_delay);
                    let delay = jitter(*delay, 0.2).max(asked);
                    ("pending", Some(delay))
                }
                None => ("failed", None),
            }
        };
        let next_ms = next.map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO webhook_attempt (delivery_id, status_code, error, duration_ms) VALUES ($1, $2, $3, $4)",
        )
        .bind(&delivery.id)
        .bind(attempt.status_code.map(i32::from))
        .bind(&attempt.error)
        .bind(i32::try_from(attempt.duration.as_millis()).unwrap_or(i32::MAX))
        .execute(&mut *tx)
        .await?;
        let updated = sqlx::query(
            "UPDATE webhook_delivery
                SET status = $2, attempt_count = $3, updated_at = now(),
                    next_attempt_at = CASE WHEN $4::bigint IS NULL THEN NULL
                                           ELSE now() + make_interval(secs => $4::double precision / 1000) END
              WHERE id = $1 AND status = 'pending' AND attempt_count = $5",
        )
        .bind(&delivery.id)
        .bind(status)
        .bind(attempts)
        .bind(next_ms)
        .bind(delivery.attempt_count)
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() == 0 {
            // Our lease ran out and another sender recorded this attempt number first;
            // its record stands, and ours (a duplicate send) is not counted.
            tracing::warn!(delivery_id = %delivery.id, "webhook attempt recorded by another sender");
            return Ok(());
        }
        tx.commit().await?;
        tracing::info!(
            delivery_id = %delivery.id,
            event_id = %delivery.event_id,
            status_code = attempt.status_code,
            error = attempt.error.as_deref(),
            outcome = status,
            attempts,
            "webhook attempt"
        );
        Ok(())
    }
}
