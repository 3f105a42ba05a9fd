//! `/register <username> <token>` (seed 002): Botline's built-in handler, written on the public
//! handler API like any bot's own ([`crate::handler::Bot::new`] has it; a bot's own `register`
//! command replaces it).
//!
//! The operator issues a single-use token for a username (`botline tokens issue alice`); the
//! user redeems it in a chat with the bot. The token is a secret: Botline redacts it from the
//! update before anything is stored, the handler reads it as typed
//! ([`Context::args_as_typed`]) only to redeem it ([`Context::redeem_token`]), and in a group
//! the message that carried it is deleted once answered. The answers are seed 002's, exactly.

use crate::handler::{Context, HandlerResult};
use botline_core::commands::{RegisterDecision, decide_register, replies};

/// Answers a `/register`: redeems a well-formed attempt's token (the store, or the
/// registration database, decides between "successful" and "failed"), answers the rest, and in
/// a group deletes the message once answered when it carried anything after the command.
pub async fn register(cx: Context) -> HandlerResult {
    let typed = cx.args_as_typed();
    match decide_register(typed, cx.args()) {
        // A message with no sender (a channel post) cannot register anyone.
        RegisterDecision::Attempt(registration) if cx.sender().is_some() => cx.redeem_token(
            &registration.username,
            &registration.token,
            replies::registered(&registration.username),
            replies::REGISTRATION_FAILED,
        )?,
        RegisterDecision::Attempt(_) | RegisterDecision::TokenGone => {
            cx.reply_to_message(replies::REGISTRATION_FAILED);
        }
        RegisterDecision::Malformed => cx.reply_to_message(replies::REGISTER_FORMAT),
    }
    if cx.chat_type() != Some("private")
        && !typed.is_empty()
        && let (Some(chat_id), Some(message_id)) = (cx.chat_id(), cx.message_id())
    {
        cx.delete_message(chat_id, message_id);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::handler::{Bot, Seen};
    use botline_core::commands::{REDACTED, replies, token_digest};
    use botline_core::{
        Backend, Handling, InboundUpdate, OutboxAction, OutboxMessage, QueueConfig, QueuedUpdate,
        Records,
    };
    use std::sync::Arc;

    fn update(chat: i64, chat_type: &str, text: &str, sender: bool) -> QueuedUpdate {
        let mut message = serde_json::json!({
            "message_id": 17, "date": 1,
            "chat": {"id": chat, "type": chat_type},
            "text": text,
        });
        if sender {
            message["from"] = serde_json::json!({"id": 7, "is_bot": false, "first_name": "Ann"});
        }
        let body = serde_json::json!({"update_id": 90, "message": message});
        let update = InboundUpdate::parse(body.to_string().as_bytes()).unwrap();
        QueuedUpdate::new(update, "entry-1".into(), 0)
    }

    /// What the worker does with an update: its records, then `Bot::new()`'s effects in them.
    async fn handled(update: &QueuedUpdate, bot_username: Option<&str>) -> Records {
        let dir = tempfile::tempdir().unwrap();
        let backend: Arc<dyn Backend> = Arc::new(
            botline_sqlite::SqliteBackend::open(dir.path(), QueueConfig::default()).unwrap(),
        );
        let mut records = Handling::default().records(update, 0).unwrap();
        let stored = records.redacted_raw.clone().map(|raw| QueuedUpdate {
            raw,
            ..update.clone()
        });
        let seen = Seen {
            update: stored.as_ref().unwrap_or(update),
            payload: &records.event.payload,
            typed: stored.is_some().then_some(update),
        };
        let effects = Bot::new()
            .handle(seen, 1, bot_username, backend)
            .await
            .unwrap();
        effects.into_records(&update.entry_id, &mut records);
        records
    }

    fn text_reply(id: &str, chat: i64, text: &str) -> OutboxMessage {
        OutboxMessage::new(
            id,
            chat,
            OutboxAction::SendMessage {
                text: text.into(),
                reply_to_message_id: Some(17),
            },
        )
    }

    #[tokio::test]
    async fn a_registration_redeems_its_token_and_keeps_it_secret() {
        let update = update(7, "private", "/register alice s3cr3t-T0ken", true);
        let records = handled(&update, Some("botline_bot")).await;
        let redemption = records.redemption.clone().expect("a redemption");
        assert_eq!(redemption.username, "alice");
        assert_eq!(redemption.token_digest, token_digest("s3cr3t-T0ken"));
        assert_eq!(redemption.token.expose(), "s3cr3t-T0ken");
        assert_eq!((redemption.telegram_user_id, redemption.chat_id), (7, 7));
        assert_eq!(
            redemption.redeemed,
            text_reply("entry-1:h0000", 7, "Registration successful! Welcome alice")
        );
        assert_eq!(
            redemption.refused,
            text_reply("entry-1:h0000", 7, replies::REGISTRATION_FAILED)
        );
        assert!(records.outbox.is_empty(), "no deletion in a private chat");
        assert!(!format!("{records:?}").contains("s3cr3t-T0ken"));
    }

    #[tokio::test]
    async fn in_a_group_the_message_carrying_the_token_is_deleted_after_the_answer() {
        let update = update(
            -100,
            "supergroup",
            "/register@botline_bot alice s3cr3t-T0ken",
            true,
        );
        let records = handled(&update, Some("botline_bot")).await;
        assert!(records.redemption.is_some());
        assert_eq!(
            records.outbox,
            vec![OutboxMessage::new(
                "entry-1:h0001",
                -100,
                OutboxAction::DeleteMessage { message_id: 17 }
            )]
        );
    }

    #[tokio::test]
    async fn malformed_attempts_get_the_format_and_a_redacted_token_the_failure() {
        let cases = [
            // A malformed attempt, in a group: the format, then the deletion.
            (
                -5,
                "group",
                "/register alice \"tok en\"",
                replies::REGISTER_FORMAT,
                true,
            ),
            (7, "private", "/register", replies::REGISTER_FORMAT, false),
            (
                7,
                "private",
                "/register [redacted]",
                replies::REGISTER_FORMAT,
                false,
            ),
            // A dead letter is redacted; redriven, its token is gone and the user types it
            // again.
            (
                -5,
                "group",
                "/register alice [redacted]",
                replies::REGISTRATION_FAILED,
                true,
            ),
            // A username holding a token typed in the same update.
            (
                7,
                "private",
                "/register alices3cr3tUT0ken s3cr3tUT0ken",
                replies::REGISTER_FORMAT,
                false,
            ),
        ];
        for (chat, chat_type, text, answer, deleted) in cases {
            let records = handled(&update(chat, chat_type, text, true), None).await;
            assert!(records.redemption.is_none(), "{text}");
            assert_eq!(
                records.outbox[0],
                text_reply("entry-1:h0001", chat, answer),
                "{text}"
            );
            assert_eq!(records.outbox.len(), 1 + usize::from(deleted), "{text}");
        }
    }

    #[tokio::test]
    async fn a_username_holding_a_token_typed_elsewhere_in_the_update_is_malformed() {
        let body = r#"{"update_id":70004,"message":{"message_id":17,"date":1,"chat":{"id":7,"type":"private"},"from":{"id":7,"is_bot":false,"first_name":"Ann"},"text":"/register ann_0ther-T0ken_x own-T0ken-1","reply_to_message":{"message_id":50,"date":1,"chat":{"id":7,"type":"private"},"text":"/register bob 0ther-T0ken"}}}"#;
        let update = QueuedUpdate::new(
            InboundUpdate::parse(body.as_bytes()).unwrap(),
            "entry-1".into(),
            0,
        );
        let records = handled(&update, None).await;
        assert!(records.redemption.is_none());
        assert_eq!(
            records.outbox,
            vec![text_reply("entry-1:h0001", 7, replies::REGISTER_FORMAT)]
        );
        let shown = format!("{records:?}");
        assert!(!shown.contains("0ther-T0ken") && !shown.contains("own-T0ken-1"));
        assert!(shown.contains(REDACTED));
    }

    #[tokio::test]
    async fn a_channel_post_registers_no_one_and_other_commands_are_left_alone() {
        let post = update(-100, "channel", "/register alice s3cr3t-T0ken", false);
        let records = handled(&post, None).await;
        assert!(records.redemption.is_none());
        assert_eq!(
            records.outbox[0],
            text_reply("entry-1:h0001", -100, replies::REGISTRATION_FAILED)
        );
        for text in [
            "/start",
            "hello /register a b",
            "register a b",
            "/register@some_bot alice s3cr3t-T0ken",
        ] {
            let records = handled(&update(-1, "group", text, true), Some("botline_bot")).await;
            assert!(
                records.outbox.is_empty() && records.redemption.is_none(),
                "{text}"
            );
        }
    }
}
