//! Telegram `message` updates, built in code so that a run needs no fixture files.
//!
//! A run's chats are drawn once, from a seed, by [`Population::generate`]: private chats (the chat
//! id is the user's id), basic groups and supergroups (`-100…` ids, above 2^32 in magnitude), each
//! with the users who write in it. [`Composer::compose`] then writes one update for a chat: a
//! unique `update_id`, the chat's next `message_id`, `date` now, and one of three kinds of
//! message — plain text (10–400 characters, in several scripts, with emoji), a bot command with its
//! `bot_command` entity, or a photo with a caption.
//!
//! Most bodies are written the way the Bot API writes them, with every non-ASCII character and
//! every `/` escaped (`\u041f`, `\ud83d\ude00`, `\/start`); the others carry raw UTF-8. Both are
//! the same JSON value, but not the same bytes: a receiver that re-serializes instead of keeping the
//! body as it came is caught by the byte-for-byte check of the stored `raw`.
//!
//! Commands never include `/register`, whose token Botline redacts from the stored raw JSON.

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use std::collections::HashSet;
use std::fmt::Write as _;

/// The username of the bot the updates are addressed to, as in `/help@botline_bench_bot`.
pub const BOT_USERNAME: &str = "botline_bench_bot";

/// The type of a Telegram chat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChatKind {
    /// A one-to-one chat with a user; its id is the user's id (positive).
    Private,
    /// A basic group; negative id.
    Group,
    /// A supergroup; id `-100` followed by ten digits, beyond 2^32 in magnitude.
    Supergroup,
}

/// The kind of message an update carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageKind {
    /// A text message.
    Text,
    /// A text message that starts with a `/command`, with its `bot_command` entity.
    Command,
    /// A photo with a caption.
    Photo,
}

/// A Telegram user as the Bot API sends it in `from`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct User {
    /// The user's id; also the id of their private chat with the bot.
    pub id: i64,
    /// Always false: the users who write to the bot are people.
    pub is_bot: bool,
    /// Always present in the Bot API.
    pub first_name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// An IETF language tag; also chooses the language of the user's texts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub language_code: Option<String>,
}

/// One chat of a run, with the state that orders its messages.
#[derive(Debug, Clone)]
pub struct Chat {
    id: i64,
    kind: ChatKind,
    title: Option<String>,
    username: Option<String>,
    /// Who writes in it: the owner of a private chat, the members of a group.
    members: Vec<User>,
    next_message_id: i64,
}

impl Chat {
    /// The chat's id, as in `message.chat.id`.
    pub fn id(&self) -> i64 {
        self.id
    }

    /// The chat's type.
    pub fn kind(&self) -> ChatKind {
        self.kind
    }

    /// The users who write in it.
    pub fn members(&self) -> &[User] {
        &self.members
    }

    /// The `message_id` the next update of this chat will carry.
    pub fn next_message_id(&self) -> i64 {
        self.next_message_id
    }
}

/// The chats of a run, drawn from a seed so that a rerun with the same seed sends the same chats.
#[derive(Debug, Clone)]
pub struct Population {
    chats: Vec<Chat>,
}

impl Population {
    /// Draws `chats` chats with distinct ids. The types follow a fixed pattern of ten (5 private,
    /// 2 groups, 3 supergroups) so that even a handful of chats has all three.
    pub fn generate(seed: u64, chats: usize) -> Self {
        const PATTERN: [ChatKind; 10] = [
            ChatKind::Private,
            ChatKind::Group,
            ChatKind::Private,
            ChatKind::Supergroup,
            ChatKind::Private,
            ChatKind::Supergroup,
            ChatKind::Private,
            ChatKind::Group,
            ChatKind::Private,
            ChatKind::Supergroup,
        ];
        let mut rng = StdRng::seed_from_u64(seed);
        let mut ids = HashSet::new();
        // Users who also write in groups: the private-chat owners and some who never write privately.
        let mut pool: Vec<User> = (0..16).map(|_| random_user(&mut rng, &mut ids)).collect();
        let mut result = Vec::with_capacity(chats);
        for index in 0..chats {
            let kind = PATTERN[index % PATTERN.len()];
            let chat = match kind {
                ChatKind::Private => {
                    let owner = random_user(&mut rng, &mut ids);
                    pool.push(owner.clone());
                    Chat {
                        id: owner.id,
                        kind,
                        title: None,
                        username: None,
                        members: vec![owner],
                        next_message_id: rng.random_range(1..=500_000),
                    }
                }
                ChatKind::Group | ChatKind::Supergroup => {
                    let id = unique_id(&mut rng, &mut ids, |rng| match kind {
                        ChatKind::Group => -rng.random_range(100_000_000..=5_000_000_000_i64),
                        _ => -(1_000_000_000_000 + rng.random_range(1_000_000_000..=9_999_999_999)),
                    });
                    let size = rng.random_range(2..=12).min(pool.len());
                    let members = pool.choose_multiple(&mut rng, size).cloned().collect();
                    let title = format!(
                        "{} {}",
                        GROUP_TITLES.choose(&mut rng).copied().unwrap_or("Chat"),
                        rng.random_range(1..=999)
                    );
                    let username = (kind == ChatKind::Supergroup && rng.random_bool(0.3))
                        .then(|| format!("bench_group_{}", rng.random_range(1000..=99_999)));
                    Chat {
                        id,
                        kind,
                        title: Some(title),
                        username,
                        members,
                        next_message_id: rng.random_range(1..=2_000_000),
                    }
                }
            };
            result.push(chat);
        }
        Self { chats: result }
    }

    /// How many chats there are.
    pub fn len(&self) -> usize {
        self.chats.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.chats.is_empty()
    }

    /// The chats, in the order they were drawn.
    pub fn chats(&self) -> &[Chat] {
        &self.chats
    }

    /// The chat at `index`, to compose its next update.
    pub fn chat_mut(&mut self, index: usize) -> Option<&mut Chat> {
        self.chats.get_mut(index)
    }

    /// Hands chat `i` to part `i % parts`, in order, so that part `p` holds chats `p`, `p +
    /// parts`, … and chat `i` is element `i / parts` of its part.
    pub fn split(self, parts: usize) -> Vec<Vec<Chat>> {
        let parts = parts.max(1);
        let mut result: Vec<Vec<Chat>> = (0..parts).map(|_| Vec::new()).collect();
        for (index, chat) in self.chats.into_iter().enumerate() {
            result[index % parts].push(chat);
        }
        result
    }
}

/// One composed update: its body and what identifies it in the store.
#[derive(Debug, Clone)]
pub struct GeneratedUpdate {
    pub update_id: u64,
    pub chat_id: i64,
    pub message_id: i64,
    pub kind: MessageKind,
    /// The exact bytes to send, and to find again in the stored `raw`.
    pub body: Bytes,
}

/// Writes update bodies; holds the randomness that chooses their content.
#[derive(Debug)]
pub struct Composer {
    rng: StdRng,
    /// Share of bodies written with the Bot API's escaping (`\uXXXX`, `\/`).
    escaped_share: f64,
}

impl Composer {
    /// A composer whose choices follow from `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            rng: StdRng::seed_from_u64(seed),
            escaped_share: 0.7,
        }
    }

    /// The next update of `chat`, with id `update_id`, sent at `date` (unix seconds). Advances the
    /// chat's `message_id`.
    pub fn compose(&mut self, chat: &mut Chat, update_id: u64, date: i64) -> GeneratedUpdate {
        let rng = &mut self.rng;
        let message_id = chat.next_message_id;
        chat.next_message_id += 1;

        let from = chat
            .members
            .choose(rng)
            .cloned()
            .unwrap_or_else(|| fallback_user(chat.id));
        let language = from.language_code.as_deref().unwrap_or("en");
        let roll: f64 = rng.random();
        let kind = if roll < 0.12 {
            MessageKind::Command
        } else if roll < 0.22 {
            MessageKind::Photo
        } else {
            MessageKind::Text
        };

        let text: String;
        let mut message = MessageJson {
            message_id,
            from: &from,
            chat: ChatJson {
                id: chat.id,
                title: chat.title.as_deref(),
                username: chat
                    .username
                    .as_deref()
                    .or(if chat.kind == ChatKind::Private {
                        from.username.as_deref()
                    } else {
                        None
                    }),
                first_name: (chat.kind == ChatKind::Private).then_some(from.first_name.as_str()),
                last_name: if chat.kind == ChatKind::Private {
                    from.last_name.as_deref()
                } else {
                    None
                },
                kind: chat.kind,
            },
            date,
            text: None,
            entities: Vec::new(),
            photo: Vec::new(),
            caption: None,
        };

        match kind {
            MessageKind::Text => {
                let length = text_length(rng);
                text = random_text(rng, language, length);
                message.text = Some(&text);
            }
            MessageKind::Command => {
                let command = COMMANDS.choose(rng).copied().unwrap_or("/help");
                let mut head = command.to_owned();
                if chat.kind != ChatKind::Private && rng.random_bool(0.5) {
                    head.push('@');
                    head.push_str(BOT_USERNAME);
                }
                let rest = text_length(rng)
                    .saturating_sub(head.chars().count() + 1)
                    .max(4);
                text = format!("{head} {}", random_text(rng, language, rest));
                message.entities.push(Entity {
                    offset: 0,
                    // ASCII, so UTF-16 code units = bytes.
                    length: head.len(),
                    kind: "bot_command",
                });
                message.text = Some(&text);
            }
            MessageKind::Photo => {
                let length = text_length(rng);
                text = random_text(rng, language, length);
                message.photo = photo_sizes(rng);
                message.caption = Some(&text);
            }
        }

        let update = UpdateJson { update_id, message };
        // Serializing plain structs of strings and integers cannot fail.
        let json = serde_json::to_string(&update).unwrap_or_default();
        let body = if rng.random_bool(self.escaped_share) {
            escape_like_bot_api(&json)
        } else {
            json
        };
        GeneratedUpdate {
            update_id,
            chat_id: chat.id,
            message_id,
            kind,
            body: Bytes::from(body),
        }
    }
}

/// Rewrites compact JSON the way the Bot API writes it: every `/` as `\/` and every non-ASCII
/// character as `\uXXXX` (astral characters as a UTF-16 surrogate pair). Both only occur inside
/// strings in JSON, so a character-wise rewrite keeps the value the same.
pub fn escape_like_bot_api(json: &str) -> String {
    let mut out = String::with_capacity(json.len() + json.len() / 4);
    for c in json.chars() {
        match c {
            '/' => out.push_str("\\/"),
            c if c.is_ascii() => out.push(c),
            c => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    // Writing to a String cannot fail.
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
        }
    }
    out
}

/// 64-bit FNV-1a of a body: a fingerprint that survives in a saved report when the body does not.
pub fn fingerprint(bytes: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0100_0000_01b3;
    bytes.iter().fold(OFFSET, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(PRIME)
    })
}

#[derive(Serialize)]
struct UpdateJson<'a> {
    update_id: u64,
    message: MessageJson<'a>,
}

#[derive(Serialize)]
struct MessageJson<'a> {
    message_id: i64,
    from: &'a User,
    chat: ChatJson<'a>,
    date: i64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    photo: Vec<PhotoSize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    caption: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    entities: Vec<Entity>,
}

#[derive(Serialize)]
struct ChatJson<'a> {
    id: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    title: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    first_name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    username: Option<&'a str>,
    #[serde(rename = "type")]
    kind: ChatKind,
}

#[derive(Serialize)]
struct Entity {
    offset: usize,
    length: usize,
    #[serde(rename = "type")]
    kind: &'static str,
}

#[derive(Serialize)]
struct PhotoSize {
    file_id: String,
    file_unique_id: String,
    file_size: u32,
    width: u32,
    height: u32,
}

/// The Bot API's thumbnails of one photo, smallest first.
fn photo_sizes(rng: &mut StdRng) -> Vec<PhotoSize> {
    let file = random_token(rng, 48);
    let (width, height) = *[(1280, 960), (960, 1280), (1280, 720), (1080, 1080)]
        .choose(rng)
        .unwrap_or(&(1280, 960));
    [90, 320, 800, 1280]
        .iter()
        .map(|&side: &u32| {
            let scale = f64::from(side) / f64::from(width.max(height));
            let (w, h) = (
                (f64::from(width) * scale).round() as u32,
                (f64::from(height) * scale).round() as u32,
            );
            PhotoSize {
                file_id: format!("AgACAgIAAxkBAAI{}{}", random_token(rng, 6), file),
                file_unique_id: format!("AQAD{}", random_token(rng, 12)),
                file_size: w * h / 8 + rng.random_range(0..2000),
                width: w,
                height: h,
            }
        })
        .collect()
}

/// A text length in characters, 10–400, mostly short as chat messages are.
fn text_length(rng: &mut StdRng) -> usize {
    let u: f64 = rng.random();
    10 + (390.0 * u * u * u).round() as usize
}

/// Text of exactly `length` characters (Unicode scalar values), mostly in `language`, sometimes
/// mixed with English or emoji. Never ends in a space.
fn random_text(rng: &mut StdRng, language: &str, length: usize) -> String {
    let own = vocabulary(language);
    let mut text = String::new();
    let mut count = 0;
    while count < length {
        let word = if rng.random_bool(0.08) {
            EMOJI.choose(rng).copied().unwrap_or("🙂")
        } else if rng.random_bool(0.1) {
            ENGLISH.choose(rng).copied().unwrap_or("ok")
        } else {
            own.choose(rng).copied().unwrap_or("ok")
        };
        if count > 0 {
            text.push(if rng.random_bool(0.05) { '\n' } else { ' ' });
            count += 1;
        }
        text.push_str(word);
        count += word.chars().count();
    }
    let mut text: String = text.chars().take(length).collect();
    while text.ends_with(char::is_whitespace) {
        text.pop();
        text.push('.');
    }
    text
}

fn vocabulary(language: &str) -> &'static [&'static str] {
    match language.split('-').next().unwrap_or(language) {
        "ru" | "uk" => RUSSIAN,
        "es" | "pt" => SPANISH,
        "de" => GERMAN,
        "zh" => CHINESE,
        "ja" => JAPANESE,
        "ar" => ARABIC,
        _ => ENGLISH,
    }
}

fn random_user(rng: &mut StdRng, ids: &mut HashSet<i64>) -> User {
    // User ids passed 2^32 in 2021; draw from both sides of it.
    let id = unique_id(rng, ids, |rng| rng.random_range(10_000_000..=8_000_000_000));
    let (language, first_names, last_names) = *NAMES.choose(rng).unwrap_or(&NAMES[0]);
    let first_name = first_names
        .choose(rng)
        .copied()
        .unwrap_or("Alex")
        .to_owned();
    let last_name = rng.random_bool(0.5).then(|| {
        last_names
            .choose(rng)
            .copied()
            .unwrap_or("Smith")
            .to_owned()
    });
    let username = rng.random_bool(0.8).then(|| {
        let base = USERNAME_STEMS.choose(rng).copied().unwrap_or("user");
        format!("{base}_{}", rng.random_range(1..=99_999))
    });
    let language_code = rng.random_bool(0.9).then(|| language.to_owned());
    User {
        id,
        is_bot: false,
        first_name,
        last_name,
        username,
        language_code,
    }
}

fn fallback_user(id: i64) -> User {
    User {
        id: id.abs(),
        is_bot: false,
        first_name: "Anonymous".to_owned(),
        last_name: None,
        username: None,
        language_code: None,
    }
}

fn unique_id(
    rng: &mut StdRng,
    ids: &mut HashSet<i64>,
    mut draw: impl FnMut(&mut StdRng) -> i64,
) -> i64 {
    loop {
        let id = draw(rng);
        if ids.insert(id) {
            return id;
        }
    }
}

fn random_token(rng: &mut StdRng, length: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    (0..length)
        .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
        .collect()
}

const COMMANDS: &[&str] = &["/start", "/help", "/stats", "/echo", "/settings", "/ping"];

const GROUP_TITLES: &[&str] = &[
    "Rust Learners",
    "Weekend Hikers",
    "Семейный чат",
    "Dev Ops Night",
    "Küche & Rezepte",
    "读书会",
    "ボードゲーム部",
    "Fútbol los martes",
    "نادي الكتاب",
    "Crypto 🚀 Signals",
];

const USERNAME_STEMS: &[&str] = &[
    "alex",
    "maria",
    "dev",
    "night_owl",
    "coffee",
    "ivan",
    "sakura",
    "li_wei",
    "pedro",
    "anna",
];

type Names = (
    &'static str,
    &'static [&'static str],
    &'static [&'static str],
);

const NAMES: &[Names] = &[
    (
        "en",
        &["Alice", "Bob", "Charlie", "Dana", "Emily", "Frank"],
        &["Smith", "Johnson", "O'Brien", "Brown"],
    ),
    (
        "ru",
        &["Иван", "Мария", "Алексей", "Ольга", "Дмитрий"],
        &["Иванов", "Петрова", "Смирнов"],
    ),
    (
        "uk",
        &["Олена", "Тарас", "Богдан"],
        &["Шевченко", "Коваленко"],
    ),
    (
        "es",
        &["José", "Lucía", "Martín", "Sofía"],
        &["García", "Martínez", "Núñez"],
    ),
    (
        "pt-br",
        &["João", "Beatriz", "Gonçalo"],
        &["Silva", "Araújo"],
    ),
    (
        "de",
        &["Jürgen", "Lena", "Maximilian"],
        &["Müller", "Schäfer", "Groß"],
    ),
    ("zh-hans", &["伟", "芳", "小明"], &["王", "李", "张"]),
    ("ja", &["さくら", "翔太", "ユキ"], &["佐藤", "鈴木"]),
    ("ar", &["محمد", "فاطمة", "علي"], &["الحسن", "عبد الله"]),
];

const ENGLISH: &[&str] = &[
    "hello",
    "the",
    "bot",
    "is",
    "working",
    "again",
    "can",
    "you",
    "check",
    "my",
    "order",
    "please",
    "thanks!",
    "what",
    "time",
    "does",
    "meeting",
    "start",
    "tomorrow",
    "I",
    "think",
    "we",
    "should",
    "deploy",
    "on",
    "Friday",
    "lol",
    "see",
    "https://example.com/page?id=42",
    "ok",
    "and",
    "then",
    "it",
    "crashed",
    "\"quoted\"",
    "back\\slash",
    "tab\there",
    "50%",
    "<b>bold</b>",
    "&amp;",
    "price:",
    "$19.99",
    "email@example.com",
    "#rust",
    "@someone",
];

const RUSSIAN: &[&str] = &[
    "привет",
    "как",
    "дела",
    "сегодня",
    "бот",
    "снова",
    "работает",
    "спасибо",
    "пожалуйста",
    "когда",
    "встреча",
    "завтра",
    "ёлка",
    "погода",
    "хорошая",
    "да",
    "нет",
    "Київ",
    "їжак",
    "ґанок",
];

const SPANISH: &[&str] = &[
    "hola",
    "¿qué",
    "tal?",
    "mañana",
    "reunión",
    "gracias",
    "¡genial!",
    "señor",
    "niño",
    "acción",
    "coração",
    "não",
    "está",
    "funcionando",
];

const GERMAN: &[&str] = &[
    "Hallo",
    "schöne",
    "Grüße",
    "aus",
    "München",
    "Straße",
    "übermorgen",
    "Bärchen",
    "größer",
    "Frühstück",
    "ist",
    "fertig",
];

const CHINESE: &[&str] = &[
    "你好",
    "今天",
    "天气",
    "很好",
    "机器人",
    "又",
    "工作了",
    "谢谢",
    "明天",
    "开会",
    "吗？",
    "𠀋",
];

const JAPANESE: &[&str] = &[
    "こんにちは",
    "今日は",
    "いい天気",
    "ですね",
    "ボット",
    "ありがとう",
    "明日",
    "会議",
    "ｶﾀｶﾅ",
];

const ARABIC: &[&str] = &[
    "مرحبا",
    "كيف",
    "حالك",
    "اليوم",
    "شكرا",
    "غدا",
    "اجتماع",
    "البوت",
    "يعمل",
];

const EMOJI: &[&str] = &[
    "😀",
    "👍",
    "👍🏽",
    "❤️",
    "🔥",
    "🎉",
    "🤔",
    "👨‍👩‍👧‍👦",
    "🇺🇦",
    "🇯🇵",
    "🏳️‍🌈",
    "✅",
    "🚀",
    "🙏",
    "😂",
    "1️⃣",
];

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;
    use std::collections::HashMap;

    fn compose_many(chats: usize, updates: u64) -> Vec<GeneratedUpdate> {
        let mut population = Population::generate(42, chats);
        let mut composer = Composer::new(43);
        let mut rng = StdRng::seed_from_u64(44);
        (0..updates)
            .map(|seq| {
                let index = rng.random_range(0..population.len());
                let chat = population.chat_mut(index).expect("index in range");
                composer.compose(chat, 7_000_000 + seq, 1_714_564_800)
            })
            .collect()
    }

    #[test]
    fn bodies_are_valid_json_updates_with_the_reported_ids() {
        for update in compose_many(50, 2_000) {
            let value: Value = serde_json::from_slice(&update.body).expect("valid JSON");
            assert_eq!(value["update_id"].as_u64(), Some(update.update_id));
            let message = &value["message"];
            assert_eq!(message["message_id"].as_i64(), Some(update.message_id));
            assert_eq!(message["chat"]["id"].as_i64(), Some(update.chat_id));
            assert_eq!(message["date"].as_i64(), Some(1_714_564_800));
            assert!(message["from"]["id"].as_i64().is_some_and(|id| id > 0));
            assert!(message["from"]["first_name"].is_string());
            let text = match update.kind {
                MessageKind::Photo => {
                    assert!(message["photo"].as_array().is_some_and(|p| p.len() == 4));
                    assert!(message.get("text").is_none());
                    message["caption"].as_str()
                }
                MessageKind::Command => {
                    let entity = &message["entities"][0];
                    assert_eq!(entity["type"], "bot_command");
                    assert_eq!(entity["offset"], 0);
                    let text = message["text"].as_str().expect("command text");
                    let length = entity["length"].as_u64().expect("length") as usize;
                    assert!(text[..length].starts_with('/'));
                    assert!(!text.starts_with("/register"));
                    Some(text)
                }
                MessageKind::Text => message["text"].as_str(),
            }
            .expect("text or caption");
            let chars = text.chars().count();
            assert!((10..=400).contains(&chars), "{chars} characters: {text:?}");
        }
    }

    #[test]
    fn update_ids_are_unique_and_message_ids_increase_per_chat() {
        let updates = compose_many(20, 3_000);
        let ids: HashSet<u64> = updates.iter().map(|u| u.update_id).collect();
        assert_eq!(ids.len(), updates.len());
        let mut last: HashMap<i64, i64> = HashMap::new();
        for update in &updates {
            if let Some(previous) = last.insert(update.chat_id, update.message_id) {
                assert!(update.message_id > previous, "chat {}", update.chat_id);
            }
        }
        assert_eq!(last.len(), 20);
    }

    #[test]
    fn population_mixes_chat_types_and_large_ids() {
        let population = Population::generate(1, 1_000);
        let ids: HashSet<i64> = population.chats().iter().map(Chat::id).collect();
        assert_eq!(ids.len(), 1_000);
        let count = |kind| {
            population
                .chats()
                .iter()
                .filter(|c| c.kind() == kind)
                .count()
        };
        assert_eq!(count(ChatKind::Private), 500);
        assert_eq!(count(ChatKind::Group), 200);
        assert_eq!(count(ChatKind::Supergroup), 300);
        for chat in population.chats() {
            match chat.kind() {
                ChatKind::Private => {
                    assert!(chat.id() > 0);
                    assert_eq!(chat.members()[0].id, chat.id());
                }
                ChatKind::Group => assert!(chat.id() < 0),
                ChatKind::Supergroup => {
                    assert!(chat.id().to_string().starts_with("-100"));
                    assert!(chat.id().unsigned_abs() > 1 << 32);
                }
            }
        }
        assert!(
            population
                .chats()
                .iter()
                .any(|c| c.kind() == ChatKind::Private && c.id() > 1 << 32)
        );
        let small = Population::generate(2, 4);
        let kinds: HashSet<ChatKind> = small.chats().iter().map(Chat::kind).collect();
        assert_eq!(kinds.len(), 3);
    }

    #[test]
    fn bodies_mix_kinds_scripts_and_escaping() {
        let updates = compose_many(100, 2_000);
        let kinds: HashSet<MessageKind> = updates.iter().map(|u| u.kind).collect();
        assert_eq!(kinds.len(), 3);
        let escaped = updates
            .iter()
            .filter(|u| u.body.windows(2).any(|w| w == b"\\u"))
            .count();
        let raw_utf8 = updates.iter().filter(|u| !u.body.is_ascii()).count();
        assert!(
            escaped > 100 && raw_utf8 > 100,
            "{escaped} escaped, {raw_utf8} raw"
        );
        let texts: Vec<String> = updates
            .iter()
            .filter_map(|u| {
                let v: Value = serde_json::from_slice(&u.body).ok()?;
                let m = &v["message"];
                Some(m["text"].as_str().or(m["caption"].as_str())?.to_owned())
            })
            .collect();
        assert!(
            texts
                .iter()
                .any(|t| t.chars().any(|c| ('\u{0400}'..='\u{04ff}').contains(&c)))
        );
        assert!(texts.iter().any(|t| t.chars().any(|c| c as u32 > 0xffff)));
    }

    #[test]
    fn bot_api_escaping_keeps_the_value() {
        let json = r#"{"text":"/start Привет 👍🏽 \"q\" back\\/slash"}"#;
        let escaped = escape_like_bot_api(json);
        assert!(escaped.is_ascii());
        assert!(escaped.contains(r"\/start \u041f"));
        assert!(escaped.contains(r"\ud83d\udc4d\ud83c\udffd"));
        let a: Value = serde_json::from_str(json).expect("json");
        let b: Value = serde_json::from_str(&escaped).expect("escaped json");
        assert_eq!(a, b);
    }

    #[test]
    fn same_seed_same_chats() {
        let a = Population::generate(9, 30);
        let b = Population::generate(9, 30);
        let ids = |p: &Population| p.chats().iter().map(Chat::id).collect::<Vec<_>>();
        assert_eq!(ids(&a), ids(&b));
    }
}
