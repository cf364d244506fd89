//! Group commit for writes that answer a request: the writes that concurrent requests
//! ask for at one moment (a payment's intake, a gateway's callback, an attempt at a
//! gateway, a gateway's answer applied) run in one database transaction, committed and flushed
//! once, and each request is answered after that commit — durable before anyone is
//! told, as when each committed on its own. A commit's flush is what a write waits for
//! on a busy machine (PostgreSQL's `WALWrite`), so sharing it is what lets more writes
//! through. A write that fails fails its batch (rolled back whole); each write of it is
//! then done alone, so one bad write never takes another with it.
//!
//! A [`Write`] either writes all it means to or nothing (its own refusals — a key
//! taken, a version moved before its first change — are outputs, not errors), since a
//! batch's writes share one database transaction without a savepoint each; one of
//! several statements says so ([`Write::ONE_STATEMENT`]) and runs in a transaction of
//! its own when done alone.

use std::future::Future;
use std::sync::Arc;

use sqlx::{PgConnection, PgPool};

use crate::batch::{Batch, Collector, AT_ONCE};

/// One write, owning what it writes.
pub trait Write: Send + Sync + 'static {
    type Output: Send + 'static;

    /// Whether the write is one statement. One that is not runs in a database
    /// transaction of its own when it is done alone; one that is runs as it is.
    const ONE_STATEMENT: bool = true;

    /// The row the write locks, if it changes one that others change too (a payment's
    /// id): a batch takes its writes in this order, so two batches that lock the same
    /// rows lock them in the same order and never wait for each other in a circle.
    fn lock_order(&self) -> Option<&str> {
        None
    }

    /// Runs the write on `conn` (inside the batch's transaction).
    fn write(
        &self,
        conn: &mut PgConnection,
    ) -> impl Future<Output = sqlx::Result<Self::Output>> + Send;

    /// Runs `writes` on `conn` (inside the batch's transaction), in their order, with an
    /// output each: one statement after the other, unless the kind writes many in one.
    /// One statement for the batch matters under load: between a batch's statements its
    /// connection waits for this process to send the next, and on a busy machine that
    /// wait, not PostgreSQL's work, was most of a batch's time.
    fn write_all(
        writes: &[&Self],
        conn: &mut PgConnection,
    ) -> impl Future<Output = sqlx::Result<Vec<Self::Output>>> + Send {
        async move {
            let mut outputs = Vec::with_capacity(writes.len());
            for write in writes {
                outputs.push(write.write(conn).await?);
            }
            Ok(outputs)
        }
    }
}

/// Writes of one kind, committed in groups (see the module). Cheap to clone.
pub struct GroupCommit<W: Write> {
    collector: Arc<Collector<Writes<W>>>,
}

impl<W: Write> Clone for GroupCommit<W> {
    fn clone(&self) -> Self {
        GroupCommit {
            collector: self.collector.clone(),
        }
    }
}

/// Groups of at most this many writes (the dispatcher records its 2xx answers in groups
/// of the same bound).
pub const MAX_GROUP: usize = 64;

impl<W: Write> GroupCommit<W> {
    /// Commits groups on `pool`, [`AT_ONCE`] at the most (each holds a connection).
    pub fn new(pool: PgPool) -> Self {
        let writes = Arc::new(Writes {
            pool,
            kind: std::marker::PhantomData,
        });
        GroupCommit {
            collector: Arc::new(Collector::new(writes, MAX_GROUP, AT_ONCE)),
        }
    }

    /// Writes `write` with whatever else is being written now; returns once committed.
    pub async fn write(&self, write: W) -> sqlx::Result<W::Output> {
        self.collector.submit(write).await
    }
}

/// `outputs` when there is one for each of the `asked` items of a batch (`what` they
/// are); otherwise an error, so the batch rolls back rather than answer anyone wrongly.
pub fn one_each<T>(outputs: Vec<T>, asked: usize, what: &str) -> sqlx::Result<Vec<T>> {
    if outputs.len() == asked {
        return Ok(outputs);
    }
    Err(sqlx::Error::Protocol(format!(
        "a batch of {asked} {what} gave {} outputs",
        outputs.len()
    )))
}

struct Writes<W> {
    pool: PgPool,
    kind: std::marker::PhantomData<fn() -> W>,
}

impl<W: Write> Batch for Writes<W> {
    type Item = W;
    type Output = W::Output;
    type Error = sqlx::Error;

    async fn together(&self, writes: &[W]) -> sqlx::Result<Vec<W::Output>> {
        let mut order: Vec<usize> = (0..writes.len()).collect();
        order.sort_by_key(|&i| writes[i].lock_order());
        let ordered: Vec<&W> = order.iter().map(|&i| &writes[i]).collect();
        let mut tx = self.pool.begin().await?;
        let written = one_each(
            W::write_all(&ordered, &mut tx).await?,
            writes.len(),
            "writes",
        )?;
        crate::outbox::commit(tx).await?;
        // Back in the callers' order.
        let mut outputs: Vec<Option<W::Output>> = writes.iter().map(|_| None).collect();
        for (i, output) in order.into_iter().zip(written) {
            outputs[i] = Some(output);
        }
        Ok(outputs.into_iter().flatten().collect())
    }

    async fn alone(&self, write: &W) -> sqlx::Result<W::Output> {
        if !W::ONE_STATEMENT {
            let mut tx = self.pool.begin().await?;
            let output = write.write(&mut tx).await?;
            crate::outbox::commit(tx).await?;
            return Ok(output);
        }
        let mut conn = self.pool.acquire().await?;
        let output = write.write(&mut conn).await?;
        crate::outbox::committed();
        Ok(output)
    }

    fn unanswered() -> sqlx::Error {
        sqlx::Error::WorkerCrashed
    }
}
