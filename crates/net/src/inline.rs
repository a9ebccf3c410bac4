//! Running a future in place until it would wait.
//!
//! Handing every request and reply to another task costs a thread wake-up each on a busy
//! machine (tens of microseconds on a small VM), more than a metadata lookup itself. Most
//! sends and most metadata handlers finish without waiting, so they run where they are; only
//! one that must wait becomes a task of its own.

use std::future::Future;
use std::task::{Context, Poll, Waker};

/// Polls `fut` once on the calling task: its output if it finished, or `None` after handing
/// the rest of it to a new task.
pub(crate) fn here_or_spawn<F>(fut: F) -> Option<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let mut fut = Box::pin(fut);
    // A future that returns Pending here registered this no-op waker; the spawned task polls
    // it again at once with its own, which is the one a future must wake.
    let mut cx = Context::from_waker(Waker::noop());
    match fut.as_mut().poll(&mut cx) {
        Poll::Ready(out) => Some(out),
        Poll::Pending => {
            tokio::spawn(fut);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_ready_future_runs_in_place_and_a_waiting_one_finishes_as_a_task() {
        assert_eq!(here_or_spawn(async { 7 }), Some(7));
        let (tx, rx) = tokio::sync::oneshot::channel::<u32>();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let waiting = async move {
            let v = rx.await.unwrap();
            done_tx.send(v + 1).unwrap();
        };
        assert_eq!(here_or_spawn(waiting), None);
        tx.send(41).unwrap();
        assert_eq!(done_rx.await.unwrap(), 42);
    }
}
