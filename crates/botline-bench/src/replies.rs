//! The check of the bot's replies after a run with forwarding: did every acknowledged update get
//! exactly one reply, with the right text, at the Bot API stand-in, and how long after its
//! receipt did the reply arrive there?
//!
//! The bot is the echo-and-`/start` bot of `examples/grammy-handler` (and `aiogram-handler`),
//! behind `botline serve` with `BOTLINE_HANDLER_URL`; Botline sends the reply its answer carries
//! to `botline-standin`, which records each call with its arrival by the wall clock
//! (`at_unix_us`). [`expected_reply`] says what that bot answers to an update: `Hi <first
//! name>!` to `/start` (also `/start@botline_bench_bot`, when the stand-in's getMe names the bot
//! so), `echo: <text>` to any other text, nothing to a photo. [`check_replies`] pairs the
//! recorded `sendMessage` calls with the acknowledged updates by chat and text, in order;
//! [`fetch_and_check`] reads them from `GET /_standin/calls` until all are there or the timeout
//! passes.

use crate::body::BOT_USERNAME;
use crate::config::BenchError;
use crate::report::{AckedUpdate, LatencySummary, Report, new_histogram};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

/// How many examples of each kind of failure a [`ReplyCheck`] lists.
const SAMPLES: usize = 10;

/// Where the replies are and how long to wait for them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepliesConfig {
    /// The stand-in's base URL, `http://127.0.0.1:PORT` (its control API must be on, as in the
    /// `botline-standin` binary).
    pub standin_url: String,
    /// How long to wait for every expected reply.
    pub timeout: Duration,
}

/// A `sendMessage` the stand-in recorded; only the fields checked.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct RecordedCall {
    pub params: Value,
    pub status: Option<u16>,
    pub at_unix_us: i64,
}

/// A reply that no acknowledged update asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StrayReply {
    pub chat_id: Option<i64>,
    /// The first 60 characters of its text.
    pub text: String,
    /// The same text to the same chat was expected fewer times: a duplicate.
    pub duplicate: bool,
}

/// What the bot answered to the acknowledged updates.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReplyCheck {
    /// Acknowledged updates the bot answers (text messages).
    pub expected: u64,
    /// Acknowledged updates it does not answer (photos).
    pub no_reply_expected: u64,
    /// Expected replies that arrived (successful `sendMessage` calls with the right chat and text).
    pub replied: u64,
    /// Expected replies that did not arrive.
    pub missing: u64,
    /// Replies beyond the expected number for their chat and text (sent twice).
    pub duplicated: u64,
    /// Replies no acknowledged update asked for (wrong chat or text).
    pub unexpected: u64,
    /// `sendMessage` calls answered otherwise than 200 (Botline retries them).
    pub failed_calls: u64,
    /// From the first send of an update to the arrival of its reply at the stand-in.
    pub receipt_to_reply: LatencySummary,
    /// When the last expected reply arrived, unix microseconds.
    pub last_reply_unix_us: Option<i64>,
    /// `replied` divided by the seconds from the start of the load to the last reply.
    pub replies_per_sec: f64,
    pub missing_samples: Vec<u64>,
    pub stray_samples: Vec<StrayReply>,
    /// Reads of the stand-in's calls ([`fetch_and_check`] only).
    pub fetches: u32,
    /// Seconds spent waiting for the replies ([`fetch_and_check`] only).
    pub waited_secs: f64,
}

impl ReplyCheck {
    /// Every expected reply arrived exactly once, and nothing else was sent.
    pub fn is_ok(&self) -> bool {
        self.missing == 0 && self.duplicated == 0 && self.unexpected == 0
    }
}

impl fmt::Display for ReplyCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "replies: {} ({} reads in {:.1} s)",
            if self.is_ok() { "OK" } else { "FAILED" },
            self.fetches,
            self.waited_secs
        )?;
        writeln!(
            f,
            "  replied             {} of {} expected ({} acknowledged updates expect none)",
            self.replied, self.expected, self.no_reply_expected
        )?;
        writeln!(f, "  missing             {}", self.missing)?;
        writeln!(f, "  duplicated          {}", self.duplicated)?;
        writeln!(f, "  unexpected          {}", self.unexpected)?;
        writeln!(
            f,
            "  failed calls        {} (answered non-200)",
            self.failed_calls
        )?;
        writeln!(
            f,
            "  replies/s           {:.1} (replied / seconds from the load's start to the last reply)",
            self.replies_per_sec
        )?;
        writeln!(f, "  receipt→reply (ms)  {}", self.receipt_to_reply)?;
        for update_id in &self.missing_samples {
            writeln!(f, "  missing: the reply to update {update_id}")?;
        }
        for stray in &self.stray_samples {
            writeln!(
                f,
                "  {}: chat {:?}, {:?}",
                if stray.duplicate {
                    "duplicate"
                } else {
                    "unexpected"
                },
                stray.chat_id,
                stray.text
            )?;
        }
        Ok(())
    }
}

/// What the echo-and-`/start` example bot answers to this update body: `Hi <first name>!` to a
/// message whose `bot_command` entity at offset 0 is `/start` or `/start@botline_bench_bot`,
/// `echo: <text>` to any other text message, `None` to anything else (a photo).
pub fn expected_reply(body: &[u8]) -> Option<String> {
    let update: Value = serde_json::from_slice(body).ok()?;
    let message = update.get("message")?;
    let text = message.get("text")?.as_str()?;
    let command = message
        .get("entities")
        .and_then(Value::as_array)
        .and_then(|entities| entities.first())
        .filter(|e| e["type"] == "bot_command" && e["offset"] == 0)
        .and_then(|e| e["length"].as_u64())
        .and_then(|length| text.get(..usize::try_from(length).ok()?));
    let is_start = command.is_some_and(|command| match command.split_once('@') {
        None => command == "/start",
        Some((name, bot)) => name == "/start" && bot.eq_ignore_ascii_case(BOT_USERNAME),
    });
    if is_start {
        let name = message["from"]["first_name"].as_str().unwrap_or("there");
        Some(format!("Hi {name}!"))
    } else {
        Some(format!("echo: {text}"))
    }
}

/// `chat_id` as Botline sent it: a number, or a number in a string.
fn chat_id_of(params: &Value) -> Option<i64> {
    match &params["chat_id"] {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// Pairs the recorded `sendMessage` calls with the acknowledged updates of `report`: each update
/// the bot answers must have exactly one successful call to its chat with [`expected_reply`]'s
/// text. Calls with the same chat and text go to those updates in `update_id` order.
pub fn check_replies(report: &Report, calls: &[RecordedCall]) -> ReplyCheck {
    let mut result = ReplyCheck::default();
    let mut waiting: HashMap<(i64, String), VecDeque<&AckedUpdate>> = HashMap::new();
    let mut acked: Vec<&AckedUpdate> = report.acked_updates.iter().collect();
    acked.sort_by_key(|a| a.update_id);
    for update in acked {
        match update.body.as_deref().and_then(expected_reply) {
            Some(text) => {
                result.expected += 1;
                waiting
                    .entry((update.chat_id, text))
                    .or_default()
                    .push_back(update);
            }
            None => result.no_reply_expected += 1,
        }
    }
    let mut latencies = new_histogram();
    let mut last_reply = None;
    let mut ordered: Vec<&RecordedCall> = calls.iter().collect();
    ordered.sort_by_key(|c| c.at_unix_us);
    for call in ordered {
        if call.status != Some(200) {
            result.failed_calls += 1;
            continue;
        }
        let chat_id = chat_id_of(&call.params);
        let text = call.params["text"].as_str().unwrap_or_default().to_owned();
        let key = chat_id.map(|chat| (chat, text));
        match key.as_ref().and_then(|key| waiting.get_mut(key)) {
            Some(queue) if !queue.is_empty() => {
                if let Some(update) = queue.pop_front() {
                    result.replied += 1;
                    let micros = call.at_unix_us.saturating_sub(update.first_sent_unix_us);
                    latencies.saturating_record(u64::try_from(micros).unwrap_or(0).max(1));
                    last_reply = last_reply.max(Some(call.at_unix_us));
                }
            }
            found => {
                let duplicate = found.is_some();
                if duplicate {
                    result.duplicated += 1;
                } else {
                    result.unexpected += 1;
                }
                if result.stray_samples.len() < SAMPLES {
                    result.stray_samples.push(StrayReply {
                        chat_id,
                        text: call.params["text"]
                            .as_str()
                            .unwrap_or_default()
                            .chars()
                            .take(60)
                            .collect(),
                        duplicate,
                    });
                }
            }
        }
    }
    let mut missing: Vec<u64> = waiting.values().flatten().map(|u| u.update_id).collect();
    missing.sort_unstable();
    result.missing = missing.len() as u64;
    result.missing_samples = missing.into_iter().take(SAMPLES).collect();
    result.receipt_to_reply = LatencySummary::from_micros(&latencies);
    result.last_reply_unix_us = last_reply;
    if let Some(last) = last_reply {
        let secs = (last - report.started_at_unix_ms * 1000) as f64 / 1e6;
        if secs > 0.0 {
            result.replies_per_sec = result.replied as f64 / secs;
        }
    }
    result
}

/// Reads the stand-in's `sendMessage` calls (only the new ones each time) and [`check_replies`],
/// again every 200 ms until no expected reply is missing or `config.timeout` passes. Blocking:
/// call it from `spawn_blocking` in async code. Fails only when the stand-in cannot be read.
pub fn fetch_and_check(report: &Report, config: &RepliesConfig) -> Result<ReplyCheck, BenchError> {
    let started = Instant::now();
    let authority = config
        .standin_url
        .strip_prefix("http://")
        .map(|rest| rest.trim_end_matches('/'))
        .filter(|rest| !rest.is_empty() && !rest.contains('/'))
        .ok_or_else(|| {
            BenchError::Config(format!(
                "--verify-replies takes the stand-in's base URL, http://HOST:PORT, not {}",
                config.standin_url
            ))
        })?;
    let mut calls: Vec<RecordedCall> = Vec::new();
    let mut fetches = 0;
    loop {
        fetches += 1;
        let path = format!("/_standin/calls?method=sendMessage&from={}", calls.len());
        let body = http_get(authority, &path).map_err(|detail| BenchError::Replies {
            url: config.standin_url.clone(),
            detail,
        })?;
        let new: Vec<RecordedCall> =
            serde_json::from_str(&body).map_err(|e| BenchError::Replies {
                url: config.standin_url.clone(),
                detail: format!("not a list of calls: {e}"),
            })?;
        calls.extend(new);
        let mut check = check_replies(report, &calls);
        check.fetches = fetches;
        check.waited_secs = started.elapsed().as_secs_f64();
        if check.missing == 0 || started.elapsed() >= config.timeout {
            return Ok(check);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A GET over HTTP/1.0 (the server closes the connection after answering): the body of a 200.
fn http_get(authority: &str, path: &str) -> Result<String, String> {
    let mut stream = std::net::TcpStream::connect(authority).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {authority}\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).map_err(|e| e.to_string())?;
    let answer = String::from_utf8(answer).map_err(|e| e.to_string())?;
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .ok_or_else(|| "no HTTP answer".to_owned())?;
    let status = head.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("200") {
        return Err(format!("GET {path}: {status}"));
    }
    Ok(body.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::AckedUpdate;
    use bytes::Bytes;
    use serde_json::json;

    const SENT_AT_US: i64 = 1_714_564_800_000_000;

    fn update(update_id: u64, chat_id: i64, message: Value) -> AckedUpdate {
        let body = json!({ "update_id": update_id, "message": message }).to_string();
        AckedUpdate {
            update_id,
            chat_id,
            message_id: i64::try_from(update_id).unwrap(),
            first_sent_unix_us: SENT_AT_US,
            attempts: 1,
            body_len: body.len(),
            body_fnv1a: String::new(),
            body: Some(Bytes::from(body)),
        }
    }

    fn text(update_id: u64, chat_id: i64, text: &str) -> AckedUpdate {
        update(
            update_id,
            chat_id,
            json!({ "from": { "first_name": "Ana" }, "text": text }),
        )
    }

    fn command(update_id: u64, chat_id: i64, text: &str, length: usize) -> AckedUpdate {
        update(
            update_id,
            chat_id,
            json!({
                "from": { "first_name": "Ana" }, "text": text,
                "entities": [{ "type": "bot_command", "offset": 0, "length": length }],
            }),
        )
    }

    fn call(chat_id: Value, text: &str, after_ms: i64) -> RecordedCall {
        RecordedCall {
            params: json!({ "chat_id": chat_id, "text": text }),
            status: Some(200),
            at_unix_us: SENT_AT_US + after_ms * 1000,
        }
    }

    fn report(acked: Vec<AckedUpdate>) -> Report {
        let mut report: Report = serde_json::from_value(json!({
            "mode": "closed", "target_rate": null, "connections": 1, "chats": 1,
            "first_update_id": 1, "started_at_unix_ms": SENT_AT_US / 1000, "duration_secs": 1.0,
            "updates_sent": 0, "acknowledged": 0, "throughput_per_sec": 0.0,
            "ack_latency": LatencySummary::default(), "non_2xx_by_status": {},
            "connection_errors": 0, "connection_errors_by_kind": {}, "retries": 0,
            "given_up": 0, "given_up_updates": [], "acked_updates": [], "flood": null,
            "verification": null,
        }))
        .unwrap();
        report.acked_updates = acked;
        report
    }

    #[test]
    fn replies_are_those_of_the_example_bot() {
        let expected = |u: AckedUpdate| expected_reply(u.body.as_deref().unwrap());
        assert_eq!(expected(text(1, 5, "hello")), Some("echo: hello".into()));
        assert_eq!(
            expected(command(1, 5, "/start now", 6)),
            Some("Hi Ana!".into())
        );
        let addressed = "/start@botline_bench_bot go";
        assert_eq!(
            expected(command(1, 5, addressed, 24)),
            Some("Hi Ana!".into())
        );
        let elsewhere = "/start@other_bot go";
        assert_eq!(
            expected(command(1, 5, elsewhere, 16)),
            Some(format!("echo: {elsewhere}"))
        );
        assert_eq!(
            expected(command(1, 5, "/help me", 5)),
            Some("echo: /help me".into())
        );
        let photo = update(1, 5, json!({ "photo": [], "caption": "/start" }));
        assert_eq!(expected(photo), None);
    }

    #[test]
    fn each_reply_once_with_its_latency_and_rate() {
        let report = report(vec![
            text(1, 5, "a"),
            text(2, 5, "a"),
            command(3, -100, "/start x", 6),
            update(4, 7, json!({ "photo": [] })),
        ]);
        let calls = [
            call(json!(5), "echo: a", 10),
            call(json!("-100"), "Hi Ana!", 30),
            call(json!(5), "echo: a", 20),
        ];
        let check = check_replies(&report, &calls);
        assert!(check.is_ok(), "{check}");
        assert_eq!(
            (check.expected, check.no_reply_expected, check.replied),
            (3, 1, 3)
        );
        assert!(
            (check.receipt_to_reply.p50_ms - 20.0).abs() < 0.05,
            "{check}"
        );
        assert!(
            (check.receipt_to_reply.max_ms - 30.0).abs() < 0.05,
            "{check}"
        );
        assert_eq!(check.last_reply_unix_us, Some(SENT_AT_US + 30_000));
        assert!((check.replies_per_sec - 100.0).abs() < 0.01, "{check}");
    }

    #[test]
    fn missing_duplicated_wrong_and_failed_replies_are_told_apart() {
        let report = report(vec![text(1, 5, "a"), text(2, 6, "b"), text(3, 7, "c")]);
        let mut refused = call(json!(7), "echo: c", 5);
        refused.status = Some(429);
        let calls = [
            call(json!(5), "echo: a", 10),
            call(json!(5), "echo: a", 11),
            call(json!(6), "echo: B", 12),
            refused,
        ];
        let check = check_replies(&report, &calls);
        assert!(!check.is_ok());
        assert_eq!(check.replied, 1);
        assert_eq!(check.duplicated, 1);
        assert_eq!(check.unexpected, 1);
        assert_eq!(check.failed_calls, 1);
        assert_eq!(check.missing, 2);
        assert_eq!(check.missing_samples, [2, 3]);
        assert!(check.stray_samples[0].duplicate);
        assert_eq!(check.stray_samples[1].text, "echo: B");
    }
}
