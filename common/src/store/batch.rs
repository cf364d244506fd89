//! Work gathered into batches, as PostgreSQL's group commit gathers commits: what many
//! concurrent callers ask for at one moment is done together, in one database
//! transaction committed (and flushed) once, and each caller gets its own answer after
//! that commit.
//!
//! A [`Collector`] takes what is queued (at most `max_batch`) the moment one of its
//! `concurrent` slots is free, so the batches grow with the load and a lone caller waits
//! for nobody. A batch that fails is rolled back whole (it is one database transaction)
//! and each of its items is then done alone: the good ones once, the bad one gets its
//! own error. Used by the consumers ([`crate::kafka::Batched`]) and by writes that
//! answer a request ([`crate::group_commit`]).

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::metrics;

/// Batches one collector applies at once: one applies while the next gathers.
pub const AT_ONCE: usize = 2;

/// Work that can be done a batch at a time.
pub trait Batch: Send + Sync + 'static {
    type Item: Send + Sync + 'static;
    type Output: Send + 'static;
    type Error: Send + 'static;

    /// Does all of `items` in one database transaction, all or nothing: an output per
    /// item, in their order.
    fn together(
        &self,
        items: &[Self::Item],
    ) -> impl Future<Output = Result<Vec<Self::Output>, Self::Error>> + Send;

    /// Does one item on its own, after the batch it was in failed.
    fn alone(
        &self,
        item: &Self::Item,
    ) -> impl Future<Output = Result<Self::Output, Self::Error>> + Send;

    /// The error a caller gets when its batch ended without an answer (a panic).
    fn unanswered() -> Self::Error;
}

/// A queued item and who waits for it.
struct Queued<B: Batch> {
    item: B::Item,
    done: oneshot::Sender<Result<B::Output, B::Error>>,
}

/// Gathers the items of concurrent callers into batches (see the module).
pub struct Collector<B: Batch> {
    queue: mpsc::UnboundedSender<Queued<B>>,
}

impl<B: Batch> Collector<B> {
    /// Starts collecting: batches of at most `max_batch` items, at most `concurrent`
    /// of them done at once.
    pub fn new(batch: Arc<B>, max_batch: usize, concurrent: usize) -> Self {
        let (queue, queued) = mpsc::unbounded_channel();
        tokio::spawn(collect(batch, queued, max_batch.max(1), concurrent.max(1)));
        Collector { queue }
    }

    /// Queues `item` and waits until its batch (or, after a failed batch, the item
    /// alone) committed.
    pub async fn submit(&self, item: B::Item) -> Result<B::Output, B::Error> {
        let (done, answer) = oneshot::channel();
        self.queue
            .send(Queued { item, done })
            .map_err(|_| B::unanswered())?;
        answer.await.unwrap_or_else(|_| Err(B::unanswered()))
    }
}

/// Takes what is queued, a batch at a time, until every sender is gone.
async fn collect<B: Batch>(
    batch: Arc<B>,
    mut queued: mpsc::UnboundedReceiver<Queued<B>>,
    max_batch: usize,
    concurrent: usize,
) {
    let slots = Arc::new(Semaphore::new(concurrent));
    let mut taken = Vec::with_capacity(max_batch);
    // Waits for a free slot first: while every slot is busy the queue grows, and the
    // next batch takes all of it.
    while let Ok(slot) = slots.clone().acquire_owned().await {
        if queued.recv_many(&mut taken, max_batch).await == 0 {
            return;
        }
        let batch = batch.clone();
        let items = std::mem::replace(&mut taken, Vec::with_capacity(max_batch));
        tokio::spawn(async move {
            apply(&*batch, items).await;
            drop(slot);
        });
    }
}

/// Does `queued` together; if that fails, each of its items alone.
async fn apply<B: Batch>(batch: &B, queued: Vec<Queued<B>>) {
    metrics::batch_applied(queued.len());
    let (items, waiting): (Vec<_>, Vec<_>) = queued.into_iter().map(|q| (q.item, q.done)).unzip();
    if let [item] = items.as_slice() {
        let alone = batch.alone(item).await;
        if let Some(done) = waiting.into_iter().next() {
            let _ = done.send(alone);
        }
        return;
    }
    match batch.together(&items).await {
        Ok(outputs) => {
            for (done, output) in waiting.into_iter().zip(outputs) {
                let _ = done.send(Ok(output));
            }
        }
        Err(_) => {
            tracing::warn!(
                items = items.len(),
                "a batch failed and was rolled back; doing each of its items alone"
            );
            for (item, done) in items.iter().zip(waiting) {
                let _ = done.send(batch.alone(item).await);
            }
        }
    }
}
