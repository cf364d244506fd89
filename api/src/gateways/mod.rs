//! What gateways reach: their callbacks, telling us how a payment ended
//! ([`callbacks`]).

pub mod callbacks;
