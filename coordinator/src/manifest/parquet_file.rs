//! `manifest.parquet`: the manifest's rows as Parquet, written with the low-level column
//! writer one row group at a time, so memory stays bounded by the group size.

use std::io::Write;
use std::sync::Arc;

use parquet::data_type::{ByteArray, ByteArrayType, Int32Type, Int64Type};
use parquet::errors::ParquetError;
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;

use super::ManifestRow;

/// Rows per row group: a few MB of columns at typical infotext sizes.
const ROW_GROUP: usize = 4096;

/// Column order here is the order `flush` writes them in.
const SCHEMA: &str = "message manifest {
    REQUIRED BYTE_ARRAY key (UTF8);
    REQUIRED INT64 image_index;
    REQUIRED BYTE_ARRAY sha256 (UTF8);
    REQUIRED INT32 width;
    REQUIRED INT32 height;
    REQUIRED BYTE_ARRAY prompt (UTF8);
    REQUIRED BYTE_ARRAY negative_prompt (UTF8);
    REQUIRED INT64 seed;
    REQUIRED BYTE_ARRAY prompt_template (UTF8);
    REQUIRED group prompt_choices (LIST) {
        REPEATED group list {
            REQUIRED BYTE_ARRAY element (UTF8);
        }
    }
    REQUIRED BYTE_ARRAY model (UTF8);
    OPTIONAL BYTE_ARRAY model_hash (UTF8);
    REQUIRED BYTE_ARRAY params (JSON);
    OPTIONAL BYTE_ARRAY worker (UTF8);
    REQUIRED INT32 attempt;
    OPTIONAL INT64 render_ms;
    OPTIONAL INT64 leased_at_ms;
    REQUIRED INT64 completed_at_ms;
    REQUIRED BYTE_ARRAY infotext (UTF8);
}";

/// Writes manifest rows as Parquet into `W`.
pub struct ParquetManifest<W: Write + Send> {
    writer: SerializedFileWriter<W>,
    pending: Vec<ManifestRow>,
}

impl<W: Write + Send> ParquetManifest<W> {
    pub fn new(out: W) -> Result<Self, ParquetError> {
        let schema = Arc::new(parse_message_type(SCHEMA)?);
        let props = Arc::new(WriterProperties::builder().build());
        Ok(ParquetManifest {
            writer: SerializedFileWriter::new(out, schema, props)?,
            pending: Vec::with_capacity(ROW_GROUP),
        })
    }

    pub fn push(&mut self, row: ManifestRow) -> Result<(), ParquetError> {
        self.pending.push(row);
        if self.pending.len() >= ROW_GROUP {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes the last row group and the footer.
    pub fn finish(mut self) -> Result<W, ParquetError> {
        self.flush()?;
        self.writer.into_inner()
    }

    fn flush(&mut self) -> Result<(), ParquetError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let rows = std::mem::take(&mut self.pending);
        let text = |f: &dyn Fn(&ManifestRow) -> &str| -> Vec<ByteArray> {
            rows.iter().map(|r| ByteArray::from(f(r))).collect()
        };
        let mut group = self.writer.next_row_group()?;
        let mut column = 0;
        while let Some(mut col) = group.next_column()? {
            match column {
                0 => write_text(&mut col, text(&|r| &r.key))?,
                1 => write_i64(&mut col, rows.iter().map(|r| i64::from(r.image_index)))?,
                2 => write_text(&mut col, text(&|r| &r.sha256))?,
                3 => write_i32(&mut col, rows.iter().map(|r| r.width as i32))?,
                4 => write_i32(&mut col, rows.iter().map(|r| r.height as i32))?,
                5 => write_text(&mut col, text(&|r| &r.prompt))?,
                6 => write_text(&mut col, text(&|r| &r.negative_prompt))?,
                7 => write_i64(&mut col, rows.iter().map(|r| r.seed))?,
                8 => write_text(&mut col, text(&|r| &r.prompt_template))?,
                9 => write_list(&mut col, &rows)?,
                10 => write_text(&mut col, text(&|r| &r.model))?,
                11 => write_opt_text(&mut col, rows.iter().map(|r| r.model_hash.as_deref()))?,
                12 => write_text(
                    &mut col,
                    rows.iter()
                        .map(|r| {
                            ByteArray::from(
                                serde_json::to_vec(&r.params).expect("params serialise"),
                            )
                        })
                        .collect(),
                )?,
                13 => write_opt_text(&mut col, rows.iter().map(|r| r.worker.as_deref()))?,
                14 => write_i32(&mut col, rows.iter().map(|r| r.attempt as i32))?,
                15 => write_opt_i64(
                    &mut col,
                    rows.iter().map(|r| r.render_ms.map(|ms| ms as i64)),
                )?,
                16 => write_opt_i64(&mut col, rows.iter().map(|r| r.leased_at_ms))?,
                17 => write_i64(&mut col, rows.iter().map(|r| r.completed_at_ms))?,
                18 => write_text(&mut col, text(&|r| &r.infotext))?,
                n => {
                    return Err(ParquetError::General(format!(
                        "manifest schema has an unexpected column {n}"
                    )))
                }
            }
            col.close()?;
            column += 1;
        }
        group.close()?;
        Ok(())
    }
}

type Column<'a> = parquet::file::writer::SerializedColumnWriter<'a>;

fn write_text(col: &mut Column<'_>, values: Vec<ByteArray>) -> Result<(), ParquetError> {
    col.typed::<ByteArrayType>()
        .write_batch(&values, None, None)?;
    Ok(())
}

fn write_i64(col: &mut Column<'_>, values: impl Iterator<Item = i64>) -> Result<(), ParquetError> {
    let values: Vec<i64> = values.collect();
    col.typed::<Int64Type>().write_batch(&values, None, None)?;
    Ok(())
}

fn write_i32(col: &mut Column<'_>, values: impl Iterator<Item = i32>) -> Result<(), ParquetError> {
    let values: Vec<i32> = values.collect();
    col.typed::<Int32Type>().write_batch(&values, None, None)?;
    Ok(())
}

/// Definition level 1 for a present value, 0 for a null; only present values are written.
fn write_opt_text<'r>(
    col: &mut Column<'_>,
    values: impl Iterator<Item = Option<&'r str>>,
) -> Result<(), ParquetError> {
    let (mut present, mut defs) = (Vec::new(), Vec::new());
    for v in values {
        defs.push(i16::from(v.is_some()));
        present.extend(v.map(ByteArray::from));
    }
    col.typed::<ByteArrayType>()
        .write_batch(&present, Some(&defs), None)?;
    Ok(())
}

fn write_opt_i64(
    col: &mut Column<'_>,
    values: impl Iterator<Item = Option<i64>>,
) -> Result<(), ParquetError> {
    let (mut present, mut defs) = (Vec::new(), Vec::new());
    for v in values {
        defs.push(i16::from(v.is_some()));
        present.extend(v);
    }
    col.typed::<Int64Type>()
        .write_batch(&present, Some(&defs), None)?;
    Ok(())
}

/// `prompt_choices`: a required list of required strings. An empty list is one level-0
/// entry without a value; each element has definition level 1, and repetition level 0 when
/// it starts its row's list, 1 when it continues it.
fn write_list(col: &mut Column<'_>, rows: &[ManifestRow]) -> Result<(), ParquetError> {
    let (mut values, mut defs, mut reps) = (Vec::new(), Vec::new(), Vec::new());
    for row in rows {
        if row.prompt_choices.is_empty() {
            defs.push(0);
            reps.push(0);
        }
        for (i, choice) in row.prompt_choices.iter().enumerate() {
            values.push(ByteArray::from(choice.as_str()));
            defs.push(1);
            reps.push(i16::from(i > 0));
        }
    }
    col.typed::<ByteArrayType>()
        .write_batch(&values, Some(&defs), Some(&reps))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::record::Field;
    use sdfarm_proto::RenderParams;

    use super::*;

    fn row(i: u32, choices: &[&str], worker: Option<&str>) -> ManifestRow {
        let params = RenderParams {
            prompt: format!("a cat {i}"),
            seed: 100 + i64::from(i),
            steps: 2,
            prompt_choices: choices.iter().map(|c| c.to_string()).collect(),
            ..Default::default()
        };
        ManifestRow {
            key: format!("job/{i:05}-{}.png", 100 + i),
            image_index: i,
            sha256: format!("{i:064x}"),
            width: 32,
            height: 48,
            prompt: params.prompt.clone(),
            negative_prompt: String::new(),
            seed: params.seed,
            prompt_template: "a {cat|dog}".into(),
            prompt_choices: params.prompt_choices.clone(),
            model: "builtin:tiny-sd".into(),
            model_hash: Some("0123456789".into()),
            params,
            worker: worker.map(str::to_string),
            attempt: 1 + i,
            render_ms: None,
            leased_at_ms: Some(1_000),
            completed_at_ms: 2_000,
            infotext: "a cat\nSteps: 2".into(),
        }
    }

    /// Written across two row groups and read back with the crate's own reader: every row,
    /// lists of any length (none included) and nulls where values are missing.
    #[test]
    fn rows_read_back_from_the_written_file() {
        let rows: Vec<ManifestRow> = (0..ROW_GROUP as u32 + 3)
            .map(|i| match i % 3 {
                0 => row(i, &[], Some("w1")),
                1 => row(i, &["cat"], None),
                _ => row(i, &["dog", "at dusk"], Some("w2")),
            })
            .collect();
        let mut writer = ParquetManifest::new(tempfile::tempfile().unwrap()).unwrap();
        for r in &rows {
            writer.push(r.clone()).unwrap();
        }
        let file = writer.finish().unwrap();
        let reader = SerializedFileReader::new(file).unwrap();
        assert_eq!(reader.metadata().num_row_groups(), 2);
        let read: Vec<_> = reader
            .get_row_iter(None)
            .unwrap()
            .map(|r| r.unwrap())
            .collect();
        assert_eq!(read.len(), rows.len());
        for (got, want) in read.iter().zip(&rows) {
            let fields: std::collections::HashMap<&str, &Field> = got
                .get_column_iter()
                .map(|(k, v)| (k.as_str(), v))
                .collect();
            assert_eq!(fields["key"], &Field::Str(want.key.clone()));
            assert_eq!(fields["height"], &Field::Int(48));
            assert_eq!(fields["seed"], &Field::Long(want.seed));
            assert_eq!(fields["attempt"], &Field::Int(want.attempt as i32));
            assert_eq!(fields["render_ms"], &Field::Null);
            let worker = want.worker.clone().map_or(Field::Null, Field::Str);
            assert_eq!(fields["worker"], &worker);
            let Field::ListInternal(list) = fields["prompt_choices"] else {
                panic!("prompt_choices is a list: {:?}", fields["prompt_choices"]);
            };
            let choices: Vec<Field> = list.elements().to_vec();
            let want_choices: Vec<Field> = want
                .prompt_choices
                .iter()
                .map(|c| Field::Str(c.clone()))
                .collect();
            assert_eq!(choices, want_choices);
            let Field::Str(params) = fields["params"] else {
                panic!("params is text");
            };
            let params: RenderParams = serde_json::from_str(params).unwrap();
            assert_eq!(params, want.params);
        }
    }
}
