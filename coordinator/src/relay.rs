//! Redis pub/sub between coordinator replicas: job changes, render progress and worker
//! presence published on one replica reach the `watch` streams and worker views of all.
//!
//! Redis carries only what may be lost. Every failure here is logged and retried in the
//! background; nothing a worker or client does ever waits on Redis.

use std::time::Duration;

use futures::StreamExt;
use sdfarm_proto::v1::TaskProgress;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::events::{Event, Events, Presence};

/// Where and how replicas meet in Redis.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `redis://host:port/db`.
    pub url: String,
    /// Pub/sub channel; farms sharing one Redis use different channels.
    pub channel: String,
}

pub const DEFAULT_CHANNEL: &str = "sdfarm:events";

/// Events waiting for Redis. Past this the newest are dropped rather than stall callers.
const OUTBOUND_QUEUE: usize = 4096;
/// Longest wait between reconnection attempts while Redis is down.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// A Redis that accepts connections but does not answer must not hold a publisher forever.
const REDIS_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
#[error("Redis URL {url:?} is not valid: {source}")]
pub struct RelayError {
    url: String,
    source: redis::RedisError,
}

/// One message on the channel: the replica that sent it and what happened.
#[derive(Debug, Serialize, Deserialize)]
struct Wire {
    origin: String,
    #[serde(flatten)]
    event: WireEvent,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum WireEvent {
    JobChanged {
        job_id: Option<String>,
    },
    Progress {
        task_id: i64,
        step: u32,
        total_steps: u32,
        worker: String,
        job_id: String,
    },
    Presence(Presence),
    Drain {
        worker: String,
    },
}

impl From<Event> for WireEvent {
    fn from(e: Event) -> Self {
        match e {
            Event::JobChanged(job_id) => WireEvent::JobChanged { job_id },
            Event::Progress(p) => WireEvent::Progress {
                task_id: p.task_id,
                step: p.step,
                total_steps: p.total_steps,
                worker: p.worker,
                job_id: p.job_id,
            },
            Event::Presence(p) => WireEvent::Presence(p),
            Event::Drain(worker) => WireEvent::Drain { worker },
        }
    }
}

impl From<WireEvent> for Event {
    fn from(w: WireEvent) -> Self {
        match w {
            WireEvent::JobChanged { job_id } => Event::JobChanged(job_id),
            WireEvent::Progress {
                task_id,
                step,
                total_steps,
                worker,
                job_id,
            } => Event::Progress(TaskProgress {
                task_id,
                step,
                total_steps,
                worker,
                job_id,
            }),
            WireEvent::Presence(p) => Event::Presence(p),
            WireEvent::Drain { worker } => Event::Drain(worker),
        }
    }
}

/// Connects `events` to the other replicas through Redis: starts a publisher and a
/// subscriber that reconnect on their own. Only a malformed URL is an error; a Redis that
/// is down now is waited for in the background.
pub fn start(events: &Events, config: &RedisConfig) -> Result<(), RelayError> {
    let client = redis::Client::open(config.url.as_str()).map_err(|source| RelayError {
        url: config.url.clone(),
        source,
    })?;
    let origin = uuid::Uuid::new_v4().simple().to_string();
    let (tx, rx) = mpsc::channel(OUTBOUND_QUEUE);
    if !events.attach_outbound(tx) {
        return Ok(());
    }
    tokio::spawn(publisher(
        client.clone(),
        config.channel.clone(),
        origin.clone(),
        rx,
    ));
    tokio::spawn(subscriber(
        client,
        config.channel.clone(),
        origin,
        events.clone(),
    ));
    Ok(())
}

async fn publisher(
    client: redis::Client,
    channel: String,
    origin: String,
    mut rx: mpsc::Receiver<Event>,
) {
    let mut backoff = Backoff::default();
    loop {
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(REDIS_TIMEOUT))
            .set_response_timeout(Some(REDIS_TIMEOUT));
        let mut conn = match client
            .get_multiplexed_async_connection_with_config(&config)
            .await
        {
            Ok(conn) => {
                backoff.reset("publisher");
                conn
            }
            Err(err) => {
                backoff.failed("publisher", &err);
                // Events raised while Redis is down are dropped, not replayed late: watchers
                // re-read the store, and stale progress would only mislead.
                let wait = backoff.wait();
                let _ =
                    tokio::time::timeout(wait, async { while rx.recv().await.is_some() {} }).await;
                continue;
            }
        };
        while let Some(event) = rx.recv().await {
            let wire = Wire {
                origin: origin.clone(),
                event: event.into(),
            };
            let Ok(payload) = serde_json::to_string(&wire) else {
                continue;
            };
            let sent: redis::RedisResult<i64> = redis::cmd("PUBLISH")
                .arg(&channel)
                .arg(payload)
                .query_async(&mut conn)
                .await;
            if let Err(err) = sent {
                backoff.failed("publisher", &err);
                break;
            }
        }
        if rx.is_closed() && rx.is_empty() {
            return;
        }
    }
}

async fn subscriber(client: redis::Client, channel: String, origin: String, events: Events) {
    let mut backoff = Backoff::default();
    loop {
        let subscribed = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        let mut pubsub = match tokio::time::timeout(REDIS_TIMEOUT, subscribed).await {
            Ok(Ok(p)) => p,
            Ok(Err(err)) => {
                backoff.failed("subscriber", &err);
                tokio::time::sleep(backoff.wait()).await;
                continue;
            }
            Err(_) => {
                backoff.failed("subscriber", &"timed out");
                tokio::time::sleep(backoff.wait()).await;
                continue;
            }
        };
        if backoff.reset("subscriber") {
            // Whatever happened while disconnected is unknown: let every watcher re-read.
            events.deliver(Event::JobChanged(None));
        }
        let mut messages = pubsub.on_message();
        while let Some(msg) = messages.next().await {
            let Ok(wire) = serde_json::from_slice::<Wire>(msg.get_payload_bytes()) else {
                tracing::debug!("ignoring a message on the events channel that is not sdfarm's");
                continue;
            };
            if wire.origin != origin {
                events.deliver(wire.event.into());
            }
        }
        backoff.failed("subscriber", &"connection closed");
        tokio::time::sleep(backoff.wait()).await;
    }
}

/// Reconnection pacing and log hygiene: one warning when Redis goes away, one note when it
/// is back, not a line per attempt.
#[derive(Default)]
struct Backoff {
    failures: u32,
}

impl Backoff {
    fn failed(&mut self, who: &str, err: &dyn std::fmt::Display) {
        if self.failures == 0 {
            tracing::warn!(relay = who, error = %err, "Redis unavailable; replicas keep working without it and reconnect in the background");
        }
        self.failures = self.failures.saturating_add(1);
    }

    fn wait(&self) -> Duration {
        let ms = 100u64.saturating_mul(1 << self.failures.min(6));
        Duration::from_millis(ms).min(MAX_BACKOFF)
    }

    /// True when this ends an outage (not on the first connection).
    fn reset(&mut self, who: &str) -> bool {
        let was_down = self.failures > 0;
        if was_down {
            tracing::info!(relay = who, "Redis reachable again");
        }
        self.failures = 0;
        was_down
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_survive_the_wire() {
        let events = [
            Event::JobChanged(None),
            Event::JobChanged(Some("j".into())),
            Event::Progress(TaskProgress {
                task_id: 7,
                step: 3,
                total_steps: 20,
                worker: "w-1".into(),
                job_id: "j".into(),
            }),
            Event::Presence(Presence {
                worker: "w-1".into(),
                pool: "a100".into(),
                holding: Some(2),
            }),
            Event::Drain("w-2".into()),
        ];
        for e in events {
            let wire = Wire {
                origin: "r1".into(),
                event: e.clone().into(),
            };
            let text = serde_json::to_string(&wire).unwrap();
            let back: Wire = serde_json::from_str(&text).unwrap();
            assert_eq!(back.origin, "r1");
            assert_eq!(Event::from(back.event), e);
        }
    }

    #[test]
    fn backoff_grows_to_a_cap_and_resets() {
        let mut b = Backoff::default();
        assert!(!b.reset("t"));
        let mut last = Duration::ZERO;
        for _ in 0..10 {
            b.failed("t", &"down");
            assert!(b.wait() >= last);
            last = b.wait();
        }
        assert_eq!(last, MAX_BACKOFF);
        assert!(b.reset("t"));
        assert_eq!(b.failures, 0);
    }
}
