//! Every task the server spawns (connections, HTTP/2 streams), tracked so
//! that shutdown can abort them all and wait until they are gone.

use std::future::Future;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::task::JoinSet;

/// A set of tasks that doubles as hyper's executor. After
/// [`Tasks::shutdown`], new tasks are dropped unstarted.
#[derive(Clone)]
pub(super) struct Tasks {
    set: Arc<Mutex<Option<JoinSet<()>>>>,
}

impl Tasks {
    pub(super) fn new() -> Self {
        Tasks { set: Arc::new(Mutex::new(Some(JoinSet::new()))) }
    }

    pub(super) fn spawn(&self, fut: impl Future<Output = ()> + Send + 'static) {
        let mut guard = self.set.lock();
        if let Some(set) = guard.as_mut() {
            // Reap finished tasks so a long-lived server does not accumulate them.
            while set.try_join_next().is_some() {}
            set.spawn(fut);
        }
    }

    /// Aborts every task and waits until all have been dropped.
    pub(super) async fn shutdown(&self) {
        let set = self.set.lock().take();
        if let Some(mut set) = set {
            set.shutdown().await;
        }
    }
}

impl<F> hyper::rt::Executor<F> for Tasks
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        self.spawn(async move {
            fut.await;
        });
    }
}
