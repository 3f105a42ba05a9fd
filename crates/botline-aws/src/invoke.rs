//! The bot's own handler as a Lambda function: each update is the payload of a synchronous
//! invocation (`RequestResponse`), and the function's result is read as the answer of a webhook
//! handler.
//!
//! The result is either the answer itself — a Bot API call (`{"method":"sendMessage", …}`), an
//! array of calls, `{}`, `{"ok":true}` or `null` (a Node handler that returns nothing) — or an
//! API Gateway-style response (`{"statusCode":200,"headers":{…},"body":"…"}`, with
//! `isBase64Encoded`), which is what a framework's Lambda adapter returns (grammY's
//! `aws-lambda-async`, Telegraf's, Mangum for aiogram). A function that throws
//! (`X-Amz-Function-Error`) fails the attempt, as a 5xx would.
//!
//! The invocation's client context carries `{"custom":{"webhook-id":"<update id>",
//! "botline-attempt":"<n>"}}` (Node: `context.clientContext.Custom`; Python:
//! `context.client_context.custom`): the update id is the key to make the handler's own side
//! effects idempotent.
//!
//! The client is made at the first invocation, from the environment as the SDK reads it (the
//! function's role, `AWS_REGION`); `AWS_ENDPOINT_URL_LAMBDA` points it elsewhere (a stand-in),
//! as `AWS_ENDPOINT_URL` would for every service.

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_lambda::error::SdkError;
use aws_sdk_lambda::operation::invoke::InvokeError;
use aws_sdk_lambda::primitives::Blob;
use aws_sdk_lambda::types::InvocationType;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};
use std::fmt;
use std::time::Duration;
use tokio::sync::OnceCell;

/// The longest a new connection to Lambda may take. The invocation itself is bounded by the
/// caller (the handler timeout), not here.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The most of a failed function's error message kept in the attempt's error.
const ERROR_CHARS: usize = 300;

/// A Lambda function that handles updates, by name, ARN or qualified ARN.
pub struct HandlerFunction {
    name: String,
    client: OnceCell<aws_sdk_lambda::Client>,
}

impl fmt::Debug for HandlerFunction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerFunction")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// What the function answered, as an HTTP handler would have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionAnswer {
    /// The status: 200 for a plain result, the `statusCode` of an API Gateway-style one.
    pub status: u16,
    /// The `Content-Type` of an API Gateway-style result; JSON otherwise.
    pub content_type: Option<String>,
    /// The `Retry-After` header of an API Gateway-style result.
    pub retry_after: Option<String>,
    /// The answer's body (empty for `null`).
    pub body: Vec<u8>,
}

/// Why an invocation did not give an answer.
#[derive(Debug, thiserror::Error)]
pub enum InvokeFailure {
    /// The function threw, Lambda refused the call, or it could not be made.
    #[error("{0}")]
    Failed(String),
    /// Lambda throttled the call (`TooManyRequestsException`): try again after `after`, if said.
    #[error("{reason}")]
    Throttled {
        reason: String,
        after: Option<Duration>,
    },
}

/// A function name, a partial ARN or a full ARN, with an optional qualifier (as Lambda's
/// `FunctionName` takes it).
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 170
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_:.$".contains(c))
        && (!name.starts_with("arn:") || name.contains(":function:"))
}

impl HandlerFunction {
    /// The function `name` (a name, an ARN, or either with `:alias` or `:version`).
    pub fn new(name: &str) -> Result<Self, String> {
        let name = name.trim();
        if !valid_name(name) {
            return Err(
                "must be a Lambda function's name or ARN (letters, digits, - and _; an ARN \
                 arn:aws:lambda:REGION:ACCOUNT:function:NAME, optionally :ALIAS)"
                    .into(),
            );
        }
        Ok(Self {
            name: name.to_owned(),
            client: OnceCell::new(),
        })
    }

    /// Invokes through `client` instead of one made from the environment.
    pub fn with_client(self, client: aws_sdk_lambda::Client) -> Self {
        Self {
            name: self.name,
            client: OnceCell::new_with(Some(client)),
        }
    }

    /// The function's name or ARN, as configured.
    pub fn name(&self) -> &str {
        &self.name
    }

    async fn client(&self) -> &aws_sdk_lambda::Client {
        self.client
            .get_or_init(|| async {
                let region = aws_config::meta::region::RegionProviderChain::default_provider()
                    .or_else(Region::new("eu-north-1"));
                let config = aws_config::defaults(BehaviorVersion::latest())
                    .region(region)
                    .retry_config(RetryConfig::standard())
                    .timeout_config(
                        TimeoutConfig::builder()
                            .connect_timeout(CONNECT_TIMEOUT)
                            .build(),
                    )
                    .load()
                    .await;
                aws_sdk_lambda::Client::new(&config)
            })
            .await
    }

    /// Invokes the function with `payload` and reads its answer.
    pub async fn invoke(
        &self,
        payload: &[u8],
        update_id: &str,
        attempt: u32,
    ) -> Result<FunctionAnswer, InvokeFailure> {
        let context =
            json!({"custom": {"webhook-id": update_id, "botline-attempt": attempt.to_string()}});
        let output = self
            .client()
            .await
            .invoke()
            .function_name(&self.name)
            .invocation_type(InvocationType::RequestResponse)
            .client_context(STANDARD.encode(context.to_string()))
            .payload(Blob::new(payload))
            .send()
            .await
            .map_err(|e| self.refused(&e))?;
        let result = output.payload.map(Blob::into_inner).unwrap_or_default();
        if let Some(kind) = output.function_error {
            return Err(InvokeFailure::Failed(format!(
                "the handler function {} failed ({kind}): {}",
                self.name,
                thrown(&result)
            )));
        }
        answer_of(result).map_err(|reason| {
            InvokeFailure::Failed(format!(
                "the handler function {}'s result: {reason}",
                self.name
            ))
        })
    }

    fn refused<R: fmt::Debug>(&self, error: &SdkError<InvokeError, R>) -> InvokeFailure {
        let reason = crate::describe(&format!("Invoke {}", self.name), error);
        if let SdkError::ServiceError(service) = error
            && let InvokeError::TooManyRequestsException(throttled) = service.err()
        {
            let after = throttled
                .retry_after_seconds()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            return InvokeFailure::Throttled { reason, after };
        }
        InvokeFailure::Failed(reason)
    }
}

/// A thrown error's `errorType: errorMessage`, cut short; its stack is left out.
fn thrown(result: &[u8]) -> String {
    let shown = match serde_json::from_slice::<Value>(result) {
        Ok(error) => {
            let kind = error["errorType"].as_str().unwrap_or("Error");
            let message = error["errorMessage"].as_str().unwrap_or("no message");
            format!("{kind}: {message}")
        }
        Err(_) => String::from_utf8_lossy(result).into_owned(),
    };
    let mut cut: String = shown.chars().take(ERROR_CHARS).collect();
    if cut.len() < shown.len() {
        cut.push('…');
    }
    cut
}

/// The answer a function's result holds: the answer itself, or an API Gateway-style response.
pub fn answer_of(result: Vec<u8>) -> Result<FunctionAnswer, String> {
    let plain = |body| FunctionAnswer {
        status: 200,
        content_type: Some("application/json".into()),
        retry_after: None,
        body,
    };
    let Ok(value) = serde_json::from_slice::<Value>(&result) else {
        // Not JSON: left to the caller, which says so.
        return Ok(plain(result));
    };
    let Value::Object(response) = &value else {
        return Ok(plain(if value.is_null() { Vec::new() } else { result }));
    };
    let Some(status) = response.get("statusCode") else {
        return Ok(plain(result));
    };
    let status = status
        .as_u64()
        .and_then(|s| u16::try_from(s).ok())
        .filter(|s| (100..=599).contains(s))
        .ok_or("its statusCode is not an HTTP status")?;
    let header = |name: &str| {
        response
            .get("headers")
            .and_then(Value::as_object)?
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .and_then(|(_, value)| value.as_str())
            .map(str::to_owned)
    };
    let body = match response.get("body") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(body))
            if response.get("isBase64Encoded") == Some(&Value::Bool(true)) =>
        {
            STANDARD
                .decode(body)
                .map_err(|_| "its body is marked base64 but is not")?
        }
        Some(Value::String(body)) => body.clone().into_bytes(),
        Some(other) => other.to_string().into_bytes(),
    };
    Ok(FunctionAnswer {
        status,
        content_type: header("content-type"),
        retry_after: header("retry-after"),
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_arns_are_taken_and_anything_else_refused() {
        for name in [
            "my-bot_handler",
            "my-bot:live",
            "123456789012:function:my-bot",
            "arn:aws:lambda:eu-north-1:123456789012:function:my-bot",
            "arn:aws:lambda:eu-north-1:123456789012:function:my-bot:$LATEST",
        ] {
            assert!(HandlerFunction::new(name).is_ok(), "{name}");
        }
        for name in [
            "",
            "my bot",
            "https://example.com/bot",
            "arn:aws:s3:::bucket",
            &"x".repeat(171),
        ] {
            assert!(HandlerFunction::new(name).is_err(), "{name}");
        }
    }

    #[test]
    fn a_plain_result_is_the_answer() {
        let call = br#"{"method":"sendMessage","chat_id":1,"text":"hi"}"#.to_vec();
        let answer = answer_of(call.clone()).unwrap();
        assert_eq!(answer.status, 200);
        assert_eq!(answer.body, call);
        assert_eq!(answer.content_type.as_deref(), Some("application/json"));
        assert_eq!(answer_of(b"null".to_vec()).unwrap().body, b"");
        assert_eq!(answer_of(b"[]".to_vec()).unwrap().body, b"[]");
        assert_eq!(answer_of(b"\"text\"".to_vec()).unwrap().body, b"\"text\"");
    }

    #[test]
    fn an_api_gateway_response_is_read_as_http() {
        let answer = answer_of(
            br#"{"statusCode":200,"headers":{"Content-Type":"application/x-www-form-urlencoded"},"body":"method=sendMessage&chat_id=1&text=hi"}"#
                .to_vec(),
        )
        .unwrap();
        assert_eq!(answer.status, 200);
        assert_eq!(
            answer.content_type.as_deref(),
            Some("application/x-www-form-urlencoded")
        );
        assert_eq!(answer.body, b"method=sendMessage&chat_id=1&text=hi");

        let encoded = STANDARD.encode(r#"{"method":"sendMessage"}"#);
        let answer = answer_of(
            json!({"statusCode": 200, "isBase64Encoded": true, "body": encoded})
                .to_string()
                .into_bytes(),
        )
        .unwrap();
        assert_eq!(answer.body, br#"{"method":"sendMessage"}"#);

        let answer =
            answer_of(br#"{"statusCode":503,"headers":{"retry-after":"20"}}"#.to_vec()).unwrap();
        assert_eq!(
            (answer.status, answer.retry_after.as_deref()),
            (503, Some("20"))
        );
        assert!(answer.body.is_empty());

        assert!(answer_of(br#"{"statusCode":"ok"}"#.to_vec()).is_err());
        assert!(
            answer_of(br#"{"statusCode":200,"isBase64Encoded":true,"body":"%%"}"#.to_vec())
                .is_err()
        );
    }

    #[test]
    fn a_thrown_error_is_shown_short_and_without_its_stack() {
        let error = json!({
            "errorType": "TypeError",
            "errorMessage": "x is undefined",
            "trace": ["at handler (/var/task/index.js:3:5)"],
        });
        let shown = thrown(error.to_string().as_bytes());
        assert_eq!(shown, "TypeError: x is undefined");
        let long = json!({"errorMessage": "y".repeat(1000)});
        assert!(thrown(long.to_string().as_bytes()).chars().count() <= ERROR_CHARS + 1);
    }
}
