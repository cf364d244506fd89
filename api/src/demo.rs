//! `paygate-api seed-demo`: the demo merchant, the simulator's gateways and a default
//! route, created idempotently through the same code as real data. `scripts/up` runs it
//! with a stable API key so the curl line it prints keeps working across restarts.

use paygate_common::gateway::{self, GatewayConfig, Protocol, Route};
use sqlx::PgPool;

use crate::merchants::{self, NewMerchant};

/// What the demo needs to know about its surroundings.
#[derive(Debug, Clone)]
pub struct DemoConfig {
    /// The merchant's API key; kept by `scripts/up` so it survives restarts.
    pub api_key: String,
    /// Where the demo merchant's webhooks go (the simulator's merchant endpoint).
    pub webhook_url: String,
    /// The simulator's base URL.
    pub simulator_url: String,
    /// The secret the simulator's JSON gateway signs callbacks with.
    pub json_gateway_secret: String,
}

/// Registers the simulator's JSON gateway as `simjson` and routes every payment to it
/// (the default route).
pub async fn register_simulator(
    pool: &PgPool,
    simulator_url: &str,
    callback_secret: &str,
    timeout_ms: i32,
) -> anyhow::Result<()> {
    gateway::upsert(
        pool,
        &GatewayConfig {
            code: "simjson".to_owned(),
            protocol: Protocol::Json,
            base_url: format!("{}/json", simulator_url.trim_end_matches('/')),
            callback_secret: callback_secret.to_owned(),
            timeout_ms,
            enabled: true,
        },
    )
    .await?;
    gateway::upsert_route(
        pool,
        &Route {
            country: None,
            currency: None,
            kind: None,
            priority: 100,
            gateway_code: "simjson".to_owned(),
        },
    )
    .await?;
    Ok(())
}

/// Creates (or finds) the demo merchant and (re)configures the simulated gateways.
pub async fn seed(pool: &PgPool, demo: &DemoConfig) -> anyhow::Result<NewMerchant> {
    register_simulator(pool, &demo.simulator_url, &demo.json_gateway_secret, 5_000).await?;
    match merchants::find_by_api_key(pool, &demo.api_key).await? {
        Some((id, webhook_secret)) => {
            merchants::set_webhook_url(pool, &id, &demo.webhook_url).await?;
            Ok(NewMerchant {
                id,
                api_key: demo.api_key.clone(),
                webhook_secret,
            })
        }
        None => {
            merchants::create(
                pool,
                "Demo merchant",
                Some(&demo.webhook_url),
                Some(demo.api_key.clone()),
            )
            .await
        }
    }
}
