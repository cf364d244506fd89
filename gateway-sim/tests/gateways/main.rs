//! The simulated gateways over real HTTP, as Paygate and the tests elsewhere see them.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: failing loudly is the point

mod card;
mod controls;
mod json;
mod refunds;
mod settlement;
mod soap;
mod support;
