//! How the simulator behaves, from the environment or set by tests.

use std::time::Duration;

/// How the simulator behaves.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub listen: String,
    /// The secret the JSON gateway signs its callbacks with.
    pub json_secret: String,
    /// The secret the SOAP gateway signs its callbacks with.
    pub soap_secret: String,
    /// The secret the card acquirer signs its callbacks with.
    pub card_secret: String,
    /// How long after approving a payment its callback is sent.
    pub callback_delay: Duration,
    /// How long a `.02` payment keeps the caller waiting.
    pub slow_answer: Duration,
    /// How long every payment takes to answer after it was taken (charged): a slow
    /// gateway, which leaves a window where the caller can die before hearing back.
    /// `PUT /control` can override it at run time.
    pub answer_delay: Duration,
}

impl SimConfig {
    /// `PAYGATE_SIM_LISTEN`, `PAYGATE_SIM_JSON_SECRET`, `PAYGATE_SIM_SOAP_SECRET`,
    /// `PAYGATE_SIM_CARD_SECRET`, `PAYGATE_SIM_CALLBACK_DELAY_MS`,
    /// `PAYGATE_SIM_ANSWER_DELAY_MS`.
    pub fn from_env() -> anyhow::Result<Self> {
        let var =
            |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.to_owned());
        Ok(SimConfig {
            listen: var("PAYGATE_SIM_LISTEN", "127.0.0.1:8090"),
            json_secret: var("PAYGATE_SIM_JSON_SECRET", "simjson-callback-secret"),
            soap_secret: var("PAYGATE_SIM_SOAP_SECRET", "simsoap-callback-secret"),
            card_secret: var("PAYGATE_SIM_CARD_SECRET", "simcard-callback-secret"),
            callback_delay: Duration::from_millis(
                var("PAYGATE_SIM_CALLBACK_DELAY_MS", "200").parse()?,
            ),
            slow_answer: Duration::from_secs(30),
            answer_delay: Duration::from_millis(var("PAYGATE_SIM_ANSWER_DELAY_MS", "0").parse()?),
        })
    }
}
