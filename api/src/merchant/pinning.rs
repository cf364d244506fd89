//! The gateways a merchant names on a payment (`"gateway": "simjson"` or a list): each
//! must be enabled, routed for the payment (a route for its country, or a default
//! route, whose currency and kind fit) and able to take its payment method; otherwise
//! the request is refused with `422 gateway_not_available` before anything is stored.
//! The gateways come from the api's cached gateway table; the routes cost one indexed
//! read, and only for a request that names gateways.

use paygate_common::transactions::TransactionRecord;

use crate::http::error::{ApiError, Result};
use crate::AppState;

/// The error code of a named gateway that cannot take the payment.
pub const GATEWAY_NOT_AVAILABLE: &str = "gateway_not_available";

/// Checks every code in `codes` for the payment `record`.
pub async fn check(state: &AppState, record: &TransactionRecord, codes: &[String]) -> Result<()> {
    let method = record.payment_method();
    let gateways = state.gateways.all(&state.pool).await?;
    let routed: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT gateway_code FROM gateway_route
          WHERE gateway_code = ANY($1)
            AND (country IS NULL OR country = $2)
            AND (currency IS NULL OR currency = $3)
            AND (kind IS NULL OR kind = $4)",
    )
    .bind(codes)
    .bind(&record.country)
    .bind(record.currency.trim())
    .bind(record.kind.as_str())
    .fetch_all(&state.pool)
    .await?;
    for code in codes {
        let why = match gateways.iter().find(|g| &g.code == code) {
            None => "there is no such gateway",
            Some(g) if !g.enabled => "it is disabled",
            Some(g) if !g.adapter().is_some_and(|a| a.takes(method)) => {
                "it cannot take this payment method"
            }
            Some(_) if !routed.contains(code) => {
                "it is not routed for this payment's country, currency and kind"
            }
            Some(_) => continue,
        };
        return Err(ApiError::Refused {
            code: GATEWAY_NOT_AVAILABLE,
            message: format!("gateway {code} cannot take this payment: {why}"),
            field: Some("gateway".to_owned()),
        });
    }
    Ok(())
}
