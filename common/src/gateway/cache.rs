//! The gateway table, cached: what reads a gateway for every callback (the api's
//! callback intake, the callback-processor) asks this instead of the database.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::GatewayRecord;

/// The gateway table as callbacks read it: loaded whole (a handful of rows) by one
/// request while the others wait for it, and reused for [`GATEWAY_CACHE_TTL`]; a code
/// it does not name reloads it, at most once per [`GATEWAY_MISS_RELOAD`]. So no
/// callback, however made-up its gateway code, costs a query of its own, a changed
/// secret is seen within [`GATEWAY_CACHE_TTL`] and a new gateway within
/// [`GATEWAY_MISS_RELOAD`].
#[derive(Clone, Default)]
pub struct GatewayCache {
    table: Arc<tokio::sync::Mutex<Option<Loaded>>>,
}

/// The table and when it was read.
type Loaded = (Instant, Arc<Vec<GatewayRecord>>);

/// How long a read of the gateway table is reused.
pub const GATEWAY_CACHE_TTL: Duration = Duration::from_secs(5);
/// A read of the gateway table younger than this is not repeated for a code it lacks.
pub const GATEWAY_MISS_RELOAD: Duration = Duration::from_millis(500);

impl GatewayCache {
    /// Every gateway.
    pub async fn all(&self, pool: &sqlx::PgPool) -> sqlx::Result<Arc<Vec<GatewayRecord>>> {
        self.read(pool, GATEWAY_CACHE_TTL).await
    }

    /// The table, read again when the last read is `max_age` old.
    async fn read(
        &self,
        pool: &sqlx::PgPool,
        max_age: Duration,
    ) -> sqlx::Result<Arc<Vec<GatewayRecord>>> {
        let mut table = self.table.lock().await;
        if let Some((at, gateways)) = table.as_ref() {
            if at.elapsed() < max_age {
                return Ok(gateways.clone());
            }
        }
        let gateways = Arc::new(super::all(pool).await?);
        *table = Some((Instant::now(), gateways.clone()));
        Ok(gateways)
    }

    /// Gateway `code`, if there is one.
    pub async fn find(
        &self,
        pool: &sqlx::PgPool,
        code: &str,
    ) -> sqlx::Result<Option<GatewayRecord>> {
        let named = |gateways: &[GatewayRecord]| {
            gateways
                .iter()
                .find(|gateway| gateway.code == code)
                .cloned()
        };
        if let Some(found) = named(&self.all(pool).await?) {
            return Ok(Some(found));
        }
        Ok(named(&self.read(pool, GATEWAY_MISS_RELOAD).await?))
    }
}
