//! Which gateways may take a payment, best first: the routes for its country (with
//! matching or wildcard currency and kind) by priority, then the default routes (no
//! country) by priority. Disabled gateways are left out; each gateway appears once.

use sqlx::PgExecutor;

use paygate_common::gateway::GatewayRecord;
use paygate_common::transactions::TransactionRecord;

pub async fn candidates<'e>(
    executor: impl PgExecutor<'e>,
    transaction: &TransactionRecord,
) -> sqlx::Result<Vec<GatewayRecord>> {
    sqlx::query_as(
        "SELECT g.code, g.protocol, g.base_url, g.callback_secret, g.timeout_ms, g.enabled
           FROM (SELECT DISTINCT ON (r.gateway_code) r.gateway_code,
                        (r.country IS NULL) AS is_default, r.priority
                   FROM gateway_route r
                  WHERE (r.country = $1 OR r.country IS NULL)
                    AND (r.currency = $2 OR r.currency IS NULL)
                    AND (r.kind = $3 OR r.kind IS NULL)
                  ORDER BY r.gateway_code, (r.country IS NULL), r.priority) best
           JOIN gateway g ON g.code = best.gateway_code
          WHERE g.enabled
          ORDER BY best.is_default, best.priority, g.code",
    )
    .bind(&transaction.country)
    .bind(&transaction.currency)
    .bind(transaction.kind.as_str())
    .fetch_all(executor)
    .await
}
