//! Secrets that users type (the token of `/register <username> <token>`), found and replaced
//! with [`REDACTED`] wherever an update carries them.
//!
//! Every `/register` in any `text` or `caption` of an update is redacted, whichever bot it
//! addresses and whether or not this bot acts on it: an edit of it, a reply quoting it, a
//! caption, a `/register@other_bot` in a group. A well-formed token is replaced wherever it
//! stands in the update's strings; the arguments of a malformed attempt are replaced as a whole.
//!
//! Two callers: processing, which stores the redacted body with the update's records; and the
//! backends, which call [`redact_typed_secrets`] when an update is dead-lettered, so that no copy
//! that outlives the attempts (the queue's body, the dead letter, a DLQ copy) keeps a token.

use crate::commands::{Command, REDACTED, Registration};
use serde_json::Value;

/// An update's body with its typed secrets replaced.
#[derive(Debug)]
pub(crate) struct Redacted {
    /// The parsed body, redacted.
    pub body: Value,
    /// The raw body, redacted: `None` when it held no secret.
    pub raw: Option<String>,
}

/// `raw` with every secret a user typed in it replaced by [`REDACTED`], or `None` when it holds
/// none (or is not JSON, which the receiver never accepts). The rest of the bytes stay as they
/// were whenever the result still reads back as the redacted update.
///
/// Backends call it when an update is dead-lettered: a dead letter is kept until an operator
/// acts on it, so it must not keep a token that processing would have redacted.
pub fn redact_typed_secrets(raw: &str) -> Option<String> {
    redact(raw).ok().and_then(|redacted| redacted.raw)
}

/// Redacts an update's body: see the module docs.
pub(crate) fn redact(raw: &str) -> Result<Redacted, serde_json::Error> {
    let mut body: Value = serde_json::from_str(raw)?;
    let mut found = Found::default();
    redact_registrations(&mut body, &mut found);
    // A token also typed elsewhere in the update (a quoted message that is not a command, a
    // forwarded text) is as secret there.
    for token in &found.tokens {
        redact_everywhere(&mut body, token);
    }
    let redacted_raw = found.raw(raw, &body)?;
    Ok(Redacted {
        body,
        raw: redacted_raw,
    })
}

/// What [`redact_registrations`] replaced.
#[derive(Default)]
struct Found {
    /// Well-formed tokens, replaced where they stood.
    tokens: Vec<String>,
    /// Arguments that were not a well-formed username and token, replaced as a whole.
    malformed: bool,
}

impl Found {
    /// The raw body without the secrets, or `None` when there were none: `body` (already
    /// redacted) as the update's bytes. A well-formed token holds only characters JSON never
    /// escapes, so replacing it in the raw text usually gives exactly `body` with the rest of the
    /// bytes as Telegram sent them. It does not when the token's text also stands in a key or a
    /// number, or in a string escaped differently; then the body is written anew from `body`.
    fn raw(&self, raw: &str, body: &Value) -> Result<Option<String>, serde_json::Error> {
        if self.tokens.is_empty() && !self.malformed {
            return Ok(None);
        }
        if !self.malformed {
            let mut redacted = raw.to_owned();
            for token in &self.tokens {
                redacted = redacted.replace(token.as_str(), REDACTED);
            }
            if serde_json::from_str::<Value>(&redacted).is_ok_and(|value| value == *body) {
                return Ok(Some(redacted));
            }
        }
        serde_json::to_string(body).map(Some)
    }
}

/// Replaces what was typed after every `/register`, in any `text` or `caption` anywhere in
/// `value`, with [`REDACTED`] (only the token, when it is well-formed, so the username stays
/// readable).
fn redact_registrations(value: &mut Value, found: &mut Found) {
    match value {
        Value::Object(fields) => {
            for (key, field) in fields.iter_mut() {
                if let (true, Value::String(text)) = (key == "text" || key == "caption", &*field) {
                    if let Some(redacted) = redact_text(text, found) {
                        *field = Value::String(redacted);
                    }
                } else {
                    redact_registrations(field, found);
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                redact_registrations(item, found);
            }
        }
        _ => {}
    }
}

/// Replaces `token` in every string in `value` (not in keys, which are Telegram's).
fn redact_everywhere(value: &mut Value, token: &str) {
    match value {
        Value::String(text) if text.contains(token) => *text = text.replace(token, REDACTED),
        Value::Object(fields) => fields
            .values_mut()
            .for_each(|field| redact_everywhere(field, token)),
        Value::Array(items) => items
            .iter_mut()
            .for_each(|item| redact_everywhere(item, token)),
        _ => {}
    }
}

/// The text with the arguments of a `/register` (to any bot) redacted; `None` when it is not
/// one or has nothing to hide (no arguments, or a token already redacted).
fn redact_text(text: &str, found: &mut Found) -> Option<String> {
    let args = Command::parse(text)
        .filter(|command| command.is("register"))?
        .args;
    if args.trim().is_empty() || is_redacted_registration(args) {
        return None;
    }
    Some(match Registration::parse(args) {
        Some(registration) => {
            let redacted = text.replace(&registration.token, REDACTED);
            found.tokens.push(registration.token);
            redacted
        }
        None => {
            found.malformed = true;
            format!("{}{REDACTED}", &text[..text.len() - args.len()])
        }
    })
}

/// Whether `/register` arguments are what redaction left of them: `<username> [redacted]`, or
/// `[redacted]` alone for a malformed attempt.
fn is_redacted_registration(args: &str) -> bool {
    let words: Vec<&str> = args.split_whitespace().collect();
    matches!(words.as_slice(), [REDACTED] | [_, REDACTED])
}

/// Whether `/register` arguments are a well-formed attempt whose token was redacted:
/// `<username> [redacted]`.
pub(crate) fn is_token_gone(args: &str) -> bool {
    let words: Vec<&str> = args.split_whitespace().collect();
    matches!(words.as_slice(), [username, REDACTED] if crate::commands::is_username(username))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(text: &str) -> String {
        serde_json::json!({
            "update_id": 5,
            "message": {
                "message_id": 17, "date": 1,
                "chat": {"id": -100, "type": "supergroup"},
                "from": {"id": 7, "is_bot": false, "first_name": "Ann"},
                "text": text,
            }
        })
        .to_string()
    }

    #[test]
    fn every_register_is_redacted_whatever_bot_it_addresses() {
        for (text, expected) in [
            ("/register alice s3cr3t-T0ken", "/register alice [redacted]"),
            (
                "/register@some_bot alice s3cr3t-T0ken",
                "/register@some_bot alice [redacted]",
            ),
            (
                "/REGISTER@Other_Bot alice tok en",
                "/REGISTER@Other_Bot [redacted]",
            ),
        ] {
            let raw = update(text);
            let redacted = redact_typed_secrets(&raw).expect("a secret was found");
            let value: Value = serde_json::from_str(&redacted).unwrap();
            assert_eq!(value["message"]["text"], expected, "{text}");
            assert!(!redacted.contains("s3cr3t") && !redacted.contains("tok en"));
        }
    }

    #[test]
    fn nothing_to_hide_is_none() {
        for text in [
            "hello",
            "/register",
            "/registered alice s3cr3t-T0ken",
            "/register alice [redacted]",
            "/register [redacted]",
        ] {
            assert_eq!(redact_typed_secrets(&update(text)), None, "{text}");
        }
        assert_eq!(redact_typed_secrets("not json"), None);
    }

    #[test]
    fn redacting_twice_changes_nothing_more() {
        let once = redact_typed_secrets(&update("/register alice s3cr3t-T0ken")).unwrap();
        assert_eq!(redact_typed_secrets(&once), None);
    }
}
