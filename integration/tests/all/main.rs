//! Every integration and end-to-end test, in one binary (one link instead of many).
//! Each test isolates itself: its own database, topics, consumer groups, Redis prefix
//! and ports (see `paygate_testkit`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod api;
mod api_keys;
mod at_rest;
mod broker_index;
mod broker_outage;
mod callbacks;
mod cards;
mod console;
mod consumer;
mod end_to_end;
mod endpoints;
mod intake;
mod intake_batch;
mod interventions;
mod listeners;
mod lock;
mod metadata;
mod migrations;
mod observability;
mod openapi;
mod operators;
mod outbox;
mod payouts;
mod plans;
mod refunds;
mod routing;
mod routing_policies;
mod settlement;
mod shutdown;
mod tls_hops;
mod trace_context;
mod unauthenticated;
mod webhooks;
