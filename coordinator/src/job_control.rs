//! Controlling a job after it was submitted: pause, resume and retry, and the owner names
//! the fair claim shares the farm between.

use crate::auth::{Caller, Role};
use crate::error::{Error, Result};
use crate::events::Event;
use crate::service::Coordinator;
use crate::store::{JobRecord, ANONYMOUS_OWNER};

/// Longest owner name accepted; owners are people or teams, not free text.
pub const MAX_OWNER_LEN: usize = 64;

/// The owner a job is stored under: `raw` trimmed, or the anonymous owner when empty. Names
/// are printable and without spaces, so they read unambiguously in listings and logs.
pub fn owner_name(raw: &str) -> Result<String> {
    let name = raw.trim();
    if name.is_empty() {
        return Ok(ANONYMOUS_OWNER.to_string());
    }
    if name.chars().count() > MAX_OWNER_LEN {
        return Err(Error::InvalidArgument(format!(
            "owner {name:?} is longer than {MAX_OWNER_LEN} characters"
        )));
    }
    if let Some(c) = name.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return Err(Error::InvalidArgument(format!(
            "owner {name:?} contains {c:?}; an owner is one word without spaces or control \
             characters (e.g. alice, team-render)"
        )));
    }
    Ok(name.to_string())
}

impl Coordinator {
    /// Whether `caller` may steer (pause, resume, retry, cancel) the job: a client only its
    /// own jobs, an admin any. Without tokens there is no caller and everyone may, as before
    /// tokens existed. `action` names the refused call in the message.
    pub async fn check_owner(
        &self,
        job_id: &str,
        caller: Option<&Caller>,
        action: &str,
    ) -> Result<()> {
        let Some(caller) = caller.filter(|c| c.role != Role::Admin) else {
            return Ok(());
        };
        let job = self.store.get_job(job_id).await?;
        if job.owner == caller.name {
            return Ok(());
        }
        tracing::warn!(job_id, owner = %job.owner, caller = %caller.name, action, "refused");
        Err(Error::PermissionDenied(format!(
            "cannot {action} job {job_id}: it belongs to owner {:?}, and the {} token of {:?} \
             may only {action} its own jobs (an admin token may {action} any)",
            job.owner,
            caller.role.as_str(),
            caller.name
        )))
    }

    /// Pauses a job: its waiting tasks are not leased until it is resumed; tasks already
    /// rendering finish and are recorded. A finished job is returned unchanged.
    pub async fn pause(&self, job_id: &str) -> Result<JobRecord> {
        let job = self
            .store
            .set_paused(job_id, true, self.clock.now_ms())
            .await?;
        tracing::info!(job_id, "job paused");
        self.events
            .publish(Event::JobChanged(Some(job_id.to_string())));
        Ok(job)
    }

    /// Resumes a paused job: its waiting tasks are leased again.
    pub async fn resume(&self, job_id: &str) -> Result<JobRecord> {
        let job = self
            .store
            .set_paused(job_id, false, self.clock.now_ms())
            .await?;
        tracing::info!(job_id, "job resumed");
        self.work_ready.notify_waiters();
        self.events
            .publish(Event::JobChanged(Some(job_id.to_string())));
        Ok(job)
    }

    /// Puts a job's discarded and cancelled tasks back in the queue with fresh attempts (the
    /// reasons of the earlier ones are kept). Returns how many went back, and the job.
    pub async fn retry(&self, job_id: &str) -> Result<(u64, JobRecord)> {
        let (retried, job) = self.store.retry_job(job_id, self.clock.now_ms()).await?;
        tracing::info!(job_id, retried, "job's failed tasks retried");
        if retried > 0 {
            self.work_ready.notify_waiters();
            self.events
                .publish(Event::JobChanged(Some(job_id.to_string())));
        }
        Ok((retried, job))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_names_are_one_printable_word() {
        assert_eq!(owner_name("  alice ").unwrap(), "alice");
        assert_eq!(owner_name("").unwrap(), ANONYMOUS_OWNER);
        assert_eq!(
            owner_name("team-render@example.org").unwrap(),
            "team-render@example.org"
        );
        let e = owner_name("alice smith").unwrap_err().to_string();
        assert!(e.contains("\"alice smith\"") && e.contains("' '"), "{e}");
        let e = owner_name(&"x".repeat(65)).unwrap_err().to_string();
        assert!(e.contains("longer than 64"), "{e}");
        assert!(owner_name("bob\u{7}").is_err());
    }
}
