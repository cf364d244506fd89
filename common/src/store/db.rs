//! The PostgreSQL pool and the one schema, embedded from `common/migrations`.
//!
//! The connection is TLS (rustls) as `database.tls` says: its `mode` takes libpq's
//! `sslmode` names, so `verify-full` refuses a server whose certificate does not come
//! from `ca_file` (or Mozilla's roots) or does not name the host; a client
//! certificate is offered when one is configured.

use std::time::Duration;

use anyhow::Context;
use secrecy::ExposeSecret;
use std::str::FromStr as _;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgSslMode};

use crate::config::{DatabaseSettings, DatabaseTls};

/// The embedded migrations; `sqlx::migrate!` takes an advisory lock, so services that
/// start together apply them once.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Connects, and applies the migrations when the settings say so.
pub async fn connect(settings: &DatabaseSettings) -> anyhow::Result<PgPool> {
    let pool = pool(settings, settings.max_connections, &[]).await?;
    if settings.migrate_on_start {
        migrate(&pool).await?;
    }
    Ok(pool)
}

/// A pool whose commits do not wait for the WAL flush (`synchronous_commit = off`), for
/// bookkeeping whose loss in a PostgreSQL crash only means doing again what is already
/// done at least once and deduplicated downstream: a relay's claims and marks (the
/// events are published again; consumers absorb duplicates by event id and version)
/// and the dispatcher's attempt records (the webhook is sent again under the same
/// `webhook-id`, which is how merchants deduplicate). Never for a write whose loss
/// would lose a payment, a status or a delivery: those stay on [`connect`]'s pool.
pub async fn connect_unflushed(
    settings: &DatabaseSettings,
    connections: u32,
) -> anyhow::Result<PgPool> {
    pool(settings, connections, &[("synchronous_commit", "off")]).await
}

async fn pool(
    settings: &DatabaseSettings,
    connections: u32,
    extra: &[(&str, &str)],
) -> anyhow::Result<PgPool> {
    let options = PgConnectOptions::from_str(settings.url.expose_secret())
        .context("parsing database.url")?
        .options([
            (
                "statement_timeout",
                format!("{}ms", settings.statement_timeout_ms),
            ),
            (
                "idle_in_transaction_session_timeout",
                format!("{}ms", settings.idle_in_transaction_timeout_ms),
            ),
        ])
        .options(extra.iter().copied());
    let options = with_tls(options, &settings.tls)?;
    PgPoolOptions::new()
        .max_connections(connections)
        .acquire_timeout(Duration::from_secs(5))
        // sqlx pings a connection when it goes back to the pool; pinging it again when
        // it is taken out made every statement three round trips instead of two. A
        // connection PostgreSQL dropped since fails its next statement, which every
        // caller already treats as transient (retried, or 503 for a request).
        .test_before_acquire(false)
        .connect_with(options)
        .await
        .context("connecting to PostgreSQL")
}

/// `options` with the TLS that `tls` asks for (the URL's own `sslmode` and
/// `sslrootcert` stay when `tls` leaves them empty).
fn with_tls(mut options: PgConnectOptions, tls: &DatabaseTls) -> anyhow::Result<PgConnectOptions> {
    if !tls.mode.is_empty() {
        let mode = PgSslMode::from_str(&tls.mode)
            .with_context(|| format!("database.tls.mode = {:?}", tls.mode))?;
        options = options.ssl_mode(mode);
    }
    if !tls.ca_file.is_empty() {
        options = options.ssl_root_cert(&tls.ca_file);
    }
    if !tls.client_cert_file.is_empty() {
        options = options
            .ssl_client_cert(&tls.client_cert_file)
            .ssl_client_key(&tls.client_key_file);
    }
    Ok(options)
}

pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    MIGRATOR.run(pool).await.context("applying migrations")
}

/// The name of the constraint a database error violated, if any: the way code maps a
/// unique or check violation to a precise answer instead of selecting first.
pub fn violated_constraint(error: &sqlx::Error) -> Option<&str> {
    match error {
        sqlx::Error::Database(db) => db.constraint(),
        _ => None,
    }
}
