//! Time source for leases and backoff; injectable so tests control time.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::store::Millis;

pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> Millis;
}

/// Wall-clock time. Leases are compared across coordinator replicas, so they rely on the
/// replicas' clocks agreeing to well within a lease (NTP is enough).
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> Millis {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as Millis)
            .unwrap_or(0)
    }
}
