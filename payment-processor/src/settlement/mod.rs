//! Reconciliation against the gateways' settlement reports ("settlement runs"; not
//! [`crate::reconcile`], which keeps asking gateways about payments that wait). A run
//! takes one gateway's report for one period `[start, end)`, matches it with Paygate's
//! payments and refunds by reference, and records what does not match, each difference
//! once, with both sides' evidence.
//!
//! How the guarantees are kept:
//! - **One run per gateway and period, at a time, across replicas.** A run is one
//!   `settlement_run` row (unique per gateway and period); a replica works on it only
//!   while it holds the row's lease, claimed with `FOR UPDATE SKIP LOCKED` and renewed
//!   with every batch. A replica that lost its lease stops before it writes.
//! - **Never half-applied.** The report is staged whole ([`fetch`]: line by line into
//!   `settlement_line`, as it streams in) before anything is matched; a report that
//!   cannot be fetched or read is tried again (`fetch_attempts`, backoff doubling), its
//!   staged lines dropped each time, and then the run is `failed` with the reason.
//! - **Resumable and idempotent.** Matching ([`matching`]) goes through the report's
//!   references in order, a batch at a time; each batch's differences, fees and the
//!   run's cursor commit together, so a replica that takes up a dead one's run goes on
//!   after the last committed batch. Differences are unique per gateway, operation,
//!   reference and kind, so a batch done twice, or the period run again, finds nothing
//!   twice; a re-run of a period takes up the same row, whose id its differences keep.
//! - **What the report settles, it settles as a status answer would.** A payment still
//!   pending (unresolved, or waiting on a callback) at the gateway whose report says it
//!   charged it is settled through [`crate::PaymentHandler::settle_with`]: the version
//!   fence, one event, one webhook. The difference is kept, marked resolved by
//!   `paygate`. Everything else is left open for a human, counted in
//!   `paygate_settlement_differences_total`.
//!
//! Runs start from the schedule (each enabled gateway's last finished period, a UTC day
//! by default) and on demand from the command topic (`paygate.settlement.commands`,
//! which the admin API and the console produce to): [`request`] records either as a
//! `requested` row, and [`Runner`] takes them.

mod fetch;
mod matching;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _};
use chrono::{DateTime, TimeZone as _, Utc};
use prost::Message as _;
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use paygate_common::config::SettlementSettings;
use paygate_common::events::proto;
use paygate_common::gateway::settlement::Period;
use paygate_common::kafka::{HandlerError, Inbound};

use crate::PaymentHandler;

/// Wakes this process's runner when a request was recorded.
static REQUESTED: Notify = Notify::const_new();

/// A run as its row holds it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RunRow {
    pub id: i64,
    pub gateway: String,
    pub period_start: DateTime<Utc>,
    pub period_end: DateTime<Utc>,
    pub status: String,
    pub cursor: Option<String>,
    pub fetch_attempts: i32,
}

impl RunRow {
    fn period(&self) -> Period {
        Period {
            start: self.period_start,
            end: self.period_end,
        }
    }
}

/// Records a request to run `gateway`'s `period`: a new run, or the period's run
/// set to run again when it has ended (completed or failed). A run waiting or under way
/// is left as it is: it will give the same result. Returns the run's id.
pub async fn request(
    pool: &PgPool,
    gateway: &str,
    period: Period,
    requested_by: &str,
) -> sqlx::Result<i64> {
    let id: Option<i64> = sqlx::query_scalar(
        "INSERT INTO settlement_run (gateway, period_start, period_end, requested_by)
         VALUES ($1, $2, $3, $4)
         ON CONFLICT ON CONSTRAINT settlement_run_once DO UPDATE
            SET status = 'requested', requested_by = EXCLUDED.requested_by,
                requested_at = now(), cursor = NULL, rows_read = 0, matched = 0,
                fetch_attempts = 0, error = NULL, started_at = NULL, finished_at = NULL
          WHERE settlement_run.status IN ('completed', 'failed')
         RETURNING id",
    )
    .bind(gateway)
    .bind(period.start)
    .bind(period.end)
    .bind(requested_by)
    .fetch_optional(pool)
    .await?;
    let id = match id {
        Some(id) => id,
        None => {
            sqlx::query_scalar(
                "SELECT id FROM settlement_run
                  WHERE gateway = $1 AND period_start = $2 AND period_end = $3",
            )
            .bind(gateway)
            .bind(period.start)
            .bind(period.end)
            .fetch_one(pool)
            .await?
        }
    };
    REQUESTED.notify_one();
    Ok(id)
}

/// The scheduled period that ended last before `now - delay`, periods aligned to the
/// epoch.
pub fn last_finished_period(now: DateTime<Utc>, every: Duration, delay: Duration) -> Period {
    let every_ms = i64::try_from(every.as_millis()).unwrap_or(i64::MAX).max(1);
    let delay_ms = i64::try_from(delay.as_millis()).unwrap_or(0);
    let end_ms = (now.timestamp_millis() - delay_ms).div_euclid(every_ms) * every_ms;
    let at = |ms: i64| Utc.timestamp_millis_opt(ms).single().unwrap_or(now);
    Period {
        start: at(end_ms - every_ms),
        end: at(end_ms),
    }
}

impl PaymentHandler {
    /// A message of the command topic: records the run it asks for.
    pub(crate) async fn handle_settlement_command(
        &self,
        message: &Inbound,
    ) -> Result<(), HandlerError> {
        let command = proto::SettlementRunRequested::decode(message.payload.as_slice())
            .map_err(HandlerError::permanent)?;
        let at = |ms: i64| {
            Utc.timestamp_millis_opt(ms)
                .single()
                .ok_or_else(|| HandlerError::permanent(anyhow!("{ms} is not a time")))
        };
        let period = Period {
            start: at(command.period_start)?,
            end: at(command.period_end)?,
        };
        if period.end <= period.start {
            return Err(HandlerError::permanent(anyhow!("an empty period")));
        }
        let known: Option<i32> = sqlx::query_scalar("SELECT 1 FROM gateway WHERE code = $1")
            .bind(&command.gateway)
            .fetch_optional(&self.pool)
            .await
            .map_err(HandlerError::transient)?;
        if known.is_none() {
            return Err(HandlerError::permanent(anyhow!(
                "no gateway {:?}",
                command.gateway
            )));
        }
        let id = request(&self.pool, &command.gateway, period, &command.requested_by)
            .await
            .map_err(HandlerError::transient)?;
        tracing::info!(run_id = id, gateway = %command.gateway, start = %period.start, end = %period.end, by = %command.requested_by, "settlement run requested");
        Ok(())
    }
}

/// How a run ended, as [`Runner::run_claimed`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    Completed,
    Failed,
    /// Stopped before its end (shutdown, a lost lease, or a test's batch limit): its
    /// lease runs out and it is taken up again where it stopped.
    Interrupted,
}

/// Takes runs and runs them, one at a time per replica.
#[derive(Clone)]
pub struct Runner {
    handler: PaymentHandler,
    settings: SettlementSettings,
    /// This replica's name in the leases it holds.
    owner: Arc<str>,
}

impl Runner {
    pub fn new(handler: PaymentHandler) -> Self {
        let settings = handler.settings.settlement.clone();
        Runner {
            handler,
            settings,
            owner: format!("pp-{}", uuid::Uuid::new_v4().simple()).into(),
        }
    }

    /// Every `poll_interval` (or at once when a request is recorded here): schedules
    /// the last finished period of each enabled gateway, then runs what is claimable.
    pub async fn run(self, shutdown: CancellationToken) {
        if !self.settings.enabled {
            // This replica records requests only; it ends with the others.
            shutdown.cancelled().await;
            return;
        }
        loop {
            if self.settings.scheduled {
                if let Err(error) = self.schedule().await {
                    tracing::warn!(error = %format!("{error:#}"), "scheduling settlement runs failed");
                }
            }
            loop {
                match self.run_next(None, &shutdown).await {
                    Ok(Some(_)) if !shutdown.is_cancelled() => continue,
                    Ok(_) => break,
                    Err(error) => {
                        tracing::warn!(error = %format!("{error:#}"), "a settlement run stopped");
                        break;
                    }
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = REQUESTED.notified() => {}
                () = tokio::time::sleep(self.settings.poll_interval()) => {}
            }
        }
    }

    /// Records the scheduled run of each enabled gateway's last finished period, once.
    async fn schedule(&self) -> anyhow::Result<()> {
        let period =
            last_finished_period(Utc::now(), self.settings.period(), self.settings.delay());
        sqlx::query(
            "INSERT INTO settlement_run (gateway, period_start, period_end, requested_by)
             SELECT code, $1, $2, 'schedule' FROM gateway WHERE enabled
             ON CONFLICT ON CONSTRAINT settlement_run_once DO NOTHING",
        )
        .bind(period.start)
        .bind(period.end)
        .execute(&self.handler.pool)
        .await
        .context("scheduling settlement runs")?;
        Ok(())
    }

    /// Claims the oldest claimable run (requested, or under way with its lease run out)
    /// and runs it; `None` when there is none. `max_batches` stops it after that many
    /// matched batches, as a crash would (tests).
    pub async fn run_next(
        &self,
        max_batches: Option<usize>,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Option<Ended>> {
        let Some(run) = self.claim().await? else {
            return Ok(None);
        };
        self.run_claimed(run, max_batches, shutdown).await.map(Some)
    }

    async fn claim(&self) -> anyhow::Result<Option<RunRow>> {
        sqlx::query_as(
            "UPDATE settlement_run
                SET lease_owner = $1,
                    lease_until = now() + make_interval(secs => $2::float8 / 1000),
                    started_at = COALESCE(started_at, now()),
                    status = CASE WHEN status = 'requested' THEN 'fetching' ELSE status END
              WHERE id = (SELECT id FROM settlement_run
                           WHERE status IN ('requested', 'fetching', 'matching')
                             AND (lease_until IS NULL OR lease_until < now())
                           ORDER BY requested_at, id
                           LIMIT 1
                           FOR UPDATE SKIP LOCKED)
              RETURNING id, gateway, period_start, period_end, status, cursor, fetch_attempts",
        )
        .bind(self.owner.as_ref())
        .bind(self.lease_ms())
        .fetch_optional(&self.handler.pool)
        .await
        .context("claiming a settlement run")
    }

    fn lease_ms(&self) -> f64 {
        self.settings.lease().as_secs_f64() * 1000.0
    }

    /// Renews the lease on `run`; `false` when another replica holds it now.
    async fn renew(&self, run: &RunRow) -> anyhow::Result<bool> {
        let renewed = sqlx::query(
            "UPDATE settlement_run
                SET lease_until = now() + make_interval(secs => $3::float8 / 1000)
              WHERE id = $1 AND lease_owner = $2",
        )
        .bind(run.id)
        .bind(self.owner.as_ref())
        .bind(self.lease_ms())
        .execute(&self.handler.pool)
        .await?
        .rows_affected();
        Ok(renewed == 1)
    }

    async fn run_claimed(
        &self,
        mut run: RunRow,
        max_batches: Option<usize>,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Ended> {
        let started = Instant::now();
        tracing::info!(run_id = run.id, gateway = %run.gateway, start = %run.period_start, status = %run.status, "settlement run taken");
        if run.status == "fetching" {
            match self.fetch(&run, shutdown).await? {
                fetch::Fetched::Staged => {
                    run.status = "matching".to_owned();
                    run.cursor = None;
                }
                fetch::Fetched::Failed => {
                    paygate_common::metrics::settlement_run(
                        &run.gateway,
                        "failed",
                        started.elapsed(),
                    );
                    return Ok(Ended::Failed);
                }
                fetch::Fetched::Interrupted => return Ok(Ended::Interrupted),
            }
        }
        let ended = self.match_all(&mut run, max_batches, shutdown).await?;
        if ended == Ended::Completed {
            paygate_common::metrics::settlement_run(&run.gateway, "completed", started.elapsed());
        }
        Ok(ended)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_scheduled_period_is_the_last_whole_utc_day_once_the_delay_passed() {
        let day = Duration::from_secs(86_400);
        let hour = Duration::from_secs(3_600);
        let at = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        let period = last_finished_period(at("2026-12-05T01:30:00Z"), day, hour);
        assert_eq!(period.start, at("2026-12-04T00:00:00Z"));
        assert_eq!(period.end, at("2026-12-05T00:00:00Z"));
        // Within the delay after midnight: the day before is still the last one due.
        let early = last_finished_period(at("2026-12-05T00:30:00Z"), day, hour);
        assert_eq!(early.start, at("2026-12-03T00:00:00Z"));
    }
}
