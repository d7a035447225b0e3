//! A fixed pool of worker threads behind a bounded queue: submission never blocks, and a full
//! queue is reported to the caller (who answers `Busy`).
#![forbid(unsafe_code)]

use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError, bounded};

type Job = Box<dyn FnOnce() + Send + 'static>;

/// `workers` threads, created once; the thread count never grows with load.
#[derive(Debug)]
pub struct Pool {
    tx: Option<Sender<Job>>,
    done: Receiver<()>,
    handles: Vec<JoinHandle<()>>,
}

/// The queue is full; the job was not accepted.
#[derive(Debug, thiserror::Error)]
#[error("all analysis workers are busy and the queue is full")]
pub struct Busy;

impl Pool {
    pub fn new(workers: usize, queue: usize) -> std::io::Result<Self> {
        let (tx, rx) = bounded::<Job>(queue.max(1));
        let (done_tx, done) = bounded::<()>(workers.max(1));
        let mut handles = Vec::new();
        for i in 0..workers.max(1) {
            let rx = rx.clone();
            let done_tx = done_tx.clone();
            handles.push(
                std::thread::Builder::new()
                    .name(format!("worker-{i}"))
                    .spawn(move || {
                        for job in rx {
                            job();
                        }
                        let _ = done_tx.send(());
                    })?,
            );
        }
        Ok(Self {
            tx: Some(tx),
            done,
            handles,
        })
    }

    /// Queue `job` without blocking.
    pub fn try_submit(&self, job: impl FnOnce() + Send + 'static) -> Result<(), Busy> {
        match &self.tx {
            Some(tx) => submit(tx, Box::new(job)),
            None => Err(Busy),
        }
    }

    /// A handle that other threads (one per connection) submit through. Workers exit once the
    /// pool and every submitter are gone and the queue is drained.
    pub fn submitter(&self) -> Submitter {
        Submitter {
            tx: self.tx.clone(),
        }
    }

    /// Stop accepting jobs, let queued and running ones finish for up to `grace`, then return.
    /// Workers still busy after that are left to the process exit (their work is abandoned).
    pub fn shutdown(mut self, grace: Duration) -> bool {
        self.tx = None;
        let end = Instant::now() + grace;
        let mut finished = 0;
        while finished < self.handles.len() {
            match self.done.recv_deadline(end) {
                Ok(()) => finished += 1,
                Err(_) => return false,
            }
        }
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
        true
    }
}

/// Submits jobs to a [`Pool`] from another thread.
#[derive(Debug, Clone)]
pub struct Submitter {
    tx: Option<Sender<Job>>,
}

impl Submitter {
    /// Queue `job` without blocking.
    pub fn try_submit(&self, job: impl FnOnce() + Send + 'static) -> Result<(), Busy> {
        match &self.tx {
            Some(tx) => submit(tx, Box::new(job)),
            None => Err(Busy),
        }
    }
}

fn submit(tx: &Sender<Job>, job: Job) -> Result<(), Busy> {
    match tx.try_send(job) {
        Ok(()) => Ok(()),
        Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => Err(Busy),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn full_queue_is_busy_and_all_accepted_jobs_run() {
        let pool = Pool::new(1, 1).unwrap();
        let (gate_tx, gate_rx) = bounded::<()>(0);
        let ran = Arc::new(AtomicUsize::new(0));
        // First job occupies the only worker until released.
        let r = ran.clone();
        pool.try_submit(move || {
            let _ = gate_rx.recv();
            r.fetch_add(1, Ordering::SeqCst);
        })
        .unwrap();
        // Wait until the worker has taken it, so the queue slot is free.
        let mut queued = false;
        for _ in 0..1000 {
            let r = ran.clone();
            if pool
                .try_submit(move || {
                    r.fetch_add(1, Ordering::SeqCst);
                })
                .is_ok()
            {
                queued = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(queued);
        // Worker busy, queue (capacity 1) full.
        assert!(pool.try_submit(|| {}).is_err());
        gate_tx.send(()).unwrap();
        assert!(pool.shutdown(Duration::from_secs(5)));
        assert_eq!(ran.load(Ordering::SeqCst), 2);
    }
}
