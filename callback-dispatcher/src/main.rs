//! `paygate-callback-dispatcher`: delivers merchant webhooks until SIGTERM.

use paygate_callback_dispatcher::Application;
use paygate_common::{shutdown, telemetry, Settings};

/// mimalloc serves the service's allocations (see the workspace's Cargo.toml for why).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = Settings::load()?;
    let _telemetry = telemetry::init_service(&settings.log, "paygate-callback-dispatcher");
    let app = Application::build(settings).await?;
    tracing::info!(health_port = app.port(), "callback-dispatcher running");
    app.run(shutdown::on_signal()).await?;
    tracing::info!("callback-dispatcher stopped");
    Ok(())
}
