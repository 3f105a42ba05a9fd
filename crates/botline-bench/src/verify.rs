//! The check of the store after a run: is every acknowledged update stored exactly once, with the
//! very bytes that were sent, and how long after its receipt did it get there?
//!
//! [`verify`] reads the JSON lines of `botline messages export --format jsonl`;
//! [`export_and_verify`] runs that export until every acknowledged update shows up or the timeout
//! passes, since the worker stores updates some time after the receiver acknowledged them.

use crate::body::fingerprint;
use crate::config::{BenchError, VerifyConfig};
use crate::report::{AckedUpdate, LatencySummary, Report, new_histogram};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fmt;
use std::process::Stdio;
use std::time::{Duration, Instant};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// How many examples of each kind of failure a [`Verification`] lists.
const SAMPLES: usize = 10;

/// An acknowledged update, as the store keys its message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageKey {
    pub update_id: u64,
    pub chat_id: i64,
    pub message_id: i64,
}

/// A stored `raw` that is not the body that was sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RawMismatch {
    pub update_id: u64,
    pub chat_id: i64,
    pub message_id: i64,
    pub sent_len: usize,
    pub stored_len: usize,
    /// Byte offset of the first difference, when the sent body is still in memory.
    pub first_difference: Option<usize>,
}

/// What the store holds of the acknowledged updates.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Verification {
    /// Acknowledged updates looked for.
    pub expected: u64,
    /// Of those, how many are stored at least once.
    pub present: u64,
    /// Acknowledged but not stored.
    pub missing: u64,
    /// Acknowledged and stored more than once.
    pub duplicated: u64,
    /// Acknowledged updates with a stored `raw` (any copy) that differs from the body sent.
    pub raw_mismatches: u64,
    /// Stored messages that are not acknowledged updates of this run (earlier runs, or updates
    /// this run gave up on, which may or may not be stored).
    pub other_records: u64,
    /// Export lines that are not message records.
    pub invalid_lines: u64,
    /// Stored messages whose `createdAt` could not be read.
    pub unreadable_created_at: u64,
    /// From the first send of an update to its `createdAt`.
    pub receipt_to_stored: LatencySummary,
    /// The latest `createdAt` of an acknowledged update, unix milliseconds.
    #[serde(default)]
    pub last_stored_unix_ms: Option<i64>,
    /// `present` divided by the seconds from the start of the load to the latest `createdAt`:
    /// the rate at which the worker processed the load (it writes the records).
    #[serde(default)]
    pub stored_per_sec: f64,
    pub missing_samples: Vec<MessageKey>,
    pub duplicated_samples: Vec<MessageKey>,
    pub mismatch_samples: Vec<RawMismatch>,
    /// Exports run before this result ([`export_and_verify`] only).
    pub export_runs: u32,
    /// Seconds spent waiting for the store ([`export_and_verify`] only).
    pub waited_secs: f64,
}

impl Verification {
    /// Nothing acknowledged is missing, duplicated or altered.
    pub fn is_ok(&self) -> bool {
        self.missing == 0 && self.duplicated == 0 && self.raw_mismatches == 0
    }
}

impl fmt::Display for Verification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "verification: {} ({} exports in {:.1} s)",
            if self.is_ok() { "OK" } else { "FAILED" },
            self.export_runs,
            self.waited_secs
        )?;
        writeln!(
            f,
            "  stored              {} of {} acknowledged",
            self.present, self.expected
        )?;
        writeln!(f, "  missing             {}", self.missing)?;
        writeln!(f, "  duplicated          {}", self.duplicated)?;
        writeln!(f, "  raw mismatches      {}", self.raw_mismatches)?;
        writeln!(
            f,
            "  other records       {} (not acknowledged in this run)",
            self.other_records
        )?;
        if self.invalid_lines > 0 || self.unreadable_created_at > 0 {
            writeln!(
                f,
                "  unreadable          {} lines, {} createdAt",
                self.invalid_lines, self.unreadable_created_at
            )?;
        }
        writeln!(
            f,
            "  stored/s            {:.1} (stored / seconds from the load's start to the last createdAt)",
            self.stored_per_sec
        )?;
        writeln!(f, "  receipt→stored (ms) {}", self.receipt_to_stored)?;
        for key in &self.missing_samples {
            writeln!(
                f,
                "  missing: update {} (chat {}, message {})",
                key.update_id, key.chat_id, key.message_id
            )?;
        }
        for key in &self.duplicated_samples {
            writeln!(
                f,
                "  duplicated: update {} (chat {}, message {})",
                key.update_id, key.chat_id, key.message_id
            )?;
        }
        for m in &self.mismatch_samples {
            writeln!(
                f,
                "  raw differs: update {} (chat {}, message {}): sent {} bytes, stored {}{}",
                m.update_id,
                m.chat_id,
                m.message_id,
                m.sent_len,
                m.stored_len,
                m.first_difference
                    .map(|at| format!(", first difference at byte {at}"))
                    .unwrap_or_default()
            )?;
        }
        Ok(())
    }
}

/// One line of `botline messages export --format jsonl`; only the fields checked.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ExportedMessage {
    chat_id: IdText,
    message_id: i64,
    raw: String,
    created_at: Option<String>,
}

/// `chatId` is text in the store's records; a number is read too.
#[derive(Deserialize)]
#[serde(untagged)]
enum IdText {
    Text(String),
    Number(i64),
}

impl IdText {
    fn value(&self) -> Option<i64> {
        match self {
            Self::Text(text) => text.trim().parse().ok(),
            Self::Number(n) => Some(*n),
        }
    }
}

/// Per acknowledged update: how often it is stored, and whether any copy differs.
#[derive(Default)]
struct Seen {
    copies: u32,
    mismatch: Option<RawMismatch>,
}

/// Checks an export (JSON lines) against the acknowledged updates of `report`: every one must be
/// stored exactly once with `raw` equal to the body sent. Updates that were not acknowledged may
/// or may not be stored.
pub fn verify(report: &Report, exported_jsonl: &str) -> Verification {
    let acked: HashMap<(i64, i64), &AckedUpdate> = report
        .acked_updates
        .iter()
        .map(|a| ((a.chat_id, a.message_id), a))
        .collect();
    let mut seen: HashMap<(i64, i64), Seen> = HashMap::with_capacity(acked.len());
    let mut result = Verification {
        expected: acked.len() as u64,
        ..Verification::default()
    };
    let mut latencies = new_histogram();

    for line in exported_jsonl.lines().filter(|l| !l.trim().is_empty()) {
        let Ok(message) = serde_json::from_str::<ExportedMessage>(line) else {
            result.invalid_lines += 1;
            continue;
        };
        let Some(chat_id) = message.chat_id.value() else {
            result.invalid_lines += 1;
            continue;
        };
        let key = (chat_id, message.message_id);
        let Some(sent) = acked.get(&key) else {
            result.other_records += 1;
            continue;
        };
        let entry = seen.entry(key).or_default();
        entry.copies += 1;
        if entry.mismatch.is_none() {
            entry.mismatch = compare_raw(sent, &message.raw);
        }
        if entry.copies == 1 {
            match message.created_at.as_deref().and_then(unix_ms_from_iso8601) {
                Some(created_ms) => {
                    result.last_stored_unix_ms = result.last_stored_unix_ms.max(Some(created_ms));
                    let micros = created_ms
                        .saturating_mul(1000)
                        .saturating_sub(sent.first_sent_unix_us);
                    // createdAt has millisecond resolution: clamp the rounding below zero.
                    latencies.saturating_record(u64::try_from(micros).unwrap_or(0).max(1));
                }
                None => result.unreadable_created_at += 1,
            }
        }
    }

    for update in &report.acked_updates {
        let key = MessageKey {
            update_id: update.update_id,
            chat_id: update.chat_id,
            message_id: update.message_id,
        };
        match seen.get_mut(&(update.chat_id, update.message_id)) {
            None => {
                result.missing += 1;
                push_sample(&mut result.missing_samples, key);
            }
            Some(entry) => {
                result.present += 1;
                if entry.copies > 1 {
                    result.duplicated += 1;
                    push_sample(&mut result.duplicated_samples, key);
                }
                if let Some(mismatch) = entry.mismatch.take() {
                    result.raw_mismatches += 1;
                    push_sample(&mut result.mismatch_samples, mismatch);
                }
            }
        }
    }
    result.receipt_to_stored = LatencySummary::from_micros(&latencies);
    if let Some(last) = result.last_stored_unix_ms {
        let secs = (last - report.started_at_unix_ms) as f64 / 1000.0;
        if secs > 0.0 {
            result.stored_per_sec = result.present as f64 / secs;
        }
    }
    result
}

fn push_sample<T>(samples: &mut Vec<T>, sample: T) {
    if samples.len() < SAMPLES {
        samples.push(sample);
    }
}

/// `None` when the stored raw is the body that was sent, byte for byte (or, when the body is no
/// longer in memory, has its length and fingerprint).
fn compare_raw(sent: &AckedUpdate, stored: &str) -> Option<RawMismatch> {
    let stored = stored.as_bytes();
    let first_difference = match &sent.body {
        Some(body) if **body == *stored => return None,
        Some(body) => Some(
            body.iter()
                .zip(stored)
                .position(|(a, b)| a != b)
                .unwrap_or(body.len().min(stored.len())),
        ),
        None if stored.len() == sent.body_len
            && format!("{:016x}", fingerprint(stored)) == sent.body_fnv1a =>
        {
            return None;
        }
        None => None,
    };
    Some(RawMismatch {
        update_id: sent.update_id,
        chat_id: sent.chat_id,
        message_id: sent.message_id,
        sent_len: sent.body_len,
        stored_len: stored.len(),
        first_difference,
    })
}

/// Runs `<botline_bin> messages export <store> --format jsonl` and [`verify`]s its output,
/// again every half second until nothing acknowledged is missing or `config.timeout` passes.
/// Blocking: call it from `spawn_blocking` in async code. Fails only when the export never
/// succeeded.
pub fn export_and_verify(
    report: &Report,
    config: &VerifyConfig,
) -> Result<Verification, BenchError> {
    let started = Instant::now();
    let bin = config.botline_bin.display().to_string();
    let mut runs = 0;
    let mut last: Option<Verification> = None;
    let mut last_error = String::new();
    loop {
        runs += 1;
        let output = config
            .export_command()
            .stdin(Stdio::null())
            .output()
            .map_err(|e| BenchError::Export {
                bin: bin.clone(),
                detail: e.to_string(),
            })?;
        if output.status.success() {
            let mut verification = verify(report, &String::from_utf8_lossy(&output.stdout));
            verification.export_runs = runs;
            verification.waited_secs = started.elapsed().as_secs_f64();
            if verification.missing == 0 {
                return Ok(verification);
            }
            last = Some(verification);
        } else {
            let stderr = String::from_utf8_lossy(&output.stderr);
            last_error = format!("{}: {}", output.status, stderr.trim());
        }
        if started.elapsed() >= config.timeout {
            return last.ok_or(BenchError::Export {
                bin,
                detail: last_error,
            });
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Unix milliseconds of an RFC 3339 / ISO 8601 time such as `2024-05-01T12:00:00.123Z`.
pub fn unix_ms_from_iso8601(text: &str) -> Option<i64> {
    let time = OffsetDateTime::parse(text.trim(), &Rfc3339).ok()?;
    i64::try_from(time.unix_timestamp_nanos().div_euclid(1_000_000)).ok()
}

/// `2024-05-01T12:00:00.123Z` for unix milliseconds, as Botline writes `createdAt`.
pub fn iso8601_from_unix_ms(ms: i64) -> String {
    let nanos = i128::from(ms) * 1_000_000;
    match OffsetDateTime::from_unix_timestamp_nanos(nanos) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            t.millisecond()
        ),
        Err(_) => ms.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::LatencySummary;
    use bytes::Bytes;
    use std::collections::BTreeMap;

    const SENT_AT_US: i64 = 1_714_564_800_000_000;

    fn acked(update_id: u64, chat_id: i64, message_id: i64, body: &str) -> AckedUpdate {
        AckedUpdate {
            update_id,
            chat_id,
            message_id,
            first_sent_unix_us: SENT_AT_US,
            attempts: 1,
            body_len: body.len(),
            body_fnv1a: format!("{:016x}", fingerprint(body.as_bytes())),
            body: Some(Bytes::copy_from_slice(body.as_bytes())),
        }
    }

    fn report(acked_updates: Vec<AckedUpdate>) -> Report {
        Report {
            mode: "closed".to_owned(),
            target_rate: None,
            connections: 1,
            chats: 1,
            first_update_id: 1,
            seed: 1,
            started_at_unix_ms: 0,
            duration_secs: 1.0,
            updates_sent: acked_updates.len() as u64,
            acknowledged: acked_updates.len() as u64,
            throughput_per_sec: 1.0,
            ack_latency: LatencySummary::default(),
            non_2xx_by_status: BTreeMap::new(),
            connection_errors: 0,
            connection_errors_by_kind: BTreeMap::new(),
            retries: 0,
            given_up: 0,
            given_up_updates: Vec::new(),
            acked_updates,
            flood: None,
            verification: None,
            replies: None,
            timeline: Vec::new(),
            server: None,
        }
    }

    fn line(chat_id: i64, message_id: i64, raw: &str, created_at_ms: i64) -> String {
        serde_json::json!({
            "chatId": chat_id.to_string(),
            "messageId": message_id,
            "userId": 5,
            "userName": "alice",
            "text": "hi",
            "timestamp": 1_714_564_800_000_i64,
            "raw": raw,
            "createdAt": iso8601_from_unix_ms(created_at_ms),
        })
        .to_string()
    }

    fn bodies() -> [&'static str; 3] {
        [
            r#"{"update_id":1,"message":{"text":"\/start \u041f"}}"#,
            r#"{"update_id":2,"message":{"text":"Привет 👍"}}"#,
            r#"{"update_id":3,"message":{"text":"three"}}"#,
        ]
    }

    fn three_acked() -> Report {
        let [a, b, c] = bodies();
        report(vec![
            acked(1, -1001234567890, 10, a),
            acked(2, 42, 7, b),
            acked(3, 42, 8, c),
        ])
    }

    #[test]
    fn all_present_once_is_ok_and_measures_latency() {
        let [a, b, c] = bodies();
        let sent_ms = SENT_AT_US / 1000;
        let export = [
            line(-1001234567890, 10, a, sent_ms + 5),
            line(42, 7, b, sent_ms + 20),
            // Not acknowledged in this run: allowed.
            line(42, 6, "{}", sent_ms),
            String::new(),
            line(42, 8, c, sent_ms + 100),
        ]
        .join("\n");
        let mut report = three_acked();
        report.started_at_unix_ms = sent_ms;
        let v = verify(&report, &export);
        assert!(v.is_ok(), "{v:?}");
        assert_eq!((v.expected, v.present, v.other_records), (3, 3, 1));
        assert_eq!(v.receipt_to_stored.count, 3);
        assert!((v.receipt_to_stored.p50_ms - 20.0).abs() < 0.05, "{v:?}");
        assert!((v.receipt_to_stored.max_ms - 100.0).abs() < 0.1, "{v:?}");
        // Three stored 100 ms after the load's start.
        assert_eq!(v.last_stored_unix_ms, Some(sent_ms + 100));
        assert!((v.stored_per_sec - 30.0).abs() < 0.01, "{v:?}");
    }

    #[test]
    fn reports_missing_updates() {
        let [a, _, c] = bodies();
        let export = [line(-1001234567890, 10, a, 0), line(42, 8, c, 0)].join("\n");
        let v = verify(&three_acked(), &export);
        assert!(!v.is_ok());
        assert_eq!((v.present, v.missing, v.duplicated), (2, 1, 0));
        assert_eq!(v.missing_samples[0].update_id, 2);
    }

    #[test]
    fn reports_duplicates() {
        let [a, b, c] = bodies();
        let export = [
            line(-1001234567890, 10, a, 0),
            line(42, 7, b, 0),
            line(42, 7, b, 0),
            line(42, 8, c, 0),
        ]
        .join("\n");
        let v = verify(&three_acked(), &export);
        assert!(!v.is_ok());
        assert_eq!((v.missing, v.duplicated, v.raw_mismatches), (0, 1, 0));
        assert_eq!(v.duplicated_samples[0].message_id, 7);
    }

    #[test]
    fn reports_raw_that_differs_by_a_byte_or_by_reserialization() {
        let [a, b, c] = bodies();
        // The same JSON value re-serialized: not the bytes that were sent.
        let reserialized =
            serde_json::to_string(&serde_json::from_str::<serde_json::Value>(a).expect("json"))
                .expect("json");
        assert_ne!(reserialized, a);
        let export = [
            line(-1001234567890, 10, &reserialized, 0),
            line(42, 7, b, 0),
            line(42, 8, &c.replace("three", "thre3"), 0),
        ]
        .join("\n");
        let v = verify(&three_acked(), &export);
        assert!(!v.is_ok());
        assert_eq!((v.missing, v.raw_mismatches), (0, 2));
        let differs = &v.mismatch_samples[1];
        assert_eq!(differs.update_id, 3);
        assert_eq!(
            differs.first_difference,
            Some(c.find("three").unwrap_or(0) + 4)
        );
        assert!(v.to_string().contains("raw differs: update 3"));
    }

    #[test]
    fn compares_by_fingerprint_when_the_body_is_not_in_memory() {
        let [a, b, c] = bodies();
        // As read back from a saved JSON report: no bodies.
        let saved: Report =
            serde_json::from_str(&serde_json::to_string(&three_acked()).expect("json"))
                .expect("report");
        assert!(saved.acked_updates.iter().all(|u| u.body.is_none()));
        let good = [
            line(-1001234567890, 10, a, 0),
            line(42, 7, b, 0),
            line(42, 8, c, 0),
        ];
        assert!(verify(&saved, &good.join("\n")).is_ok());
        let bad = [
            line(-1001234567890, 10, a, 0),
            line(42, 7, b, 0),
            line(42, 8, "x", 0),
        ];
        assert_eq!(verify(&saved, &bad.join("\n")).raw_mismatches, 1);
    }

    #[test]
    fn counts_lines_that_are_not_records() {
        let v = verify(
            &three_acked(),
            "not json\n{\"chatId\":\"x\",\"messageId\":1,\"raw\":\"\"}\n",
        );
        assert_eq!((v.invalid_lines, v.missing), (2, 3));
    }

    #[test]
    fn iso8601_round_trip() {
        assert_eq!(
            iso8601_from_unix_ms(1_714_564_800_123),
            "2024-05-01T12:00:00.123Z"
        );
        assert_eq!(
            unix_ms_from_iso8601("2024-05-01T12:00:00.123Z"),
            Some(1_714_564_800_123)
        );
        assert_eq!(
            unix_ms_from_iso8601("2024-05-01T14:00:00.5+02:00"),
            Some(1_714_564_800_500)
        );
        assert_eq!(unix_ms_from_iso8601("yesterday"), None);
    }
}
