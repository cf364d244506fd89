//! `paygate-payment-processor`: routes requested payments to gateways until SIGTERM.

use paygate_common::{shutdown, telemetry, Settings};
use paygate_payment_processor::Application;

/// mimalloc serves the service's allocations (see the workspace's Cargo.toml for why).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = Settings::load()?;
    let _telemetry = telemetry::init_service(&settings.log, "paygate-payment-processor");
    let app = Application::build(settings).await?;
    tracing::info!(health_port = app.port(), "payment-processor running");
    app.run(shutdown::on_signal()).await?;
    tracing::info!("payment-processor stopped");
    Ok(())
}
