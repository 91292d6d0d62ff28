//! Rows for a streaming submit: task parameters as compact JSON, and Postgres `COPY` text
//! format in bounded chunks.

use sdfarm_proto::RenderParams;
use serde_json::Value;

use super::delta::ParamsBase;
use super::postgres::ModelCounts;
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
    /// Each row's parameters are written as a delta against the job's base.
    base: ParamsBase,
    params: Vec<u8>,
    /// Rows per model, for the job's queue counters.
    pub(super) models: ModelCounts,
    /// The columns every row of the job shares, already escaped: the job id, the columns
    /// between image index and params, and those between params and output key, and
    /// between output key and cell key.
    job_id: String,
    after_index: String,
    after_params: String,
    after_key: String,
}

impl CopyRows {
    pub(super) fn new(job: &NewJob, now: Millis, base: ParamsBase) -> CopyRows {
        CopyRows {
            buf: Vec::with_capacity(CHUNK_BYTES + 4096),
            base,
            params: Vec::with_capacity(256),
            models: ModelCounts::default(),
            job_id: escape(&job.id),
            after_index: format!("\t{}\t", job.priority),
            after_params: format!("\t{}\t", attempts_to_sql(job.max_attempts)),
            after_key: format!("\t{now}\t{}\t{}\t", escape(&job.pool), escape(&job.owner)),
        }
    }

    /// Adds a row; returns a full chunk to send when the buffer is large enough. Columns as
    /// in `COPY_TASKS`: job id, image index, priority, params, max attempts, output key,
    /// scheduled at, pool, owner, cell key, model.
    pub(super) fn push(&mut self, task: &NewTask) -> Option<Vec<u8>> {
        self.models.add(&task.params.model);
        self.params.clear();
        self.base.write_delta(&task.params, &mut self.params);
        let b = &mut self.buf;
        b.extend_from_slice(self.job_id.as_bytes());
        b.push(b'\t');
        b.extend_from_slice(task.image_index.to_string().as_bytes());
        b.extend_from_slice(self.after_index.as_bytes());
        escape_into(&self.params, b);
        b.extend_from_slice(self.after_params.as_bytes());
        escape_into(task.output_key.as_bytes(), b);
        b.extend_from_slice(self.after_key.as_bytes());
        // `\N` is COPY's NULL: tasks of jobs that are not datasets have no cell key.
        match &task.cell_key {
            Some(key) => escape_into(key.as_bytes(), b),
            None => b.extend_from_slice(b"\\N"),
        }
        b.push(b'\t');
        // Postgres keeps the model in its own column for the affinity indexes.
        escape_into(task.params.model.as_bytes(), b);
        b.push(b'\n');
        (b.len() >= CHUNK_BYTES)
            .then(|| std::mem::replace(b, Vec::with_capacity(CHUNK_BYTES + 4096)))
    }

    /// The last chunk, and the rows counted per model.
    pub(super) fn finish(self) -> (Vec<u8>, ModelCounts) {
        (self.buf, self.models)
    }
}

/// COPY text format: backslash, tab, newline and carriage return are escaped.
fn escape(s: &str) -> String {
    let mut out = Vec::with_capacity(s.len());
    escape_into(s.as_bytes(), &mut out);
    String::from_utf8(out).expect("escaping keeps UTF-8")
}

/// Appends `s` escaped for COPY text format to `out`.
fn escape_into(s: &[u8], out: &mut Vec<u8>) {
    let special = |c: &u8| matches!(c, b'\\' | b'\t' | b'\n' | b'\r');
    if !s.iter().any(special) {
        out.extend_from_slice(s);
        return;
    }
    for &c in s {
        match c {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            c => out.push(c),
        }
    }
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
