//! A simulator of the external world Paygate talks to, over real HTTP: three payment
//! gateways that answer, fail, time out and call back, and a merchant endpoint that
//! collects webhooks. For the demo, the end-to-end tests and the benchmark.
//!
//! Gateways, selected by path, each calling back with a signed (`X-Paygate-Signature`)
//! notification in its own format and with its own secret:
//! - `/json`: a JSON REST gateway (`POST /json/payments`, `GET /json/payments/{reference}`,
//!   `POST /json/refunds`, `GET /json/refunds/{reference}`);
//! - `/soap`: a SOAP 1.1 gateway (`SubmitPayment`, `QueryPayment`, faults, XML callbacks);
//! - `/card`: a card acquirer (`POST /card/charges`, `GET /card/charges/{reference}`)
//!   answering with bank-style codes: `0` succeeded, `100` refused, `200` pending.
//!
//! The amount's cents pick the outcome, on every gateway: `.01` declines (insufficient
//! funds), `.02` takes the payment but answers only after `slow_answer`, `.03` answers 503
//! and charges nothing, `.04` sends its callback twice, `.05` sends the callback before
//! answering, `.06` takes the payment and then answers 504 as a proxy would, `.07` takes
//! it and holds the submit and every status query open until `POST
//! /control/release/{reference}`; anything else approves and calls back after
//! `callback_delay`. The card acquirer decides by test card instead of `.01`/`.04`/`.05`:
//! `4242424242424242` succeeds, `4000000000000002` is refused for insufficient funds,
//! `4000000000009995` is pending (approved by a callback after three callback delays),
//! `4000000000000408` is refused with HTTP `402` (insufficient funds, nothing charged),
//! any other card is declined.
//!
//! Submits are idempotent per gateway and reference: a repeat is answered as the first
//! one was and never charges again (a `.03` is not remembered, so it may later succeed).
//! `PUT /control` makes the whole instance answer 503 or answer slower, whatever the
//! amount; `GET /charges/{reference}` counts the charges across the three gateways, so
//! tests can prove none was doubled.
//!
//! Each gateway also refunds a payment it charged (see [`refunds`]: its own magic cents,
//! never twice per refund reference, never past the charge), and `GET /ledger` shows the
//! money refunded per payment beside its charge. Each gateway publishes settlement
//! reports for any period from its books (see [`settlement`]), in its own format.

mod callback;
mod card;
mod config;
mod control;
mod flow;
mod json;
mod ledger;
mod merchant;
mod outcome;
mod refunds;
mod settlement;
mod soap;
mod state;

use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use paygate_common::health;

pub use config::SimConfig;
pub use merchant::ReceivedWebhook;
pub use soap::{PAYMENTS_NS, SOAP_ENVELOPE_NS};

use state::Sim;

/// The simulator, bound and ready to run.
pub struct Simulator {
    listener: TcpListener,
    sim: Sim,
}

impl Simulator {
    pub async fn build(config: SimConfig) -> anyhow::Result<Self> {
        let listener = health::bind(&config.listen).await?;
        Ok(Simulator {
            listener,
            sim: Sim::new(config)?,
        })
    }

    pub fn port(&self) -> u16 {
        health::port(&self.listener)
    }

    /// Serves until `shutdown`, which also ends held (`.07`) requests and callbacks not
    /// yet delivered, so shutting down never waits on a payment that may never finish.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let sim = self.sim.with_shutdown(shutdown.clone());
        let router = Router::new()
            .merge(json::routes())
            .merge(soap::routes())
            .merge(card::routes())
            .merge(control::routes())
            .merge(ledger::routes())
            .merge(settlement::routes())
            .merge(merchant::routes())
            .route("/healthz", get(health::healthz))
            .with_state(sim.clone());
        let served = paygate_common::http_server::serve(
            self.listener,
            router,
            paygate_common::http_server::Limits::SIMULATOR,
            shutdown,
        )
        .await;
        sim.tasks.close();
        sim.tasks.wait().await;
        Ok(served?)
    }
}
