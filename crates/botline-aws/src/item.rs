//! DynamoDB items and expressions: reading typed attributes back, and naming every attribute
//! through a placeholder (DynamoDB reserves hundreds of words, `state` and `timestamp` among them).

use aws_sdk_dynamodb::types::AttributeValue;
use botline_core::BackendError;
use std::collections::HashMap;
use std::fmt::Display;
use std::str::FromStr;

pub(crate) type Item = HashMap<String, AttributeValue>;

pub(crate) fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

pub(crate) fn n(value: impl Display) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

/// A string attribute, if present.
pub(crate) fn get_s<'a>(item: &'a Item, name: &str) -> Option<&'a str> {
    match item.get(name) {
        Some(AttributeValue::S(value)) => Some(value),
        _ => None,
    }
}

pub(crate) fn opt_s(item: &Item, name: &str) -> Option<String> {
    get_s(item, name).map(str::to_owned)
}

pub(crate) fn req_s(item: &Item, name: &str, what: &dyn Display) -> Result<String, BackendError> {
    get_s(item, name)
        .map(str::to_owned)
        .ok_or_else(|| corrupt(what, name))
}

/// A number attribute, if present.
pub(crate) fn opt_n<T: FromStr>(
    item: &Item,
    name: &str,
    what: &dyn Display,
) -> Result<Option<T>, BackendError> {
    match item.get(name) {
        None | Some(AttributeValue::Null(_)) => Ok(None),
        Some(AttributeValue::N(value)) => value.parse().map(Some).map_err(|_| corrupt(what, name)),
        Some(_) => Err(corrupt(what, name)),
    }
}

pub(crate) fn req_n<T: FromStr>(
    item: &Item,
    name: &str,
    what: &dyn Display,
) -> Result<T, BackendError> {
    opt_n(item, name, what)?.ok_or_else(|| corrupt(what, name))
}

pub(crate) fn opt_bool(item: &Item, name: &str) -> Option<bool> {
    match item.get(name) {
        Some(AttributeValue::Bool(value)) => Some(*value),
        _ => None,
    }
}

fn corrupt(what: &dyn Display, name: &str) -> BackendError {
    BackendError::Corrupt(format!(
        "{what}: attribute {name} is missing or of the wrong type"
    ))
}

/// The `#name` placeholders of some expressions, each standing for the attribute `name`.
pub(crate) fn names<'a>(
    expressions: impl IntoIterator<Item = &'a str>,
) -> Option<HashMap<String, String>> {
    let mut names = HashMap::new();
    for expression in expressions {
        let mut rest = expression;
        while let Some(start) = rest.find('#') {
            let tail = &rest[start + 1..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            let name = &tail[..end];
            if !name.is_empty() {
                names.insert(format!("#{name}"), name.to_owned());
            }
            rest = &tail[end..];
        }
    }
    (!names.is_empty()).then_some(names)
}

/// `:name` values for an expression.
pub(crate) fn values<const N: usize>(
    values: [(&str, AttributeValue); N],
) -> Option<HashMap<String, AttributeValue>> {
    let values: HashMap<String, AttributeValue> = values
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value))
        .collect();
    (!values.is_empty()).then_some(values)
}

/// One key attribute.
pub(crate) fn key(name: &str, value: AttributeValue) -> Item {
    HashMap::from([(name.to_owned(), value)])
}

/// Seconds, rounded up, as SQS counts visibility timeouts and delays (at least 0).
pub(crate) fn whole_seconds(millis: i64) -> i32 {
    let seconds = millis.max(0).saturating_add(999) / 1000;
    i32::try_from(seconds).unwrap_or(i32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_name_their_attributes() {
        let names = names(["SET #state = :s, #leaseUntil = :u", "#state <> :done"]).unwrap();
        assert_eq!(names.len(), 2);
        assert_eq!(names["#state"], "state");
        assert_eq!(names["#leaseUntil"], "leaseUntil");
        assert_eq!(super::names(["SET a = :b"]), None);
    }

    #[test]
    fn whole_seconds_round_up() {
        assert_eq!(whole_seconds(0), 0);
        assert_eq!(whole_seconds(1), 1);
        assert_eq!(whole_seconds(1000), 1);
        assert_eq!(whole_seconds(1001), 2);
        assert_eq!(whole_seconds(-5), 0);
    }
}
