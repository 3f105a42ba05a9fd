//! A minimal teloxide bot behind teloxide's own axum webhook listener, to benchmark Botline
//! against: it only counts updates in memory, and acknowledges the way teloxide does by default
//! (200 once the update is parsed and handed to the dispatcher's channel; nothing is durable).
//!
//!   botline-peer-teloxide [PORT]         # or PORT=...; default 8081
//!   WEBHOOK_SECRET=... botline-peer-teloxide 8081
//!
//! Serves `POST /telegram/webhook` on 127.0.0.1:PORT (checking `X-Telegram-Bot-Api-Secret-Token`
//! when `WEBHOOK_SECRET` is set, through teloxide's `Options::secret_token`) and `GET /count`
//! (updates handled so far). Telegram is never called: the listener is built with
//! `webhooks::axum_no_setup`, which skips `setWebhook`, and the bot's API URL points at this
//! process, which answers the dispatcher's one `getMe` itself.

use axum::Json;
use axum::routing::{get, post};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use teloxide::error_handlers::LoggingErrorHandler;
use teloxide::prelude::*;
use teloxide::types::Update;
use teloxide::update_listeners::webhooks;

const PATH: &str = "/telegram/webhook";
/// A fake token: this bot never reaches Telegram.
const TOKEN: &str = "123:TEST";

/// The Bot API as this process fakes it: `getMe` answers a bot user, anything else `true`.
async fn fake_bot_api(
    axum::extract::Path((_bot, method)): axum::extract::Path<(String, String)>,
) -> Json<Value> {
    Json(if method.eq_ignore_ascii_case("getMe") {
        json!({"ok": true, "result": {
            "id": 123, "is_bot": true, "first_name": "Peer", "username": "peer_teloxide_bot",
            "can_join_groups": true, "can_read_all_group_messages": false,
            "supports_inline_queries": false, "has_main_web_app": false
        }})
    } else {
        json!({"ok": true, "result": true})
    })
}

#[tokio::main]
async fn main() {
    let port: u16 = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("PORT").ok())
        .map(|port| port.parse().expect("PORT must be a port number"))
        .unwrap_or(8081);
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    let url = format!("http://{address}{PATH}").parse().expect("a URL");
    let mut options = webhooks::Options::new(address, url).path(PATH.to_owned());
    if let Some(secret) = std::env::var("WEBHOOK_SECRET")
        .ok()
        .filter(|s| !s.is_empty())
    {
        options = options.secret_token(secret);
    }
    let (listener, stop, webhook) = webhooks::axum_no_setup(options);

    let counted = Arc::new(AtomicU64::new(0));
    let count = {
        let counted = Arc::clone(&counted);
        get(move || async move { counted.load(Ordering::Relaxed).to_string() })
    };
    let app = webhook
        .route("/count", count)
        .route("/bot-api/{bot}/{method}", post(fake_bot_api));
    let tcp = tokio::net::TcpListener::bind(address)
        .await
        .expect("bind the port");
    tokio::spawn(async move {
        axum::serve(tcp, app)
            .with_graceful_shutdown(stop)
            .await
            .expect("serve");
    });

    let api = format!("http://{address}/bot-api").parse().expect("a URL");
    let bot = Bot::new(TOKEN).set_api_url(api);
    let handler = dptree::entry().endpoint(|_update: Update, counted: Arc<AtomicU64>| async move {
        counted.fetch_add(1, Ordering::Relaxed);
        Ok::<(), teloxide::RequestError>(())
    });
    let mut dispatcher = Dispatcher::builder(bot, handler)
        .dependencies(dptree::deps![Arc::clone(&counted)])
        .build();
    eprintln!("teloxide peer: listening on http://{address}{PATH}");

    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("a SIGTERM handler");
    tokio::select! {
        () = dispatcher.dispatch_with_listener(listener, LoggingErrorHandler::new()) => {}
        _ = terminate.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    eprintln!(
        "teloxide peer: {} updates counted",
        counted.load(Ordering::Relaxed)
    );
}
