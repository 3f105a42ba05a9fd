//! The outbox on DynamoDB: Bot API calls handed out under a lease (conditional writes), the
//! oldest pending call of each chat, one per chat at a time.

use crate::item::{Item, get_s, key, n, names, opt_n, req_n, req_s, s, values};
use crate::{AwsBackend, is_condition_failed, unavailable};
use async_trait::async_trait;
use aws_sdk_dynamodb::types::{Put, ReturnValue};
use botline_core::backend::stored_reason;
use botline_core::{
    BackendError, Outbox, OutboxEntry, OutboxMessage, OutboxStats, UpdateId, clock,
};
use std::collections::BTreeMap;
use std::time::Duration;

/// The sparse index of pending calls (see the crate docs).
pub(crate) const OUTBOX_PENDING_INDEX: &str = "PendingIndex";
/// The one partition of that index (a shard number could be added when one is not enough).
const PENDING_SHARD: &str = "0";

const PENDING: &str = "pending";
const DONE: &str = "done";
const FAILED: &str = "failed";

/// How long a finished call is kept (the TTL `expiresAt`): 30 days.
const FINISHED_TTL_SECONDS: i64 = 30 * 24 * 3600;

/// The `Put` of a new call, the `index`-th that update `update_id` asked for. `seq` orders a
/// chat's calls: updates of a chat are applied one at a time in `update_id` order, so
/// (`update_id`, index) is the order the calls were written in.
///
/// A delayed call (a reminder) is written due at its time, with `chatSeq` `<chat>#~<time>.<seq>`:
/// `~` sorts after every digit, so the chat's calls due at once go before it, and delayed calls
/// go in the order of their times. Its `dueAt` still equals the time in its `chatSeq` until it
/// is first leased, which is how [`Outbox::due_calls`] tells a call waiting for its time (that
/// holds up nothing) from one leased or waiting out a retry (that holds up its chat).
pub(crate) fn outbox_put(
    table: &str,
    call: &OutboxMessage,
    update_id: UpdateId,
    index: usize,
    now: i64,
) -> Result<Put, BackendError> {
    let action = serde_json::to_string(&call.action)
        .map_err(|e| BackendError::Corrupt(format!("outbox call {}: {e}", call.outbox_id)))?;
    let seq = format!("{:020}.{index:03}", update_id.0.max(0));
    let (due, chat_seq) = match call.send_at_ms.filter(|at| *at > now) {
        Some(at) => (at, format!("{}#{SCHEDULED}{at:015}.{seq}", call.chat_id)),
        None => (now, format!("{}#{seq}", call.chat_id)),
    };
    let item = Item::from([
        ("outboxId".to_owned(), s(&call.outbox_id)),
        ("updateId".to_owned(), n(update_id.0)),
        ("chatId".to_owned(), n(call.chat_id)),
        ("action".to_owned(), s(action)),
        ("state".to_owned(), s(PENDING)),
        ("attempts".to_owned(), n(0)),
        ("dueAt".to_owned(), n(due)),
        ("createdAt".to_owned(), n(due)),
        ("seq".to_owned(), s(&seq)),
        ("chatSeq".to_owned(), s(chat_seq)),
        ("pendingShard".to_owned(), s(PENDING_SHARD)),
    ]);
    let condition = "attribute_not_exists(#outboxId)";
    Put::builder()
        .table_name(table)
        .set_item(Some(item))
        .condition_expression(condition)
        .set_expression_attribute_names(names([condition]))
        .build()
        .map_err(|e| BackendError::Unavailable(format!("TransactWriteItems: {e}")))
}

fn entry(item: &Item) -> Result<OutboxEntry, BackendError> {
    let outbox_id = req_s(item, "outboxId", &"an outbox call")?;
    let what: &dyn std::fmt::Display = &format!("outbox call {outbox_id}");
    let action = req_s(item, "action", what)?;
    Ok(OutboxEntry {
        call: OutboxMessage {
            action: serde_json::from_str(&action)
                .map_err(|e| BackendError::Corrupt(format!("outbox call {outbox_id}: {e}")))?,
            chat_id: req_n(item, "chatId", what)?,
            outbox_id,
            send_at_ms: None,
        },
        update_id: UpdateId(req_n(item, "updateId", what)?),
        attempt: req_n(item, "attempts", what)?,
        created_at_ms: req_n(item, "createdAt", what)?,
    })
}

/// What starts the `seq` part of a delayed call's `chatSeq`.
const SCHEDULED: char = '~';

/// A pending call as the index shows it.
struct Pending {
    outbox_id: String,
    chat_id: i64,
    chat_seq: String,
    due_at: i64,
}

impl Pending {
    /// A delayed call not leased yet, waiting for its time: it holds up nothing.
    fn waits_for_its_time(&self, now: i64) -> bool {
        let scheduled = self
            .chat_seq
            .split_once('#')
            .and_then(|(_, seq)| seq.strip_prefix(SCHEDULED))
            .and_then(|rest| rest.split_once('.'))
            .and_then(|(at, _)| at.parse::<i64>().ok());
        self.due_at > now && scheduled == Some(self.due_at)
    }
}

impl AwsBackend {
    /// Every pending call, by chat and in order within each chat.
    async fn pending_calls(&self) -> Result<BTreeMap<i64, Vec<Pending>>, BackendError> {
        let condition = "#pendingShard = :shard";
        let mut chats: BTreeMap<i64, Vec<Pending>> = BTreeMap::new();
        let mut start = None;
        loop {
            let page = self
                .dynamodb()
                .query()
                .table_name(&self.tables().outbox)
                .index_name(OUTBOX_PENDING_INDEX)
                .key_condition_expression(condition)
                .set_expression_attribute_names(names([condition]))
                .set_expression_attribute_values(values([(":shard", s(PENDING_SHARD))]))
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| unavailable("Query outbox PendingIndex", e))?;
            for item in page.items() {
                let what = "an outbox index entry";
                let pending = Pending {
                    outbox_id: req_s(item, "outboxId", &what)?,
                    chat_id: req_n(item, "chatId", &what)?,
                    chat_seq: req_s(item, "chatSeq", &what)?,
                    due_at: opt_n(item, "dueAt", &what)?.unwrap_or(0),
                };
                chats.entry(pending.chat_id).or_default().push(pending);
            }
            start = page.last_evaluated_key;
            if start.is_none() {
                break;
            }
        }
        for calls in chats.values_mut() {
            calls.sort_by(|a, b| a.chat_seq.cmp(&b.chat_seq));
        }
        Ok(chats)
    }

    /// Marks a call finished (`done` or `failed`): it leaves the pending index.
    async fn finish_call(
        &self,
        outbox_id: &str,
        state: &str,
        reason: Option<&str>,
        telegram_message_id: Option<i64>,
    ) -> Result<(), BackendError> {
        let now = clock::now_ms();
        let mut set = vec![
            "#state = :state",
            "#finishedAt = :now",
            "#expiresAt = :expires",
        ];
        let mut remove = vec!["#pendingShard"];
        let mut vals = values([
            (":state", s(state)),
            (":now", n(now)),
            (":expires", n(now / 1000 + FINISHED_TTL_SECONDS)),
        ])
        .unwrap_or_default();
        match reason {
            Some(reason) => {
                set.push("#lastError = :error");
                vals.insert(":error".into(), s(stored_reason(reason)));
            }
            None => remove.push("#lastError"),
        }
        match telegram_message_id {
            Some(id) => {
                set.push("#telegramMessageId = :message");
                vals.insert(":message".into(), n(id));
            }
            None => remove.push("#telegramMessageId"),
        }
        let update = format!("SET {} REMOVE {}", set.join(", "), remove.join(", "));
        let condition = "attribute_exists(#outboxId)";
        let finished = self
            .dynamodb()
            .update_item()
            .table_name(&self.tables().outbox)
            .set_key(Some(key("outboxId", s(outbox_id))))
            .update_expression(&update)
            .condition_expression(condition)
            .set_expression_attribute_names(names([update.as_str(), condition]))
            .set_expression_attribute_values(Some(vals))
            .send()
            .await;
        match finished {
            // An unknown call: nothing to record, as in the other backends.
            Ok(_) => Ok(()),
            Err(e) if is_condition_failed(&e) => Ok(()),
            Err(e) => Err(unavailable("UpdateItem outbox", e)),
        }
    }
}

#[async_trait]
impl Outbox for AwsBackend {
    /// Reads the pending index (eventually consistent), picks each chat's oldest call when it
    /// is due and nothing of the chat is leased or waiting, and leases it with a write
    /// conditional on the due time it read: of two senders, one wins.
    async fn due_calls(
        &self,
        max: usize,
        lease: Duration,
    ) -> Result<Vec<OutboxEntry>, BackendError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let now = clock::now_ms();
        // A chat whose calls are all due, or waiting for their time, and whose first call is
        // due: a call leased or waiting out a retry holds up its chat.
        let mut heads: Vec<Pending> = self
            .pending_calls()
            .await?
            .into_values()
            .filter(|calls| {
                calls
                    .iter()
                    .all(|call| call.due_at <= now || call.waits_for_its_time(now))
            })
            .filter_map(|calls| calls.into_iter().next())
            .filter(|head| head.due_at <= now)
            .collect();
        heads.sort_by(|a, b| (a.due_at, &a.chat_seq).cmp(&(b.due_at, &b.chat_seq)));
        let lease_ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
        let mut leased = Vec::new();
        for head in heads {
            if leased.len() == max {
                break;
            }
            let update = "SET #dueAt = :until, #attempts = #attempts + :one";
            let condition = "#state = :pending AND #dueAt = :seen";
            let taken = self
                .dynamodb()
                .update_item()
                .table_name(&self.tables().outbox)
                .set_key(Some(key("outboxId", s(&head.outbox_id))))
                .update_expression(update)
                .condition_expression(condition)
                .set_expression_attribute_names(names([update, condition]))
                .set_expression_attribute_values(values([
                    // From now, not from the read: the lease is as long as asked.
                    (":until", n(clock::now_ms().saturating_add(lease_ms))),
                    (":one", n(1)),
                    (":pending", s(PENDING)),
                    (":seen", n(head.due_at)),
                ]))
                .return_values(ReturnValue::AllNew)
                .send()
                .await;
            match taken {
                Ok(output) => leased.push(entry(&output.attributes.unwrap_or_default())?),
                Err(e) if is_condition_failed(&e) => {}
                Err(e) => return Err(unavailable("UpdateItem outbox", e)),
            }
        }
        Ok(leased)
    }

    async fn call_done(
        &self,
        outbox_id: &str,
        telegram_message_id: Option<i64>,
    ) -> Result<(), BackendError> {
        self.finish_call(outbox_id, DONE, None, telegram_message_id)
            .await
    }

    async fn call_failed(
        &self,
        outbox_id: &str,
        reason: &str,
        retry_after: Option<Duration>,
    ) -> Result<(), BackendError> {
        let Some(after) = retry_after else {
            return self
                .finish_call(outbox_id, FAILED, Some(reason), None)
                .await;
        };
        let after_ms = i64::try_from(after.as_millis()).unwrap_or(i64::MAX);
        let update = "SET #dueAt = :due, #lastError = :error";
        let condition = "#state = :pending";
        let retried = self
            .dynamodb()
            .update_item()
            .table_name(&self.tables().outbox)
            .set_key(Some(key("outboxId", s(outbox_id))))
            .update_expression(update)
            .condition_expression(condition)
            .set_expression_attribute_names(names([update, condition]))
            .set_expression_attribute_values(values([
                (":due", n(clock::now_ms().saturating_add(after_ms))),
                (":error", s(stored_reason(reason))),
                (":pending", s(PENDING)),
            ]))
            .send()
            .await;
        match retried {
            Ok(_) => Ok(()),
            Err(e) if is_condition_failed(&e) => Ok(()),
            Err(e) => Err(unavailable("UpdateItem outbox", e)),
        }
    }

    /// One consistent scan of `outbox`, counted here.
    async fn outbox_stats(&self) -> Result<OutboxStats, BackendError> {
        let projection = "#state";
        let mut items = self
            .dynamodb()
            .scan()
            .table_name(&self.tables().outbox)
            .projection_expression(projection)
            .set_expression_attribute_names(names([projection]))
            .consistent_read(true)
            .into_paginator()
            .items()
            .send();
        let mut stats = OutboxStats::default();
        while let Some(item) = items.next().await {
            let item = item.map_err(|e| unavailable("Scan outbox", e))?;
            match get_s(&item, "state") {
                Some(PENDING) => stats.pending += 1,
                Some(DONE) => stats.done += 1,
                Some(FAILED) => stats.failed += 1,
                _ => {}
            }
        }
        Ok(stats)
    }
}
