//! `paygate-gateway-sim`: the simulated gateways and merchant endpoint, until SIGTERM.

use paygate_common::config::LogFormat;
use paygate_common::{shutdown, telemetry};
use paygate_gateway_sim::{SimConfig, Simulator};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    telemetry::init(LogFormat::Json);
    let simulator = Simulator::build(SimConfig::from_env()?).await?;
    tracing::info!(port = simulator.port(), "gateway simulator listening");
    simulator.run(shutdown::on_signal()).await
}
