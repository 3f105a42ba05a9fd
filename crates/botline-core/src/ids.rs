//! Telegram's ids, each its own type. All are 64-bit: user and chat ids exceed 2^32.

use serde::{Deserialize, Serialize};
use std::fmt;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub i64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl From<i64> for $name {
            fn from(id: i64) -> Self {
                Self(id)
            }
        }
    };
}

id_type!(
    /// `update_id`: unique per bot while Telegram keeps counting; it may restart at a random value
    /// after a week without updates, so it is an identity, never a high-water mark.
    UpdateId
);
id_type!(
    /// A chat's id: negative for groups and channels (`-100…` for supergroups and channels).
    ChatId
);
id_type!(
    /// A Telegram user's id.
    UserId
);
id_type!(
    /// A message's id, unique within its chat.
    MessageId
);

impl UserId {
    /// The key of this user's record: `telegram_{id}` (seed 001).
    pub fn record_key(self) -> String {
        format!("telegram_{}", self.0)
    }
}
