//! `paygate-api` serves; `paygate-api migrate` applies migrations; `paygate-api init`
//! applies them and creates the topics, as a deployment's one-shot job (see
//! `paygate_common::init`); `paygate-api seed-demo` creates the demo data and prints
//! its credentials (see `demo`); `paygate-api re-seal` moves every card number and
//! secret to the newest key of its ring, so older keys can leave the rings (see
//! `paygate_common::reseal`), and prints how many it moved.

use anyhow::Context as _;
use paygate_api::demo::{self, DemoConfig, SimulatorSecrets};
use paygate_api::Application;
use paygate_common::{db, init, shutdown, telemetry, Settings};

/// mimalloc serves the service's allocations (see the workspace's Cargo.toml for why).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = Settings::load()?;
    let _telemetry = telemetry::init_service(&settings.log, "paygate-api");
    match std::env::args().nth(1).as_deref() {
        None | Some("serve") => {
            let app = Application::build(settings).await?;
            tracing::info!(port = app.port(), "api listening");
            app.run(shutdown::on_signal()).await?;
            tracing::info!("api stopped");
        }
        Some("migrate") => {
            db::connect(&settings.database).await?;
        }
        Some("init") => {
            let topics = init::run(&settings).await?;
            tracing::info!(?topics, "migrated; topics ready");
        }
        Some("seed-demo") => {
            let pool = db::connect(&settings.database).await?;
            let env = |name: &str, default: &str| {
                std::env::var(name).unwrap_or_else(|_| default.to_owned())
            };
            let config = DemoConfig {
                api_key: std::env::var("PAYGATE_DEMO_API_KEY")
                    .context("PAYGATE_DEMO_API_KEY is not set")?,
                webhook_url: env(
                    "PAYGATE_DEMO_WEBHOOK_URL",
                    "http://127.0.0.1:8090/merchant/webhooks",
                ),
                simulator_url: env("PAYGATE_DEMO_SIMULATOR_URL", "http://127.0.0.1:8090"),
                secrets: SimulatorSecrets {
                    json: env(
                        "PAYGATE_DEMO_JSON_GATEWAY_SECRET",
                        "simjson-callback-secret",
                    ),
                    soap: env(
                        "PAYGATE_DEMO_SOAP_GATEWAY_SECRET",
                        "simsoap-callback-secret",
                    ),
                    card: env(
                        "PAYGATE_DEMO_CARD_GATEWAY_SECRET",
                        "simcard-callback-secret",
                    ),
                },
            };
            config.secrets.refuse_weak(settings.environment)?;
            let keys = settings.secrets.key_ring()?;
            let merchant = demo::seed(&pool, &keys, &config).await?;
            println!("{}", serde_json::to_string(&merchant)?);
        }
        Some("re-seal") => {
            let pool = db::connect(&settings.database).await?;
            let cards = settings.cards.key_ring()?;
            let secrets = settings.secrets.key_ring()?;
            let resealed = paygate_common::reseal::run(&pool, &cards, &secrets).await?;
            println!("{}", serde_json::to_string(&resealed)?);
        }
        Some(other) => {
            anyhow::bail!(
                "unknown command {other:?}; use serve, migrate, init, seed-demo or re-seal"
            )
        }
    }
    Ok(())
}
