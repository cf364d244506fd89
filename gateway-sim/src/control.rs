//! Test controls over a whole simulator instance, whatever the amounts:
//! - `PUT /control` `{"force_status": 503 | null, "answer_delay_ms": <ms> | null}`
//!   replaces the control state (a missing field is `null`, an unknown one is refused so
//!   a misspelt control cannot pass silently), `GET /control` reads it.
//!   A forced 503 makes every submit and status query of every gateway answer 503 and
//!   charge nothing; `answer_delay_ms` overrides the configured answer delay of every
//!   submit, the forced 503s included. `null` restores the default.
//! - `"gateways": {"json": {"overloaded_ms": 3000, "duplicate_in_flight": true,
//!   "lost_callback": true}}` (any of `json`, `soap`, `card`; every mode off by default)
//!   makes one gateway misbehave the way a real one does under load:
//!   - `overloaded_ms`: the first submit for a reference is held that long before the
//!     gateway stores it (the caller times out; a status query meanwhile answers "unknown
//!     reference"), then the original request completes and charges;
//!   - `duplicate_in_flight`: a re-submit of a reference it is still working on (held
//!     by `overloaded_ms`, or stalled) answers `409`, not the stored answer; without it
//!     an overloaded gateway answers such a re-submit `503`;
//!   - `lost_callback`: the payment is taken and settles, but its callback never goes;
//!   - `decline_percent` (0–100): that share of first submits the amount would approve
//!     is declined by the gateway itself (`do_not_honor`, not the customer's
//!     `insufficient_funds`), drawn at random per payment — a gateway that is up but
//!     declines, for success-rate routing;
//!   - `latency_ms`: every answer of that gateway waits this long (instead of the
//!     answer delay), declines included.
//!   - books that go wrong, for reconciliation (each applies to payments and refunds
//!     made while it is on, see [`crate::settlement`]): `lost_answer` (a payment the
//!     amount would approve is charged, but the gateway answers a decline, and its
//!     status queries say so too), `settle_amount_delta` (a decimal string: the charge
//!     settles at its amount plus this), `duplicate_charge` (the charge is booked twice),
//!     `double_refund` (each refund is paid twice), `unbooked` (approved, but missing
//!     from the books), `booked_declined` (approved, but booked as declined);
//!     `report_unavailable` (the settlement report answers 503) and `report_garbled`
//!     (the report breaks off half-way).
//! - `POST /control/charges` `{"gateway": "json", "reference", "amount", "currency"}`
//!   books a charge nobody asked Paygate for (a charge with no payment).
//! - `POST /control/release/{reference}` releases a stalled (`.07`) payment or refund: its held
//!   requests answer, status queries answer normally, and its callback is sent.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::callback;
use crate::state::{Gateway, Sim};

/// The only status a control can force: an unavailable gateway, which charges nothing.
const FORCEABLE: u16 = 503;

/// The instance-wide control state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Control {
    force_status: Option<u16>,
    answer_delay_ms: Option<u64>,
    /// Per-gateway misbehaviour; a gateway not named behaves.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    gateways: BTreeMap<Gateway, Modes>,
}

/// How one gateway misbehaves (see the module's documentation).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Modes {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) overloaded_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) duplicate_in_flight: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) lost_callback: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) decline_percent: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) latency_ms: Option<u64>,
    /// Settlement-report misbehaviour, as real books go wrong (see [`crate::settlement`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) lost_answer: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) settle_amount_delta: Option<rust_decimal::Decimal>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) duplicate_charge: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) double_refund: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) unbooked: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) booked_declined: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) report_unavailable: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) report_garbled: bool,
}

impl Modes {
    /// How long a first submit is held before the gateway stores it, when overloaded.
    pub(crate) fn overload(&self) -> Option<Duration> {
        self.overloaded_ms.map(Duration::from_millis)
    }

    /// Whether this payment is one the gateway declines of its own accord (a fresh
    /// draw per call: `decline_percent` of them, on average).
    pub(crate) fn declines_now(&self) -> bool {
        self.decline_percent
            .is_some_and(|percent| rand::random_range(0..100u8) < percent)
    }

    /// How long its answers take, when set.
    pub(crate) fn latency(&self) -> Option<Duration> {
        self.latency_ms.map(Duration::from_millis)
    }
}

impl Control {
    /// Whether every gateway must answer 503.
    pub(crate) fn unavailable(&self) -> bool {
        self.force_status == Some(FORCEABLE)
    }

    /// The answer delay in force, when it overrides the configured one.
    pub(crate) fn answer_delay(&self) -> Option<Duration> {
        self.answer_delay_ms.map(Duration::from_millis)
    }

    /// How `gateway` misbehaves now.
    pub(crate) fn modes(&self, gateway: Gateway) -> Modes {
        self.gateways.get(&gateway).copied().unwrap_or_default()
    }
}

pub(crate) fn routes() -> Router<Sim> {
    Router::new()
        .route("/control", get(read).put(replace))
        .route("/control/release/{reference}", post(release))
        .route(
            "/control/charges",
            post(crate::settlement::unsolicited_charge),
        )
}

async fn read(State(sim): State<Sim>) -> Json<Control> {
    Json(sim.remember(|m| m.control.clone()))
}

async fn replace(
    State(sim): State<Sim>,
    control: Result<Json<Control>, JsonRejection>,
) -> Response {
    let control = match control {
        Ok(Json(control)) => control,
        Err(rejection) => return error(rejection.status(), &rejection.body_text()),
    };
    if control
        .force_status
        .is_some_and(|status| status != FORCEABLE)
    {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "force_status can only be 503 or null",
        );
    }
    if control
        .gateways
        .values()
        .any(|modes| modes.decline_percent.is_some_and(|p| p > 100))
    {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "decline_percent is a share of payments: 0 to 100",
        );
    }
    sim.remember(|m| m.control = control.clone());
    tracing::info!(?control, "simulator controls replaced");
    Json(control).into_response()
}

async fn release(State(sim): State<Sim>, Path(reference): Path<String>) -> Response {
    if let Some(due) = sim.remember(|m| m.refunds.release(&reference)) {
        for scheduled in due {
            callback::send_later(&sim, scheduled);
        }
        return Json(json!({"reference": reference, "released": true})).into_response();
    }
    let Some(due) = sim.remember(|m| m.ledger.release(&reference)) else {
        return error(
            StatusCode::NOT_FOUND,
            "no stalled payment for this reference",
        );
    };
    for scheduled in due {
        callback::send_later(&sim, scheduled);
    }
    Json(json!({"reference": reference, "released": true})).into_response()
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({"error": message}))).into_response()
}
