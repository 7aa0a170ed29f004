//! The server's lifecycle for Kubernetes: readiness turns false and new requests are refused once a
//! drain starts (SIGTERM), while every request already accepted runs to its answer. An [`Admission`] is
//! held by each inference request from acceptance to answer; the drain waits for the last to drop.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

use crate::core::{Code, Error};

/// Shared by every protocol front end.
#[derive(Debug, Default)]
pub struct Lifecycle {
    draining: AtomicBool,
    in_flight: AtomicUsize,
    idle: Notify,
}

/// Proof that a request was accepted; dropping it marks the request answered.
#[derive(Debug)]
pub struct Admission(Arc<Lifecycle>);

impl Drop for Admission {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl Lifecycle {
    pub fn new() -> Arc<Self> {
        Arc::new(Lifecycle::default())
    }

    /// Accepts a request, or refuses it with UNAVAILABLE while draining.
    pub fn admit(self: &Arc<Self>) -> Result<Admission, Error> {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        let admission = Admission(self.clone());
        if self.draining.load(Ordering::Acquire) {
            return Err(Error::new(
                Code::Unavailable,
                "the server is shutting down; send the request to another replica",
            ));
        }
        Ok(admission)
    }

    /// Starts the drain: readiness turns false and new requests are refused.
    pub fn start_drain(&self) {
        self.draining.store(true, Ordering::Release);
    }

    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Waits until no accepted request is left, or `timeout` passes. True when drained.
    pub async fn drained(&self, timeout: Duration) -> bool {
        let wait = async {
            loop {
                // Registered before the check, so a wake-up between the two is not lost.
                let notified = self.idle.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if self.in_flight() == 0 {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(timeout, wait).await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn drain_waits_for_admitted_requests_and_refuses_new_ones() {
        let l = Lifecycle::new();
        let a = l.admit().unwrap();
        l.start_drain();
        assert!(l.admit().is_err());
        assert!(
            !l.drained(Duration::from_millis(20)).await,
            "one request still in flight"
        );
        let waiter = {
            let l = l.clone();
            tokio::spawn(async move { l.drained(Duration::from_secs(5)).await })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        drop(a);
        assert!(waiter.await.unwrap());
        assert_eq!(l.in_flight(), 0);
    }
}
