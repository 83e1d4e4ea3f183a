//! The gate a loaded build's data writes pass through, so that dropping its data is final.

use std::future::Future;

use tokio::sync::RwLock;

/// Open while a loaded build may store data under its hash (an aggregate's snapshots).
///
/// A write holds the gate shared for as long as it runs; [`close`](Self::close) waits for
/// the writes in flight, and every write after it is skipped. An unload that drops the data
/// closes the gate of every load of the build before it deletes, so no write of theirs lands
/// after the delete.
#[derive(Debug)]
pub struct DataGate(RwLock<bool>);

impl Default for DataGate {
    fn default() -> Self {
        Self(RwLock::new(true))
    }
}

impl DataGate {
    /// Runs `write` unless the gate is closed (then `None`).
    pub async fn write<T>(&self, write: impl Future<Output = T>) -> Option<T> {
        let open = self.0.read().await;
        if *open { Some(write.await) } else { None }
    }

    /// Closes the gate once the writes in flight have ended.
    pub async fn close(&self) {
        *self.0.write().await = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_close_waits_for_the_write_in_flight_and_skips_those_after() {
        let gate = std::sync::Arc::new(DataGate::default());
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let (started, start) = tokio::sync::oneshot::channel::<()>();
        let writing = tokio::spawn({
            let gate = gate.clone();
            async move {
                gate.write(async {
                    started.send(()).unwrap();
                    released.await.unwrap();
                    "written"
                })
                .await
            }
        });
        start.await.unwrap();
        let mut closing = std::pin::pin!(gate.close());
        let mut context = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(
            closing.as_mut().poll(&mut context).is_pending(),
            "closed under a write in flight"
        );
        release.send(()).unwrap();
        closing.await;
        assert_eq!(writing.await.unwrap(), Some("written"));
        assert_eq!(gate.write(async { "late" }).await, None);
    }
}
