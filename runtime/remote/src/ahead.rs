//! The bound on a decoupled call's responses that wait for their reader
//! (the gRPC edge's client, a node's router): a count of them and their
//! bytes, so that a module sending large responses to a reader that does
//! not read holds no more than this in the host's memory.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Responses a reader has not taken yet, at most; one more fails the
/// module's `send`.
pub const SENT_AHEAD: usize = 256;

/// And the most bytes of them (a response bigger than this alone still
/// goes, once the ones before it are taken).
pub const SENT_AHEAD_BYTES: usize = 64 << 20;

/// Counts `bytes` more waiting for `reader`, or refuses them past
/// SENT_AHEAD_BYTES (one response alone always goes).
pub fn admit(queued: &AtomicUsize, bytes: usize, reader: &str) -> Result<(), String> {
    let before = queued.fetch_add(bytes, Ordering::Relaxed);
    if before > 0 && before + bytes > SENT_AHEAD_BYTES {
        queued.fetch_sub(bytes, Ordering::Relaxed);
        return Err(format!("{reader} has not taken {} MiB of responses before it", before >> 20));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_waiting_for_their_reader_are_bounded_in_bytes() {
        let queued = AtomicUsize::new(0);
        // One bigger than the bound alone goes; nothing after it does.
        assert!(admit(&queued, SENT_AHEAD_BYTES * 2, "the client").is_ok());
        let e = admit(&queued, 1, "the client").unwrap_err();
        assert!(e.contains("the client has not taken 128 MiB"), "{e}");
        assert_eq!(queued.load(Ordering::Relaxed), SENT_AHEAD_BYTES * 2, "a refusal is not counted");
        queued.store(0, Ordering::Relaxed);
        for _ in 0..64 {
            admit(&queued, 1 << 20, "the client").unwrap();
        }
        assert!(admit(&queued, 1, "the client").is_err(), "64 MiB waiting");
    }
}
