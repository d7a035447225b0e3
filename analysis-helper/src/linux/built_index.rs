//! A package database's index, built on one builder thread and never inside a request: the
//! dpkg and rpm trusts share it. A request asks for the index of the database as it is now
//! (its stamp); if there is none, the first asker starts the build, and every asker waits for
//! it at most until its own deadline (then it reports the package fact as late, and its other
//! facts still decide it). A failed build is reported to every request for the same stamp
//! for [`BuiltIndex::retry_after`], without reading the database again each time.
#![forbid(unsafe_code)]

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::analyzer::AnalysisError;

#[derive(Debug)]
struct State<S, I> {
    index: Option<(S, Arc<I>)>,
    building: bool,
    failed: Option<(S, Instant, String)>,
    /// Builds started so far, and those that produced an index.
    builds: u64,
    built: u64,
}

#[derive(Debug)]
struct Shared<S, I> {
    state: Mutex<State<S, I>>,
    done: Condvar,
}

impl<S, I> Shared<S, I> {
    fn lock(&self) -> MutexGuard<'_, State<S, I>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One database's index (stamp `S`: what identifies a state of the database).
#[derive(Debug)]
pub struct BuiltIndex<S, I> {
    shared: Arc<Shared<S, I>>,
    thread: &'static str,
    retry_after: Duration,
}

/// Clears `building` and wakes the waiters even if the build panics, so no request waits for a
/// build that is no longer running.
struct BuildingGuard<'a, S, I>(&'a Shared<S, I>);

impl<S, I> Drop for BuildingGuard<'_, S, I> {
    fn drop(&mut self) {
        self.0.lock().building = false;
        self.0.done.notify_all();
    }
}

impl<S, I> BuiltIndex<S, I>
where
    S: PartialEq + Clone + Send + 'static,
    I: Send + Sync + 'static,
{
    /// Builds run on a thread named `thread`; a failure stands for `retry_after`.
    pub fn new(thread: &'static str, retry_after: Duration) -> Self {
        Self {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    index: None,
                    building: false,
                    failed: None,
                    builds: 0,
                    built: 0,
                }),
                done: Condvar::new(),
            }),
            thread,
            retry_after,
        }
    }

    /// How long a failed build is reported before a request tries again.
    pub fn retry_after(&self) -> Duration {
        self.retry_after
    }

    /// The index for `stamp`, built by `build` on the builder thread if need be (one build at a
    /// time); waits for it until `deadline`. The index is filed under the stamp the asker saw:
    /// the read starts after it was taken, so it is at least that new, and a later change is a
    /// newer stamp and a new build. (Filing it under a stamp taken by the builder could leave
    /// the asker, still waiting for its own stamp, starting build after build.)
    pub fn get(
        &self,
        stamp: S,
        deadline: Instant,
        build: impl FnOnce() -> Result<I, String> + Send + 'static,
    ) -> Result<Arc<I>, AnalysisError> {
        let mut build = Some(build);
        // Whether this ask waited for a build (its own or another asker's): if that build
        // failed, this ask reports it rather than waiting on to its deadline.
        let mut waited = false;
        let mut state = self.shared.lock();
        loop {
            if let Some((s, index)) = &state.index
                && *s == stamp
            {
                return Ok(Arc::clone(index));
            }
            if let Some((s, at, why)) = &state.failed
                && *s == stamp
                && (at.elapsed() < self.retry_after || (waited && !state.building))
            {
                return Err(AnalysisError::Internal(why.clone()));
            }
            if !state.building
                && let Some(build) = build.take()
            {
                state.building = true;
                state.builds += 1;
                let shared = Arc::clone(&self.shared);
                let filed_as = stamp.clone();
                let spawned =
                    std::thread::Builder::new()
                        .name(self.thread.into())
                        .spawn(move || {
                            let _guard = BuildingGuard(&shared);
                            let result = build();
                            let mut state = shared.lock();
                            match result {
                                Ok(index) => {
                                    state.index = Some((filed_as, Arc::new(index)));
                                    state.failed = None;
                                    state.built += 1;
                                }
                                Err(why) => state.failed = Some((filed_as, Instant::now(), why)),
                            }
                        });
                if let Err(e) = spawned {
                    state.building = false;
                    return Err(AnalysisError::io(
                        format!("starting the {} thread", self.thread),
                        e,
                    ));
                }
            }
            waited |= state.building;
            let now = Instant::now();
            if now >= deadline {
                return Err(AnalysisError::DeadlineExceeded);
            }
            state = self
                .shared
                .done
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Builds started so far (each reads the whole database).
    pub fn builds(&self) -> u64 {
        self.shared.lock().builds
    }

    /// Builds that produced an index.
    pub fn built(&self) -> u64 {
        self.shared.lock().built
    }

    /// The index built last, whatever its stamp (tests).
    pub fn current(&self) -> Option<Arc<I>> {
        self.shared
            .lock()
            .index
            .as_ref()
            .map(|(_, i)| Arc::clone(i))
    }

    /// Whether the last build failed and none is running (tests).
    pub fn failed_idle(&self) -> bool {
        let state = self.shared.lock();
        state.failed.is_some() && state.index.is_none() && !state.building
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (what, build result, deadline from now, expected outcome) for one fresh index; then the
    /// stamp rules: the same stamp is served from the index, a new one builds again.
    #[test]
    fn one_build_per_stamp_and_deadlines() {
        let idx: BuiltIndex<u32, &'static str> =
            BuiltIndex::new("test-index", Duration::from_secs(60));
        // A request whose deadline has come is told at once: the builder cannot file its index
        // while the asker holds the state, so this cannot race.
        let built = || Ok::<_, String>("v1");
        assert!(matches!(
            idx.get(1, Instant::now(), built),
            Err(AnalysisError::DeadlineExceeded)
        ));
        let later = Instant::now() + Duration::from_secs(30);
        assert_eq!(*idx.get(1, later, || Ok("never built")).unwrap(), "v1");
        assert_eq!((idx.builds(), idx.built()), (1, 1), "one build served both");
        assert_eq!(*idx.get(1, later, || Ok("never built")).unwrap(), "v1");
        assert_eq!(
            *idx.get(2, later, || Ok("v2")).unwrap(),
            "v2",
            "a new stamp"
        );
        assert_eq!((idx.builds(), idx.built()), (2, 2));
    }

    #[test]
    fn a_failure_stands_until_retry_after() {
        let later = || Instant::now() + Duration::from_secs(30);
        let idx: BuiltIndex<u32, u8> = BuiltIndex::new("test-index", Duration::from_secs(60));
        for _ in 0..2 {
            match idx.get(1, later(), || Err("broken".to_owned())) {
                Err(AnalysisError::Internal(m)) => assert_eq!(m, "broken"),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(idx.builds(), 1, "the second request did not build again");
        assert!(idx.failed_idle());
        // With no hold-off, the next request builds again.
        let idx: BuiltIndex<u32, u8> = BuiltIndex::new("test-index", Duration::ZERO);
        assert!(idx.get(1, later(), || Err("broken".to_owned())).is_err());
        assert_eq!(*idx.get(1, later(), || Ok(7)).unwrap(), 7);
        assert_eq!(idx.builds(), 2);
    }

    #[test]
    fn concurrent_askers_share_one_build() {
        let idx: BuiltIndex<u32, u8> = BuiltIndex::new("test-index", Duration::from_secs(60));
        let later = Instant::now() + Duration::from_secs(30);
        std::thread::scope(|s| {
            let asks: Vec<_> = (0..8)
                .map(|_| {
                    s.spawn(|| {
                        idx.get(1, later, || {
                            std::thread::sleep(Duration::from_millis(20));
                            Ok(9)
                        })
                    })
                })
                .collect();
            for a in asks {
                assert_eq!(*a.join().unwrap().unwrap(), 9);
            }
        });
        assert_eq!(idx.builds(), 1);
    }
}
