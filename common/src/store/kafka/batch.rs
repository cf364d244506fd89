//! Consumers that work in batches: the messages a consumer is handling at one moment
//! have their database work done together, in one database transaction committed once,
//! as PostgreSQL's group commit does for commits.
//!
//! The consumer loop is unchanged (many messages in flight, one at a time per key, an
//! offset stored only once its message and every earlier one are done): a
//! [`Batched`] handler is one more [`Handler`]. Each message is read on its own
//! ([`BatchHandler::prepare`]) and its work queued; a collector takes what is queued
//! (at most `max_batch`), applies it as one batch ([`BatchHandler::apply`]) and answers
//! each message. While a batch runs the next one gathers, so the batches grow with the
//! load and a lone message waits for nobody.
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
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::{Handler, HandlerError, Inbound};
use crate::metrics;

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

/// A queued message's work and who waits for it.
struct Queued<T> {
    item: T,
    done: oneshot::Sender<Result<(), HandlerError>>,
}

/// A [`Handler`] that applies the messages in flight in batches (see the module).
pub struct Batched<H: BatchHandler> {
    inner: Arc<H>,
    queue: mpsc::UnboundedSender<Queued<H::Item>>,
}

impl<H: BatchHandler> Batched<H> {
    /// Starts the collector: batches of at most `max_batch` messages, at most
    /// `concurrent` of them applied at once.
    pub fn new(inner: H, max_batch: usize, concurrent: usize) -> Self {
        let inner = Arc::new(inner);
        let (queue, queued) = mpsc::unbounded_channel();
        tokio::spawn(collect(
            inner.clone(),
            queued,
            max_batch.max(1),
            concurrent.max(1),
        ));
        Batched { inner, queue }
    }

    /// The handler inside.
    pub fn inner(&self) -> &H {
        &self.inner
    }
}

impl<H: BatchHandler> Handler for Batched<H> {
    async fn handle(&self, message: &Inbound) -> Result<(), HandlerError> {
        let Some(item) = self.inner.prepare(message).await? else {
            return Ok(());
        };
        let (done, answer) = oneshot::channel();
        self.queue
            .send(Queued { item, done })
            .map_err(|_| HandlerError::transient(anyhow!("the batch collector has stopped")))?;
        answer
            .await
            .map_err(|_| HandlerError::transient(anyhow!("the batch was dropped unapplied")))?
    }
}

/// Takes what is queued, a batch at a time, until every sender is gone.
async fn collect<H: BatchHandler>(
    handler: Arc<H>,
    mut queued: mpsc::UnboundedReceiver<Queued<H::Item>>,
    max_batch: usize,
    concurrent: usize,
) {
    let slots = Arc::new(Semaphore::new(concurrent));
    let mut batch = Vec::with_capacity(max_batch);
    // Waits for a free slot first: while every slot is busy the queue grows, and the
    // next batch takes all of it.
    while let Ok(slot) = slots.clone().acquire_owned().await {
        if queued.recv_many(&mut batch, max_batch).await == 0 {
            return;
        }
        let handler = handler.clone();
        let taken = std::mem::replace(&mut batch, Vec::with_capacity(max_batch));
        tokio::spawn(async move {
            apply(&*handler, taken).await;
            drop(slot);
        });
    }
}

/// Applies `batch` together; if that fails, each of its messages alone.
async fn apply<H: BatchHandler>(handler: &H, batch: Vec<Queued<H::Item>>) {
    metrics::batch_applied(batch.len());
    let (items, waiting): (Vec<_>, Vec<_>) = batch.into_iter().map(|q| (q.item, q.done)).unzip();
    let error = match handler.apply(&items).await {
        Ok(()) => {
            for done in waiting {
                let _ = done.send(Ok(()));
            }
            return;
        }
        Err(error) => error,
    };
    if items.len() == 1 {
        if let Some(done) = waiting.into_iter().next() {
            let _ = done.send(Err(error));
        }
        return;
    }
    tracing::warn!(error = %error, messages = items.len(), "a batch failed and was rolled back; applying each of its messages alone");
    for (item, done) in items.iter().zip(waiting) {
        let alone = handler.apply(std::slice::from_ref(item)).await;
        let _ = done.send(alone);
    }
}
