//! Test support: every test gets its own PostgreSQL database, its own topic names and
//! consumer groups, its own Redis key prefix and port-0 listeners, against the real
//! PostgreSQL, Redis and Kafka-protocol broker that `scripts/test` starts. Third parties
//! (the gateway simulator, a merchant's webhook endpoint) run over real HTTP.
//!
//! Where things are comes from the environment, with the local defaults:
//! `PAYGATE_TEST_DATABASE_URL` (an admin connection, default
//! `postgres://postgres@127.0.0.1:5432/postgres`), `PAYGATE_TEST_KAFKA_BROKERS`
//! (default `127.0.0.1:9092`) and `PAYGATE_TEST_REDIS_URL` (default
//! `redis://127.0.0.1:6379`). Test databases are named `PAYGATE_TEST_DB_PREFIX` (default
//! `paygate_t_`) and a random suffix, so a run can drop its own and only its own.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test support: failing loudly is the point

mod broker;
mod isolation;
mod merchant;
mod money;
mod postgres;
mod process;
mod relay;
mod simulator;
mod suite;
mod tls;

pub use broker::{
    index_broker, read_topic, Broker, PrivateRedis, TlsRedis, TopicMessage, TANSU_INDEX,
};
pub use isolation::{
    card_keys, empty_database, empty_database_on, eventually, json_of, keys, pool, settings,
    settings_on, unique, ADMIN_TOKEN,
};
pub use merchant::{Received, Reply, TlsReceiver, WebhookReceiver};
pub use money::{assert_money_invariant, money_violations, Moment};
pub use postgres::PrivatePostgres;
pub use process::{binary, Process, Supervised};
pub use relay::TcpRelay;
pub use simulator::{
    control_simulator, gateway_config, misbehave, put_control, register_gateway,
    route_everything_to_simulator, start_simulator, SIM_CARD_SECRET, SIM_JSON_SECRET,
    SIM_SOAP_SECRET, TEST_TIMINGS,
};
pub use suite::{
    attempted_gateways, plain_deposit, service_env, Running, Service, Suite, SuiteOptions,
};
pub use tls::{TestPki, TlsFront};
