//! Moving records out of a backend and into another: `botline messages export`,
//! `botline events export`, `botline users export` and `botline import`.
//!
//! An export is one record per line (JSONL) or a CSV file with a header, with the seed
//! documents' field names (`chatId`, `messageId`, … / `eventId`, `payload`, … / `userId`,
//! `telegramId`, …). `botline import --from FILE` reads any of them, even concatenated JSONL
//! exports of several kinds, and tells each record's kind by the field only it has
//! (`messageId`, `eventId`, `telegramId`).
//!
//! An import reads the whole file once before writing anything, so a malformed line is
//! reported (with its number) and nothing is written. It then writes in batches of
//! [`IMPORT_BATCH`] ([`Store::import`]: each record only where its key is not stored yet, a
//! stored user merged), so running it again, or after an interruption, completes it and
//! doubles nothing.
//!
//! JSONL keeps every record exactly; CSV writes an event's `payload` as JSON text and reads
//! an empty field back as absent (an empty `text` becomes none).
//!
//! [`Store::import`]: botline_core::Store::import

use crate::ops::{ExportFormat, OpsError};
use botline_core::backend::{Import, Imported, MessageQuery};
use botline_core::{Backend, EventRecord, MessageRecord, UserRecord};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{self, BufRead, BufReader, Write};
use std::path::Path;

/// Rows read from the store at a time while exporting.
const EXPORT_PAGE: usize = 1000;
/// Records written per [`Store::import`](botline_core::Store::import) call (one transaction
/// on the embedded store and Postgres).
pub const IMPORT_BATCH: usize = 500;

/// Writes every message matching `chat` and `since` to `out`, in (`chatId`, `messageId`) order
/// (on DynamoDB without `chat`: each chat's messages together, the chats in scan order).
pub async fn export_messages(
    backend: &dyn Backend,
    format: ExportFormat,
    chat: Option<String>,
    since_ms: Option<i64>,
    out: impl Write,
) -> Result<u64, OpsError> {
    let mut query = MessageQuery {
        chat_id: chat,
        since_ms,
        after: None,
        limit: EXPORT_PAGE,
    };
    let mut sink = Sink::new(format, out);
    let mut written = 0;
    loop {
        let page = backend.messages(&query).await?;
        for message in &page {
            sink.write(message, message)?;
        }
        written += page.len() as u64;
        match page.last() {
            Some(last) if page.len() == EXPORT_PAGE => {
                query.after = Some((last.chat_id.clone(), last.message_id));
            }
            _ => break,
        }
    }
    sink.finish()?;
    Ok(written)
}

/// Writes every event to `out` (`eventId` order; DynamoDB's scan order on AWS).
pub async fn export_events(
    backend: &dyn Backend,
    format: ExportFormat,
    out: impl Write,
) -> Result<u64, OpsError> {
    let mut sink = Sink::new(format, out);
    let mut written = 0;
    let mut after: Option<String> = None;
    loop {
        let page = backend.events(after.as_deref(), EXPORT_PAGE).await?;
        for event in &page {
            sink.write(event, &EventRow::from(event))?;
        }
        written += page.len() as u64;
        match page.last() {
            Some(last) if page.len() == EXPORT_PAGE => after = Some(last.event_id.clone()),
            _ => break,
        }
    }
    sink.finish()?;
    Ok(written)
}

/// Writes every user to `out` (`userId` order; DynamoDB's scan order on AWS).
pub async fn export_users(
    backend: &dyn Backend,
    format: ExportFormat,
    out: impl Write,
) -> Result<u64, OpsError> {
    let mut sink = Sink::new(format, out);
    let mut written = 0;
    let mut after: Option<String> = None;
    loop {
        let page = backend.users(after.as_deref(), EXPORT_PAGE).await?;
        for user in &page {
            sink.write(user, user)?;
        }
        written += page.len() as u64;
        match page.last() {
            Some(last) if page.len() == EXPORT_PAGE => after = Some(last.user_id.clone()),
            _ => break,
        }
    }
    sink.finish()?;
    Ok(written)
}

/// An event as a CSV row: the payload as JSON text (CSV has no nested values).
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct EventRow {
    event_id: String,
    user_id: Option<String>,
    event_type: String,
    payload: String,
    timestamp: String,
    processed: bool,
}

impl From<&EventRecord> for EventRow {
    fn from(e: &EventRecord) -> Self {
        Self {
            event_id: e.event_id.clone(),
            user_id: e.user_id.clone(),
            event_type: e.event_type.clone(),
            payload: e.payload.to_string(),
            timestamp: e.timestamp.clone(),
            processed: e.processed,
        }
    }
}

impl TryFrom<EventRow> for EventRecord {
    type Error = serde_json::Error;

    fn try_from(row: EventRow) -> Result<Self, Self::Error> {
        Ok(Self {
            payload: serde_json::from_str(&row.payload)?,
            event_id: row.event_id,
            user_id: row.user_id,
            event_type: row.event_type,
            timestamp: row.timestamp,
            processed: row.processed,
        })
    }
}

enum Sink<W: Write> {
    Jsonl(io::BufWriter<W>),
    Csv(Box<csv::Writer<W>>),
}

impl<W: Write> Sink<W> {
    fn new(format: ExportFormat, out: W) -> Self {
        match format {
            ExportFormat::Jsonl => Self::Jsonl(io::BufWriter::new(out)),
            ExportFormat::Csv => Self::Csv(Box::new(csv::Writer::from_writer(out))),
        }
    }

    /// Writes `record` as a JSON line, or `row` as a CSV row.
    fn write(&mut self, record: &impl Serialize, row: &impl Serialize) -> Result<(), OpsError> {
        match self {
            Self::Jsonl(out) => {
                serde_json::to_writer(&mut *out, record).map_err(io::Error::from)?;
                out.write_all(b"\n")?;
            }
            Self::Csv(out) => out.serialize(row)?,
        }
        Ok(())
    }

    fn finish(self) -> Result<(), OpsError> {
        match self {
            Self::Jsonl(mut out) => out.flush()?,
            Self::Csv(mut out) => out.flush()?,
        }
        Ok(())
    }
}

/// One record of an export.
#[derive(Debug)]
enum Record {
    Message(MessageRecord),
    User(UserRecord),
    Event(EventRecord),
}

/// Which kind of record an export's line or header holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Message,
    User,
    Event,
}

impl Kind {
    /// By the field only that kind has.
    fn of(mut has: impl FnMut(&str) -> bool) -> Option<Self> {
        if has("messageId") {
            Some(Self::Message)
        } else if has("eventId") {
            Some(Self::Event)
        } else if has("telegramId") {
            Some(Self::User)
        } else {
            None
        }
    }
}

const UNKNOWN_KIND: &str = "not a message, event or user of a Botline export (no messageId, \
                            eventId or telegramId)";

/// The format of `path`: `format` if given, else CSV for a name ending in `.csv`.
pub fn import_format(path: &Path, format: Option<ExportFormat>) -> ExportFormat {
    format.unwrap_or_else(|| {
        let csv = path
            .extension()
            .is_some_and(|ext| ext.eq_ignore_ascii_case("csv"));
        if csv {
            ExportFormat::Csv
        } else {
            ExportFormat::Jsonl
        }
    })
}

/// Reads the export at `path` to the end, then writes its records into `backend` and says
/// what it wrote on `out`.
pub async fn import(
    backend: &dyn Backend,
    path: &Path,
    format: ExportFormat,
    mut out: impl Write,
) -> Result<Imported, OpsError> {
    // The first pass checks every record, so that bad input changes nothing.
    let mut read = Imported::default();
    for record in records(path, format)? {
        match record? {
            Record::Message(_) => read.messages += 1,
            Record::User(_) => read.users += 1,
            Record::Event(_) => read.events += 1,
        }
    }
    if read == Imported::default() {
        writeln!(out, "{} holds no records; nothing imported", path.display())?;
        return Ok(read);
    }
    let mut written = Imported::default();
    let mut batch = Import::default();
    for record in records(path, format)? {
        match record? {
            Record::Message(m) => batch.messages.push(m),
            Record::User(u) => batch.users.push(u),
            Record::Event(e) => batch.events.push(e),
        }
        if batch.len() == IMPORT_BATCH {
            written += backend.import(&std::mem::take(&mut batch)).await?;
        }
    }
    if !batch.is_empty() {
        written += backend.import(&batch).await?;
    }
    writeln!(
        out,
        "imported {} messages, {} users, {} events (already stored: {} messages, {} users, {} events)",
        written.messages,
        written.users,
        written.events,
        read.messages.saturating_sub(written.messages),
        read.users.saturating_sub(written.users),
        read.events.saturating_sub(written.events),
    )?;
    Ok(written)
}

/// The records of the export at `path`, in file order; an error names the line (JSONL) or the
/// row (CSV) it is on.
fn records(
    path: &Path,
    format: ExportFormat,
) -> Result<Box<dyn Iterator<Item = Result<Record, OpsError>>>, OpsError> {
    let name = path.display().to_string();
    let file =
        File::open(path).map_err(|e| OpsError::Invalid(format!("cannot read {name}: {e}")))?;
    let bad = move |at: String, why: String| {
        OpsError::Invalid(format!("{name}, {at}: {why}; nothing imported"))
    };
    Ok(match format {
        ExportFormat::Jsonl => Box::new(
            BufReader::new(file)
                .lines()
                .enumerate()
                .filter(|(_, line)| line.as_ref().map_or(true, |l| !l.trim().is_empty()))
                .map(move |(n, line)| {
                    line.map_err(|e| e.to_string())
                        .and_then(|line| json_record(&line))
                        .map_err(|why| bad(format!("line {}", n + 1), why))
                }),
        ),
        ExportFormat::Csv => {
            let mut rows = csv::Reader::from_reader(file);
            let headers = rows
                .headers()
                .map_err(|e| bad("the header".into(), e.to_string()))?
                .clone();
            let kind = Kind::of(|name| headers.iter().any(|h| h == name))
                .ok_or_else(|| bad("the header".into(), UNKNOWN_KIND.into()))?;
            Box::new(rows.into_records().enumerate().map(move |(n, row)| {
                row.map_err(|e| e.to_string())
                    .and_then(|row| csv_record(kind, &row, &headers))
                    .map_err(|why| bad(format!("row {}", n + 1), why))
            }))
        }
    })
}

fn json_record(line: &str) -> Result<Record, String> {
    let value: serde_json::Value = serde_json::from_str(line).map_err(|e| e.to_string())?;
    let object = value.as_object().ok_or("not a JSON object")?;
    let kind = Kind::of(|name| object.contains_key(name)).ok_or(UNKNOWN_KIND)?;
    let record = match kind {
        Kind::Message => serde_json::from_value(value).map(Record::Message),
        Kind::User => serde_json::from_value(value).map(Record::User),
        Kind::Event => serde_json::from_value(value).map(Record::Event),
    };
    record.map_err(|e| e.to_string())
}

fn csv_record(
    kind: Kind,
    row: &csv::StringRecord,
    headers: &csv::StringRecord,
) -> Result<Record, String> {
    let record = match kind {
        Kind::Message => row.deserialize(Some(headers)).map(Record::Message),
        Kind::User => row.deserialize(Some(headers)).map(Record::User),
        Kind::Event => {
            let event: EventRow = row.deserialize(Some(headers)).map_err(|e| e.to_string())?;
            return EventRecord::try_from(event)
                .map(Record::Event)
                .map_err(|e| format!("payload: {e}"));
        }
    };
    record.map_err(|e| e.to_string())
}
