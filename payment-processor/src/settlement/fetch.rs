//! A run's first step: the gateway's report, staged whole in `settlement_line` as it
//! streams in (batches of [`STAGE_BATCH`] lines), before anything is matched. A report
//! that cannot be fetched or read leaves nothing staged: it is tried again with
//! backoff, and after `fetch_attempts` the run is `failed` with the reason.

use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use paygate_common::gateway::settlement::{ReportError, ReportLine};
use paygate_common::gateway::{adapter, Call};

use super::{RunRow, Runner};

/// Lines written per statement while a report streams in.
const STAGE_BATCH: usize = 1_000;

pub(super) enum Fetched {
    Staged,
    Failed,
    Interrupted,
}

impl Runner {
    pub(super) async fn fetch(
        &self,
        run: &RunRow,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Fetched> {
        let mut attempt = u32::try_from(run.fetch_attempts).unwrap_or(0);
        loop {
            attempt += 1;
            sqlx::query("UPDATE settlement_run SET fetch_attempts = $2 WHERE id = $1")
                .bind(run.id)
                .bind(i32::try_from(attempt).unwrap_or(i32::MAX))
                .execute(&self.handler.pool)
                .await?;
            let error = match self.stage(run).await? {
                Ok(lines) => {
                    let moved = sqlx::query(
                        "UPDATE settlement_run
                            SET status = 'matching', rows_read = $3, cursor = NULL, matched = 0
                          WHERE id = $1 AND lease_owner = $2",
                    )
                    .bind(run.id)
                    .bind(self.owner.as_ref())
                    .bind(i64::try_from(lines).unwrap_or(i64::MAX))
                    .execute(&self.handler.pool)
                    .await?
                    .rows_affected();
                    tracing::info!(run_id = run.id, gateway = %run.gateway, lines, "settlement report staged");
                    return Ok(if moved == 1 {
                        Fetched::Staged
                    } else {
                        Fetched::Interrupted
                    });
                }
                Err(error) => error,
            };
            self.unstage(run).await?;
            tracing::warn!(run_id = run.id, gateway = %run.gateway, attempt, %error, "settlement report not had");
            if attempt >= self.settings.fetch_attempts.max(1) {
                sqlx::query(
                    "UPDATE settlement_run
                        SET status = 'failed', error = $3, finished_at = now(),
                            lease_owner = NULL, lease_until = NULL
                      WHERE id = $1 AND lease_owner = $2",
                )
                .bind(run.id)
                .bind(self.owner.as_ref())
                .bind(format!("after {attempt} attempts: {error}"))
                .execute(&self.handler.pool)
                .await?;
                return Ok(Fetched::Failed);
            }
            let wait = self
                .settings
                .fetch_backoff()
                .saturating_mul(2u32.saturating_pow(attempt - 1))
                .min(Duration::from_secs(600));
            tokio::select! {
                () = shutdown.cancelled() => return Ok(Fetched::Interrupted),
                () = tokio::time::sleep(wait) => {}
            }
            if !self.renew(run).await? {
                return Ok(Fetched::Interrupted);
            }
        }
    }

    /// Drops whatever an earlier attempt staged.
    async fn unstage(&self, run: &RunRow) -> anyhow::Result<()> {
        sqlx::query("DELETE FROM settlement_line WHERE run_id = $1")
            .bind(run.id)
            .execute(&self.handler.pool)
            .await
            .context("dropping staged lines")?;
        Ok(())
    }

    /// Streams the report into `settlement_line`: the outer error is the database's,
    /// the inner the report's.
    async fn stage(&self, run: &RunRow) -> anyhow::Result<Result<u64, ReportError>> {
        self.unstage(run).await?;
        let gateway = match self
            .handler
            .routes
            .snapshot()
            .gateway(&run.gateway)
            .cloned()
        {
            Some(gateway) => gateway,
            None => match paygate_common::gateway::find(&self.handler.pool, &run.gateway).await? {
                Some(gateway) => gateway,
                None => {
                    return Ok(Err(ReportError::Unreadable(format!(
                        "no gateway {}",
                        run.gateway
                    ))))
                }
            },
        };
        let Some(adapter) = adapter(&gateway.protocol) else {
            return Ok(Err(ReportError::Unreadable(format!(
                "no adapter speaks {}",
                gateway.protocol
            ))));
        };
        let (sender, mut receiver) = mpsc::channel::<ReportLine>(STAGE_BATCH * 2);
        let call = Call {
            http: &self.handler.http,
            gateway: &gateway,
        };
        let period = run.period();
        let report = async move {
            let read = adapter.settlement_report(call, period, &sender).await;
            drop(sender);
            read
        };
        // Owns the receiver: if staging stops on an error, the report's sender sees the
        // channel closed instead of waiting on a full one.
        let staging = async move {
            let mut line_no: i32 = 0;
            let mut batch = Vec::with_capacity(STAGE_BATCH);
            while let Some(line) = receiver.recv().await {
                line_no += 1;
                batch.push((line_no, line));
                if batch.len() >= STAGE_BATCH {
                    self.write_lines(run.id, &std::mem::take(&mut batch))
                        .await?;
                }
            }
            self.write_lines(run.id, &batch).await?;
            anyhow::Ok(())
        };
        let (read, staged) = tokio::join!(report, staging);
        staged?;
        Ok(read)
    }

    async fn write_lines(&self, run_id: i64, lines: &[(i32, ReportLine)]) -> anyhow::Result<()> {
        if lines.is_empty() {
            return Ok(());
        }
        let mut numbers = Vec::with_capacity(lines.len());
        let mut references = Vec::with_capacity(lines.len());
        let mut operations = Vec::with_capacity(lines.len());
        let mut payments = Vec::with_capacity(lines.len());
        let mut amounts = Vec::with_capacity(lines.len());
        let mut currencies = Vec::with_capacity(lines.len());
        let mut fees = Vec::with_capacity(lines.len());
        let mut statuses = Vec::with_capacity(lines.len());
        let mut settled = Vec::with_capacity(lines.len());
        for (number, line) in lines {
            numbers.push(*number);
            references.push(line.reference.clone());
            operations.push(line.operation.as_str());
            payments.push(line.payment_reference.clone());
            amounts.push(line.amount);
            currencies.push(line.currency.clone());
            fees.push(line.fee);
            statuses.push(line.status.as_str());
            settled.push(line.settled_at);
        }
        sqlx::query(
            "INSERT INTO settlement_line
                (run_id, line, reference, operation, payment_reference, amount, currency, fee, status, settled_at)
             SELECT $1, * FROM UNNEST($2::int[], $3::text[], $4::text[], $5::text[], $6::numeric[],
                                      $7::text[], $8::numeric[], $9::text[], $10::timestamptz[])
             ON CONFLICT DO NOTHING",
        )
        .bind(run_id)
        .bind(&numbers)
        .bind(&references)
        .bind(&operations)
        .bind(&payments)
        .bind(&amounts)
        .bind(&currencies)
        .bind(&fees)
        .bind(&statuses)
        .bind(&settled)
        .execute(&self.handler.pool)
        .await
        .context("staging report lines")?;
        Ok(())
    }
}
