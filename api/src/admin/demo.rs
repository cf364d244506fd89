//! `paygate-api seed-demo`: the demo merchant, the simulator's gateways and their
//! routes, created idempotently through the same code as real data. `scripts/up` runs it
//! with a stable API key so the curl line it prints keeps working across restarts.

use paygate_common::cards::KeyRing;
use paygate_common::gateway::{self, GatewayConfig, Route};
use sqlx::PgPool;

use super::merchants::{self, NewMerchant};

/// What the demo needs to know about its surroundings.
/// Its `Debug` prints no credential.
#[derive(Clone)]
pub struct DemoConfig {
    /// The merchant's API key; kept by `scripts/up` so it survives restarts.
    pub api_key: String,
    /// Where the demo merchant's webhooks go (the simulator's merchant endpoint).
    pub webhook_url: String,
    /// The simulator's base URL.
    pub simulator_url: String,
    /// The secrets the simulator's gateways sign callbacks with.
    pub secrets: SimulatorSecrets,
}

/// The callback secret of each of the simulator's gateways.
/// Its `Debug` prints none of them.
#[derive(Clone)]
pub struct SimulatorSecrets {
    pub json: String,
    pub soap: String,
    pub card: String,
}

impl std::fmt::Debug for DemoConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DemoConfig")
            .field("webhook_url", &self.webhook_url)
            .field("simulator_url", &self.simulator_url)
            .finish_non_exhaustive()
    }
}

/// The defaults `paygate-api seed-demo` takes when no `PAYGATE_DEMO_*_GATEWAY_SECRET`
/// is set: published, so refused outside development.
pub const DEFAULT_SIMULATOR_SECRETS: [&str; 3] = [
    "simjson-callback-secret",
    "simsoap-callback-secret",
    "simcard-callback-secret",
];

/// A gateway's callback secret shorter than this is refused (the admin API, the demo
/// outside development): it is all that stands between the internet and a forged
/// "payment completed".
pub const MIN_CALLBACK_SECRET: usize = 16;

impl SimulatorSecrets {
    /// Outside development: refuses an empty, short or published secret, naming the
    /// variable to set.
    pub fn refuse_weak(
        &self,
        environment: paygate_common::config::Environment,
    ) -> anyhow::Result<()> {
        if environment == paygate_common::config::Environment::Development {
            return Ok(());
        }
        for (variable, secret) in [
            ("PAYGATE_DEMO_JSON_GATEWAY_SECRET", &self.json),
            ("PAYGATE_DEMO_SOAP_GATEWAY_SECRET", &self.soap),
            ("PAYGATE_DEMO_CARD_GATEWAY_SECRET", &self.card),
        ] {
            if secret.len() < MIN_CALLBACK_SECRET
                || DEFAULT_SIMULATOR_SECRETS.contains(&secret.as_str())
                || paygate_common::environment::is_published(secret)
            {
                anyhow::bail!(
                    "environment is production (PAYGATE__ENVIRONMENT) and {variable} is empty, shorter than {MIN_CALLBACK_SECRET} characters or published: set it to a long random secret, or PAYGATE__ENVIRONMENT=development for a development stack"
                );
            }
        }
        Ok(())
    }
}

impl std::fmt::Debug for SimulatorSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SimulatorSecrets(..)")
    }
}

/// Registers the simulator's three gateways and their routes: `simjson` (JSON REST) is
/// the default route for everything; `simsoap` (SOAP) comes first for German payments,
/// with `simjson` as their fallback; `simcard` (the card acquirer) is the default route
/// too, and routing sends it card payments only.
pub async fn register_simulator(
    pool: &PgPool,
    keys: &KeyRing,
    simulator_url: &str,
    secrets: &SimulatorSecrets,
    timeout_ms: i32,
    timings: paygate_common::gateway::Timings,
) -> anyhow::Result<()> {
    let base = simulator_url.trim_end_matches('/');
    let gateways = [
        ("simjson", "json", format!("{base}/json"), &secrets.json),
        ("simsoap", "soap", format!("{base}/soap"), &secrets.soap),
        ("simcard", "card", format!("{base}/card"), &secrets.card),
    ];
    for (code, protocol, base_url, secret) in gateways {
        gateway::upsert(
            pool,
            keys,
            &GatewayConfig {
                code: code.to_owned(),
                protocol: protocol.to_owned(),
                base_url,
                callback_secret: secret.clone().into(),
                timeout_ms,
                max_concurrency: 64,
                enabled: true,
                timings,
            },
        )
        .await?;
    }
    let routes = [
        (None, 100, "simjson"),
        (Some("DE"), 10, "simsoap"),
        (None, 100, "simcard"),
    ];
    for (country, priority, code) in routes {
        gateway::upsert_route(
            pool,
            &Route {
                country: country.map(str::to_owned),
                currency: None,
                kind: None,
                priority,
                gateway_code: code.to_owned(),
            },
        )
        .await?;
    }
    Ok(())
}

/// The demo's gateways wait less than production's defaults, so what happens to an
/// ambiguous payment or a lost callback shows within a minute: "unknown reference" is
/// an answer 30 s after an ambiguous attempt (six times the 5 s timeout), a callback is
/// chased after a minute, and a payment nothing settles is flagged after ten.
pub const DEMO_TIMINGS: paygate_common::gateway::Timings = paygate_common::gateway::Timings {
    settle_window_ms: 30_000,
    callback_deadline_ms: 60_000,
    review_after_ms: 600_000,
};

/// Creates (or finds) the demo merchant and (re)configures the simulated gateways.
pub async fn seed(pool: &PgPool, keys: &KeyRing, demo: &DemoConfig) -> anyhow::Result<NewMerchant> {
    register_simulator(
        pool,
        keys,
        &demo.simulator_url,
        &demo.secrets,
        5_000,
        DEMO_TIMINGS,
    )
    .await?;
    match merchants::find_by_api_key(pool, keys, &demo.api_key).await? {
        Some((id, webhook_secret)) => {
            merchants::set_webhook_url(pool, &id, Some(&demo.webhook_url)).await?;
            Ok(NewMerchant {
                id,
                api_key: demo.api_key.clone(),
                webhook_secret,
            })
        }
        None => {
            merchants::create(
                pool,
                keys,
                "Demo merchant",
                Some(&demo.webhook_url),
                Some(demo.api_key.clone()),
            )
            .await
        }
    }
}

#[cfg(test)]
mod tests {
    use paygate_common::config::Environment;

    use super::*;

    fn secrets(json: &str) -> SimulatorSecrets {
        SimulatorSecrets {
            json: json.to_owned(),
            soap: "a-long-random-soap-secret".to_owned(),
            card: "a-long-random-card-secret".to_owned(),
        }
    }

    #[test]
    fn the_demo_refuses_an_empty_short_or_default_callback_secret_outside_development() {
        for weak in ["", "short", DEFAULT_SIMULATOR_SECRETS[0]] {
            let error = secrets(weak)
                .refuse_weak(Environment::Production)
                .unwrap_err();
            assert!(error
                .to_string()
                .contains("PAYGATE_DEMO_JSON_GATEWAY_SECRET"));
            secrets(weak).refuse_weak(Environment::Development).unwrap();
        }
        secrets("a-long-random-json-secret")
            .refuse_weak(Environment::Production)
            .unwrap();
    }
}
