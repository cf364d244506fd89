//! The simulator's shared state: configuration, what it remembers, and the handles that
//! let held requests and callbacks end with the simulator.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::SimConfig;
use crate::control::Control;
use crate::ledger::Ledger;
use crate::merchant::ReceivedWebhook;

/// One of the simulated gateways; payments are remembered per gateway and reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Gateway {
    Json,
    Soap,
    Card,
}

impl Gateway {
    pub(crate) const ALL: [Gateway; 3] = [Gateway::Json, Gateway::Soap, Gateway::Card];

    /// The prefix of the transaction ids it hands out, so ids tell their gateway.
    pub(crate) fn txn_prefix(self) -> &'static str {
        match self {
            Gateway::Json => "sim",
            Gateway::Soap => "soap",
            Gateway::Card => "acq",
        }
    }
}

/// Everything the simulator remembers, behind one lock that is never held across an
/// await.
#[derive(Default)]
pub(crate) struct Memory {
    pub(crate) ledger: Ledger,
    /// The refunds each gateway made, beside the charges.
    pub(crate) refunds: crate::refunds::RefundBook,
    pub(crate) control: Control,
    /// First submits an overloaded gateway is still working on (not yet stored).
    pub(crate) in_flight: std::collections::HashSet<(Gateway, String)>,
    /// The last [`crate::merchant::KEPT`] webhooks received.
    pub(crate) webhooks: std::collections::VecDeque<ReceivedWebhook>,
}

/// The handlers' state.
#[derive(Clone)]
pub(crate) struct Sim {
    pub(crate) config: Arc<SimConfig>,
    memory: Arc<Mutex<Memory>>,
    /// Sends the callbacks.
    pub(crate) http: reqwest::Client,
    /// Cancelled when the simulator shuts down: ends held requests, pauses and
    /// callbacks not yet delivered.
    pub(crate) shutdown: CancellationToken,
    /// The callback deliveries in flight, which `run` waits for before returning.
    pub(crate) tasks: TaskTracker,
}

impl Sim {
    pub(crate) fn new(config: SimConfig) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?;
        Ok(Sim {
            config: Arc::new(config),
            memory: Arc::default(),
            http,
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
        })
    }

    /// The same state, ending its waits on `shutdown`, which is only known at `run`.
    pub(crate) fn with_shutdown(self, shutdown: CancellationToken) -> Self {
        Sim { shutdown, ..self }
    }

    pub(crate) fn remember<T>(&self, f: impl FnOnce(&mut Memory) -> T) -> T {
        let mut memory = self.memory.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut memory)
    }

    /// The secret `gateway` signs its callbacks with.
    pub(crate) fn secret(&self, gateway: Gateway) -> &str {
        match gateway {
            Gateway::Json => &self.config.json_secret,
            Gateway::Soap => &self.config.soap_secret,
            Gateway::Card => &self.config.card_secret,
        }
    }

    /// Waits `duration`, or less if the simulator shuts down meanwhile.
    pub(crate) async fn pause(&self, duration: Duration) {
        tokio::select! {
            () = tokio::time::sleep(duration) => {}
            () = self.shutdown.cancelled() => {}
        }
    }
}
