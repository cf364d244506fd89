//! Security: card sealing and CVVs, the secrets ring, signatures (callbacks, webhooks),
//! the egress policy for outbound calls, re-sealing under a new key, and what the
//! environment refuses in production.

pub mod cards;
pub mod egress;
pub mod environment;
pub mod reseal;
pub mod secrets;
pub mod signature;
