//! HTTP/2 streams run on their connection's task.
//!
//! hyper serves each HTTP/2 stream as a future it hands to an executor;
//! with tokio's, every request is a task of its own, woken across tasks
//! (connection -> stream -> connection) at each step. [`here`] gives an
//! executor that keeps them on the connection's task instead: the
//! connection future and its streams are polled together, each stream
//! only when it is woken, so a long call on one stream does not hold up
//! the others, and nothing is spawned per request. A stream that panics
//! ends alone, as a spawned task would: the connection's other streams go
//! on.
//!
//! `WASMSCORE_H2_SPAWN=1` spawns each stream as a task, as before, for
//! side-by-side benchmarks (bench/h2.sh).

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;

use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::FutureExt;
use tokio::sync::mpsc;

type Stream = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The executor to give hyper's builder, and what drives its streams.
pub(crate) fn here() -> (Here, Streams) {
    let (tx, rx) = mpsc::unbounded_channel();
    (Here(tx), Streams(rx))
}

#[derive(Clone)]
pub(crate) struct Here(mpsc::UnboundedSender<Stream>);

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
        // The receiver lives as long as the connection that calls this.
        let _ = self.0.send(Box::pin(async move {
            if AssertUnwindSafe(stream).catch_unwind().await.is_err() {
                tracing::error!("an HTTP/2 stream panicked; it ends alone, its connection goes on");
            }
        }));
    }
}

pub(crate) struct Streams(mpsc::UnboundedReceiver<Stream>);

impl Streams {
    /// Polls `connection` and the streams it hands over until the
    /// connection ends; streams still running then end with it.
    pub(crate) async fn drive<T>(&mut self, connection: impl Future<Output = T>) -> T {
        let mut running = FuturesUnordered::new();
        tokio::pin!(connection);
        loop {
            tokio::select! {
                biased;
                Some(stream) = self.0.recv() => running.push(stream),
                Some(()) = running.next(), if !running.is_empty() => {}
                done = &mut connection => return done,
            }
        }
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
}
