//! Consumers that work in batches: the messages a consumer is handling at one moment
//! have their database work done together, in one database transaction committed once,
//! as PostgreSQL's group commit does for commits.
//!
//! The consumer loop is unchanged (many messages in flight, one at a time per key, an
//! offset stored only once its message and every earlier one are done): a
//! [`Batched`] handler is one more [`Handler`]. Each message is read on its own
//! ([`BatchHandler::prepare`]) and its work queued; a [`Collector`] takes what is
//! queued (at most `max_batch`), applies it as one batch ([`BatchHandler::apply`]) and
//! answers each message. While a batch runs the next one gathers, so the batches grow
//! with the load and a lone message waits for nobody.
//!
//! What it keeps:
//! - **One at a time per key.** The loop never hands over two messages of one key at
//!   once, so a batch holds at most one of each.
//! - **Nothing lost or doubled by a bad message.** A batch that fails is rolled back
//!   whole (it is one database transaction), and each of its messages is then applied
//!   alone, in a transaction of its own: the good ones are applied once, the bad one
//!   gets its own error (dead-lettered when permanent, retried when transient).
//! - **An offset only after the commit.** A message's handler returns once its batch
//!   (or its own transaction) committed; the loop stores the offset after that.

use std::future::Future;
use std::sync::Arc;

use anyhow::anyhow;

use super::{Handler, HandlerError, Inbound};
use crate::batch::{Batch, Collector};

/// Work done a batch at a time.
pub trait BatchHandler: Send + Sync + 'static {
    /// One message's work, read from it.
    type Item: Send + Sync + 'static;

    /// Reads a message into its work; `None`: it asks for nothing. An error here is the
    /// message's own (a permanent one: it cannot be read).
    fn prepare(
        &self,
        message: &Inbound,
    ) -> impl Future<Output = Result<Option<Self::Item>, HandlerError>> + Send;

    /// Does the work of `items` in one database transaction, committed once; on error
    /// nothing of it is kept. Called with one item to apply a message alone.
    fn apply(&self, items: &[Self::Item]) -> impl Future<Output = Result<(), HandlerError>> + Send;
}

/// A [`Handler`] that applies the messages in flight in batches (see the module).
pub struct Batched<H: BatchHandler> {
    inner: Arc<Messages<H>>,
    collector: Collector<Messages<H>>,
}

/// The messages of a [`BatchHandler`], as a [`Batch`].
struct Messages<H>(H);

impl<H: BatchHandler> Batch for Messages<H> {
    type Item = H::Item;
    type Output = ();
    type Error = HandlerError;

    async fn together(&self, items: &[H::Item]) -> Result<Vec<()>, HandlerError> {
        self.0.apply(items).await?;
        Ok(vec![(); items.len()])
    }

    async fn alone(&self, item: &H::Item) -> Result<(), HandlerError> {
        self.0.apply(std::slice::from_ref(item)).await
    }

    fn unanswered() -> HandlerError {
        HandlerError::transient(anyhow!("the batch ended without an answer"))
    }
}

impl<H: BatchHandler> Batched<H> {
    /// Starts the collector: batches of at most `max_batch` messages, at most
    /// `concurrent` of them applied at once.
    pub fn new(inner: H, max_batch: usize, concurrent: usize) -> Self {
        let inner = Arc::new(Messages(inner));
        let collector = Collector::new(inner.clone(), max_batch, concurrent);
        Batched { inner, collector }
    }

    /// The handler inside.
    pub fn inner(&self) -> &H {
        &self.inner.0
    }
}

impl<H: BatchHandler> Handler for Batched<H> {
    async fn handle(&self, message: &Inbound) -> Result<(), HandlerError> {
        match self.inner.0.prepare(message).await? {
            Some(item) => self.collector.submit(item).await,
            None => Ok(()),
        }
    }
}
