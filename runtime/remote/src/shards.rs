//! A router's connections on threads of their own, one runtime each (a
//! thread per core, as nginx runs a worker process per core).
//!
//! On tokio's multi-thread runtime a proxied request crosses tasks that any
//! worker may run: the client's connection, then the node connection's task
//! that writes it out, then the node connection's task that reads the answer
//! and wakes the client's connection again. Each wake of a task another
//! worker might take costs a futex or an eventfd write and a context switch
//! when that worker sleeps. Here a connection accepted is handed, round
//! robin, to one shard: a thread with a current-thread runtime. Its requests
//! go out on that shard's own connection to each node (see [`slot`]), whose
//! task runs on the same thread, so a request's wakes stay on one thread and
//! cost a push onto its queue.
//!
//! [`keep_a_timer`] is for any runtime that serves requests (these, and
//! the multi-thread runtime of `up` and a node).

use std::cell::Cell;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::runtime::Handle;

/// How many shards this process started (0: none, every task runs on the
/// multi-thread runtime).
static COUNT: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static INDEX: Cell<Option<usize>> = const { Cell::new(None) };
}

/// Slots per node connection set: one per shard, and one for tasks on no
/// shard (health checks, the multi-thread runtime).
pub fn slots() -> usize {
    COUNT.load(Ordering::Relaxed) + 1
}

/// This thread's slot, below [`slots`] at the time it is asked.
pub fn slot() -> usize {
    INDEX.with(|i| i.get()).unwrap_or_else(|| COUNT.load(Ordering::Relaxed))
}

/// A task that keeps a timer due within a second, for the life of its
/// runtime. tokio's timer wakes the thread parked in the runtime's driver
/// (an eventfd write, and a turn of epoll for nothing when that thread is
/// the caller) for every new timer due before the earliest it knew of when
/// it last parked, and so for every timer while it knows of none: each
/// request's deadline, hyper's header timer. With this one pending, those
/// later timers do not.
pub async fn keep_a_timer() {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The shards' threads, stopped (and their tasks dropped) when this is.
pub struct Shards {
    handles: Vec<Handle>,
    next: AtomicUsize,
    stops: Vec<tokio::sync::oneshot::Sender<()>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Shards {
    /// Starts `n` shard threads (at least one). Call it once, before the
    /// node sets are made, as they size their connections by [`slots`].
    pub fn start(n: usize) -> std::io::Result<Shards> {
        let n = n.max(1);
        let mut shards = Shards {
            handles: Vec::with_capacity(n),
            next: AtomicUsize::new(0),
            stops: Vec::with_capacity(n),
            threads: Vec::with_capacity(n),
        };
        for i in 0..n {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            shards.handles.push(rt.handle().clone());
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            shards.stops.push(stop);
            let thread = std::thread::Builder::new().name(format!("shard-{i}")).spawn(move || {
                INDEX.with(|s| s.set(Some(i)));
                rt.spawn(keep_a_timer());
                let _ = rt.block_on(stopped);
                // A connection still open is cut here; its requests were
                // drained by the server's shutdown before.
                rt.shutdown_timeout(Duration::from_secs(1));
            })?;
            shards.threads.push(thread);
        }
        COUNT.store(n, Ordering::Relaxed);
        Ok(shards)
    }

    pub fn len(&self) -> usize {
        self.handles.len()
    }

    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }

    /// Runs a connection's task on the next shard.
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        self.handles[i].spawn(task);
    }
}

impl std::fmt::Debug for Shards {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shards").field("threads", &self.handles.len()).finish()
    }
}

impl Drop for Shards {
    fn drop(&mut self) {
        for stop in self.stops.drain(..) {
            let _ = stop.send(());
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_go_round_robin_and_know_their_slot() {
        let shards = Shards::start(2).unwrap();
        assert_eq!(slots(), 3);
        assert_eq!(slot(), 2, "a thread outside the shards takes the last slot");
        let (tx, rx) = std::sync::mpsc::channel();
        for _ in 0..4 {
            let tx = tx.clone();
            shards.spawn(async move {
                // A task spawned from a shard stays on it.
                let inner = tokio::spawn(async { (slot(), std::thread::current().id()) }).await.unwrap();
                tx.send((slot(), std::thread::current().id(), inner)).unwrap();
            });
        }
        let mut seen: Vec<usize> = (0..4)
            .map(|_| {
                let (s, thread, (inner_slot, inner_thread)) = rx.recv_timeout(Duration::from_secs(5)).unwrap();
                assert_eq!((s, thread), (inner_slot, inner_thread));
                s
            })
            .collect();
        seen.sort();
        assert_eq!(seen, vec![0, 0, 1, 1]);
        drop(shards);
    }
}
