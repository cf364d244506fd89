//! The gateway simulator as tests start and steer it.

use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// The JSON gateway of the simulator, as Paygate's configuration knows it.
pub const SIM_JSON_SECRET: &str = "test-simjson-secret";

/// The callback secret of the simulator's SOAP gateway.
pub const SIM_SOAP_SECRET: &str = "test-simsoap-secret";

/// The callback secret of the simulator's card acquirer.
pub const SIM_CARD_SECRET: &str = "test-simcard-secret";

/// Starts the gateway simulator on port 0, answering after `answer_delay`; returns its
/// base URL.
pub async fn start_simulator(shutdown: CancellationToken, answer_delay: Duration) -> String {
    let simulator = paygate_gateway_sim::Simulator::build(paygate_gateway_sim::SimConfig {
        listen: "127.0.0.1:0".to_owned(),
        json_secret: SIM_JSON_SECRET.to_owned(),
        soap_secret: SIM_SOAP_SECRET.to_owned(),
        card_secret: SIM_CARD_SECRET.to_owned(),
        callback_delay: Duration::from_millis(50),
        slow_answer: Duration::from_secs(10),
        answer_delay,
    })
    .await
    .unwrap();
    let url = format!("http://127.0.0.1:{}", simulator.port());
    tokio::spawn(simulator.run(shutdown));
    url
}

/// How long the tests' gateways wait: an unknown reference is an answer 5 s after an
/// ambiguous attempt (the timeout is 2 s), a callback is chased after 20 s.
pub const TEST_TIMINGS: paygate_common::gateway::Timings = paygate_common::gateway::Timings {
    settle_window_ms: 5_000,
    callback_deadline_ms: 20_000,
    review_after_ms: 600_000,
};

/// Registers the simulator's gateways and routes as the demo does (`simjson` for
/// everything, `simsoap` first for `DE`, `simcard` for cards), with a 2 s timeout.
pub async fn route_everything_to_simulator(pool: &PgPool, simulator_url: &str) {
    let secrets = paygate_api::demo::SimulatorSecrets {
        json: SIM_JSON_SECRET.to_owned(),
        soap: SIM_SOAP_SECRET.to_owned(),
        card: SIM_CARD_SECRET.to_owned(),
    };
    paygate_api::demo::register_simulator(
        pool,
        &crate::keys(),
        simulator_url,
        &secrets,
        2_000,
        TEST_TIMINGS,
    )
    .await
    .unwrap();
}

/// Makes every gateway of the simulator at `url` answer `force_status` (or behave
/// normally, `None`), each answer after `answer_delay_ms` (or the default, `None`).
pub async fn control_simulator(url: &str, force_status: Option<u16>, answer_delay_ms: Option<u64>) {
    put_control(
        url,
        serde_json::json!({"force_status": force_status, "answer_delay_ms": answer_delay_ms}),
    )
    .await;
}

/// Replaces every control of the simulator at `url` with `control` (its `PUT /control`
/// body, see the simulator).
pub async fn put_control(url: &str, control: serde_json::Value) {
    let response = reqwest::Client::new()
        .put(format!("{url}/control"))
        .json(&control)
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());
}

/// Makes gateways of the simulator at `url` misbehave, e.g.
/// `json!({"json": {"overloaded_ms": 3000, "duplicate_in_flight": true}})` (see the
/// simulator's `PUT /control`); every other control is reset.
pub async fn misbehave(url: &str, gateways: serde_json::Value) {
    put_control(
        url,
        serde_json::json!({"force_status": null, "answer_delay_ms": null, "gateways": gateways}),
    )
    .await;
}

/// A gateway as tests register it: enabled, 16 calls at once, the production timings
/// (override with struct update syntax).
pub fn gateway_config(
    code: &str,
    protocol: &str,
    base_url: String,
    callback_secret: &str,
    timeout_ms: i32,
) -> paygate_common::gateway::GatewayConfig {
    paygate_common::gateway::GatewayConfig {
        code: code.to_owned(),
        protocol: protocol.to_owned(),
        base_url,
        callback_secret: callback_secret.to_owned().into(),
        timeout_ms,
        max_concurrency: 16,
        enabled: true,
        timings: paygate_common::gateway::Timings::default(),
    }
}

/// Stores `config` and, when `route` says so, routes `(country or every country,
/// priority)` to it.
pub async fn register_gateway(
    pool: &PgPool,
    config: &paygate_common::gateway::GatewayConfig,
    route: Option<(Option<&str>, i32)>,
) {
    use paygate_common::gateway;
    gateway::upsert(pool, &crate::keys(), config).await.unwrap();
    if let Some((country, priority)) = route {
        gateway::upsert_route(
            pool,
            &gateway::Route {
                country: country.map(str::to_owned),
                currency: None,
                kind: None,
                priority,
                gateway_code: config.code.clone(),
            },
        )
        .await
        .unwrap();
    }
}
