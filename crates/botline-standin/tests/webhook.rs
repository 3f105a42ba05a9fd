//! setWebhook, getWebhookInfo and deleteWebhook.

mod common;

use botline_standin::{Settings, StandIn};
use common::{TOKEN, assert_error, call, fixture, post, settings, standin};
use serde_json::json;

#[test]
fn set_webhook_checks_what_telegram_checks() {
    let standin = standin();
    let base = standin.base_url();
    let set = |params| call(&base, "setWebhook", params);
    let https_only = "Bad Request: bad webhook: An HTTPS URL must be provided for webhook";

    assert_error(
        &set(json!({"url": "http://example.org/hook"})),
        400,
        https_only,
    );
    assert_error(&set(json!({"url": "example.org/hook"})), 400, https_only);
    assert_error(
        &set(json!({"url": "https://example.org:8080/hook"})),
        400,
        "Bad Request: bad webhook: Webhook can be set up only on ports 80, 88, 443 or 8443",
    );
    let unallowed = "Bad Request: secret token contains unallowed characters";
    for secret in ["has space", "dot.", "", &"a".repeat(257)] {
        let answer = set(json!({"url": "https://example.org/hook", "secret_token": secret}));
        assert_error(&answer, 400, unallowed);
    }
    for max in [0, 101] {
        let answer = set(json!({"url": "https://example.org/hook", "max_connections": max}));
        assert_error(
            &answer,
            400,
            "Bad Request: max_connections must be between 1 and 100",
        );
    }
    assert_eq!(
        standin.webhook().url,
        "",
        "a refused setWebhook sets nothing"
    );

    // Local http URLs are fine unless the setting says otherwise.
    let local = json!({"url": "http://127.0.0.1:8080/telegram/webhook"});
    assert_eq!(set(local.clone()).status, 200);
    let strict = StandIn::start(Settings {
        allow_http_webhook: false,
        ..settings()
    });
    assert_error(
        &call(&strict.base_url(), "setWebhook", local),
        400,
        https_only,
    );
}

#[test]
fn a_webhook_is_set_shown_and_deleted() {
    let standin = standin();
    let base = standin.base_url();
    let info = || call(&base, "getWebhookInfo", json!({})).body;
    assert_eq!(
        info(),
        json!({"ok": true, "result": {
            "url": "", "has_custom_certificate": false, "pending_update_count": 0}})
    );

    let set = call(
        &base,
        "setWebhook",
        json!({"url": "https://example.org/hook", "secret_token": "s3cr3t-T0ken_x",
               "max_connections": 10, "allowed_updates": ["message", "callback_query"]}),
    );
    assert_eq!(
        set.body,
        json!({"ok": true, "result": true, "description": "Webhook was set"})
    );
    let again = call(
        &base,
        "setWebhook",
        json!({"url": "https://example.org/hook"}),
    );
    assert_eq!(again.body["description"], "Webhook is already set");

    let webhook = standin.webhook();
    assert_eq!(webhook.url, "https://example.org/hook");
    // A setWebhook without a secret sets none; one without allowed_updates keeps them.
    assert_eq!(webhook.secret_token, None);
    assert_eq!(webhook.max_connections, Some(40));
    assert_eq!(
        webhook.allowed_updates,
        Some(vec!["message".to_owned(), "callback_query".to_owned()])
    );

    standin.push_updates(vec![
        fixture("message-private-text.json"),
        fixture("edited-message.json"),
    ]);
    standin.set_webhook_error(1_714_564_800, "Wrong response from the webhook: 503");
    assert_eq!(
        info(),
        json!({"ok": true, "result": {
            "url": "https://example.org/hook", "has_custom_certificate": false,
            "pending_update_count": 2, "last_error_date": 1_714_564_800,
            "last_error_message": "Wrong response from the webhook: 503",
            "max_connections": 40, "allowed_updates": ["message", "callback_query"]}})
    );

    let deleted = call(
        &base,
        "deleteWebhook",
        json!({"drop_pending_updates": true}),
    );
    assert_eq!(
        deleted.body,
        json!({"ok": true, "result": true, "description": "Webhook was deleted"})
    );
    let info = info();
    assert_eq!(info["result"]["url"], "");
    assert_eq!(info["result"]["pending_update_count"], 0);
    assert!(info["result"].get("max_connections").is_none());
    let again = call(&base, "deleteWebhook", json!({}));
    assert_eq!(again.body["description"], "Webhook is already deleted");
}

#[test]
fn form_parameters_and_an_empty_url_work_as_on_telegram() {
    let standin = standin();
    let url = format!("{}/bot{TOKEN}/setWebhook", standin.base_url());
    let set = post(
        &url,
        "application/x-www-form-urlencoded",
        "url=https%3A%2F%2Fexample.org%3A8443%2Fhook&secret_token=abc&max_connections=5\
         &allowed_updates=%5B%22message%22%5D&drop_pending_updates=true",
    );
    assert_eq!(set.status, 200, "{:?}", set.body);
    let webhook = standin.webhook();
    assert_eq!(webhook.url, "https://example.org:8443/hook");
    assert_eq!(webhook.secret_token.as_deref(), Some("abc"));
    assert_eq!(webhook.max_connections, Some(5));
    assert_eq!(webhook.allowed_updates, Some(vec!["message".to_owned()]));

    let removed = post(&url, "application/x-www-form-urlencoded", "url=");
    assert_eq!(removed.body["description"], "Webhook was deleted");
    assert_eq!(standin.webhook().url, "");
}
