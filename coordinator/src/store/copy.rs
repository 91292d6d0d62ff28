//! Rows for a streaming submit: task parameters as compact JSON, and Postgres `COPY` text
//! format in bounded chunks.

use sdfarm_proto::RenderParams;
use serde_json::Value;

use super::rows::attempts_to_sql;
use super::{Millis, NewJob, NewTask};

/// Bytes buffered before a chunk is sent: large enough to keep the connection busy, small
/// enough that a million-task submit stays far below its memory budget.
const CHUNK_BYTES: usize = 1 << 20;

/// `RenderParams` as JSON without the fields at their defaults. Readers deserialise with
/// `#[serde(default)]`, so this reads back identically, and a task row of an X/Y/Z sweep
/// stays a fraction of the size of one listing every axis field.
pub(super) fn compact_params_json(params: &RenderParams) -> String {
    let Ok(Value::Object(mut map)) = serde_json::to_value(params) else {
        unreachable!("RenderParams serialises to an object");
    };
    map.retain(|_, v| match v {
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Bool(b) => *b,
        _ => true,
    });
    Value::Object(map).to_string()
}

/// Accumulates `COPY … FROM STDIN` text rows and hands them out in chunks.
pub(super) struct CopyRows {
    buf: Vec<u8>,
    /// The columns every row of the job shares, already escaped: job id, then priority,
    /// and the tail after the params (max attempts … owner).
    job_id: String,
    priority: String,
    max_attempts: String,
    scheduled_at: String,
    pool: String,
    owner: String,
}

impl CopyRows {
    pub(super) fn new(job: &NewJob, now: Millis) -> CopyRows {
        CopyRows {
            buf: Vec::with_capacity(CHUNK_BYTES + 4096),
            job_id: escape(&job.id),
            priority: job.priority.to_string(),
            max_attempts: attempts_to_sql(job.max_attempts).to_string(),
            scheduled_at: now.to_string(),
            pool: escape(&job.pool),
            owner: escape(&job.owner),
        }
    }

    /// Adds a row; returns a full chunk to send when the buffer is large enough.
    pub(super) fn push(&mut self, task: &NewTask) -> Option<Vec<u8>> {
        let params = escape(&compact_params_json(&task.params));
        let key = escape(&task.output_key);
        // Postgres keeps the model in its own column for the affinity indexes.
        let model = escape(&task.params.model);
        // `\N` is COPY's NULL: tasks of jobs that are not datasets have no cell key.
        let cell_key = task.cell_key.as_deref().map(escape);
        let b = &mut self.buf;
        for (i, field) in [
            self.job_id.as_str(),
            &task.image_index.to_string(),
            &self.priority,
            &params,
            &self.max_attempts,
            &key,
            &self.scheduled_at,
            &self.pool,
            &self.owner,
            cell_key.as_deref().unwrap_or("\\N"),
            &model,
        ]
        .iter()
        .enumerate()
        {
            if i > 0 {
                b.push(b'\t');
            }
            b.extend_from_slice(field.as_bytes());
        }
        b.push(b'\n');
        (b.len() >= CHUNK_BYTES)
            .then(|| std::mem::replace(b, Vec::with_capacity(CHUNK_BYTES + 4096)))
    }

    pub(super) fn finish(self) -> Vec<u8> {
        self.buf
    }
}

/// COPY text format: backslash, tab, newline and carriage return are escaped.
fn escape(s: &str) -> String {
    if !s.contains(['\\', '\t', '\n', '\r']) {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_json_reads_back_the_same() {
        let p = RenderParams {
            prompt: "a \"cat\"\\\n".into(),
            seed: 5,
            cfg_scale: 7.5,
            styles: vec!["s".into()],
            ..Default::default()
        };
        let json = compact_params_json(&p);
        assert!(!json.contains("s_churn"), "{json}");
        assert_eq!(serde_json::from_str::<RenderParams>(&json).unwrap(), p);
    }

    #[test]
    fn copy_escapes_separators() {
        assert_eq!(escape("a\tb\\c\nd"), "a\\tb\\\\c\\nd");
        assert_eq!(escape("plain"), "plain");
    }
}
