//! HTTP/2 streams run on their connection's task.
//!
//! hyper serves each HTTP/2 stream as a future it hands to an executor;
//! with tokio's, every request is a task of its own, woken across tasks
//! (connection -> stream -> connection) at each step. [`here`] gives an
//! executor that keeps them on the connection's task instead: the
//! connection future and its streams are polled together, each stream
//! only when it is woken, so a long call on one stream does not hold up
//! the others, and nothing is spawned per request. A new stream is polled
//! right after the poll of the connection that accepted it, with no wake
//! of the task in between. A stream that panics ends alone, as a spawned
//! task would: the connection's other streams go on.
//!
//! `WASMSCORE_H2_SPAWN=1` spawns each stream as a task, as before, for
//! side-by-side benchmarks (bench/h2.sh).

use std::collections::VecDeque;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::Poll;

use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::FutureExt;

type Stream = Pin<Box<dyn Future<Output = ()> + Send>>;
/// Streams hyper handed over during the connection's last poll. No waker:
/// `drive` looks here right after each poll of the connection, the only
/// place hyper hands streams over, so a new request costs no second wake
/// of its own task.
type Handed = Arc<Mutex<VecDeque<Stream>>>;

/// The executor to give hyper's builder, and what drives its streams.
pub(crate) fn here() -> (Here, Streams) {
    let handed = Handed::default();
    (Here(handed.clone()), Streams(handed))
}

#[derive(Clone)]
pub(crate) struct Here(Handed);

impl<F> hyper::rt::Executor<F> for Here
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, stream: F) {
        static SPAWN: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        if *SPAWN.get_or_init(|| std::env::var_os("WASMSCORE_H2_SPAWN").is_some_and(|v| v == "1")) {
            tokio::spawn(stream);
            return;
        }
        let stream = Box::pin(async move {
            if AssertUnwindSafe(stream).catch_unwind().await.is_err() {
                tracing::error!("an HTTP/2 stream panicked; it ends alone, its connection goes on");
            }
        });
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push_back(stream);
    }
}

pub(crate) struct Streams(Handed);

impl Streams {
    /// Polls `connection` and the streams it hands over until the
    /// connection ends; streams still running then end with it.
    pub(crate) async fn drive<T>(&mut self, connection: impl Future<Output = T>) -> T {
        let mut running = FuturesUnordered::new();
        tokio::pin!(connection);
        std::future::poll_fn(|cx| loop {
            // The streams that were woken first: what they answer is
            // written by the connection's poll below.
            while let Poll::Ready(Some(())) = running.poll_next_unpin(cx) {}
            if let Poll::Ready(done) = connection.as_mut().poll(cx) {
                return Poll::Ready(done);
            }
            let mut handed = self.0.lock().unwrap_or_else(|p| p.into_inner());
            if handed.is_empty() {
                return Poll::Pending;
            }
            // New streams: polled at once, then the connection again.
            running.extend(handed.drain(..));
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::rt::Executor;
    use std::time::Duration;
    use tokio::sync::oneshot;

    /// Runs `first` and then a stream that answers after 5 ms on one
    /// connection, which lasts until that answer comes: the answer, if
    /// `first` held nothing up (within 5 s).
    async fn answer_beside(first: impl Future<Output = ()> + Send + 'static) -> Option<&'static str> {
        let (here, mut streams) = here();
        let (done_tx, done_rx) = oneshot::channel();
        let connection = async move {
            here.execute(first);
            here.execute(async move {
                tokio::time::sleep(Duration::from_millis(5)).await;
                let _ = done_tx.send("answered");
            });
            done_rx.await.unwrap()
        };
        tokio::time::timeout(Duration::from_secs(5), streams.drive(connection)).await.ok()
    }

    /// A stream that waits does not hold up one that can finish, and the
    /// connection ends when its own future does.
    #[tokio::test]
    async fn a_waiting_stream_does_not_hold_up_the_others() {
        let (stuck_tx, stuck_rx) = oneshot::channel::<()>();
        let waiting = async move {
            let _ = stuck_rx.await;
        };
        assert_eq!(answer_beside(waiting).await, Some("answered"));
        drop(stuck_tx);
    }

    /// A stream that panics ends alone: the others and the connection go on.
    #[tokio::test]
    async fn a_panicking_stream_ends_alone() {
        let panicking = async {
            tokio::task::yield_now().await;
            panic!("a handler's bug");
        };
        assert_eq!(answer_beside(panicking).await, Some("answered"));
    }

    /// A stream the connection hands over runs in the same poll of the
    /// connection's task: a new request needs no second wake to start.
    #[test]
    fn a_handed_stream_starts_in_the_same_poll() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let (here, mut streams) = here();
        let started = Arc::new(AtomicBool::new(false));
        let mut handed = false;
        let s = started.clone();
        // Hands one stream over on its first poll, then never wakes.
        let connection = std::future::poll_fn(move |_| {
            if !handed {
                handed = true;
                let s = s.clone();
                here.execute(async move { s.store(true, Ordering::SeqCst) });
            }
            Poll::<()>::Pending
        });
        assert!(streams.drive(connection).now_or_never().is_none());
        assert!(started.load(Ordering::SeqCst), "the stream waited for another poll");
    }
}
