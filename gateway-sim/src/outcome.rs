//! What a simulated gateway does with a payment: the scenario its amount's cents pick,
//! and the verdict it reaches. Each gateway renders these in its own wire format.

use rust_decimal::prelude::ToPrimitive as _;
use rust_decimal::Decimal;

use crate::state::Gateway;

/// How a gateway behaves for one payment, picked by the cents of its amount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scenario {
    /// Anything not listed below: approve and call back after the callback delay.
    Approve,
    /// `.01`: decline for insufficient funds, charge nothing.
    Decline,
    /// `.02`: take the payment, answer only after `slow_answer`.
    SlowAnswer,
    /// `.03`: answer 503, charge nothing, remember nothing.
    Unavailable,
    /// `.04`: send the same callback twice.
    DoubleCallback,
    /// `.05`: send the callback before the synchronous answer.
    CallbackFirst,
    /// `.06`: take the payment, then a proxy in front answers 504.
    ProxyTimeout,
    /// `.07`: take the payment and hold the submit and status queries open until released.
    Stall,
}

impl Scenario {
    pub(crate) fn of(amount: Decimal) -> Self {
        let cents = (amount.fract().abs() * Decimal::ONE_HUNDRED).trunc();
        match cents.to_u8() {
            Some(1) => Scenario::Decline,
            Some(2) => Scenario::SlowAnswer,
            Some(3) => Scenario::Unavailable,
            Some(4) => Scenario::DoubleCallback,
            Some(5) => Scenario::CallbackFirst,
            Some(6) => Scenario::ProxyTimeout,
            Some(7) => Scenario::Stall,
            _ => Scenario::Approve,
        }
    }

    /// The card acquirer lets the test card decide the verdict, so the cents that only
    /// pick a verdict or a callback pattern (`.01`, `.04`, `.05`) mean nothing there.
    pub(crate) fn for_card(self) -> Self {
        match self {
            Scenario::Decline | Scenario::DoubleCallback | Scenario::CallbackFirst => {
                Scenario::Approve
            }
            other => other,
        }
    }

    /// The verdict of a gateway that decides by amount alone (JSON and SOAP).
    pub(crate) fn verdict(self) -> Verdict {
        match self {
            Scenario::Decline => Verdict::Declined(DeclineReason::InsufficientFunds),
            _ => Verdict::Approved,
        }
    }
}

/// What the gateway decided about the payment itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Taken; the callback confirms it.
    Approved,
    /// Taken, but only confirmed later by an approving callback (card acquirer).
    Pending,
    /// Refused: nothing charged, no callback.
    Declined(DeclineReason),
}

impl Verdict {
    /// Whether the payment is charged (and so counted and called back).
    pub(crate) fn takes_payment(self) -> bool {
        !matches!(self, Verdict::Declined(_))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DeclineReason {
    InsufficientFunds,
    CardDeclined,
    /// The gateway's own refusal, not the customer's (`decline_percent`).
    DoNotHonor,
    /// A refund of a payment this gateway never charged.
    UnknownPayment,
    /// A refund that would give back more than was charged.
    ExceedsCharge,
}

impl DeclineReason {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            DeclineReason::InsufficientFunds => "insufficient_funds",
            DeclineReason::CardDeclined => "card_declined",
            DeclineReason::DoNotHonor => "do_not_honor",
            DeclineReason::UnknownPayment => "unknown_payment",
            DeclineReason::ExceedsCharge => "exceeds_charge",
        }
    }
}

/// A gateway's answer to a payment, remembered to answer repeats and status queries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Answer {
    pub(crate) verdict: Verdict,
    /// The gateway's own id for a payment it took; none for a decline.
    pub(crate) txn_id: Option<String>,
}

impl Answer {
    /// A new answer, with a fresh gateway transaction id when the payment is taken.
    pub(crate) fn new(gateway: Gateway, verdict: Verdict) -> Self {
        let txn_id = verdict
            .takes_payment()
            .then(|| format!("{}_{}", gateway.txn_prefix(), uuid::Uuid::new_v4().simple()));
        Answer { verdict, txn_id }
    }

    /// The reason for a decline, as the gateways spell it.
    pub(crate) fn reason(&self) -> Option<&'static str> {
        match self.verdict {
            Verdict::Declined(reason) => Some(reason.as_str()),
            Verdict::Approved | Verdict::Pending => None,
        }
    }
}

/// A fresh callback event id, shared by every send of the same callback.
pub(crate) fn event_id() -> String {
    format!("simevt_{}", uuid::Uuid::new_v4().simple())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cents_pick_the_scenario_whatever_the_units() {
        let of = |amount: &str| Scenario::of(amount.parse().unwrap());
        assert_eq!(of("10.01"), Scenario::Decline);
        assert_eq!(of("0.07"), Scenario::Stall);
        assert_eq!(of("123.06"), Scenario::ProxyTimeout);
        assert_eq!(of("10.00"), Scenario::Approve);
        assert_eq!(of("10.10"), Scenario::Approve);
        assert_eq!(of("10"), Scenario::Approve);
        assert_eq!(of("10.015"), Scenario::Decline);
    }

    #[test]
    fn the_card_acquirer_ignores_the_cents_that_only_pick_a_verdict() {
        assert_eq!(Scenario::Decline.for_card(), Scenario::Approve);
        assert_eq!(Scenario::CallbackFirst.for_card(), Scenario::Approve);
        assert_eq!(Scenario::Stall.for_card(), Scenario::Stall);
        assert_eq!(Scenario::Unavailable.for_card(), Scenario::Unavailable);
    }
}
