//! A served connection and its HTTP/2 streams run on one task: the front
//! server's (REST and gRPC) and a node's.
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
//! Every connection, HTTP/1.1 too, is driven here for its wakers: a wake
//! from inside the connection's own poll (a handler reading its body
//! tells hyper it wants more; a stream's answer queued for the
//! connection to write) is taken by `drive`'s loop, not by tokio, which
//! pushes a task that woke itself to the back of the queue and wakes
//! another worker to steal it.
//!
//! `WASMSCORE_H2_SPAWN=1` spawns each stream as a task, as before, for
//! side-by-side benchmarks (bench/h2.sh).

use std::collections::VecDeque;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::task::AtomicWaker;
use futures_util::FutureExt;

type Stream = Pin<Box<dyn Future<Output = ()> + Send>>;
/// Streams hyper handed over during the connection's last poll. No waker:
/// `drive` looks here right after each poll of the connection, the only
/// place hyper hands streams over, so a new request costs no second wake
/// of its own task.
type Handed = Arc<Mutex<VecDeque<Stream>>>;

/// The executor to give hyper's builder, and what drives its streams.
pub fn here() -> (Here, Streams) {
    let handed = Handed::default();
    (Here(handed.clone()), Streams(handed))
}

#[derive(Clone)]
pub struct Here(Handed);

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

pub struct Streams(Handed);

impl Streams {
    /// Polls `connection` and the streams it hands over until the
    /// connection ends; streams still running then end with it.
    ///
    /// Each part is polled only when woken, with a waker of its own. A
    /// wake that comes while this task is being polled (a stream's answer
    /// queued for the connection to write, a request's body handed to its
    /// stream) is taken by the loop below rather than by tokio: a task
    /// that wakes itself is pushed to the back of its worker's queue and
    /// another worker is woken to steal it, a futex wake or an eventfd
    /// write per request, and the task is polled once more for nothing.
    pub async fn drive<T>(&mut self, connection: impl Future<Output = T>) -> T {
        // The connection is polled first.
        let wakes = Arc::new(Wakes {
            state: AtomicU8::new(CONNECTION),
            task: AtomicWaker::new(),
        });
        let conn_waker = Waker::from(Arc::new(Part {
            wakes: wakes.clone(),
            bit: CONNECTION,
        }));
        let streams_waker = Waker::from(Arc::new(Part {
            wakes: wakes.clone(),
            bit: STREAMS,
        }));
        let mut running = FuturesUnordered::new();
        tokio::pin!(connection);
        std::future::poll_fn(|cx| {
            wakes.task.register(cx.waker());
            wakes.state.fetch_or(POLLING, Ordering::AcqRel);
            for _ in 0..ROUNDS {
                // The streams that were woken first: what they answer is
                // written by the connection's poll below.
                if wakes.take(STREAMS) {
                    let mut cx = Context::from_waker(&streams_waker);
                    while let Poll::Ready(Some(())) = running.poll_next_unpin(&mut cx) {}
                }
                if wakes.take(CONNECTION) {
                    if let Poll::Ready(done) = connection.as_mut().poll(&mut Context::from_waker(&conn_waker)) {
                        return Poll::Ready(done);
                    }
                }
                // New streams: polled at once, then the connection again.
                let mut handed = self.0.lock().unwrap_or_else(|p| p.into_inner());
                if !handed.is_empty() {
                    running.extend(handed.drain(..));
                    wakes.state.fetch_or(STREAMS, Ordering::AcqRel);
                    continue;
                }
                drop(handed);
                if wakes.state.load(Ordering::Acquire) & (CONNECTION | STREAMS) == 0 {
                    break;
                }
            }
            // Done polling: from here a wake wakes the task. One that came
            // since the check above, or a part that keeps waking itself
            // (tokio's budget spent), goes back through tokio's queue.
            if wakes.state.fetch_and(!POLLING, Ordering::AcqRel) & (CONNECTION | STREAMS) != 0 {
                cx.waker().wake_by_ref();
            }
            Poll::Pending
        })
        .await
    }
}

/// Rounds of the loop in one poll of the task before it goes back to
/// tokio's queue: bounded, as a part whose budget is spent wakes itself
/// at once.
const ROUNDS: usize = 8;
const POLLING: u8 = 1;
const CONNECTION: u8 = 2;
const STREAMS: u8 = 4;

/// What was woken (`CONNECTION`, `STREAMS`) and whether the task is being
/// polled (`POLLING`), with the task's waker for a wake from outside.
struct Wakes {
    state: AtomicU8,
    task: AtomicWaker,
}

impl Wakes {
    /// Whether `bit` was woken, clearing it: a wake from now on asks for
    /// another poll.
    fn take(&self, bit: u8) -> bool {
        self.state.fetch_and(!bit, Ordering::AcqRel) & bit != 0
    }
}

/// The waker of one part (the connection, or its streams).
struct Part {
    wakes: Arc<Wakes>,
    bit: u8,
}

impl Wake for Part {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if self.wakes.state.fetch_or(self.bit, Ordering::AcqRel) & POLLING == 0 {
            self.wakes.task.wake();
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

    /// Counts the wakes of the task.
    #[derive(Default)]
    struct Count(std::sync::atomic::AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.wake_by_ref();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// A connection that wakes itself while it is polled (as hyper's does
    /// when a handler reads its body) is polled again in the same poll of
    /// the task: the task is not woken.
    #[test]
    fn a_wake_from_inside_the_poll_is_taken_by_the_loop() {
        let (_here, mut streams) = here();
        let mut polls = 0;
        let connection = std::future::poll_fn(|cx| {
            polls += 1;
            if polls < 3 {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            Poll::Ready(polls)
        });
        let count = Arc::new(Count::default());
        let waker = Waker::from(count.clone());
        let drive = std::pin::pin!(streams.drive(connection));
        assert_eq!(drive.poll(&mut Context::from_waker(&waker)), Poll::Ready(3));
        assert_eq!(count.0.load(Ordering::SeqCst), 0, "the task was woken for a wake of its own");
    }

    /// A connection that keeps waking itself (tokio's budget spent) gets a
    /// bounded number of polls, then the task is woken to go back through
    /// tokio's queue: neither a busy loop nor a lost wake.
    #[test]
    fn a_part_that_keeps_waking_itself_yields_to_the_runtime() {
        let (_here, mut streams) = here();
        let polls = std::cell::Cell::new(0);
        let connection = std::future::poll_fn(|cx| {
            polls.set(polls.get() + 1);
            cx.waker().wake_by_ref();
            Poll::<()>::Pending
        });
        let count = Arc::new(Count::default());
        let waker = Waker::from(count.clone());
        let mut drive = std::pin::pin!(streams.drive(connection));
        assert!(drive.as_mut().poll(&mut Context::from_waker(&waker)).is_pending());
        assert_eq!(count.0.load(Ordering::SeqCst), 1, "the task must be woken to come back");
        assert_eq!(polls.get(), ROUNDS);
    }

    /// A wake from another thread after the poll wakes the task.
    #[test]
    fn a_wake_from_outside_wakes_the_task() {
        let (_here, mut streams) = here();
        let (tx, mut rx) = oneshot::channel::<u8>();
        let connection = std::future::poll_fn(move |cx| Pin::new(&mut rx).poll(cx));
        let count = Arc::new(Count::default());
        let waker = Waker::from(count.clone());
        let mut drive = std::pin::pin!(streams.drive(connection));
        assert!(drive.as_mut().poll(&mut Context::from_waker(&waker)).is_pending());
        std::thread::spawn(move || tx.send(7).unwrap()).join().unwrap();
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert_eq!(drive.poll(&mut Context::from_waker(&waker)), Poll::Ready(Ok(7)));
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
