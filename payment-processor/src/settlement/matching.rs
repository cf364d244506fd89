//! A run's second step: the staged report against Paygate's books, a batch of report
//! references at a time (in reference order, after the run's cursor), then Paygate's
//! side: what Paygate has settled in the period that the report does not list.
//!
//! Per reference, a charge:
//! - settled in the report, unknown to Paygate (or another gateway's): `missing_in_paygate`;
//! - settled more than once: `duplicate_charge`;
//! - settled, and Paygate has it `completed` for another amount or currency:
//!   `amount_mismatch`; `failed`: `status_mismatch` (charged but failed);
//!   still `pending` or `processing` at this gateway (for the same amount): settled from
//!   the report through the version fence, as a status answer would, and kept as a
//!   `status_mismatch` resolved by `paygate`;
//! - declined in the report while Paygate has it `completed`: `status_mismatch`;
//! - `completed` in Paygate, created in the period, not in the report at all:
//!   `missing_at_gateway`.
//!
//! A refund alike (`duplicate_refund` for one paid twice); a refund still pending in
//! Paygate is left to the refund sweeper and listed, not settled from the report.

use std::collections::HashMap;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use paygate_common::domain::{Status, TransactionId};
use paygate_common::gateway::Outcome;
use paygate_common::transactions;

use super::{Ended, RunRow, Runner};

/// Who resolves what the report itself settled.
pub const PAYGATE: &str = "paygate";

#[derive(Debug, Clone, sqlx::FromRow)]
struct Line {
    line: i32,
    reference: String,
    operation: String,
    payment_reference: Option<String>,
    amount: Decimal,
    currency: String,
    fee: Decimal,
    status: String,
    settled_at: DateTime<Utc>,
}

impl Line {
    fn evidence(&self) -> Value {
        json!({
            "line": self.line,
            "operation": self.operation,
            "payment_reference": self.payment_reference,
            "amount": self.amount.to_string(),
            "currency": self.currency,
            "fee": self.fee.to_string(),
            "status": self.status,
            "settled_at": self.settled_at,
        })
    }

    fn settled(&self) -> bool {
        self.status == "settled"
    }
}

/// Paygate's side of a reference: a payment or a refund.
#[derive(Debug, Clone, sqlx::FromRow)]
struct Booked {
    id: String,
    status: String,
    amount: Decimal,
    currency: String,
    gateway: Option<String>,
    gateway_txn_id: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl Booked {
    fn evidence(&self) -> Value {
        json!({
            "id": self.id,
            "status": self.status,
            "amount": self.amount.to_string(),
            "currency": self.currency.trim(),
            "gateway": self.gateway,
            "gateway_txn_id": self.gateway_txn_id,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        })
    }
}

/// A difference found.
struct Found {
    operation: &'static str,
    reference: String,
    kind: &'static str,
    detail: String,
    paygate: Option<Value>,
    report: Value,
    /// Settled by the report: recorded resolved by `paygate`.
    settles: Option<TransactionId>,
}

/// What one batch found.
#[derive(Default)]
struct Batch {
    found: Vec<Found>,
    /// (operation, reference, line) whose fee is kept.
    fees: Vec<(&'static str, Line)>,
    matched: i64,
}

impl Runner {
    /// Matches the staged report batch by batch from the run's cursor, then Paygate's
    /// side; completes the run.
    pub(super) async fn match_all(
        &self,
        run: &mut RunRow,
        max_batches: Option<usize>,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Ended> {
        let mut batches = 0usize;
        loop {
            if shutdown.is_cancelled() || max_batches.is_some_and(|max| batches >= max) {
                return Ok(Ended::Interrupted);
            }
            if !self.renew(run).await? {
                return Ok(Ended::Interrupted);
            }
            let references: Vec<String> = sqlx::query_scalar(
                "SELECT DISTINCT reference FROM settlement_line
                  WHERE run_id = $1 AND reference > $2
                  ORDER BY reference LIMIT $3",
            )
            .bind(run.id)
            .bind(run.cursor.as_deref().unwrap_or(""))
            .bind(self.settings.batch_size.max(1))
            .fetch_all(&self.handler.pool)
            .await
            .context("reading the next references")?;
            let Some(last) = references.last().cloned() else {
                break;
            };
            let batch = self.match_batch(run, &references).await?;
            if !self.commit_batch(run, batch, &last).await? {
                return Ok(Ended::Interrupted);
            }
            run.cursor = Some(last);
            batches += 1;
        }
        self.paygate_side(run).await?;
        let done = sqlx::query(
            "UPDATE settlement_run
                SET status = 'completed', finished_at = now(), lease_owner = NULL, lease_until = NULL
              WHERE id = $1 AND lease_owner = $2",
        )
        .bind(run.id)
        .bind(self.owner.as_ref())
        .execute(&self.handler.pool)
        .await?
        .rows_affected();
        tracing::info!(run_id = run.id, gateway = %run.gateway, "settlement run completed");
        Ok(if done == 1 {
            Ended::Completed
        } else {
            Ended::Interrupted
        })
    }

    async fn match_batch(&self, run: &RunRow, references: &[String]) -> anyhow::Result<Batch> {
        let pool = &self.handler.pool;
        let lines: Vec<Line> = sqlx::query_as(
            "SELECT line, reference, operation, payment_reference, amount, currency, fee, status, settled_at
               FROM settlement_line WHERE run_id = $1 AND reference = ANY($2) ORDER BY reference, line",
        )
        .bind(run.id)
        .bind(references)
        .fetch_all(pool)
        .await?;
        let payments: HashMap<String, Booked> = sqlx::query_as(
            "SELECT id, status, amount, currency::text AS currency, gateway, gateway_txn_id, created_at, updated_at
               FROM transaction WHERE id = ANY($1)",
        )
        .bind(references)
        .fetch_all(pool)
        .await?
        .into_iter()
        .map(|b: Booked| (b.id.clone(), b))
        .collect();
        let refunds: HashMap<String, Booked> = sqlx::query_as(
            "SELECT id, status, amount, currency::text AS currency, gateway, gateway_refund_id AS gateway_txn_id, created_at, updated_at
               FROM refund WHERE id = ANY($1)",
        )
        .bind(references)
        .fetch_all(pool)
        .await?
        .into_iter()
        .map(|b: Booked| (b.id.clone(), b))
        .collect();

        let mut batch = Batch::default();
        let mut by_reference: Vec<(String, Vec<Line>)> = Vec::new();
        for line in lines {
            match by_reference.last_mut() {
                Some((reference, group)) if *reference == line.reference => group.push(line),
                _ => by_reference.push((line.reference.clone(), vec![line])),
            }
        }
        for (reference, group) in by_reference {
            let charges: Vec<&Line> = group.iter().filter(|l| l.operation == "charge").collect();
            let refund_lines: Vec<&Line> =
                group.iter().filter(|l| l.operation == "refund").collect();
            if !charges.is_empty() {
                let ours = payments
                    .get(&reference)
                    .filter(|p| p.gateway.as_deref() == Some(run.gateway.as_str()));
                compare("charge", &reference, &charges, ours, &mut batch);
            }
            if !refund_lines.is_empty() {
                let ours = refunds
                    .get(&reference)
                    .filter(|r| r.gateway.as_deref() == Some(run.gateway.as_str()));
                compare("refund", &reference, &refund_lines, ours, &mut batch);
            }
        }
        Ok(batch)
    }

    /// Records the batch's differences (each once), fees and the run's progress in one
    /// transaction, after settling what the report settles. `false`: the lease is lost.
    async fn commit_batch(&self, run: &RunRow, batch: Batch, last: &str) -> anyhow::Result<bool> {
        // Settled ones first, their differences recorded before the payment moves: a
        // crash in between finds the difference there, and the payment settled or not
        // (the fence makes settling it again harmless).
        for found in batch.found.iter().filter(|f| f.settles.is_some()) {
            let fresh = self.record(run, found, None).await?;
            if fresh {
                paygate_common::metrics::settlement_difference(
                    &run.gateway,
                    found.kind,
                    "settled_from_report",
                );
            }
            if let Some(id) = &found.settles {
                self.settle_from_report(run, id).await?;
            }
        }
        let mut tx = self.handler.pool.begin().await?;
        let held: Option<i32> = sqlx::query_scalar(
            "SELECT 1 FROM settlement_run WHERE id = $1 AND lease_owner = $2 FOR UPDATE",
        )
        .bind(run.id)
        .bind(self.owner.as_ref())
        .fetch_optional(&mut *tx)
        .await?;
        if held.is_none() {
            return Ok(false);
        }
        let mut fresh = Vec::new();
        for found in batch.found.iter().filter(|f| f.settles.is_none()) {
            if self.record(run, found, Some(&mut tx)).await? {
                fresh.push(found.kind);
            }
        }
        // One statement for the batch's fees (a reference's first settled line).
        let fees = &batch.fees;
        sqlx::query(
            "INSERT INTO settlement_fee (gateway, operation, reference, amount, currency, fee, settled_at, run_id)
             SELECT $1, * , $8 FROM UNNEST($2::text[], $3::text[], $4::numeric[], $5::text[],
                                        $6::numeric[], $7::timestamptz[])
             ON CONFLICT (gateway, operation, reference) DO UPDATE
                SET amount = EXCLUDED.amount, fee = EXCLUDED.fee, settled_at = EXCLUDED.settled_at",
        )
        .bind(&run.gateway)
        .bind(fees.iter().map(|(op, _)| *op).collect::<Vec<_>>())
        .bind(fees.iter().map(|(_, l)| l.reference.as_str()).collect::<Vec<_>>())
        .bind(fees.iter().map(|(_, l)| l.amount).collect::<Vec<_>>())
        .bind(fees.iter().map(|(_, l)| l.currency.as_str()).collect::<Vec<_>>())
        .bind(fees.iter().map(|(_, l)| l.fee).collect::<Vec<_>>())
        .bind(fees.iter().map(|(_, l)| l.settled_at).collect::<Vec<_>>())
        .bind(run.id)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE settlement_run SET cursor = $2, matched = matched + $3 WHERE id = $1")
            .bind(run.id)
            .bind(last)
            .bind(batch.matched)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        for kind in fresh {
            paygate_common::metrics::settlement_difference(&run.gateway, kind, "open");
        }
        Ok(true)
    }

    /// Inserts a difference unless it was found before; `true` when it is new.
    async fn record(
        &self,
        run: &RunRow,
        found: &Found,
        tx: Option<&mut sqlx::Transaction<'_, sqlx::Postgres>>,
    ) -> anyhow::Result<bool> {
        let settled = found.settles.is_some();
        let query = sqlx::query(
            "INSERT INTO settlement_difference
                (run_id, gateway, operation, reference, kind, detail, paygate, gateway_report,
                 resolved_at, resolved_by, resolution_note)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8,
                     CASE WHEN $9 THEN now() END, CASE WHEN $9 THEN $10 END,
                     CASE WHEN $9 THEN 'settled from the settlement report through the version fence' END)
             ON CONFLICT ON CONSTRAINT settlement_difference_once DO NOTHING",
        )
        .bind(run.id)
        .bind(&run.gateway)
        .bind(found.operation)
        .bind(&found.reference)
        .bind(found.kind)
        .bind(&found.detail)
        .bind(&found.paygate)
        .bind(&found.report)
        .bind(settled)
        .bind(PAYGATE);
        let inserted = match tx {
            Some(tx) => query.execute(&mut **tx).await?,
            None => query.execute(&self.handler.pool).await?,
        };
        Ok(inserted.rows_affected() == 1)
    }

    /// Settles a payment the report says this gateway charged, as a status answer saying
    /// "completed" would: under its lock, through the version fence.
    async fn settle_from_report(&self, run: &RunRow, id: &TransactionId) -> anyhow::Result<()> {
        let handler = &self.handler;
        let Some(gateway) = handler.routes.snapshot().gateway(&run.gateway).cloned() else {
            anyhow::bail!("gateway {} is not loaded", run.gateway);
        };
        let settle = async {
            let Some(seen) = transactions::find(&handler.pool, id).await? else {
                return anyhow::Ok(());
            };
            if !matches!(seen.status, Status::Pending | Status::Processing) {
                return Ok(());
            }
            let outcome = Outcome::Completed {
                gateway_txn_id: seen
                    .gateway_txn_id
                    .clone()
                    .unwrap_or_else(|| format!("settlement:{}", seen.id)),
            };
            handler
                .settle_with(&seen, &gateway, &outcome)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))
        };
        match handler.locks.run_locked(id.as_str(), settle).await? {
            Some(settled) => settled,
            None => anyhow::bail!("payment {id} is locked; the run goes on later"),
        }
    }

    /// What Paygate settled in the period that the report does not list at all.
    pub(super) async fn paygate_side(&self, run: &RunRow) -> anyhow::Result<()> {
        for (operation, table, columns) in [
            ("charge", "transaction", "gateway_txn_id"),
            ("refund", "refund", "gateway_refund_id"),
        ] {
            let inserted: Vec<String> = sqlx::query_scalar(&format!(
                "INSERT INTO settlement_difference
                    (run_id, gateway, operation, reference, kind, detail, paygate)
                 SELECT $1, $2, '{operation}', t.id, 'missing_at_gateway',
                        'Paygate has it completed at this gateway; the report does not list it',
                        jsonb_build_object('id', t.id, 'status', t.status, 'amount', t.amount::text,
                                           'currency', t.currency, 'gateway', t.gateway,
                                           'gateway_txn_id', t.{columns}, 'created_at', t.created_at,
                                           'updated_at', t.updated_at)
                   FROM {table} t
                  WHERE t.gateway = $2 AND t.status = 'completed'
                    AND t.created_at >= $3 AND t.created_at < $4
                    AND NOT EXISTS (SELECT 1 FROM settlement_line l
                                     WHERE l.run_id = $1 AND l.reference = t.id)
                 ON CONFLICT ON CONSTRAINT settlement_difference_once DO NOTHING
                 RETURNING kind"
            ))
            .bind(run.id)
            .bind(&run.gateway)
            .bind(run.period_start)
            .bind(run.period_end)
            .fetch_all(&self.handler.pool)
            .await
            .context("finding what the report does not list")?;
            for _ in inserted {
                paygate_common::metrics::settlement_difference(
                    &run.gateway,
                    "missing_at_gateway",
                    "open",
                );
            }
        }
        Ok(())
    }
}

/// Compares one reference's report lines (`operation`) with Paygate's record of it.
fn compare(
    operation: &'static str,
    reference: &str,
    lines: &[&Line],
    ours: Option<&Booked>,
    batch: &mut Batch,
) {
    let report = Value::Array(lines.iter().map(|l| l.evidence()).collect());
    let settled: Vec<&&Line> = lines.iter().filter(|l| l.settled()).collect();
    let mut differ = |kind: &'static str, detail: String, settles: Option<TransactionId>| {
        batch.found.push(Found {
            operation,
            reference: reference.to_owned(),
            kind,
            detail,
            paygate: ours.map(Booked::evidence),
            report: report.clone(),
            settles,
        });
    };
    let what = if operation == "charge" {
        "charged"
    } else {
        "refunded"
    };
    let Some(ours) = ours else {
        if !settled.is_empty() {
            differ(
                "missing_in_paygate",
                format!("the gateway {what} it; Paygate has no {operation} under this reference at this gateway"),
                None,
            );
        } else {
            batch.matched += 1;
        }
        return;
    };
    let mut clean = true;
    if settled.len() > 1 {
        clean = false;
        let kind = if operation == "charge" {
            "duplicate_charge"
        } else {
            "duplicate_refund"
        };
        differ(
            kind,
            format!("the gateway {what} it {} times", settled.len()),
            None,
        );
    }
    let status = ours.status.as_str();
    match settled.first() {
        Some(line) => {
            let same_money =
                line.amount == ours.amount && line.currency.trim() == ours.currency.trim();
            match status {
                "completed" if !same_money => {
                    clean = false;
                    differ(
                        "amount_mismatch",
                        format!(
                            "Paygate has {} {}; the gateway {what} {} {}",
                            ours.amount,
                            ours.currency.trim(),
                            line.amount,
                            line.currency
                        ),
                        None,
                    );
                }
                "completed" => batch.fees.push((operation, (**line).clone())),
                "failed" => {
                    clean = false;
                    differ(
                        "status_mismatch",
                        format!("the gateway {what} it; Paygate has it failed"),
                        None,
                    );
                }
                _ if operation == "charge" && same_money => {
                    clean = false;
                    batch.fees.push((operation, (**line).clone()));
                    differ(
                        "status_mismatch",
                        format!("Paygate had it {status}; the gateway's report says it charged it: settled from the report"),
                        ours.id.parse().ok(),
                    );
                }
                _ => {
                    clean = false;
                    differ(
                        if same_money {
                            "status_mismatch"
                        } else {
                            "amount_mismatch"
                        },
                        format!(
                            "Paygate has it {status} ({} {}); the gateway {what} {} {}",
                            ours.amount,
                            ours.currency.trim(),
                            line.amount,
                            line.currency
                        ),
                        None,
                    );
                }
            }
        }
        None => {
            if status == "completed" {
                clean = false;
                differ(
                    "status_mismatch",
                    "Paygate has it completed; the gateway's report says it declined it".to_owned(),
                    None,
                );
            }
        }
    }
    if clean {
        batch.matched += 1;
    }
}
