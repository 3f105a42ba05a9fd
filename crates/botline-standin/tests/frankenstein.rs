//! Botline's own Bot API client, frankenstein, reads the stand-in's answers as Telegram's.

mod common;

use botline_standin::Fault;
use common::{TOKEN, fixture, standin};
use frankenstein::AsyncTelegramApi;
use frankenstein::client_reqwest::Bot;
use frankenstein::methods::{
    AnswerCallbackQueryParams, DeleteMessageParams, DeleteWebhookParams, EditMessageTextParams,
    GetUpdatesParams, SendChatActionParams, SendMessageParams, SendPhotoParams, SetWebhookParams,
};
use frankenstein::response::{ErrorResponse, MessageOrBool, ResponseParameters};
use frankenstein::types::{
    AllowedUpdate, ChatAction, ChatType, InlineKeyboardButton, InlineKeyboardMarkup,
    ReplyParameters,
};
use frankenstein::updates::UpdateContent;

#[tokio::test]
async fn frankenstein_gets_typed_results_and_telegrams_errors() {
    let standin = standin();
    let bot = Bot::new_url(format!("{}/bot{TOKEN}", standin.base_url()));

    let me = bot.get_me().await.unwrap().result;
    assert_eq!(me.id, 123456);
    assert!(me.is_bot);
    assert_eq!(me.username.as_deref(), Some("botline_test_bot"));
    assert_eq!(me.can_join_groups, Some(true));

    let params = SendMessageParams::builder()
        .chat_id(42)
        .text("hello")
        .reply_parameters(ReplyParameters::builder().message_id(7).build())
        .build();
    let sent = bot.send_message(&params).await.unwrap().result;
    assert_eq!(sent.message_id, 1);
    assert_eq!(sent.text.as_deref(), Some("hello"));
    assert_eq!(sent.chat.id, 42);
    assert_eq!(sent.chat.type_field, ChatType::Private);
    assert_eq!(sent.from.unwrap().id, 123456);
    assert_eq!(sent.reply_to_message.unwrap().message_id, 7);
    let recorded = &standin.calls_of("sendMessage")[0];
    assert_eq!(recorded.params["reply_parameters"]["message_id"], 7);

    standin.fail_next(
        Some("sendMessage"),
        1,
        Fault::TooManyRequests { retry_after: 4 },
    );
    match bot.send_message(&params).await.unwrap_err() {
        frankenstein::Error::Api(ErrorResponse {
            error_code: 429,
            description,
            parameters:
                Some(ResponseParameters {
                    retry_after: Some(4),
                    ..
                }),
            ..
        }) => assert_eq!(description, "Too Many Requests: retry after 4"),
        other => panic!("not a 429 with retry_after: {other:?}"),
    }
    assert_eq!(
        bot.send_message(&params).await.unwrap().result.message_id,
        2
    );

    standin.fail_next(None, 1, Fault::Server(502));
    match bot.get_me().await.unwrap_err() {
        frankenstein::Error::Api(ErrorResponse {
            error_code: 502, ..
        }) => {}
        other => panic!("not a 502: {other:?}"),
    }
    standin.fail_next(None, 1, Fault::Drop);
    assert!(matches!(
        bot.get_me().await.unwrap_err(),
        frankenstein::Error::HttpReqwest(_)
    ));

    let deleted = DeleteMessageParams::builder()
        .chat_id(42)
        .message_id(1)
        .build();
    assert!(bot.delete_message(&deleted).await.unwrap().result);

    let webhook = SetWebhookParams::builder()
        .url("https://example.org/hook")
        .secret_token("s3cr3t")
        .max_connections(5)
        .allowed_updates(vec![AllowedUpdate::Message, AllowedUpdate::CallbackQuery])
        .build();
    assert!(bot.set_webhook(&webhook).await.unwrap().result);
    assert_eq!(standin.webhook().secret_token.as_deref(), Some("s3cr3t"));
    let info = bot.get_webhook_info().await.unwrap().result;
    assert_eq!(info.url, "https://example.org/hook");
    assert_eq!(info.max_connections, Some(5));
    assert_eq!(
        info.allowed_updates,
        Some(vec![AllowedUpdate::Message, AllowedUpdate::CallbackQuery])
    );
    let conflict = bot
        .get_updates(&GetUpdatesParams::builder().build())
        .await
        .unwrap_err();
    assert!(
        matches!(
            &conflict,
            frankenstein::Error::Api(ErrorResponse {
                error_code: 409,
                ..
            })
        ),
        "{conflict:?}"
    );
    let dropped = DeleteWebhookParams::builder()
        .drop_pending_updates(true)
        .build();
    assert!(bot.delete_webhook(&dropped).await.unwrap().result);

    standin.push_updates(vec![
        fixture("callback-query.json"),
        fixture("message-private-text.json"),
    ]);
    let updates = bot
        .get_updates(&GetUpdatesParams::builder().timeout(1).build())
        .await
        .unwrap()
        .result;
    assert_eq!(updates.len(), 2);
    assert_eq!(updates[0].update_id, 700000001);
    assert!(matches!(updates[0].content, UpdateContent::Message(_)));
    assert!(matches!(
        updates[1].content,
        UpdateContent::CallbackQuery(_)
    ));

    let stranger = Bot::new_url(format!("{}/bot123456:wrong", standin.base_url()));
    match stranger.get_me().await.unwrap_err() {
        frankenstein::Error::Api(ErrorResponse {
            error_code: 401,
            description,
            ..
        }) => assert_eq!(description, "Unauthorized"),
        other => panic!("not a 401: {other:?}"),
    }
}

#[tokio::test]
async fn frankenstein_reads_photos_edits_and_answers() {
    let standin = standin();
    let bot = Bot::new_url(format!("{}/bot{TOKEN}", standin.base_url()));

    let params = SendPhotoParams::builder()
        .chat_id(42)
        .photo("https://example.org/cat.jpg".to_owned())
        .caption("a cat")
        .build();
    let sent = bot.send_photo(&params).await.unwrap().result;
    assert_eq!(sent.message_id, 1);
    assert_eq!(sent.caption.as_deref(), Some("a cat"));
    let sizes = sent.photo.unwrap();
    assert_eq!(sizes.len(), 3);
    assert!(sizes.iter().all(|size| size.file_size.is_some()));
    let again = SendPhotoParams::builder()
        .chat_id(42)
        .photo(sizes[2].file_id.clone())
        .build();
    let resent = bot.send_photo(&again).await.unwrap().result;
    assert_eq!(
        resent.photo.unwrap()[2].file_unique_id,
        sizes[2].file_unique_id
    );

    let text = SendMessageParams::builder()
        .chat_id(42)
        .text("hello")
        .build();
    let message_id = bot.send_message(&text).await.unwrap().result.message_id;
    let keyboard = InlineKeyboardMarkup::builder()
        .inline_keyboard(vec![vec![
            InlineKeyboardButton::builder()
                .text("OK")
                .callback_data("ok")
                .build(),
        ]])
        .build();
    let edit = EditMessageTextParams::builder()
        .chat_id(42)
        .message_id(message_id)
        .text("hello again")
        .reply_markup(keyboard)
        .build();
    match bot.edit_message_text(&edit).await.unwrap().result {
        MessageOrBool::Message(edited) => {
            assert_eq!(edited.message_id, message_id);
            assert_eq!(edited.text.as_deref(), Some("hello again"));
            assert!(edited.edit_date.is_some());
        }
        MessageOrBool::Bool(_) => panic!("an edit in a chat answers the message"),
    }
    match bot.edit_message_text(&edit).await.unwrap_err() {
        frankenstein::Error::Api(ErrorResponse {
            error_code: 400,
            description,
            ..
        }) => assert!(
            description.starts_with("Bad Request: message is not modified"),
            "{description}"
        ),
        other => panic!("not a 400: {other:?}"),
    }
    let inline = EditMessageTextParams::builder()
        .inline_message_id("AgAAAN4pAQB")
        .text("inline")
        .build();
    assert!(matches!(
        bot.edit_message_text(&inline).await.unwrap().result,
        MessageOrBool::Bool(true)
    ));

    let answer = AnswerCallbackQueryParams::builder()
        .callback_query_id("4382123457712345678")
        .text("Done")
        .build();
    assert!(bot.answer_callback_query(&answer).await.unwrap().result);
    assert!(bot.answer_callback_query(&answer).await.is_err());

    let action = SendChatActionParams::builder()
        .chat_id(42)
        .action(ChatAction::UploadPhoto)
        .build();
    assert!(bot.send_chat_action(&action).await.unwrap().result);
    assert_eq!(
        standin.calls_of("sendChatAction")[0].params["action"],
        "upload_photo"
    );
}
