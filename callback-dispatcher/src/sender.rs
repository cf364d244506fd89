//! The sending half: claims due deliveries continuously and sends each on its own task.
//!
//! - **Leases.** A due delivery is claimed by setting its `leased_until` past the longest
//!   an attempt can take (`FOR UPDATE SKIP LOCKED`), so several dispatchers share the
//!   work and one that dies mid-send loses nothing: the lease runs out and the delivery
//!   goes again under the same `webhook-id`. Recording is fenced on the attempt number,
//!   so a late recorder never counts an attempt twice. No index reads the lease, so a
//!   claim is a heap-only update (migration `20261205000505`); `next_attempt_at` only
//!   ever says when the delivery is due, and every outcome clears the lease.
//! - **No barrier.** Soon after a send finishes another is claimed, up to
//!   `max_in_flight`; a slow merchant never holds up the next claim. "Soon" is
//!   `claim_linger_ms` after the wake, so the sends finished and the deliveries recorded
//!   in that moment share one claim (each claim is planned anew).
//! - **Isolation per endpoint.** A merchant has any number of endpoints, and a payment
//!   may name its own `notification_url`; each is its own endpoint here. A claim skips endpoints that already have
//!   `endpoint_concurrency` sends in flight from this dispatcher, so a merchant that
//!   hangs until the timeout only ever delays its own deliveries.
//! - **Order per transaction, per endpoint.** Only a transaction's earliest pending
//!   version at an endpoint can be claimed, so `transaction.completed` never overtakes
//!   `transaction.processing` of the same payment there, while other payments (and
//!   other endpoints) go in parallel.
//! - **Rate limits.** An endpoint with a `rate_limit` is sent at most that many
//!   requests a second by all dispatchers together ([`crate::limit`]); what is over it
//!   waits, pending, and is never dropped.
//! - **Endpoint health.** 410 Gone, a refused destination, or failures without a
//!   success for `disable_after_ms` disable the endpoint: its deliveries wait, pending,
//!   and every `probe_interval_ms` its oldest is sent as a probe; the first 2xx
//!   re-enables it and everything it missed becomes due at once, still in order.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use secrecy::SecretString;
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use paygate_common::cards::KeyRing;
use paygate_common::config::DispatcherSettings;
use paygate_common::egress::Policy;
use paygate_common::retry::jitter;
use paygate_common::secrets::Sealed;

use crate::attempt::{self, Attempt, Message};
use crate::delivered::{Delivered, DeliveredRecords};
use crate::limit::{RateLimiter, Slot};

/// The longest a send waits for its endpoint's rate-limit slot; a slot further away puts
/// the delivery back until then. Well inside the lease (request timeout + 5 s), so a
/// waiting send never loses its claim.
const RATE_PATIENCE: Duration = Duration::from_secs(2);

/// Sends due deliveries.
pub struct Sender {
    pool: PgPool,
    http: reqwest::Client,
    policy: Policy,
    keys: KeyRing,
    /// Delays before each retry; the delivery fails after the last.
    delays: Vec<Duration>,
    /// The longest of `delays`: the most a merchant's Retry-After can postpone a retry.
    longest_delay: Duration,
    /// How long a claimed delivery is ours before another sender may take it.
    lease: Duration,
    poll_interval: Duration,
    /// How long to wait, once woken, before claiming (see `claim_linger_ms`).
    linger: Duration,
    max_in_flight: usize,
    endpoint_concurrency: usize,
    disable_after: Duration,
    probe_interval: Duration,
    wake: Arc<Notify>,
    /// Spaces the requests to endpoints that have a rate limit, across dispatchers.
    limiter: RateLimiter,
    /// When a slow claim last had the deliveries analyzed (unix milliseconds).
    analyzed_at_ms: std::sync::atomic::AtomicU64,
    /// Records the plain 2xx answers of one moment together.
    delivered: DeliveredRecords,
}

/// A delivery waiting to be sent, bound as a parameter where a statement names the
/// delivery by its id: a literal `status = 'pending'` there lets a generic plan made on a
/// fresh database walk a pending-only index instead of the primary key (see
/// `integration/tests/all/plans.rs`).
pub(crate) const PENDING: &str = "pending";

/// A claim slower than this has its table's statistics refreshed (see
/// `Sender::refresh_statistics`); a healthy claim takes milliseconds.
const SLOW_CLAIM: Duration = Duration::from_millis(250);

/// The most often a slow claim analyzes the deliveries.
const ANALYZE_AT_MOST_EVERY: Duration = Duration::from_secs(30);

/// A claimed delivery with what signs it.
#[derive(sqlx::FromRow)]
struct Due {
    id: String,
    event_id: String,
    merchant_id: String,
    /// Its endpoint; `None` for a payment's notification_url (or what a removed endpoint
    /// left pending), which has no health of its own.
    endpoint_id: Option<String>,
    /// What isolates it from other endpoints' sends: the endpoint, else the URL.
    endpoint_key: String,
    /// The endpoint's requests a second, across every dispatcher.
    rate_limit: Option<i32>,
    /// The payment's: its trace id is the transaction id's (see `trace`).
    transaction_id: String,
    url: String,
    body: String,
    attempt_count: i32,
    secret: Sealed,
    /// The secret before the last rotation, while it still signs.
    previous_secret: Option<Sealed>,
    /// Ed25519 keys, when the merchant has asked for asymmetric signatures too.
    signing_key: Option<Sealed>,
    previous_signing_key: Option<Sealed>,
}

/// What the delivery and its endpoint become after one attempt.
struct Outcome {
    status: &'static str,
    attempts: i32,
    next: Option<Duration>,
    /// Why the endpoint is disabled now, if this attempt alone disables it.
    disable_now: Option<String>,
}

/// What a claim returns, from the delivery `d`, its endpoint `w` (absent for a
/// notification_url) and its merchant `m`. A delivery goes to the endpoint's current URL
/// (the one it was recorded with when it has none), so a corrected URL receives what is
/// still pending. An endpoint with no secret of its own signs with the merchant's.
const CLAIMED: &str = "d.id, d.event_id, d.merchant_id, d.endpoint_id, coalesce(d.endpoint_id, d.url) AS endpoint_key,
    w.rate_limit, d.transaction_id, coalesce(w.url, d.url) AS url, d.body, d.attempt_count,
    coalesce(w.secret, m.webhook_secret) AS secret,
    CASE WHEN w.secret IS NOT NULL THEN CASE WHEN w.secret_previous_until > now() THEN w.secret_previous END
         WHEN m.webhook_secret_previous_until > now() THEN m.webhook_secret_previous END AS previous_secret,
    m.webhook_signing_key AS signing_key,
    CASE WHEN m.webhook_signing_key_previous_until > now() THEN m.webhook_signing_key_previous END AS previous_signing_key";

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

impl Sender {
    pub fn new(
        pool: PgPool,
        settings: &DispatcherSettings,
        keys: KeyRing,
        http: reqwest::Client,
        wake: Arc<Notify>,
        limiter: RateLimiter,
    ) -> Self {
        let timeout = Duration::from_millis(settings.request_timeout_ms);
        let delays = settings.retry_delays();
        Sender {
            delivered: DeliveredRecords::new(pool.clone()),
            pool,
            http,
            policy: settings.egress_policy(),
            keys,
            longest_delay: delays.iter().max().copied().unwrap_or_default(),
            delays,
            // Longer than any attempt can take, so a live sender never loses its claim.
            lease: timeout + Duration::from_secs(5),
            poll_interval: Duration::from_millis(settings.poll_interval_ms),
            linger: Duration::from_millis(settings.claim_linger_ms),
            max_in_flight: settings.max_in_flight,
            endpoint_concurrency: settings.endpoint_concurrency,
            disable_after: Duration::from_millis(settings.disable_after_ms),
            probe_interval: Duration::from_millis(settings.probe_interval_ms),
            wake,
            limiter,
            analyzed_at_ms: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Claims and sends until `shutdown`, then lets the sends in flight finish and
    /// record what came of them.
    pub async fn run(self, shutdown: CancellationToken) {
        let this = Arc::new(self);
        let mut sends = InFlight::default();
        let mut next_probe = tokio::time::Instant::now();
        while !shutdown.is_cancelled() {
            let room = this.max_in_flight.saturating_sub(sends.tasks.len());
            let mut claimed = Vec::new();
            if room > 0 {
                match this.claim(room, &sends.per_endpoint).await {
                    Ok(due) => claimed.extend(due.into_iter().map(|d| (d, false))),
                    Err(error) => {
                        tracing::warn!(error = %format!("{error:#}"), "claiming webhook deliveries failed; retrying")
                    }
                }
            }
            let full = room > 0 && claimed.len() >= room;
            if tokio::time::Instant::now() >= next_probe {
                next_probe = tokio::time::Instant::now() + this.poll_interval;
                match this.claim_probes(&sends.per_endpoint).await {
                    Ok(probes) => claimed.extend(probes.into_iter().map(|d| (d, true))),
                    Err(error) => {
                        tracing::warn!(error = %format!("{error:#}"), "claiming webhook probes failed; retrying")
                    }
                }
            }
            for (delivery, probe) in claimed {
                let this = Arc::clone(&this);
                let endpoint = delivery.endpoint_key.clone();
                sends.spawn(endpoint, async move { this.deliver(delivery, probe).await });
            }
            if full {
                // More may be due right now: claim again as soon as there is room.
                sends.finish_one().await;
                this.gather(&mut sends).await;
                continue;
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = this.wake.notified() => this.gather(&mut sends).await,
                _ = sends.finish_one(), if !sends.tasks.is_empty() => this.gather(&mut sends).await,
                _ = tokio::time::sleep(this.poll_interval) => {}
            }
        }
        while !sends.tasks.is_empty() {
            sends.finish_one().await;
        }
    }

    /// Lets the deliveries recorded and the sends finished in the next `linger` join the
    /// claim that follows a wake, so under load one claim takes many (each claim is
    /// planned anew) instead of one claim a wake.
    async fn gather(&self, sends: &mut InFlight) {
        if self.linger.is_zero() {
            return;
        }
        tokio::time::sleep(self.linger).await;
        sends.reap_finished();
    }

    /// Claims up to `room` due deliveries: the earliest pending version of each
    /// transaction at each endpoint, of enabled endpoints, at most
    /// `endpoint_concurrency` in flight per endpoint counting `in_flight`. Candidates
    /// are taken per endpoint (at most `endpoint_concurrency` each, from
    /// `webhook_delivery_due_by_endpoint`), never as the globally oldest rows: a backlog
    /// of due deliveries at one endpoint would otherwise fill every claim's window and
    /// starve the others. Deliveries with no endpoint (notification URLs) come from the
    /// same index, keyed by their URL.
    ///
    /// Whether an earlier version waits is asked with `IS NOT DISTINCT FROM` on the
    /// endpoint, never `=`: an equality joins the endpoint to the outer one's id, and
    /// under statistics taken while the table was nearly empty (a fresh database in a
    /// burst, before autovacuum's first analyze) the planner then answered it by reading
    /// every pending delivery of the endpoint for each candidate — 450,000 buffers and
    /// 1–7 s a claim at one busy endpoint, which held the whole dispatcher to one claim
    /// a second. Without it the only way in is `webhook_delivery_pending_version`
    /// (8 ms for the same claim under the same statistics).
    async fn claim(
        &self,
        room: usize,
        in_flight: &HashMap<String, usize>,
    ) -> anyhow::Result<Vec<Due>> {
        let started = std::time::Instant::now();
        let limit = self.endpoint_concurrency;
        let (busy, counts): (Vec<&str>, Vec<i64>) = in_flight
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(m, n)| (m.as_str(), i64::try_from(*n).unwrap_or(i64::MAX)))
            .unzip();
        let saturated: Vec<&str> = in_flight
            .iter()
            .filter(|(_, n)| **n >= limit)
            .map(|(m, _)| m.as_str())
            .collect();
        let claimed = sqlx::query_as(&format!(
            "WITH candidate AS (
                 SELECT d.id, d.endpoint_key, d.next_attempt_at
                   FROM webhook_endpoint w
                  CROSS JOIN LATERAL (
                      SELECT d.id, w.id AS endpoint_key, d.next_attempt_at
                        FROM webhook_delivery d
                       WHERE d.endpoint_id = w.id
                         AND d.status = 'pending' AND d.next_attempt_at <= now()
                         AND (d.leased_until IS NULL OR d.leased_until < now())
                         AND NOT EXISTS (SELECT 1 FROM webhook_delivery e
                                          WHERE e.transaction_id = d.transaction_id AND e.endpoint_id IS NOT DISTINCT FROM d.endpoint_id
                                            AND e.status = 'pending' AND e.version < d.version)
                       ORDER BY d.next_attempt_at
                       LIMIT $6) d
                  WHERE w.disabled_at IS NULL AND w.enabled
                    AND NOT (w.id = ANY($3))
                 UNION ALL
                 (SELECT d.id, d.url, d.next_attempt_at
                    FROM webhook_delivery d
                   WHERE d.endpoint_id IS NULL
                     AND d.status = 'pending' AND d.next_attempt_at <= now()
                     AND (d.leased_until IS NULL OR d.leased_until < now())
                     AND NOT (d.url = ANY($3))
                     AND NOT EXISTS (SELECT 1 FROM webhook_delivery e
                                      WHERE e.transaction_id = d.transaction_id AND e.endpoint_id IS NULL
                                        AND e.status = 'pending' AND e.version < d.version)
                   ORDER BY d.next_attempt_at
                   LIMIT $1)
             ), ranked AS (
                 SELECT c.id, c.next_attempt_at,
                        row_number() OVER (PARTITION BY c.endpoint_key ORDER BY c.next_attempt_at, c.id) AS rank,
                        coalesce(b.n, 0) AS busy
                   FROM candidate c
                   LEFT JOIN unnest($4::text[], $5::bigint[]) AS b(endpoint_key, n) USING (endpoint_key)
             ), picked AS (
                 SELECT id FROM ranked WHERE rank + busy <= $6 ORDER BY next_attempt_at LIMIT $1
             ), locked AS (
                 SELECT id, endpoint_id FROM webhook_delivery
                  WHERE id IN (SELECT id FROM picked) AND status = 'pending' AND next_attempt_at <= now()
                    AND (leased_until IS NULL OR leased_until < now())
                    FOR UPDATE SKIP LOCKED
             )
             UPDATE webhook_delivery d
                SET leased_until = now() + make_interval(secs => $2::double precision / 1000)
               FROM locked l
               LEFT JOIN webhook_endpoint w ON w.id = l.endpoint_id, merchant m
              WHERE d.id = l.id AND m.id = d.merchant_id
          RETURNING {CLAIMED}"
        ))
        .bind(i64::try_from(room).unwrap_or(i64::MAX))
        .bind(millis(self.lease))
        .bind(&saturated)
        .bind(&busy)
        .bind(&counts)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        // Planned for the deliveries as they are now, not kept from when the table was
        // empty (then every look-up of an earlier version is a pass over the table).
        .persistent(false)
        .fetch_all(&self.pool)
        .await
        .context("claiming due webhook deliveries");
        if started.elapsed() >= SLOW_CLAIM {
            self.refresh_statistics().await;
        }
        claimed
    }

    /// Analyzes the deliveries after a slow claim, at most once per
    /// [`ANALYZE_AT_MOST_EVERY`]. A fresh database that fills faster than autovacuum's
    /// first look (a minute by default) plans the claim for an empty table: under such
    /// statistics the claim's per-candidate checks ran as full index scans, 1.1 million
    /// buffers and 5 s a claim with 6,000 deliveries waiting. Best effort: a role that
    /// may not analyze the table is told so by PostgreSQL (a warning), and autovacuum
    /// catches up in the end.
    async fn refresh_statistics(&self) {
        let now_ms = u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or_default();
        let last = self
            .analyzed_at_ms
            .load(std::sync::atomic::Ordering::Relaxed);
        let every = u64::try_from(ANALYZE_AT_MOST_EVERY.as_millis()).unwrap_or(u64::MAX);
        if now_ms.saturating_sub(last) < every
            || self
                .analyzed_at_ms
                .compare_exchange(
                    last,
                    now_ms,
                    std::sync::atomic::Ordering::Relaxed,
                    std::sync::atomic::Ordering::Relaxed,
                )
                .is_err()
        {
            return;
        }
        match sqlx::query("ANALYZE webhook_delivery")
            .execute(&self.pool)
            .await
        {
            Ok(_) => tracing::info!("a slow claim: the deliveries' statistics were refreshed"),
            Err(error) => {
                tracing::warn!(%error, "a slow claim, and the deliveries could not be analyzed")
            }
        }
    }

    /// Claims one probe per disabled endpoint whose probe is due: its oldest pending
    /// delivery. Moving its `probe_at` on first makes each probe one dispatcher's.
    async fn claim_probes(&self, in_flight: &HashMap<String, usize>) -> anyhow::Result<Vec<Due>> {
        let busy: Vec<&str> = in_flight
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(m, _)| m.as_str())
            .collect();
        sqlx::query_as(&format!(
            "WITH probed AS (
                 UPDATE webhook_endpoint
                    SET probe_at = now() + make_interval(secs => $1::double precision / 1000)
                  WHERE disabled_at IS NOT NULL AND probe_at <= now() AND enabled
                    AND NOT (id = ANY($3))
              RETURNING id
             ), head AS (
                 SELECT DISTINCT ON (d.endpoint_id) d.id, d.endpoint_id
                   FROM webhook_delivery d JOIN probed p ON p.id = d.endpoint_id
                  WHERE d.status = 'pending'
                    AND NOT EXISTS (SELECT 1 FROM webhook_delivery e
                                     WHERE e.transaction_id = d.transaction_id AND e.endpoint_id IS NOT DISTINCT FROM d.endpoint_id
                                       AND e.status = 'pending' AND e.version < d.version)
                  ORDER BY d.endpoint_id, d.created_at, d.id
             )
             UPDATE webhook_delivery d
                SET leased_until = now() + make_interval(secs => $2::double precision / 1000)
               FROM head l
               LEFT JOIN webhook_endpoint w ON w.id = l.endpoint_id, merchant m
              WHERE d.id = l.id AND m.id = d.merchant_id
          RETURNING {CLAIMED}"
        ))
        .bind(millis(self.probe_interval))
        .bind(millis(self.lease))
        .bind(&busy)
        .fetch_all(&self.pool)
        .await
        .context("claiming webhook probes")
    }

    /// Sends one claimed delivery and records the outcome; with a rate limit, at the
    /// endpoint's next free slot, or back to wait when that is too far.
    async fn deliver(&self, delivery: Due, probe: bool) {
        if let Some(per_second) = delivery.rate_limit {
            let per_second = u32::try_from(per_second).unwrap_or(1);
            match self
                .limiter
                .reserve(&delivery.endpoint_key, per_second, RATE_PATIENCE)
                .await
            {
                Ok(Slot::After(wait)) => tokio::time::sleep(wait).await,
                Ok(Slot::Busy(wait)) => return self.postpone(&delivery, wait).await,
                Err(error) => {
                    tracing::warn!(error = %format!("{error:#}"), delivery_id = %delivery.id, "no rate-limit slot; the webhook waits");
                    return self.postpone(&delivery, self.poll_interval).await;
                }
            }
        }
        let attempt = match self.secrets(&delivery) {
            Ok((secrets, signing_keys)) => {
                let message = Message {
                    url: &delivery.url,
                    webhook_id: &delivery.event_id,
                    transaction_id: &delivery.transaction_id,
                    body: &delivery.body,
                    secrets: &secrets,
                    signing_keys: &signing_keys,
                };
                attempt::send(&self.http, &self.policy, &message).await
            }
            Err(error) => Attempt::failed(
                format!("the signing secret does not open: {error:#}"),
                false,
                std::time::Instant::now(),
            ),
        };
        if let Err(error) = self.record(&delivery, probe, &attempt).await {
            tracing::warn!(error = %format!("{error:#}"), delivery_id = %delivery.id, "could not record a webhook attempt; its lease will expire and it is sent again");
        }
    }

    /// Gives a claimed delivery back, unsent and with no attempt spent, due after `wait`.
    async fn postpone(&self, delivery: &Due, wait: Duration) {
        let postponed = sqlx::query(
            "UPDATE webhook_delivery
                SET next_attempt_at = now() + make_interval(secs => $3::double precision / 1000),
                    leased_until = NULL
              WHERE id = $1 AND status = $4 AND attempt_count = $2",
        )
        .bind(&delivery.id)
        .bind(delivery.attempt_count)
        .bind(millis(wait))
        .bind(PENDING)
        .execute(&self.pool)
        .await;
        if let Err(error) = postponed {
            tracing::warn!(error = %format!("{error:#}"), delivery_id = %delivery.id, "could not postpone a rate-limited webhook; its lease will expire and it is claimed again");
        }
    }

    /// The HMAC secrets and Ed25519 keys that sign `delivery`, opened.
    fn secrets(&self, delivery: &Due) -> anyhow::Result<(Vec<SecretString>, Vec<SecretString>)> {
        let open = |sealed: &Sealed| self.keys.open_secret(sealed);
        let secrets = std::iter::once(&delivery.secret)
            .chain(delivery.previous_secret.as_ref())
            .map(open)
            .collect::<anyhow::Result<_>>()?;
        let signing_keys = delivery
            .signing_key
            .iter()
            .chain(delivery.previous_signing_key.as_ref())
            .map(open)
            .collect::<anyhow::Result<_>>()?;
        Ok((secrets, signing_keys))
    }

    /// What follows `attempt`: delivered, retried later, failed, or (a probe that
    /// failed) due again once the endpoint is re-enabled.
    fn outcome(&self, delivery: &Due, probe: bool, attempt: &Attempt) -> Outcome {
        let attempts = delivery.attempt_count + 1;
        let disable_now = if attempt.gone() {
            Some("the endpoint answered 410 Gone".to_owned())
        } else if attempt.refused {
            attempt.error.clone()
        } else {
            None
        };
        if attempt.delivered() {
            return Outcome {
                status: "delivered",
                attempts,
                next: None,
                disable_now: None,
            };
        }
        if probe {
            // A failed probe spends none of the delivery's retries.
            return Outcome {
                status: "pending",
                attempts: delivery.attempt_count,
                next: Some(Duration::ZERO),
                disable_now: None,
            };
        }
        let slot = usize::try_from(delivery.attempt_count).unwrap_or(usize::MAX);
        match self.delays.get(slot) {
            Some(delay) => {
                // Honour Retry-After, but never past the longest configured delay.
                let asked = attempt
                    .retry_after
                    .unwrap_or_default()
                    .min(self.longest_delay);
                Outcome {
                    status: "pending",
                    attempts,
                    next: Some(jitter(*delay, 0.2).max(asked)),
                    disable_now,
                }
            }
            None => Outcome {
                status: "failed",
                attempts,
                next: None,
                disable_now,
            },
        }
    }

    /// Records the attempt, the delivery's next state and the endpoint's health in one
    /// statement, fenced on the attempt number the delivery was claimed with.
    async fn record(&self, delivery: &Due, probe: bool, attempt: &Attempt) -> anyhow::Result<()> {
        let outcome = self.outcome(delivery, probe, attempt);
        let delivered = attempt.delivered();
        if delivered && !probe {
            let together = self
                .delivered
                .record(Delivered {
                    delivery_id: delivery.id.clone(),
                    claimed: delivery.attempt_count,
                    status_code: attempt.status_code.map_or(0, i32::from),
                    duration_ms: i32::try_from(attempt.duration.as_millis()).unwrap_or(i32::MAX),
                })
                .await;
            match together {
                Ok(true) => {
                    log_recorded(delivery, probe, attempt, &outcome);
                    return Ok(());
                }
                // Not the plain case: the full record below decides.
                Ok(false) => {}
                Err(error) => {
                    tracing::warn!(error = %format!("{error:#}"), delivery_id = %delivery.id, "recording delivered webhooks together failed; recording this one alone");
                }
            }
        }
        let row: (i64, Option<bool>, Option<bool>) = sqlx::query_as(
            "WITH delivery AS (
                 UPDATE webhook_delivery
                    SET status = $3, attempt_count = $4, updated_at = now(),
                        next_attempt_at = CASE WHEN $5::bigint IS NULL THEN NULL
                                               ELSE now() + make_interval(secs => $5::double precision / 1000) END,
                        leased_until = NULL
                  WHERE id = $1 AND status = $15 AND attempt_count = $2
              RETURNING id
             ), attempt AS (
                 INSERT INTO webhook_attempt (delivery_id, status_code, error, duration_ms, probe)
                 SELECT id, $6, $7, $8, $9 FROM delivery
             ), verdict AS (
                 SELECT w.id, w.disabled_at IS NOT NULL AS was_disabled,
                        (NOT $11 AND w.disabled_at IS NULL
                         AND ($12::text IS NOT NULL
                              OR w.failing_since <= now() - make_interval(secs => $13::double precision / 1000))
                        ) AS disable
                   FROM webhook_endpoint w
                  WHERE w.id = $10 AND EXISTS (SELECT 1 FROM delivery)
                    AND (NOT $11 OR w.failing_since IS NOT NULL OR w.disabled_at IS NOT NULL)
             ), endpoint AS (
                 UPDATE webhook_endpoint w
                    SET failing_since = CASE WHEN $11 THEN NULL ELSE coalesce(w.failing_since, now()) END,
                        disabled_at = CASE WHEN $11 THEN NULL WHEN v.disable THEN now() ELSE w.disabled_at END,
                        disabled_reason = CASE WHEN $11 THEN NULL
                                               WHEN v.disable THEN coalesce($12, 'failing since ' || w.failing_since)
                                               ELSE w.disabled_reason END,
                        probe_at = CASE WHEN $11 THEN NULL
                                        WHEN v.disable THEN now() + make_interval(secs => $14::double precision / 1000)
                                        ELSE w.probe_at END
                   FROM verdict v
                  WHERE w.id = v.id
              RETURNING v.disable
             ), released AS (
                 UPDATE webhook_delivery
                    SET next_attempt_at = now()
                  WHERE $11 AND endpoint_id = $10 AND status = 'pending' AND id <> $1
                    AND next_attempt_at > now()
                    AND EXISTS (SELECT 1 FROM verdict WHERE was_disabled)
             )
             SELECT (SELECT count(*) FROM delivery),
                    (SELECT disable FROM endpoint),
                    (SELECT was_disabled FROM verdict)",
        )
        .bind(&delivery.id)
        .bind(delivery.attempt_count)
        .bind(outcome.status)
        .bind(outcome.attempts)
        .bind(outcome.next.map(millis))
        .bind(attempt.status_code.map(i32::from))
        .bind(&attempt.error)
        .bind(i32::try_from(attempt.duration.as_millis()).unwrap_or(i32::MAX))
        .bind(probe)
        .bind(&delivery.endpoint_id)
        .bind(delivered)
        .bind(&outcome.disable_now)
        .bind(millis(self.disable_after))
        .bind(millis(self.probe_interval))
        .bind(PENDING)
        .fetch_one(&self.pool)
        .await
        .context("recording a webhook attempt")?;
        let (recorded, disabled, was_disabled) = row;
        if recorded == 0 {
            // Our lease ran out and another sender recorded this attempt number first;
            // its record stands, and ours (a duplicate send) is not counted.
            tracing::warn!(delivery_id = %delivery.id, "webhook attempt recorded by another sender");
            return Ok(());
        }
        log_recorded(delivery, probe, attempt, &outcome);
        if disabled == Some(true) {
            tracing::warn!(merchant_id = %delivery.merchant_id, endpoint_id = delivery.endpoint_id.as_deref(), "webhook endpoint disabled; its deliveries wait and it is probed");
        }
        if delivered && was_disabled == Some(true) {
            tracing::info!(merchant_id = %delivery.merchant_id, endpoint_id = delivery.endpoint_id.as_deref(), "webhook endpoint answered again; re-enabled");
            self.wake.notify_one();
        }
        Ok(())
    }
}

/// Counts and logs an attempt once it is recorded.
fn log_recorded(delivery: &Due, probe: bool, attempt: &Attempt, outcome: &Outcome) {
    paygate_common::metrics::webhook_attempt(outcome.status);
    tracing::info!(
        delivery_id = %delivery.id,
        event_id = %delivery.event_id,
        merchant_id = %delivery.merchant_id,
        endpoint_id = delivery.endpoint_id.as_deref(),
        status_code = attempt.status_code,
        error = attempt.error.as_deref(),
        outcome = outcome.status,
        attempts = outcome.attempts,
        probe,
        "webhook attempt"
    );
}

/// The sends in flight, and how many each endpoint (its id, or a notification URL) has.
#[derive(Default)]
struct InFlight {
    tasks: JoinSet<()>,
    owners: HashMap<tokio::task::Id, String>,
    per_endpoint: HashMap<String, usize>,
}

impl InFlight {
    fn spawn(
        &mut self,
        merchant: String,
        send: impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        let task = self.tasks.spawn(send);
        *self.per_endpoint.entry(merchant.clone()).or_default() += 1;
        self.owners.insert(task.id(), merchant);
    }

    /// Waits for one send to finish (one that panicked counts as finished too), then
    /// reaps every other send that has finished meanwhile. Reaping them all matters:
    /// a finished send still counts against its endpoint until reaped, so reaping one per
    /// claim made each claim find room for one delivery, and the dispatcher sent one
    /// webhook per claim statement (2.5 a second at 400 ms claims under load).
    async fn finish_one(&mut self) {
        let Some(joined) = self.tasks.join_next_with_id().await else {
            return;
        };
        self.reaped(joined);
        self.reap_finished();
    }

    /// Reaps every send that has finished, waiting for none.
    fn reap_finished(&mut self) {
        while let Some(joined) = self.tasks.try_join_next_with_id() {
            self.reaped(joined);
        }
    }

    fn reaped(&mut self, joined: Result<(tokio::task::Id, ()), tokio::task::JoinError>) {
        let id = match joined {
            Ok((id, ())) => id,
            Err(error) => {
                tracing::error!(%error, "a webhook send panicked; its lease expires and it is sent again");
                error.id()
            }
        };
        if let Some(merchant) = self.owners.remove(&id) {
            if let Some(n) = self.per_endpoint.get_mut(&merchant) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.per_endpoint.remove(&merchant);
                }
            }
        }
    }
}
