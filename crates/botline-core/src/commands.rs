//! Bot commands: `/command`, `/command@botname` and their arguments, read from a message's text
//! whether or not Telegram marked them with a `bot_command` entity; and `/register` (seed 002).

use sha2::{Digest, Sha256};

/// The texts `/register` answers with, exactly as seed 002 gives them.
pub mod replies {
    /// `Registration successful! Welcome <username>`
    pub fn registered(username: &str) -> String {
        format!("Registration successful! Welcome {username}")
    }
    pub const REGISTRATION_FAILED: &str =
        "Registration failed. Please check your credentials and try again.";
    pub const REGISTER_FORMAT: &str = "Please use format: /register [username] [token]";
}

/// What replaces a secret a user typed, wherever it would be stored or logged.
pub const REDACTED: &str = "[redacted]";

/// A command at the start of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Command<'a> {
    /// Without the slash, as typed (commands are matched case-insensitively).
    pub name: &'a str,
    /// The bot named after `@`, if any.
    pub addressee: Option<&'a str>,
    /// Everything after the command and its whitespace.
    pub args: &'a str,
}

impl<'a> Command<'a> {
    /// Reads the command a text starts with. Telegram's rules: `/`, then 1–32 letters, digits or
    /// underscores, optionally `@botname`, then whitespace or the end.
    pub fn parse(text: &'a str) -> Option<Self> {
        let rest = text.strip_prefix('/')?;
        let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
        let (head, args) = rest.split_at(end);
        let (name, addressee) = match head.split_once('@') {
            Some((name, bot)) => (name, Some(bot)),
            None => (head, None),
        };
        let valid_name = (1..=32).contains(&name.len())
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        let valid_bot = addressee.is_none_or(|bot| {
            !bot.is_empty() && bot.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        });
        (valid_name && valid_bot).then(|| Self {
            name,
            addressee,
            args: args.trim_start(),
        })
    }

    /// Whether the command is meant for this bot: unaddressed, or addressed to `bot_username`.
    /// A bot that does not know its own username takes only unaddressed commands.
    pub fn is_for(&self, bot_username: Option<&str>) -> bool {
        match (self.addressee, bot_username) {
            (None, _) => true,
            (Some(to), Some(me)) => to.eq_ignore_ascii_case(me.trim_start_matches('@')),
            (Some(_), None) => false,
        }
    }

    pub fn is(&self, name: &str) -> bool {
        self.name.eq_ignore_ascii_case(name)
    }
}

/// The arguments of `/register <username> <token>`.
#[derive(Clone, PartialEq, Eq)]
pub struct Registration {
    pub username: String,
    /// The token as typed: a secret, never stored or printed.
    pub token: String,
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("username", &self.username)
            .field("token", &REDACTED)
            .finish()
    }
}

impl Registration {
    /// Exactly two arguments: a username (1–64 of `A-Z a-z 0-9 _ . - @`) and a token (8–256 of
    /// `A-Z a-z 0-9 _ - . ~ + =`, characters that JSON never escapes, so the token can be found
    /// and redacted in the raw update). A username that contains the token is refused: the
    /// username is stored and echoed in the reply, and would carry the token with it.
    pub fn parse(args: &str) -> Option<Self> {
        let mut words = args.split_whitespace();
        let (username, token) = (words.next()?, words.next()?);
        if words.next().is_some() {
            return None;
        }
        let username_ok = is_username(username);
        let token_ok = (8..=256).contains(&token.len())
            && token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-.~+=".contains(&b));
        (username_ok && token_ok && !username.contains(token)).then(|| Self {
            username: username.to_owned(),
            token: token.to_owned(),
        })
    }

    /// The token's SHA-256, hex: what the embedded backend stores and compares.
    pub fn token_digest(&self) -> String {
        token_digest(&self.token)
    }
}

/// Whether `text` can be a `/register` username: 1–64 of `A-Z a-z 0-9 _ . - @`.
pub fn is_username(text: &str) -> bool {
    (1..=64).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-@".contains(&b))
}

/// A secret a user typed (a registration token): handed to the registration backend, never
/// printed (`Debug` shows [`REDACTED`]) and never stored.
#[derive(Clone, PartialEq, Eq)]
pub struct TypedSecret(String);

impl TypedSecret {
    pub fn new(value: String) -> Self {
        Self(value)
    }

    /// The secret itself, for the backend that checks it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for TypedSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(REDACTED)
    }
}

/// SHA-256 of a registration token, as lowercase hex.
pub fn token_digest(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The arguments of a `/register` command, when the text is one; they may still be malformed.
/// Anything after the command word is treated as secret until proven otherwise, so that a
/// malformed attempt (`/register name tok en`) is redacted too.
pub fn register_args<'a>(text: &'a str, bot_username: Option<&str>) -> Option<&'a str> {
    Command::parse(text)
        .filter(|command| command.is("register") && command.is_for(bot_username))
        .map(|command| command.args)
}

/// What `/register` does with its arguments ([`decide_register`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegisterDecision {
    /// A well-formed attempt: redeem the token for the username.
    Attempt(Registration),
    /// A well-formed attempt whose token was redacted before it was processed (a dead letter,
    /// redriven): it cannot be checked, so it is answered as failed and the user types it again.
    TokenGone,
    /// Anything else: answered with the format ([`replies::REGISTER_FORMAT`]).
    Malformed,
}

/// Decides a `/register` from its arguments as the user typed them and as they are stored
/// (with every secret typed in the update redacted, [`crate::redact_typed_secrets`]).
///
/// A username that is not stored as typed held a secret typed in the same update (another
/// `/register` in it, say a quoted one): it would be stored and echoed with it, so such an
/// attempt is malformed, as [`Registration::parse`] makes one whose username holds its own
/// token.
pub fn decide_register(typed_args: &str, stored_args: &str) -> RegisterDecision {
    match Registration::parse(typed_args) {
        Some(registration)
            if stored_args.split_whitespace().next() == Some(registration.username.as_str()) =>
        {
            RegisterDecision::Attempt(registration)
        }
        Some(_) => RegisterDecision::Malformed,
        None if crate::redact::is_token_gone(typed_args) => RegisterDecision::TokenGone,
        None => RegisterDecision::Malformed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_commands_with_and_without_addressee() {
        let c = Command::parse("/register@botline_bot alice s3cr3t-T0ken").unwrap();
        assert_eq!(c.name, "register");
        assert_eq!(c.addressee, Some("botline_bot"));
        assert_eq!(c.args, "alice s3cr3t-T0ken");
        assert!(c.is_for(Some("Botline_Bot")));
        assert!(c.is_for(Some("@botline_bot")));
        assert!(!c.is_for(Some("other_bot")));
        assert!(!c.is_for(None));
        let plain = Command::parse("/start").unwrap();
        assert_eq!((plain.name, plain.args), ("start", ""));
        assert!(plain.is_for(None));
        let spaced = Command::parse("/Register\n  a  b ").unwrap();
        assert!(spaced.is("register"));
        assert_eq!(spaced.args, "a  b ");
    }

    #[test]
    fn only_a_leading_slash_word_is_a_command() {
        for text in [
            "hello /start",
            "/",
            "/@bot",
            "//x",
            "/a-b",
            "/start@",
            "/x@bad-name",
            " /start",
        ] {
            assert_eq!(Command::parse(text), None, "{text:?}");
        }
        assert!(Command::parse(&format!("/{}", "a".repeat(33))).is_none());
    }

    #[test]
    fn register_takes_exactly_a_username_and_a_token() {
        let r = Registration::parse("alice s3cr3t-T0ken").unwrap();
        assert_eq!(r.username, "alice");
        assert_eq!(r.token, "s3cr3t-T0ken");
        assert!(!format!("{r:?}").contains("s3cr3t"));
        for bad in [
            "",
            "alice",
            "alice tok3n-long extra",
            "alice short",
            "al ice",
            "alice tok/en-with-slash",
            "ali<ce> tok3n-long",
            "alice tok3n\"quote",
            "alice_s3cr3t-T0ken s3cr3t-T0ken",
            "s3cr3t-T0ken s3cr3t-T0ken",
        ] {
            assert_eq!(Registration::parse(bad), None, "{bad:?}");
        }
        assert!(Registration::parse(&format!("{} tok3n-long", "a".repeat(65))).is_none());
        assert!(Registration::parse(&format!("alice {}", "t".repeat(257))).is_none());
    }

    #[test]
    fn digests_are_sha256_hex() {
        assert_eq!(
            token_digest("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn register_args_respect_the_addressee() {
        assert_eq!(register_args("/register a b", None), Some("a b"));
        assert_eq!(register_args("/register@me a b", Some("me")), Some("a b"));
        assert_eq!(register_args("/register@other a b", Some("me")), None);
        assert_eq!(register_args("/start a b", None), None);
    }

    #[test]
    fn register_decisions() {
        let attempt = decide_register("alice s3cr3t-T0ken", "alice [redacted]");
        assert!(matches!(&attempt, RegisterDecision::Attempt(r) if r.username == "alice"));
        // A username holding a secret typed elsewhere in the update is stored redacted.
        assert_eq!(
            decide_register(
                "ann_0ther-T0ken_x own-T0ken-1",
                "ann_[redacted]_x [redacted]"
            ),
            RegisterDecision::Malformed
        );
        assert_eq!(
            decide_register("alice [redacted]", "alice [redacted]"),
            RegisterDecision::TokenGone
        );
        for args in ["", "alice", "[redacted]", "alice tok en x", "alice short"] {
            assert_eq!(
                decide_register(args, args),
                RegisterDecision::Malformed,
                "{args:?}"
            );
        }
    }
}
