//! `subsettle-keeper usage import <file>`: NDJSON or CSV usage files of any size, streamed in batches through the
//! same validation and exactly-once store as the HTTP API. Re-running an import changes nothing.

use std::{
    fs::File,
    io::{BufRead, BufReader, IsTerminal, Write},
    path::Path,
    time::Instant,
};

use serde_json::{Map, Value};

use crate::{
    KeeperError,
    metering::api::Keeper,
    metering::event::{BatchReport, Outcome},
};

/// Events per batch.
pub const IMPORT_BATCH: usize = 5_000;

/// The import's file formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One JSON object per line.
    Ndjson,
    /// A header line naming the fields, then one event per line (`properties` as a JSON object in its column).
    Csv,
}

impl Format {
    /// The format of `path` by its extension.
    pub fn of(path: &Path) -> Result<Self, KeeperError> {
        match path.extension().and_then(|e| e.to_str()) {
            Some("ndjson" | "jsonl") => Ok(Self::Ndjson),
            Some("csv") => Ok(Self::Csv),
            _ => Err(KeeperError::File { path: path.display().to_string(), message: "give a .ndjson, .jsonl or .csv file, or --format".into() }),
        }
    }
}

/// Totals of an import, and the first rejections with their line numbers.
#[derive(Debug, Default, serde::Serialize)]
pub struct ImportReport {
    /// Events read.
    pub events: usize,
    /// Stored now.
    pub accepted: usize,
    /// Already stored, same payload.
    pub duplicates: usize,
    /// Already stored, different payload.
    pub conflicts: usize,
    /// Invalid.
    pub rejected: usize,
    /// Subscriber not entitled.
    pub payment_required: usize,
    /// Up to 100 problems as `line N: outcome`.
    pub problems: Vec<String>,
}

impl ImportReport {
    fn add(&mut self, report: &BatchReport, first_line: &[usize]) {
        self.accepted += report.accepted;
        self.duplicates += report.duplicates;
        self.conflicts += report.conflicts;
        self.rejected += report.rejected;
        self.payment_required += report.payment_required;
        for (outcome, line) in report.results.iter().zip(first_line) {
            if self.problems.len() < 100 && !matches!(outcome, Outcome::Accepted { .. } | Outcome::Duplicate { .. }) {
                self.problems.push(format!("line {line}: {}", serde_json::to_string(outcome).unwrap_or_default()));
            }
        }
    }
}

/// Imports `path`.
pub async fn import(keeper: &Keeper, path: &Path, format: Format) -> Result<ImportReport, KeeperError> {
    let file_error = |e: std::io::Error| KeeperError::File { path: path.display().to_string(), message: e.to_string() };
    let total_bytes = std::fs::metadata(path).map_err(file_error)?.len().max(1);
    let mut reader = BufReader::with_capacity(1 << 20, File::open(path).map_err(file_error)?);
    let mut report = ImportReport::default();
    let mut header: Option<Vec<String>> = None;
    let mut batch = Vec::with_capacity(IMPORT_BATCH);
    let mut lines = Vec::with_capacity(IMPORT_BATCH);
    let (mut line_no, mut bytes_read) = (0usize, 0u64);
    let started = Instant::now();
    let mut text = String::new();
    loop {
        text.clear();
        let read = reader.read_line(&mut text).map_err(file_error)?;
        if read == 0 {
            break;
        }
        line_no += 1;
        bytes_read += read as u64;
        // A CSV record may span lines inside a quoted cell: read on until its quotes are balanced.
        let first_line = line_no;
        while format == Format::Csv && !quotes_balanced(&text) {
            let more = reader.read_line(&mut text).map_err(file_error)?;
            if more == 0 {
                break; // an unterminated quote: the CSV parser names it below
            }
            line_no += 1;
            bytes_read += more as u64;
        }
        let line_no = first_line;
        let line = text.trim_end_matches(['\n', '\r']);
        if line.trim().is_empty() {
            continue;
        }
        let item = match format {
            Format::Ndjson => serde_json::from_str(line).map_err(|e| malformed(line_no, e.to_string())),
            Format::Csv => match &header {
                None => {
                    header = Some(csv_fields(line).map_err(|e| KeeperError::File { path: path.display().to_string(), message: format!("header: {e}") })?);
                    continue;
                }
                Some(names) => csv_event(names, line).map_err(|e| malformed(line_no, e)),
            },
        };
        batch.push(item);
        lines.push(line_no);
        report.events += 1;
        if batch.len() == IMPORT_BATCH {
            let result = keeper.ingest(std::mem::take(&mut batch)).await?;
            report.add(&result, &lines);
            lines.clear();
            progress(&report, bytes_read, total_bytes, started);
        }
    }
    if !batch.is_empty() {
        let result = keeper.ingest(batch).await?;
        report.add(&result, &lines);
    }
    progress(&report, total_bytes, total_bytes, started);
    if std::io::stderr().is_terminal() {
        eprintln!();
    }
    Ok(report)
}

fn malformed(line: usize, message: String) -> Outcome {
    Outcome::Rejected { event_id: None, field: format!("line {line}"), reason: format!("malformed: {message}") }
}

fn progress(report: &ImportReport, done: u64, total: u64, started: Instant) {
    let rate = report.events as f64 / started.elapsed().as_secs_f64().max(1e-3);
    let line = format!(
        "{:>3}% {} events ({} accepted, {} duplicate, {} refused) {:.0} events/s",
        done * 100 / total,
        report.events,
        report.accepted,
        report.duplicates,
        report.rejected + report.conflicts + report.payment_required,
        rate
    );
    let mut stderr = std::io::stderr();
    if stderr.is_terminal() {
        let _ = write!(stderr, "\r{line}");
    } else {
        let _ = writeln!(stderr, "{line}");
    }
}

/// Whether `text` closes every quoted CSV cell it opens (an escaped quote is two quotes, so parity tells).
fn quotes_balanced(text: &str) -> bool {
    text.bytes().filter(|b| *b == b'"').count().is_multiple_of(2)
}

fn csv_fields(line: &str) -> Result<Vec<String>, String> {
    let mut reader = csv::ReaderBuilder::new().has_headers(false).from_reader(line.as_bytes());
    let record = reader.records().next().ok_or("empty line")?.map_err(|e| e.to_string())?;
    Ok(record.iter().map(str::to_owned).collect())
}

/// A CSV row as the JSON object the validation takes; empty cells are absent fields.
fn csv_event(names: &[String], line: &str) -> Result<Value, String> {
    let cells = csv_fields(line)?;
    if cells.len() != names.len() {
        return Err(format!("{} cells for {} columns", cells.len(), names.len()));
    }
    let mut object = Map::new();
    for (name, cell) in names.iter().zip(cells) {
        if cell.is_empty() {
            continue;
        }
        let value = if name == "properties" {
            serde_json::from_str(&cell).map_err(|e| format!("properties: {e}"))?
        } else {
            Value::String(cell)
        };
        object.insert(name.clone(), value);
    }
    Ok(Value::Object(object))
}
