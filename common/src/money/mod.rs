//! The domain and money: the typed values every service speaks (ids, amounts,
//! currencies, statuses), the event schemas, and the only ways a payment or a refund
//! changes — each with its event, in one database transaction.

pub mod domain;
pub mod events;
pub mod metadata;
pub mod refunds;
pub mod transactions;
