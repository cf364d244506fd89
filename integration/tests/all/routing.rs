//! Which gateways a payment is offered to, and in what order.

use paygate_common::domain::{Country, Currency, Kind, Money};
use paygate_common::gateway::{self, GatewayConfig, Route};
use paygate_common::transactions::{self, NewTransaction, TransactionRecord};
use paygate_payment_processor::routing::Snapshot;
use sqlx::PgPool;

async fn gateway(pool: &PgPool, code: &str, enabled: bool) {
    let config = GatewayConfig {
        code: code.to_owned(),
        protocol: "json".to_owned(),
        base_url: format!("http://127.0.0.1:9/{code}"),
        callback_secret: "s".to_owned().into(),
        timeout_ms: 1_000,
        max_concurrency: 4,
        enabled,
        timings: paygate_common::gateway::Timings::default(),
    };
    gateway::upsert(pool, &paygate_testkit::keys(), &config)
        .await
        .unwrap();
}

async fn route(
    pool: &PgPool,
    country: Option<&str>,
    currency: Option<&str>,
    kind: Option<Kind>,
    priority: i32,
    code: &str,
) {
    let route = Route {
        country: country.map(str::to_owned),
        currency: currency.map(str::to_owned),
        kind,
        priority,
        gateway_code: code.to_owned(),
    };
    gateway::upsert_route(pool, &route).await.unwrap();
}

async fn payment(
    pool: &PgPool,
    country: Option<&str>,
    currency: &str,
    kind: Kind,
) -> TransactionRecord {
    let merchant = paygate_api::merchants::create(pool, &paygate_testkit::keys(), "m", None, None)
        .await
        .unwrap();
    let currency: Currency = currency.parse().unwrap();
    let mut conn = pool.acquire().await.unwrap();
    transactions::create(
        &mut conn,
        NewTransaction {
            merchant_id: merchant.id,
            kind,
            money: Money::parse("10", currency).unwrap(),
            user_id: "u".to_owned(),
            country: country.map(|c| c.parse::<Country>().unwrap()),
            reference: None,
            card: None,
            metadata: Default::default(),
        },
    )
    .await
    .unwrap()
}

async fn codes(pool: &PgPool, payment: &TransactionRecord) -> Vec<String> {
    Snapshot::load(pool)
        .await
        .unwrap()
        .candidates(payment)
        .into_iter()
        .map(|g| g.code)
        .collect()
}

#[tokio::test]
async fn country_routes_come_first_by_priority_then_default_routes_and_disabled_or_unmatched_gateways_are_skipped(
) {
    let settings = paygate_testkit::settings().await;
    let pool = paygate_testkit::pool(&settings).await;
    for (code, enabled) in [
        ("de_first", true),
        ("de_second", true),
        ("de_off", false),
        ("eur_only", true),
        ("fallback", true),
        ("withdrawals", true),
        ("gbp", true),
    ] {
        gateway(&pool, code, enabled).await;
    }
    route(&pool, Some("DE"), None, None, 20, "de_second").await;
    route(&pool, Some("DE"), None, None, 10, "de_first").await;
    route(&pool, Some("DE"), None, None, 5, "de_off").await;
    route(&pool, Some("DE"), Some("GBP"), None, 1, "gbp").await;
    route(
        &pool,
        Some("DE"),
        None,
        Some(Kind::Withdrawal),
        1,
        "withdrawals",
    )
    .await;
    route(&pool, None, Some("EUR"), None, 50, "eur_only").await;
    route(&pool, None, None, None, 100, "fallback").await;
    // A gateway routed both by country and by default is offered once, at its best place.
    route(&pool, None, None, None, 1, "de_second").await;

    let german_deposit = payment(&pool, Some("DE"), "EUR", Kind::Deposit).await;
    assert_eq!(
        codes(&pool, &german_deposit).await,
        ["de_first", "de_second", "eur_only", "fallback"]
    );

    let german_withdrawal = payment(&pool, Some("DE"), "USD", Kind::Withdrawal).await;
    assert_eq!(
        codes(&pool, &german_withdrawal).await,
        ["withdrawals", "de_first", "de_second", "fallback"]
    );

    let nowhere = payment(&pool, None, "USD", Kind::Deposit).await;
    assert_eq!(codes(&pool, &nowhere).await, ["de_second", "fallback"]);
}
