//! Validated `[schema.]name` identifiers, written back quoted so that no configuration value is
//! ever pasted into SQL as it came.

use std::fmt;

/// The SQL dialect whose identifier rules apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    /// Unquoted parts fold to lower case (as Postgres does); `"Quoted"` parts are kept as
    /// written; each part at most 63 bytes. Written back as `"schema"."name"`.
    Postgres,
    /// Parts are kept as written (SQL Server compares by collation); `[Bracketed]` parts may hold
    /// any printable character; each part at most 128 characters. Written back as
    /// `[schema].[name]`.
    SqlServer,
}

/// A routine's name: an optional schema and the name, both validated.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct QualifiedName {
    pub(crate) schema: Option<String>,
    pub(crate) name: String,
    dialect: Dialect,
}

impl QualifiedName {
    /// Parses `name` or `schema.name`, each part an unquoted identifier (`[A-Za-z_]` then
    /// `[A-Za-z0-9_$]`) or a quoted one (`"…"` for Postgres, `[…]` for SQL Server, the closing
    /// quote doubled inside).
    pub(crate) fn parse(text: &str, dialect: Dialect) -> Result<Self, String> {
        let explain = |why: &str| {
            format!(
                "{why} in routine name {text:?}: expected `name` or `schema.name`, each an \
                 identifier (letters, digits, `_`, not starting with a digit) or {}",
                match dialect {
                    Dialect::Postgres => "a double-quoted identifier",
                    Dialect::SqlServer => "a bracketed identifier",
                }
            )
        };
        let mut parts = Vec::new();
        let mut rest = text.trim();
        loop {
            let (part, after) = parse_part(rest, dialect).map_err(|why| explain(&why))?;
            parts.push(part);
            match after.strip_prefix('.') {
                Some(next) => rest = next,
                None if after.is_empty() => break,
                None => return Err(explain("unexpected characters")),
            }
        }
        let mut parts = parts.into_iter();
        match (parts.next(), parts.next(), parts.next()) {
            (Some(name), None, None) => Ok(Self {
                schema: None,
                name,
                dialect,
            }),
            (Some(schema), Some(name), None) => Ok(Self {
                schema: Some(schema),
                name,
                dialect,
            }),
            _ => Err(explain("more than two parts")),
        }
    }

    fn quote(&self, part: &str) -> String {
        match self.dialect {
            Dialect::Postgres => format!("\"{}\"", part.replace('"', "\"\"")),
            Dialect::SqlServer => format!("[{}]", part.replace(']', "]]")),
        }
    }
}

/// The name as SQL: every part quoted.
impl fmt::Display for QualifiedName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(schema) = &self.schema {
            write!(f, "{}.", self.quote(schema))?;
        }
        f.write_str(&self.quote(&self.name))
    }
}

impl fmt::Debug for QualifiedName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

/// One part and what follows it.
fn parse_part(text: &str, dialect: Dialect) -> Result<(String, &str), String> {
    let (open, close) = match dialect {
        Dialect::Postgres => ('"', '"'),
        Dialect::SqlServer => ('[', ']'),
    };
    let (part, rest) = if let Some(quoted) = text.strip_prefix(open) {
        let mut part = String::new();
        let mut chars = quoted.char_indices().peekable();
        loop {
            match chars.next() {
                None => return Err("unterminated quoted identifier".into()),
                Some((i, c)) if c == close => {
                    if chars.peek().map(|&(_, c)| c) == Some(close) {
                        chars.next();
                        part.push(close);
                    } else {
                        break (part, &quoted[i + c.len_utf8()..]);
                    }
                }
                Some((_, c)) if c.is_control() => {
                    return Err("a control character".into());
                }
                Some((_, c)) => part.push(c),
            }
        }
    } else {
        let end = text
            .char_indices()
            .find(|&(_, c)| !(c.is_ascii_alphanumeric() || c == '_' || c == '$'))
            .map_or(text.len(), |(i, _)| i);
        let part = &text[..end];
        match part.chars().next() {
            None => return Err("an empty part".into()),
            Some(c) if !(c.is_ascii_alphabetic() || c == '_') => {
                return Err("a part starting with neither a letter nor `_`".into());
            }
            _ => {}
        }
        let part = match dialect {
            Dialect::Postgres => part.to_ascii_lowercase(),
            Dialect::SqlServer => part.to_owned(),
        };
        (part, &text[end..])
    };
    if part.is_empty() {
        return Err("an empty part".into());
    }
    let too_long = match dialect {
        Dialect::Postgres => part.len() > 63,
        Dialect::SqlServer => part.chars().count() > 128,
    };
    if too_long {
        return Err("a part longer than the database allows".into());
    }
    Ok((part, rest))
}

#[cfg(test)]
mod tests {
    use super::Dialect::{Postgres, SqlServer};
    use super::*;

    fn sql(text: &str, dialect: Dialect) -> Result<String, String> {
        QualifiedName::parse(text, dialect).map(|n| n.to_string())
    }

    #[test]
    fn postgres_names_fold_unquoted_parts_and_quote_every_part() {
        assert_eq!(
            sql("party_telegram_user_register", Postgres).unwrap(),
            r#""party_telegram_user_register""#
        );
        assert_eq!(
            sql("Botline.Register_User", Postgres).unwrap(),
            r#""botline"."register_user""#
        );
        assert_eq!(
            sql(r#"app."Mixed Case ""fn""""#, Postgres).unwrap(),
            r#""app"."Mixed Case ""fn""""#
        );
        assert_eq!(sql(" f$1 ", Postgres).unwrap(), r#""f$1""#);
    }

    #[test]
    fn sql_server_names_keep_case_and_use_brackets() {
        assert_eq!(
            sql("dbo.PartyTelegramUser_REGISTER_tr", SqlServer).unwrap(),
            "[dbo].[PartyTelegramUser_REGISTER_tr]"
        );
        assert_eq!(
            sql("[my schema].[odd]]name]", SqlServer).unwrap(),
            "[my schema].[odd]]name]"
        );
        assert_eq!(sql("Register", SqlServer).unwrap(), "[Register]");
    }

    #[test]
    fn anything_that_could_carry_sql_is_refused() {
        for bad in [
            "",
            ".",
            "a.",
            ".a",
            "a..b",
            "a.b.c",
            "1abc",
            "fn()",
            "fn; DROP TABLE x",
            "fn --",
            "a b",
            "a-b",
            "\"unterminated",
            "\"a\"b",
            "[x]",
            "\"tab\there\"",
            "\"\"",
        ] {
            assert!(sql(bad, Postgres).is_err(), "postgres accepted {bad:?}");
        }
        for bad in [
            "",
            "a.b.c",
            "[unterminated",
            "[a]b",
            "EXEC x",
            "x;y",
            "\"quoted\"",
            "@var",
            "#temp",
            "[]",
        ] {
            assert!(sql(bad, SqlServer).is_err(), "sql server accepted {bad:?}");
        }
    }

    #[test]
    fn parts_longer_than_the_database_allows_are_refused() {
        assert!(sql(&"a".repeat(63), Postgres).is_ok());
        assert!(sql(&"a".repeat(64), Postgres).is_err());
        assert!(sql(&"a".repeat(128), SqlServer).is_ok());
        assert!(sql(&"a".repeat(129), SqlServer).is_err());
    }

    #[test]
    fn the_error_says_what_is_expected() {
        let err = sql("a b", Postgres).unwrap_err();
        assert!(err.contains("schema.name"), "{err}");
    }
}
