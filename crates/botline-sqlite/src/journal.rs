//! The ingestion journal: what `botline serve` acknowledges is appended to a file of its own,
//! not committed to SQLite.
//!
//! Before, every acknowledgement waited for a SQLite transaction on the one writer thread that
//! also commits the worker's records and runs the WAL checkpoints (62 % of the server's samples
//! at peak, docs/benchmarks.md). With the journal, an update's path is:
//!
//! 1. **Append** (the `botline-journal` thread). Every request waiting at that moment forms a
//!    group. The group's update ids are checked against the ids journaled and not yet imported
//!    (memory) and then the store (a read, which never waits for the writer): a duplicate is
//!    answered as one and not written. The new ones are written to the current segment in one
//!    `write`, then `fdatasync`: only then is each request answered. A group that could not be
//!    written is answered 503, and cut off the file before anything else is written.
//! 2. **Import** (the `botline-import` thread). It reads what is durable in the journal, in
//!    order, and inserts up to [`IMPORT_BATCH`] records at a time into the queue through the
//!    store's writer, with the journal position they reach in the same transaction
//!    (`journal_position`). Importing is idempotent: an update id stored already is skipped.
//!    A segment is deleted once the position has passed it.
//! 3. **Process**: as before. `receive` first waits until everything acknowledged before the
//!    call is imported, so an update is never acknowledged and then missed by a `receive`.
//!
//! **What a crash can lose.** Nothing acknowledged: an acknowledged update's record was
//! `fdatasync`ed, in a segment whose directory entry was synced before its first record was.
//! A crash may leave a torn record at the end of the last segment: it was never acknowledged,
//! and the replay at the next open stops at the first record whose length or CRC-32 does not
//! check out. The replay imports every record past the stored position (an update stored
//! already is skipped) before the server answers anything, then starts a new segment.
//!
//! While imports fail (the store's file is locked by another process, or takes no writes), the
//! appender still writes what it was given, but `enqueue` refuses new updates (503) and `ping`
//! says why, so the journal holds at most what arrived before the first failure.
//!
//! **Other processes.** The journal belongs to the process holding the data directory's lock
//! (`botline serve`). An operator command opening the store beside it sees the queue as
//! imported (a few milliseconds behind the acknowledgements under load); opening a store whose
//! server is gone replays its journal first. [`crate::backup::backup`] replays the journal into
//! the copy, so a backup holds everything acknowledged before it began.

use botline_core::{BackendError, Enqueued, InboundUpdate, clock};
use rusqlite::{Connection, OptionalExtension, params};
use std::collections::{HashSet, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};

use crate::files::{DIR_MODE, FILE_MODE};
use crate::writer::Writer;
use crate::{PARKED, unavailable};

/// The journal's directory inside a data directory.
pub const JOURNAL_DIR: &str = "journal";
/// A segment is sealed, and the next one started, once it holds this much.
const SEGMENT_BYTES: u64 = 64 << 20;
/// The most requests one append group takes.
const MAX_GROUP: usize = 1024;
/// The most records one import transaction takes.
pub(crate) const IMPORT_BATCH: usize = 1024;
/// A record longer than this is not one (a torn or damaged length).
const MAX_RECORD: usize = 64 << 20;
/// Length and CRC-32, before each record's content.
const HEADER: usize = 8;

/// A place in the journal: everything before it is imported (the stored position), or durable
/// (the appender's).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Pos {
    pub(crate) segment: u64,
    pub(crate) offset: u64,
}

/// One journaled update, as the queue stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Record {
    pub(crate) update_id: i64,
    pub(crate) received_at: i64,
    pub(crate) kind: String,
    pub(crate) order_key: String,
    pub(crate) raw: String,
}

impl Record {
    pub(crate) fn of(update: &InboundUpdate, received_at: i64) -> Self {
        Self {
            update_id: update.id.0,
            received_at,
            kind: update.kind.as_str().to_owned(),
            order_key: update.order_key.to_string(),
            raw: update.raw.clone(),
        }
    }

    /// `len u32 | crc32 u32 | update_id i64 | received_at i64 | kind (u32 len) | order key
    /// (u32 len) | body`, little-endian; the CRC covers everything after it.
    fn encode(&self, buf: &mut Vec<u8>) {
        let start = buf.len();
        buf.extend_from_slice(&[0; HEADER]);
        buf.extend_from_slice(&self.update_id.to_le_bytes());
        buf.extend_from_slice(&self.received_at.to_le_bytes());
        for text in [&self.kind, &self.order_key] {
            buf.extend_from_slice(&(text.len() as u32).to_le_bytes());
            buf.extend_from_slice(text.as_bytes());
        }
        buf.extend_from_slice(self.raw.as_bytes());
        let len = (buf.len() - start - HEADER) as u32;
        let crc = crc32fast::hash(&buf[start + HEADER..]);
        buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
        buf[start + 4..start + HEADER].copy_from_slice(&crc.to_le_bytes());
    }

    fn decode(content: &[u8]) -> Option<Self> {
        let mut rest = content;
        let mut take = |n: usize| -> Option<&[u8]> {
            if rest.len() < n {
                return None;
            }
            let (head, tail) = rest.split_at(n);
            rest = tail;
            Some(head)
        };
        let update_id = i64::from_le_bytes(take(8)?.try_into().ok()?);
        let received_at = i64::from_le_bytes(take(8)?.try_into().ok()?);
        let mut text = || -> Option<String> {
            let len = u32::from_le_bytes(take(4)?.try_into().ok()?) as usize;
            String::from_utf8(take(len)?.to_vec()).ok()
        };
        let kind = text()?;
        let order_key = text()?;
        let raw = String::from_utf8(rest.to_vec()).ok()?;
        Some(Self {
            update_id,
            received_at,
            kind,
            order_key,
            raw,
        })
    }
}

/// Reads the next whole record; `None` at the end of the file or at the first record that does
/// not check out (a torn end: never acknowledged). The second value is the record's size.
fn read_record(from: &mut impl Read) -> io::Result<Option<(Record, u64)>> {
    let mut header = [0; HEADER];
    if !read_full(from, &mut header)? {
        return Ok(None);
    }
    let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
    if len == 0 || len > MAX_RECORD {
        return Ok(None);
    }
    let mut content = vec![0; len];
    if !read_full(from, &mut content)? || crc32fast::hash(&content) != crc {
        return Ok(None);
    }
    Ok(Record::decode(&content).map(|record| (record, (HEADER + len) as u64)))
}

/// Fills `buf`; false if the file ended first.
fn read_full(from: &mut impl Read, buf: &mut [u8]) -> io::Result<bool> {
    let mut filled = 0;
    while filled < buf.len() {
        match from.read(&mut buf[filled..]) {
            Ok(0) => return Ok(false),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

fn segment_path(dir: &Path, segment: u64) -> PathBuf {
    dir.join(format!("{segment:020}.log"))
}

/// The segments in `dir`, in order, each opened for reading (an open segment stays readable
/// when the importer deletes it). No directory: none.
pub(crate) fn open_segments(dir: &Path) -> io::Result<Vec<(u64, File)>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut numbers = Vec::new();
    for entry in entries {
        let name = entry?.file_name();
        if let Some(number) = name
            .to_str()
            .and_then(|name| name.strip_suffix(".log"))
            .and_then(|number| number.parse::<u64>().ok())
        {
            numbers.push(number);
        }
    }
    numbers.sort_unstable();
    let mut segments = Vec::with_capacity(numbers.len());
    for number in numbers {
        match File::open(segment_path(dir, number)) {
            Ok(file) => segments.push((number, file)),
            // Deleted since the listing: imported already.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(segments)
}

/// The position `conn`'s store has imported the journal up to.
pub(crate) fn stored_position(conn: &Connection) -> rusqlite::Result<Pos> {
    Ok(conn
        .query_row(
            "SELECT segment, byte_offset FROM journal_position WHERE id = 1",
            [],
            |row| {
                Ok(Pos {
                    segment: row.get::<_, i64>(0)?.unsigned_abs(),
                    offset: row.get::<_, i64>(1)?.unsigned_abs(),
                })
            },
        )
        .optional()?
        .unwrap_or_default())
}

fn store_position(conn: &Connection, pos: Pos) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO journal_position (id, segment, byte_offset) VALUES (1, ?1, ?2)
         ON CONFLICT (id) DO UPDATE SET segment = excluded.segment,
                                        byte_offset = excluded.byte_offset",
    )?
    .execute(params![pos.segment as i64, pos.offset as i64])
    .map(drop)
}

/// Queues `records` (inside the caller's transaction), each parked behind a lower pending update
/// of its chat and skipped when its update id is stored already; returns how many were new.
/// Both enqueue paths use it: the journal's import and a direct enqueue.
pub(crate) fn insert(conn: &Connection, records: &[Record]) -> rusqlite::Result<usize> {
    let mut insert = conn.prepare_cached(
        "INSERT INTO updates (update_id, entry_id, order_key, kind, received_at, visible_at)
         VALUES (?1, ?2, ?3, ?4, ?5,
                 CASE WHEN EXISTS (SELECT 1 FROM updates
                                   WHERE state = 0 AND order_key = ?3 AND update_id < ?1)
                      THEN ?6 ELSE ?5 END)
         ON CONFLICT (update_id) DO NOTHING",
    )?;
    let mut body = conn
        .prepare_cached("INSERT OR REPLACE INTO update_bodies (update_id, raw) VALUES (?1, ?2)")?;
    let mut new = 0;
    for record in records {
        let entry_id = uuid::Uuid::now_v7().to_string();
        if insert.execute(params![
            record.update_id,
            entry_id,
            record.order_key,
            record.kind,
            record.received_at,
            PARKED
        ])? == 1
        {
            body.execute(params![record.update_id, record.raw])?;
            new += 1;
        }
    }
    Ok(new)
}

/// What a replay did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Replayed {
    /// Records read past the stored position.
    pub(crate) records: u64,
    /// Of those, updates the store did not hold yet.
    pub(crate) new: u64,
    /// The highest segment number seen (0: none).
    pub(crate) last_segment: u64,
}

/// Imports every whole record of `segments` past the position `conn`'s store holds, in
/// transactions of [`IMPORT_BATCH`], each storing the position it reached. Stops at a torn
/// record at the end of a segment.
pub(crate) fn replay(
    conn: &Connection,
    segments: Vec<(u64, File)>,
) -> Result<Replayed, BackendError> {
    let unreadable =
        |e: io::Error| BackendError::Unavailable(format!("cannot read the journal: {e}"));
    let from = stored_position(conn).map_err(unavailable)?;
    let mut replayed = Replayed::default();
    for (segment, file) in segments {
        replayed.last_segment = replayed.last_segment.max(segment);
        if segment < from.segment {
            continue;
        }
        let start = if segment == from.segment {
            from.offset
        } else {
            0
        };
        let mut reader = BufReader::new(file);
        reader.seek(SeekFrom::Start(start)).map_err(unreadable)?;
        let mut at = Pos {
            segment,
            offset: start,
        };
        loop {
            let mut batch = Vec::new();
            while batch.len() < IMPORT_BATCH {
                match read_record(&mut reader) {
                    Ok(Some((record, size))) => {
                        at.offset += size;
                        batch.push(record);
                    }
                    Ok(None) => break,
                    Err(e) => return Err(unreadable(e)),
                }
            }
            if batch.is_empty() {
                break;
            }
            let tx = conn.unchecked_transaction().map_err(unavailable)?;
            replayed.new += insert(&tx, &batch).map_err(unavailable)? as u64;
            store_position(&tx, at).map_err(unavailable)?;
            tx.commit().map_err(unavailable)?;
            replayed.records += batch.len() as u64;
        }
    }
    Ok(replayed)
}

/// Replays the journal in `data_dir` into `conn`'s store, deletes its segments and stores the
/// position of the next one, which is returned. Only for the process holding the data
/// directory's lock.
pub(crate) fn recover(conn: &Connection, data_dir: &Path) -> Result<(Pos, Replayed), BackendError> {
    let dir = data_dir.join(JOURNAL_DIR);
    let io = |what: &str, e: io::Error| {
        BackendError::Unavailable(format!("the journal in {}: {what}: {e}", dir.display()))
    };
    let segments = open_segments(&dir).map_err(|e| io("cannot read it", e))?;
    let numbers: Vec<u64> = segments.iter().map(|(n, _)| *n).collect();
    let replayed = replay(conn, segments)?;
    let next = Pos {
        segment: replayed
            .last_segment
            .max(stored_position(conn).map_err(unavailable)?.segment)
            + 1,
        offset: 0,
    };
    store_position(conn, next).map_err(unavailable)?;
    for number in numbers {
        std::fs::remove_file(segment_path(&dir, number))
            .map_err(|e| io("cannot delete a replayed segment", e))?;
    }
    if replayed.records > 0 {
        tracing::info!(
            records = replayed.records,
            new = replayed.new,
            "replayed the journal into the store"
        );
    }
    Ok((next, replayed))
}

/// Replays the journal of a data directory no server is running on (the lock is free), so that
/// an operator command sees every acknowledged update. Nothing to do without a journal.
pub(crate) fn recover_if_unlocked(conn: &Connection, data_dir: &Path) -> Result<(), BackendError> {
    let dir = data_dir.join(JOURNAL_DIR);
    if !dir.is_dir() {
        return Ok(());
    }
    let Ok(_lock) = crate::files::lock_data_dir(data_dir) else {
        return Ok(()); // a server runs on it and imports its own journal
    };
    recover(conn, data_dir).map(drop)
}

/// What the two threads and the callers share.
#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// Wakes the importer when something became durable, or at the close.
    work: Condvar,
    /// How many records are imported (for `receive` to wait on).
    imported: watch::Sender<u64>,
    /// Held by the importer from before an import commits until the counts say so, and by
    /// [`Journal::counted_with`]: a count of the queue and of the journal taken under it counts
    /// each update once.
    import_gate: Mutex<()>,
}

#[derive(Debug, Default)]
struct State {
    /// Update ids journaled and not imported yet (the dedupe set's part outside the store).
    pending: HashSet<i64>,
    /// Records durable since the journal started, and the end of the last one.
    durable_records: u64,
    durable: Pos,
    imported_records: u64,
    /// For each durable group not imported whole: its last record's number and its first
    /// record's receipt time (the oldest unfinished update, for `stats`).
    groups: VecDeque<(u64, i64)>,
    /// Why the last write (or probe) of the journal failed, until one succeeds.
    append_failing: Option<String>,
    /// Why the last import failed, until one succeeds.
    import_failing: Option<String>,
    /// Imports tried, and whether `ping` asks the importer to try again now instead of at the
    /// end of its back-off.
    import_attempts: u64,
    retry_now: bool,
    closing: bool,
    importer_done: bool,
}

fn lock(shared: &Shared) -> MutexGuard<'_, State> {
    shared
        .state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

enum Message {
    Append {
        record: Record,
        reply: oneshot::Sender<Result<Enqueued, BackendError>>,
    },
    /// Checks that the journal can take a write now (`ping`).
    Probe(oneshot::Sender<Result<(), String>>),
    Close(oneshot::Sender<()>),
}

/// The journal of a running server: [`Journal::append`] for the webhook, the rest for the
/// queue's `receive`, `stats`, `ping` and `close`.
#[derive(Debug)]
pub(crate) struct Journal {
    appends: mpsc::Sender<Message>,
    shared: Arc<Shared>,
}

impl Journal {
    /// Starts appending at `start` (a new, empty segment: see [`recover`]) in `dir`, checking
    /// duplicates on `check` (a read connection) and importing through `writer`.
    pub(crate) fn start(
        data_dir: &Path,
        start: Pos,
        check: Connection,
        writer: Writer,
    ) -> Result<Self, BackendError> {
        let dir = data_dir.join(JOURNAL_DIR);
        let failed = |what: &str, e: io::Error| {
            BackendError::Unavailable(format!("the journal in {}: {what}: {e}", dir.display()))
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(&dir)
            .map_err(|e| failed("cannot create it", e))?;
        let file = new_segment(&dir, start.segment).map_err(|e| failed("cannot start it", e))?;
        let (imported, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                durable: start,
                ..State::default()
            }),
            work: Condvar::new(),
            imported,
            import_gate: Mutex::new(()),
        });
        let (appends, rx) = mpsc::channel(8 * MAX_GROUP);
        let appender = Appender {
            dir: dir.clone(),
            file,
            at: start,
            dirty: false,
            check,
            shared: Arc::clone(&shared),
            buf: Vec::new(),
        };
        std::thread::Builder::new()
            .name("botline-journal".into())
            .spawn(move || appender.run(rx))
            .map_err(|e| failed("cannot start its thread", e))?;
        let importer = Importer {
            dir: dir.clone(),
            at: start,
            file: None,
            shared: Arc::clone(&shared),
            writer,
        };
        std::thread::Builder::new()
            .name("botline-import".into())
            .spawn(move || importer.run())
            .map_err(|e| failed("cannot start its thread", e))?;
        Ok(Self { appends, shared })
    }

    /// Makes `update` durable (answered once its group is on disk), or says it is a duplicate.
    /// While imports into the store fail, it takes nothing: the journal would grow without
    /// bound, and Telegram keeps what it is refused and sends it again.
    pub(crate) async fn append(&self, update: &InboundUpdate) -> Result<Enqueued, BackendError> {
        if let Some(failing) = &lock(&self.shared).import_failing {
            return Err(BackendError::Unavailable(format!(
                "the journal cannot be imported into the store: {failing}"
            )));
        }
        let (reply, answer) = oneshot::channel();
        let record = Record::of(update, clock::now_ms());
        let stopped = || BackendError::Unavailable("the journal has stopped".into());
        self.appends
            .send(Message::Append { record, reply })
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    /// Waits until every record durable now is imported: see [`Journal::caught_up_to`].
    pub(crate) async fn caught_up(&self) {
        self.caught_up_to(self.durable_records()).await;
    }

    /// How many records are durable now.
    pub(crate) fn durable_records(&self) -> u64 {
        lock(&self.shared).durable_records
    }

    /// Whether the first `target` records are imported.
    pub(crate) fn imported(&self, target: u64) -> bool {
        lock(&self.shared).imported_records >= target
    }

    /// Waits until the first `target` records are imported: a `receive` after an
    /// acknowledgement sees its update. Returns at once while imports fail (what is imported can
    /// still be worked on) or once the importer has stopped.
    pub(crate) async fn caught_up_to(&self, target: u64) {
        let mut imported = self.shared.imported.subscribe();
        loop {
            {
                let state = lock(&self.shared);
                if state.imported_records >= target
                    || state.import_failing.is_some()
                    || state.importer_done
                {
                    return;
                }
            }
            if imported.changed().await.is_err() {
                return;
            }
        }
    }

    /// Whether update `id` is journaled and not imported yet.
    pub(crate) fn holds(&self, id: botline_core::UpdateId) -> bool {
        lock(&self.shared).pending.contains(&id.0)
    }

    /// Runs `read` (a read of the queue) with no import committing meanwhile, and returns its
    /// result with [`Journal::unimported`] as of then: together they count every update once.
    pub(crate) fn counted_with<R>(&self, read: impl FnOnce() -> R) -> (R, (u64, Option<i64>)) {
        let _gate = self
            .shared
            .import_gate
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        (read(), self.unimported())
    }

    /// Records acknowledged and not imported yet, and the receipt time of the oldest of them.
    pub(crate) fn unimported(&self) -> (u64, Option<i64>) {
        let state = lock(&self.shared);
        (
            state.durable_records - state.imported_records,
            state.groups.front().map(|&(_, received_at)| received_at),
        )
    }

    /// Whether the journal takes updates now (it writes a block past its end and cuts it off
    /// again: a full or read-only disk fails this) and imports them.
    pub(crate) async fn ping(&self) -> Result<(), BackendError> {
        let (reply, answer) = oneshot::channel();
        let stopped = || BackendError::Unavailable("the journal has stopped".into());
        self.appends
            .send(Message::Probe(reply))
            .await
            .map_err(|_| stopped())?;
        answer
            .await
            .map_err(|_| stopped())?
            .map_err(BackendError::Unavailable)?;
        // While importing fails, the importer tries again now, and its answer is the verdict:
        // a store that takes writes again is healthy at once, not at the end of a back-off.
        let mut imported = self.shared.imported.subscribe();
        let tried = {
            let mut state = lock(&self.shared);
            if state.import_failing.is_none() {
                return Ok(());
            }
            state.retry_now = true;
            state.import_attempts
        };
        self.shared.work.notify_all();
        loop {
            {
                let state = lock(&self.shared);
                if state.importer_done {
                    return Err(BackendError::Unavailable("the journal has stopped".into()));
                }
                if state.import_attempts > tried {
                    return match &state.import_failing {
                        Some(failing) => Err(BackendError::Unavailable(format!(
                            "the journal cannot be imported into the store: {failing}"
                        ))),
                        None => Ok(()),
                    };
                }
            }
            if imported.changed().await.is_err() {
                return Err(BackendError::Unavailable("the journal has stopped".into()));
            }
        }
    }

    /// Takes no more appends, and returns once everything durable is imported (or importing
    /// failed; the next open replays what is left).
    pub(crate) async fn close(&self) {
        let (reply, closed) = oneshot::channel();
        if self.appends.send(Message::Close(reply)).await.is_ok() {
            let _ = closed.await;
        }
        lock(&self.shared).closing = true;
        self.shared.work.notify_all();
        let mut imported = self.shared.imported.subscribe();
        while !lock(&self.shared).importer_done {
            if imported.changed().await.is_err() {
                break;
            }
        }
    }
}

/// A journal dropped without [`Journal::close`] (a test's store): the appender stops with its
/// channel; the importer imports what is durable, then stops too, and with it the last handle
/// on the store's writer.
impl Drop for Journal {
    fn drop(&mut self) {
        lock(&self.shared).closing = true;
        self.shared.work.notify_all();
    }
}

/// Creates segment `segment` in `dir` (`0600`, refusing one in the way) and syncs the
/// directory, so that the segment's name is durable before any record in it is acknowledged.
fn new_segment(dir: &Path, segment: u64) -> io::Result<File> {
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .custom_flags(libc::O_NOFOLLOW)
        .open(segment_path(dir, segment))?;
    File::open(dir)?.sync_all()?;
    Ok(file)
}

struct Appender {
    dir: PathBuf,
    file: File,
    at: Pos,
    /// The segment may hold bytes past `at` (a write that failed): they are cut off before the
    /// next write.
    dirty: bool,
    check: Connection,
    shared: Arc<Shared>,
    buf: Vec<u8>,
}

type Reply = oneshot::Sender<Result<Enqueued, BackendError>>;

/// What a probe writes past the journal's end, and cuts off again.
const PROBE: [u8; 4096] = [0; 4096];

impl Appender {
    fn run(mut self, mut rx: mpsc::Receiver<Message>) {
        let mut group: Vec<(Record, Reply)> = Vec::with_capacity(MAX_GROUP);
        let mut probes = Vec::new();
        while let Some(message) = rx.blocking_recv() {
            let mut close = None;
            let mut next = Some(message);
            while let Some(message) = next.take() {
                match message {
                    Message::Append { record, reply } => group.push((record, reply)),
                    Message::Probe(reply) => probes.push(reply),
                    Message::Close(reply) => close = Some(reply),
                }
                if close.is_none() && group.len() < MAX_GROUP {
                    next = rx.try_recv().ok();
                }
            }
            if !group.is_empty() {
                self.append(&mut group);
            }
            if !probes.is_empty() {
                let probed = self.probe();
                for reply in probes.drain(..) {
                    let _ = reply.send(probed.clone());
                }
            }
            if let Some(reply) = close {
                rx.close();
                while let Ok(message) = rx.try_recv() {
                    match message {
                        Message::Append { reply, .. } => {
                            let _ = reply.send(Err(BackendError::Unavailable(
                                "the journal is closing".into(),
                            )));
                        }
                        Message::Probe(reply) => {
                            let _ = reply.send(Err("the journal is closing".into()));
                        }
                        Message::Close(_) => {}
                    }
                }
                // The duplicate check's connection closes before the answer: the store's
                // connections close next, the writer's last, and the last close deletes the
                // WAL. Closed after the answer, it could still be open when the process exits.
                drop(self);
                let _ = reply.send(());
                return;
            }
        }
    }

    /// Writes the new updates of `group` durably and answers every request in it.
    fn append(&mut self, group: &mut Vec<(Record, Reply)>) {
        let verdicts = match self.new_ones(group) {
            Ok(verdicts) => verdicts,
            Err(e) => {
                for (_, reply) in group.drain(..) {
                    let _ = reply.send(Err(BackendError::Unavailable(e.clone())));
                }
                return;
            }
        };
        self.buf.clear();
        let mut new = 0;
        let mut first_received = None;
        for ((record, _), is_new) in group.iter().zip(&verdicts) {
            if *is_new {
                record.encode(&mut self.buf);
                new += 1;
                first_received.get_or_insert(record.received_at);
            }
        }
        let written = if new == 0 {
            Ok(())
        } else {
            self.write_at_end()
        };
        let outcome = match written {
            Ok(()) => {
                self.at.offset += self.buf.len() as u64;
                let mut state = lock(&self.shared);
                state.append_failing = None;
                if new > 0 {
                    state.durable_records += new;
                    state.durable = self.at;
                    let last = state.durable_records;
                    state
                        .groups
                        .push_back((last, first_received.unwrap_or_default()));
                }
                drop(state);
                self.shared.work.notify_all();
                Ok(())
            }
            Err(e) => {
                let mut state = lock(&self.shared);
                for ((record, _), is_new) in group.iter().zip(&verdicts) {
                    if *is_new {
                        state.pending.remove(&record.update_id);
                    }
                }
                if state.append_failing.is_none() {
                    tracing::warn!(error = %e, "cannot write the journal; updates are answered 503 until it can");
                }
                state.append_failing = Some(format!("cannot write the journal: {e}"));
                Err(format!("cannot write the journal: {e}"))
            }
        };
        for ((_, reply), is_new) in group.drain(..).zip(verdicts) {
            let answer = match &outcome {
                Ok(()) if is_new => Ok(Enqueued::New),
                Ok(()) => Ok(Enqueued::Duplicate),
                Err(e) => Err(BackendError::Unavailable(e.clone())),
            };
            let _ = reply.send(answer);
        }
        if outcome.is_ok() && self.at.offset >= SEGMENT_BYTES {
            self.rotate();
        }
    }

    /// Writes `self.buf` at the segment's durable end and syncs it. After a failure the bytes
    /// written, if any, are cut off before anything else is written.
    fn write_at_end(&mut self) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        self.cut_back()?;
        self.dirty = true;
        self.file.write_all_at(&self.buf, self.at.offset)?;
        self.file.sync_data()?;
        self.dirty = false;
        Ok(())
    }

    /// Cuts the segment back to its durable end if a failed write may have left bytes past it.
    fn cut_back(&mut self) -> io::Result<()> {
        if self.dirty {
            self.file.set_len(self.at.offset)?;
            self.file.sync_data()?;
            self.dirty = false;
        }
        Ok(())
    }

    /// Whether a write would succeed now: a block of zeros written past the end and synced, then
    /// cut off again. (A crash in between leaves zeros after the last record, which the replay
    /// reads as the end.)
    fn probe(&mut self) -> Result<(), String> {
        use std::os::unix::fs::FileExt;
        let probed = self.cut_back().and_then(|()| {
            self.dirty = true;
            self.file.write_all_at(&PROBE, self.at.offset)?;
            self.file.sync_data()?;
            self.cut_back()
        });
        let mut state = lock(&self.shared);
        match probed {
            Ok(()) => {
                state.append_failing = None;
                Ok(())
            }
            Err(e) => {
                let failing = format!("cannot write the journal: {e}");
                state.append_failing = Some(failing.clone());
                Err(failing)
            }
        }
    }

    /// For each request of `group`, whether its update is new: not journaled and unimported,
    /// not in the store, not earlier in the group. The new ones are marked journaled.
    fn new_ones(&mut self, group: &[(Record, Reply)]) -> Result<Vec<bool>, String> {
        let mut verdicts = vec![false; group.len()];
        let mut in_group = HashSet::with_capacity(group.len());
        {
            // The set before the store: the importer commits an update, then takes it out of
            // the set, so an update out of the set now is in any snapshot the store gives next.
            let state = lock(&self.shared);
            for ((record, _), verdict) in group.iter().zip(verdicts.iter_mut()) {
                *verdict =
                    !state.pending.contains(&record.update_id) && in_group.insert(record.update_id);
            }
        }
        {
            let mut stored = self
                .check
                .prepare_cached("SELECT EXISTS (SELECT 1 FROM updates WHERE update_id = ?1)")
                .map_err(|e| format!("SQLite: {e}"))?;
            for ((record, _), verdict) in group.iter().zip(verdicts.iter_mut()) {
                if *verdict
                    && stored
                        .query_row([record.update_id], |row| row.get::<_, bool>(0))
                        .map_err(|e| format!("SQLite: {e}"))?
                {
                    *verdict = false;
                }
            }
        }
        let mut state = lock(&self.shared);
        for ((record, _), verdict) in group.iter().zip(&verdicts) {
            if *verdict {
                state.pending.insert(record.update_id);
            }
        }
        Ok(verdicts)
    }

    /// Seals the segment and starts the next one. If the next cannot be created, appending goes
    /// on in this one.
    fn rotate(&mut self) {
        let next = self.at.segment + 1;
        match new_segment(&self.dir, next) {
            Ok(file) => {
                self.file = file;
                self.at = Pos {
                    segment: next,
                    offset: 0,
                };
                lock(&self.shared).durable = self.at;
                self.shared.work.notify_all();
            }
            Err(e) => tracing::warn!(error = %e, "cannot start a new journal segment"),
        }
    }
}

struct Importer {
    dir: PathBuf,
    at: Pos,
    /// The segment being read.
    file: Option<(u64, File)>,
    shared: Arc<Shared>,
    writer: Writer,
}

impl Importer {
    fn run(mut self) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let durable = {
                let mut state = lock(&self.shared);
                while self.at >= state.durable && !state.closing {
                    state = self
                        .shared
                        .work
                        .wait(state)
                        .unwrap_or_else(|poisoned| poisoned.into_inner());
                }
                if self.at >= state.durable {
                    break; // closing, and everything is imported
                }
                state.durable
            };
            let (batch, reached) = match self.read(durable) {
                Ok(read) => read,
                Err(e) => {
                    self.failing(&format!("cannot read the journal: {e}"));
                    if !self.back_off(&mut backoff) {
                        break;
                    }
                    continue;
                }
            };
            let gate = self
                .shared
                .import_gate
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            match self.import(&batch, reached) {
                Ok(()) => {
                    backoff = Duration::from_millis(100);
                    let sealed = (reached.segment > self.at.segment).then_some(self.at.segment);
                    self.at = reached;
                    let mut state = lock(&self.shared);
                    for record in &batch {
                        state.pending.remove(&record.update_id);
                    }
                    state.imported_records += batch.len() as u64;
                    let imported = state.imported_records;
                    while state
                        .groups
                        .front()
                        .is_some_and(|&(last, _)| last <= imported)
                    {
                        state.groups.pop_front();
                    }
                    if state.import_failing.take().is_some() {
                        tracing::info!("the journal is imported into the store again");
                    }
                    state.import_attempts += 1;
                    drop(state);
                    drop(gate);
                    self.shared.imported.send_replace(imported);
                    if let Some(segment) = sealed
                        && let Err(e) = std::fs::remove_file(segment_path(&self.dir, segment))
                    {
                        tracing::warn!(error = %e, segment, "cannot delete an imported journal segment");
                    }
                }
                Err(e) => {
                    drop(gate);
                    // `self.at` did not move: the same records are read and imported again.
                    self.failing(&e.to_string());
                    if !self.back_off(&mut backoff) {
                        break;
                    }
                }
            }
        }
        lock(&self.shared).importer_done = true;
        self.shared.imported.send_modify(|_| {});
    }

    fn failing(&self, why: &str) {
        let mut state = lock(&self.shared);
        if state.import_failing.is_none() {
            tracing::warn!(
                error = why,
                "cannot import the journal into the store; retrying"
            );
        }
        state.import_failing = Some(why.to_owned());
        state.import_attempts += 1;
        drop(state);
        self.shared.imported.send_modify(|_| {});
    }

    /// Waits `backoff` (doubled for the next time, up to 2 s) or until `ping` asks for a try
    /// now; false when closing (what is left is replayed at the next open).
    fn back_off(&self, backoff: &mut Duration) -> bool {
        let until = std::time::Instant::now() + *backoff;
        *backoff = (*backoff * 2).min(Duration::from_secs(2));
        let mut state = lock(&self.shared);
        loop {
            if state.closing {
                return false;
            }
            if state.retry_now {
                state.retry_now = false;
                return true;
            }
            let left = until.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return true;
            }
            state = self
                .shared
                .work
                .wait_timeout(state, left)
                .map(|(state, _)| state)
                .unwrap_or_else(|poisoned| poisoned.into_inner().0);
        }
    }

    /// Reads up to [`IMPORT_BATCH`] records from `self.at`, not past `durable`: a sealed segment
    /// to its end (then the position moves to the next segment's start). Nothing past `durable`
    /// is read, not even into a buffer: a failed group's bytes there are cut off again.
    fn read(&mut self, durable: Pos) -> io::Result<(Vec<Record>, Pos)> {
        if self
            .file
            .as_ref()
            .is_none_or(|(segment, _)| *segment != self.at.segment)
        {
            let file = File::open(segment_path(&self.dir, self.at.segment))?;
            self.file = Some((self.at.segment, file));
        }
        let (_, file) = self.file.as_mut().expect("opened above");
        file.seek(SeekFrom::Start(self.at.offset))?;
        let sealed = durable.segment > self.at.segment;
        let limit = if sealed {
            u64::MAX
        } else {
            durable.offset - self.at.offset
        };
        let mut reader = BufReader::with_capacity(64 << 10, Read::by_ref(file).take(limit));
        let mut reached = self.at;
        let mut batch = Vec::new();
        while batch.len() < IMPORT_BATCH && (sealed || reached.offset < durable.offset) {
            match read_record(&mut reader)? {
                Some((record, size)) => {
                    reached.offset += size;
                    batch.push(record);
                }
                None if sealed => {
                    reached = Pos {
                        segment: self.at.segment + 1,
                        offset: 0,
                    };
                    self.file = None;
                    break;
                }
                None => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "segment {} has no whole record at offset {}, before its durable end",
                            reached.segment, reached.offset
                        ),
                    ));
                }
            }
        }
        Ok((batch, reached))
    }

    fn import(&self, batch: &[Record], reached: Pos) -> Result<(), BackendError> {
        let batch = batch.to_vec();
        self.writer.write_blocking(move |conn| {
            insert(conn, &batch).map_err(unavailable)?;
            store_position(conn, reached).map_err(unavailable)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: i64, raw: &str) -> Record {
        Record {
            update_id: id,
            received_at: 1_700_000_000_000 + id,
            kind: "message".into(),
            order_key: format!("chat:{id}"),
            raw: raw.into(),
        }
    }

    fn update(id: i64, chat: i64) -> InboundUpdate {
        let body = format!(
            "{{\"update_id\":{id},\"message\":{{\"message_id\":{id},\"date\":1,\"chat\":{{\"id\":{chat},\"type\":\"private\"}},\"text\":\"n{id}\"}}}}"
        );
        InboundUpdate::parse(body.as_bytes()).unwrap()
    }

    /// A data directory holding a closed store and, as a killed server leaves them, journal
    /// segments: `segments[i]` records in segment `i + 1`, the last one ending in `torn` bytes
    /// of one more record.
    async fn killed_server(segments: &[&[i64]], torn: usize) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let store =
            crate::SqliteBackend::open(dir.path(), botline_core::QueueConfig::default()).unwrap();
        botline_core::Queue::close(&store).await.unwrap();
        let journal = dir.path().join(JOURNAL_DIR);
        std::fs::create_dir(&journal).unwrap();
        for (i, ids) in segments.iter().enumerate() {
            let mut buf = Vec::new();
            for &id in *ids {
                Record::of(&update(id, 7), 1_000 + id).encode(&mut buf);
            }
            if i + 1 == segments.len() && torn > 0 {
                let mut more = Vec::new();
                Record::of(&update(999, 7), 1).encode(&mut more);
                buf.extend_from_slice(&more[..torn]);
            }
            std::fs::write(segment_path(&journal, i as u64 + 1), buf).unwrap();
        }
        dir
    }

    fn journaled(data_dir: &Path) -> crate::SqliteBackend {
        crate::SqliteBackend::open_journaled(data_dir, botline_core::QueueConfig::default())
            .unwrap()
    }

    /// The numbers of the segments in `data_dir`'s journal.
    fn segments_left(data_dir: &Path) -> Vec<u64> {
        open_segments(&data_dir.join(JOURNAL_DIR))
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect()
    }

    async fn drain(store: &crate::SqliteBackend) -> Vec<i64> {
        use botline_core::Queue;
        let mut ids = Vec::new();
        loop {
            let deliveries = store.receive(10).await.unwrap();
            if deliveries.is_empty() {
                return ids;
            }
            for delivery in deliveries {
                ids.push(delivery.update.update_id.0);
                store.ack(&delivery).await.unwrap();
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_killed_servers_journal_is_replayed_up_to_its_torn_end_and_only_once() {
        use botline_core::Queue;
        let dir = killed_server(&[&[1, 2, 3], &[4, 5]], 11).await;
        let store = journaled(dir.path());
        assert_eq!(store.stats().await.unwrap().pending, 5);
        assert_eq!(drain(&store).await, vec![1, 2, 3, 4, 5]);
        // The replayed segments are gone; the new one is past them.
        assert_eq!(segments_left(dir.path()), vec![3]);
        // The journal's updates are in the dedupe set now, and a new one goes through it.
        assert_eq!(
            store.enqueue(&update(4, 7)).await.unwrap(),
            Enqueued::Duplicate
        );
        assert_eq!(store.enqueue(&update(6, 7)).await.unwrap(), Enqueued::New);
        assert_eq!(
            store.enqueue(&update(6, 7)).await.unwrap(),
            Enqueued::Duplicate
        );
        assert_eq!(drain(&store).await, vec![6]);
        store.close().await.unwrap();
        // Reopened: nothing is replayed twice.
        let store = journaled(dir.path());
        assert_eq!(store.stats().await.unwrap().done, 6);
        assert!(drain(&store).await.is_empty());
        store.close().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_operator_command_after_a_kill_sees_the_journal_and_one_beside_a_server_waits_for_nothing()
     {
        use botline_core::Queue;
        let dir = killed_server(&[&[10, 11]], 0).await;
        // A server holds the lock: the journal is its to import, the command does not touch it.
        let lock = crate::lock_data_dir(dir.path()).unwrap();
        let beside =
            crate::SqliteBackend::open_existing(dir.path(), botline_core::QueueConfig::default())
                .unwrap();
        assert_eq!(beside.stats().await.unwrap().pending, 0);
        beside.close().await.unwrap();
        assert_eq!(segments_left(dir.path()), vec![1]);
        drop(lock);
        // No server: the command imports it first.
        let alone =
            crate::SqliteBackend::open_existing(dir.path(), botline_core::QueueConfig::default())
                .unwrap();
        assert_eq!(alone.stats().await.unwrap().pending, 2);
        assert!(segments_left(dir.path()).is_empty());
        alone.close().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_backup_holds_what_the_journal_holds_and_a_restore_runs_it_once() {
        use botline_core::Queue;
        let dir = killed_server(&[&[20, 21], &[22]], 5).await;
        let _server = crate::lock_data_dir(dir.path()).unwrap();
        let copy = tempfile::tempdir().unwrap();
        crate::backup::backup(dir.path(), &copy.path().join("b.db")).unwrap();
        // The source is untouched: its server imports its own journal.
        assert_eq!(segments_left(dir.path()), vec![1, 2]);
        let restored = copy.path().join("restored");
        crate::backup::restore(&copy.path().join("b.db"), &restored).unwrap();
        let store = journaled(&restored);
        assert_eq!(drain(&store).await, vec![20, 21, 22]);
        store.close().await.unwrap();
        // A restore into a directory whose journal holds records is refused.
        assert!(matches!(
            crate::backup::restore(&copy.path().join("b.db"), dir.path()),
            Err(crate::backup::BackupError::StoreExists { .. })
        ));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn acknowledged_updates_reach_the_queue_in_order_across_segments() {
        use botline_core::Queue;
        let dir = tempfile::tempdir().unwrap();
        let store = journaled(dir.path());
        // Bodies of 1 MiB: 70 of them fill the first 64 MiB segment and start a second.
        let padding = "x".repeat(1 << 20);
        let mut tasks = tokio::task::JoinSet::new();
        for id in 1..=70_i64 {
            let store = store.clone();
            let body = format!(
                "{{\"update_id\":{id},\"message\":{{\"message_id\":{id},\"date\":1,\"chat\":{{\"id\":{},\"type\":\"private\"}},\"text\":\"{padding}\"}}}}",
                id % 3
            );
            tasks.spawn(async move {
                let update = InboundUpdate::parse(body.as_bytes()).unwrap();
                store.enqueue(&update).await.unwrap()
            });
        }
        while let Some(enqueued) = tasks.join_next().await {
            assert_eq!(enqueued.unwrap(), Enqueued::New);
        }
        let mut ids = drain(&store).await;
        ids.sort_unstable();
        assert_eq!(ids, (1..=70).collect::<Vec<_>>());
        // The sealed segment was deleted once imported.
        assert_eq!(segments_left(dir.path()), vec![2]);
        store.close().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_typed_token_never_reaches_the_journal_and_keeps_its_place_in_its_chat() {
        use botline_core::Queue;
        let dir = tempfile::tempdir().unwrap();
        let store = journaled(dir.path());
        let token = "Zq8s3cr3tT0kenValue";
        let register = InboundUpdate::parse(
            format!(
                "{{\"update_id\":2,\"message\":{{\"message_id\":2,\"date\":1,\"chat\":{{\"id\":7,\"type\":\"private\"}},\"text\":\"/register alice {token}\"}}}}"
            )
            .as_bytes(),
        )
        .unwrap();
        assert_eq!(store.enqueue(&update(1, 7)).await.unwrap(), Enqueued::New);
        assert_eq!(store.enqueue(&register).await.unwrap(), Enqueued::New);
        assert_eq!(store.enqueue(&register).await.unwrap(), Enqueued::Duplicate);
        assert_eq!(store.enqueue(&update(3, 7)).await.unwrap(), Enqueued::New);
        assert_eq!(drain(&store).await, vec![1, 2, 3]);
        for (_, mut segment) in open_segments(&dir.path().join(JOURNAL_DIR)).unwrap() {
            let mut bytes = Vec::new();
            segment.read_to_end(&mut bytes).unwrap();
            assert!(
                bytes.windows(8).any(|w| w == b"update_i"),
                "the others are journaled"
            );
            assert!(!bytes.windows(token.len()).any(|w| w == token.as_bytes()));
        }
        store.close().await.unwrap();
    }

    #[test]
    fn a_record_reads_back_as_written_and_a_torn_end_is_no_record() {
        let mut buf = Vec::new();
        let first = record(1, "{\"update_id\":1,\"message\":{\"text\":\"é😀\"}}");
        let second = record(-2, "");
        first.encode(&mut buf);
        second.encode(&mut buf);
        let whole = buf.len();
        let mut reader = io::Cursor::new(&buf);
        let (read, size) = read_record(&mut reader).unwrap().unwrap();
        assert_eq!(read, first);
        assert_eq!(read_record(&mut reader).unwrap().unwrap().0, second);
        assert_eq!(read_record(&mut reader).unwrap(), None);
        // Every cut inside the second record leaves the first alone readable.
        for cut in size as usize..whole {
            let mut reader = io::Cursor::new(&buf[..cut]);
            assert_eq!(read_record(&mut reader).unwrap().unwrap().0, first);
            assert_eq!(read_record(&mut reader).unwrap(), None, "cut at {cut}");
        }
        // A flipped bit in the content fails the CRC.
        let mut damaged = buf.clone();
        damaged[HEADER + 3] ^= 1;
        assert_eq!(read_record(&mut io::Cursor::new(&damaged)).unwrap(), None);
    }
}
