//! Withdrawals pay money out, so each merchant's are held to limits an operator sets
//! per currency: the most one withdrawal may pay out (`max_payout`), and the most a UTC
//! day's withdrawals may (`max_daily`). Every payment, deposit or withdrawal, is held to
//! the most one payment may be (`max_payment`). No limits are set until an operator
//! sets them.
//!
//! How "atomically, when payouts race" is kept: intake adds a withdrawal to the day's
//! counter (`merchant_payout_day`) with ONE conditional statement, in the database
//! transaction that creates the withdrawal — `INSERT … ON CONFLICT DO UPDATE SET total =
//! total + amount WHERE total + amount <= max_daily`. Racing payouts queue on the
//! counter's row, each evaluates the condition on the total the one before committed,
//! and one that does not fit gets no row back: it is refused (`422 limit_exceeded`)
//! and its database transaction rolls back, so nothing is written. There is no read
//! followed by a write to race between.
//!
//! A withdrawal that later fails keeps its amount counted for its day: a `failed`
//! payout can still turn out to have been paid (a contradiction an operator resolves),
//! and the limit bounds what was asked to go out. An operator who wants the room back
//! raises the limit.

use rust_decimal::Decimal;
use serde::Serialize;
use sqlx::{PgConnection, PgPool};
use utoipa::ToSchema;

use paygate_common::domain::{Currency, Kind, MerchantId, Money};

use crate::http::error::ApiError;

/// A merchant's limits in one currency, and what today's withdrawals took of them.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow, ToSchema)]
pub struct PayoutLimits {
    /// ISO 4217.
    #[schema(example = "EUR")]
    pub currency: String,
    /// The most one payment, deposit or withdrawal, may be; `null`: no limit.
    #[schema(value_type = Option<String>, example = "10000.00")]
    pub max_payment: Option<Decimal>,
    /// The most one withdrawal may pay out; `null`: no limit.
    #[schema(value_type = Option<String>, example = "1000.00")]
    pub max_payout: Option<Decimal>,
    /// The most a UTC day's withdrawals may pay out together; `null`: no limit.
    #[schema(value_type = Option<String>, example = "5000.00")]
    pub max_daily_payouts: Option<Decimal>,
    /// What today's (UTC) accepted withdrawals add up to, failed ones included.
    #[schema(value_type = String, example = "1250.00")]
    pub paid_out_today: Decimal,
}

/// A merchant's limits in one currency, as an operator sets them.
#[derive(Debug, Clone, Copy, Default)]
pub struct Limits {
    pub max_payment: Option<Decimal>,
    pub max_payout: Option<Decimal>,
    pub max_daily: Option<Decimal>,
}

/// Sets (or, all `None`, removes) a merchant's limits in `currency`; `None` when there
/// is no such merchant.
pub async fn set(
    pool: &PgPool,
    merchant: &MerchantId,
    currency: Currency,
    limits: Limits,
) -> sqlx::Result<Option<PayoutLimits>> {
    let Limits {
        max_payment,
        max_payout,
        max_daily,
    } = limits;
    let mut tx = pool.begin().await?;
    let known: Option<i32> = sqlx::query_scalar("SELECT 1 FROM merchant WHERE id = $1")
        .bind(merchant.as_str())
        .fetch_optional(&mut *tx)
        .await?;
    if known.is_none() {
        return Ok(None);
    }
    if max_payment.is_none() && max_payout.is_none() && max_daily.is_none() {
        sqlx::query("DELETE FROM merchant_payout_limit WHERE merchant_id = $1 AND currency = $2")
            .bind(merchant.as_str())
            .bind(currency.code())
            .execute(&mut *tx)
            .await?;
    } else {
        sqlx::query(
            "INSERT INTO merchant_payout_limit (merchant_id, currency, max_payout, max_daily, max_payment)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (merchant_id, currency) DO UPDATE
                SET max_payout = EXCLUDED.max_payout, max_daily = EXCLUDED.max_daily,
                    max_payment = EXCLUDED.max_payment, updated_at = now()",
        )
        .bind(merchant.as_str())
        .bind(currency.code())
        .bind(max_payout)
        .bind(max_daily)
        .bind(max_payment)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    let limits = of_merchant(pool, merchant).await?;
    Ok(Some(
        limits
            .into_iter()
            .find(|l| l.currency == currency.code())
            .unwrap_or(PayoutLimits {
                currency: currency.code().to_owned(),
                max_payment: None,
                max_payout: None,
                max_daily_payouts: None,
                paid_out_today: Decimal::ZERO,
            }),
    ))
}

/// A merchant's limits, by currency, with today's totals.
pub async fn of_merchant(pool: &PgPool, merchant: &MerchantId) -> sqlx::Result<Vec<PayoutLimits>> {
    sqlx::query_as(
        "SELECT trim(l.currency) AS currency, l.max_payment, l.max_payout,
                l.max_daily AS max_daily_payouts,
                COALESCE(d.total, 0) AS paid_out_today
           FROM merchant_payout_limit l
           LEFT JOIN merchant_payout_day d
             ON d.merchant_id = l.merchant_id AND d.currency = l.currency
            AND d.day = (now() AT TIME ZONE 'UTC')::date
          WHERE l.merchant_id = $1
          ORDER BY l.currency",
    )
    .bind(merchant.as_str())
    .fetch_all(pool)
    .await
}

/// Holds a payment of `money` to its merchant's limits, inside the intake's database
/// transaction: refused with `422 limit_exceeded` (field `amount`) when it is over the
/// most one payment may be, or (a withdrawal) over the most one payout may be, or does
/// not fit in what is left of today's; a withdrawal is otherwise added to today's
/// total, committed with it or not at all.
pub async fn reserve(
    conn: &mut PgConnection,
    merchant: &MerchantId,
    money: &Money,
    kind: Kind,
) -> Result<(), ApiError> {
    let currency = money.currency().code();
    let limits: Option<(Option<Decimal>, Option<Decimal>, Option<Decimal>)> = sqlx::query_as(
        "SELECT max_payment, max_payout, max_daily FROM merchant_payout_limit
          WHERE merchant_id = $1 AND currency = $2",
    )
    .bind(merchant.as_str())
    .bind(currency)
    .fetch_optional(&mut *conn)
    .await?;
    let Some((max_payment, max_payout, max_daily)) = limits else {
        return Ok(());
    };
    if let Some(max) = max_payment.filter(|max| money.amount() > *max) {
        return Err(ApiError::refused(
            "limit_exceeded",
            Some("amount"),
            format!(
                "{} {currency} is over this merchant's limit of {max} {currency} per payment",
                money.amount()
            ),
        ));
    }
    if kind != Kind::Withdrawal {
        return Ok(());
    }
    let amount = money.amount();
    let exceeded = |message: String| ApiError::refused("limit_exceeded", Some("amount"), message);
    if let Some(max) = max_payout.filter(|max| amount > *max) {
        return Err(exceeded(format!(
            "{amount} {currency} is over this merchant's limit of {max} {currency} per payout"
        )));
    }
    let Some(max) = max_daily else {
        return Ok(());
    };
    if amount > max {
        return Err(exceeded(format!(
            "{amount} {currency} is over this merchant's limit of {max} {currency} of payouts per day"
        )));
    }
    let counted: Option<Decimal> = sqlx::query_scalar(
        "INSERT INTO merchant_payout_day AS d (merchant_id, currency, day, total)
         VALUES ($1, $2, (now() AT TIME ZONE 'UTC')::date, $3)
         ON CONFLICT (merchant_id, currency, day) DO UPDATE
            SET total = d.total + EXCLUDED.total
          WHERE d.total + EXCLUDED.total <= $4
      RETURNING total",
    )
    .bind(merchant.as_str())
    .bind(currency)
    .bind(amount)
    .bind(max)
    .fetch_optional(&mut *conn)
    .await?;
    match counted {
        Some(_) => Ok(()),
        None => Err(exceeded(format!(
            "{amount} {currency} does not fit in what is left of this merchant's limit of \
             {max} {currency} of payouts today (UTC)"
        ))),
    }
}
