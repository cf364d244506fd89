//! What merchants reach with their API keys: payment intake ([`payments`], with
//! [`payouts`] limits, [`cards`] checked at the edge, gateways the merchant names checked
//! by [`pinning`], and [`idempotency`]), refunds
//! ([`refunds`]), what they can read ([`queries`]), and the JWKS of their webhook signing keys
//! ([`webhook_keys`]).

pub mod cards;
pub mod idempotency;
pub mod payments;
pub mod payouts;
pub mod pinning;
pub mod queries;
pub mod refunds;
pub mod webhook_keys;
