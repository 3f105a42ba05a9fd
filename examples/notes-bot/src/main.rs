//! A bot written on Botline: notes and reminders. It is Botline with four handlers: every
//! subcommand and setting of `botline` works (`notes-bot serve`, `notes-bot dlq list`, …), and
//! `/register` still does. Each reply and reminder is sent exactly once, through crashes,
//! retries and Telegram's redeliveries.

use botline::handler::{Bot, Context, HandlerResult};
use std::time::Duration;

fn main() -> std::process::ExitCode {
    Bot::new()
        .command("start", start)
        .command("note", note)
        .command("notes", notes)
        .command("remind", remind)
        .main()
}

async fn start(cx: Context) -> HandlerResult {
    let name = cx.sender().map_or("there", |user| user.first_name.as_str());
    cx.reply(format!(
        "Hi {name}! Send /note <text> to save a note, /notes to list them."
    ));
    Ok(())
}

/// `/note <text>`: the notes live in this chat and user's session.
async fn note(cx: Context) -> HandlerResult {
    let mut session = cx.session().await?;
    let mut notes: Vec<String> = session.get("notes")?.unwrap_or_default();
    notes.push(cx.args().to_owned());
    cx.reply(format!("Saved note #{}.", notes.len()));
    session.set("notes", &notes)?;
    cx.save_session(session);
    Ok(())
}

async fn notes(cx: Context) -> HandlerResult {
    let notes: Vec<String> = cx.session().await?.get("notes")?.unwrap_or_default();
    if notes.is_empty() {
        cx.reply("No notes yet.");
    } else {
        let lines: Vec<String> = notes
            .iter()
            .enumerate()
            .map(|(n, note)| format!("{}. {note}", n + 1))
            .collect();
        cx.reply(lines.join("\n"));
    }
    Ok(())
}

/// `/remind <seconds> <text>`: the reminder is a call due later, kept in the outbox.
async fn remind(cx: Context) -> HandlerResult {
    let (Some(chat_id), Some((seconds, text))) = (cx.chat_id(), cx.args().split_once(' ')) else {
        return Ok(());
    };
    let Ok(seconds) = seconds.parse::<u64>() else {
        return Ok(());
    };
    cx.reply(format!("I'll remind you in {seconds} s."));
    cx.send_after(
        Duration::from_secs(seconds),
        chat_id,
        format!("Reminder: {}", text.trim()),
    );
    Ok(())
}
