//! What every audience shares: JSON/XML negotiation ([`format`]), extractors
//! ([`extract`]), the one error contract ([`error`]), limits per merchant
//! ([`rate_limit`]) and per client address ([`client_limit`]), and the API key cache
//! ([`api_keys`]).

pub mod api_keys;
pub mod client_limit;
pub mod error;
pub mod extract;
pub mod format;
pub mod rate_limit;
