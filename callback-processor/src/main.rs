//! `paygate-callback-processor`: applies gateway callbacks until SIGTERM.

use paygate_callback_processor::Application;
use paygate_common::{shutdown, telemetry, Settings};

/// mimalloc serves the service's allocations (see the workspace's Cargo.toml for why).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = Settings::load()?;
    let _telemetry = telemetry::init_service(&settings.log, "paygate-callback-processor");
    let app = Application::build(settings).await?;
    tracing::info!(health_port = app.port(), "callback-processor running");
    app.run(shutdown::on_signal()).await?;
    tracing::info!("callback-processor stopped");
    Ok(())
}
