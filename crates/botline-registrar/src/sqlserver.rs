//! [`SqlServerRegistrar`]: a SQL Server stored procedure decides.
//!
//! **Not run against a live SQL Server.** None runs where this crate is built and tested: the
//! statement, its bound parameters, how the answer is read and how errors are sorted are
//! unit-tested, and so is the behaviour against closed, silent and hanging TCP ports; the TDS
//! exchange itself is tiberius's. Run it against a staging server before relying on it.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use tiberius::error::Error as TdsError;
use tiberius::{Client, ColumnData, Config, Query, Row};
use tokio::net::TcpStream;
use tokio_util::compat::{Compat, TokioAsyncWriteCompatExt};

use crate::identifier::{Dialect, QualifiedName};
use crate::redact::Secrets;
use crate::{Registrar, RegistrarError, RegistrationRequest};

type Connection = Client<Compat<TcpStream>>;

/// The procedure's parameters as operators read them.
const PARAMETERS: &str = "@Username nvarchar, @Token nvarchar, @TelegramUserId bigint, \
                          @ChatId bigint";

/// How long [`SqlServerRegistrar`] waits. Built from [`Default`] and the setters.
#[derive(Debug, Clone)]
pub struct SqlServerOptions {
    connect_timeout: Duration,
    query_timeout: Duration,
}

impl Default for SqlServerOptions {
    /// 5 s to connect (TCP, TLS and login), 5 s for the procedure to answer.
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            query_timeout: Duration::from_secs(5),
        }
    }
}

impl SqlServerOptions {
    /// How long opening a connection (TCP, TLS, login) may take.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long the server may stay silent while answering the call.
    pub fn query_timeout(mut self, timeout: Duration) -> Self {
        self.query_timeout = timeout;
        self
    }
}

/// Registers through a SQL Server stored procedure, by default
/// `dbo.PartyTelegramUser_REGISTER_tr`, with bound parameters:
///
/// ```sql
/// SET NOCOUNT ON;
/// DECLARE @rc int;
/// EXEC @rc = [dbo].[PartyTelegramUser_REGISTER_tr] @Username = @P1, @Token = @P2,
///     @TelegramUserId = @P3, @ChatId = @P4;
/// SELECT @rc AS botline_return_code;
/// ```
///
/// `@P1` and `@P2` are `nvarchar`, `@P3` and `@P4` `bigint`.
///
/// # What the procedure's answer means
///
/// Only an explicit yes registers; the contract fails closed.
///
/// - **Registered** (`Ok(true)`): its first result set is one row whose first column is `1`
///   (a `bit`, an integer, or a `decimal` without a fraction) **and** its return code is 0
///   (`RETURN 0`, or no `RETURN`).
/// - **Refused** (`Ok(false)`): its first result set has no row, or a first column of `0` or
///   `NULL`, whatever the return code; or it returns no result set and a return code other than
///   0 (`RETURN 1`).
/// - **No answer** ([`RegistrarError::Misconfigured`], never a registration): no result set
///   and return code 0 (what a procedure that says nothing returns), a `1` that the return code
///   contradicts, any other value (2, -1, 1.5) or type, more than one row, an unreadable return
///   code. The worker logs a misconfiguration as an error and retries the update, then
///   dead-letters it: a user whose procedure answered nothing is not registered, and is not
///   told that their credentials are wrong when the fault is the procedure's.
/// - An error it raises is not a refusal: it becomes [`RegistrarError::Unavailable`] (retried),
///   or [`RegistrarError::Misconfigured`] for errors no retry mends (procedure missing, wrong
///   parameters, permission or login refused, conversion failures).
///
/// # Connections
///
/// One connection, opened by the first call and kept; a call that fails in any way drops it, and
/// the next call opens a new one (following one Azure SQL redirect). Calls through one
/// registrar are serialized: registrations are rare, and a queue of them waits at most the
/// connect and query timeouts before it is [`RegistrarError::Unavailable`].
///
/// **Not run against a live SQL Server**: see the crate's docs.
pub struct SqlServerRegistrar {
    config: Config,
    procedure: QualifiedName,
    /// `host:port`, for messages.
    target: String,
    secrets: Secrets,
    options: SqlServerOptions,
    connection: tokio::sync::Mutex<Option<Connection>>,
}

impl fmt::Debug for SqlServerRegistrar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqlServerRegistrar")
            .field("target", &self.target)
            .field("procedure", &self.procedure)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl SqlServerRegistrar {
    /// A registrar for `procedure` (`name` or `schema.name`, parts plain identifiers or
    /// `[bracketed]`) on the server an ADO.NET connection string names, e.g.
    /// `server=tcp:db.example,1433;database=party;user=bot;password=…;encrypt=true`.
    /// Connects lazily: nothing is opened until the first call.
    pub fn new(ado_connection_string: &str, procedure: &str) -> Result<Self, RegistrarError> {
        Self::with_options(
            ado_connection_string,
            procedure,
            SqlServerOptions::default(),
        )
    }

    /// [`new`](Self::new) with other timeouts.
    pub fn with_options(
        ado_connection_string: &str,
        procedure: &str,
        options: SqlServerOptions,
    ) -> Result<Self, RegistrarError> {
        let procedure = QualifiedName::parse(procedure, Dialect::SqlServer)
            .map_err(RegistrarError::Misconfigured)?;
        let secrets = connection_string_secrets(ado_connection_string);
        let mut config = Config::from_ado_string(ado_connection_string).map_err(|e| {
            RegistrarError::Misconfigured(format!(
                "the SQL Server connection string is not valid: {}",
                secrets.scrub(&e.to_string(), &[])
            ))
        })?;
        config.application_name("botline-registrar");
        config.handshake_timeout(Some(options.connect_timeout));
        config.command_timeout(Some(options.query_timeout));
        Ok(Self {
            target: config.get_addr(),
            config,
            procedure,
            secrets,
            options,
            connection: tokio::sync::Mutex::new(None),
        })
    }

    /// The most a call waits in all: for the connection, to connect, for the answer.
    fn budget(&self) -> Duration {
        self.options.connect_timeout + self.options.query_timeout
    }

    /// A new connection, following one redirect.
    async fn open(&self, token: &[&str]) -> Result<Connection, RegistrarError> {
        let mut config = self.config.clone();
        for _ in 0..2 {
            let addr = config.get_addr();
            let tcp = tokio::time::timeout(self.options.connect_timeout, TcpStream::connect(&addr))
                .await
                .map_err(|_| {
                    RegistrarError::Unavailable(format!(
                        "cannot connect to SQL Server at {addr} within {:?}",
                        self.options.connect_timeout
                    ))
                })?
                .map_err(|e| {
                    RegistrarError::Unavailable(format!(
                        "cannot connect to SQL Server at {addr}: {}",
                        self.secrets.scrub(&e.to_string(), token)
                    ))
                })?;
            // Only latency is at stake if this fails.
            let _ = tcp.set_nodelay(true);
            match Client::connect(config.clone(), tcp.compat_write()).await {
                Ok(client) => return Ok(client),
                Err(TdsError::Routing { host, port }) => {
                    config.host(host);
                    config.port(port);
                }
                Err(e) => return Err(self.error(&e, token)),
            }
        }
        Err(RegistrarError::Unavailable(format!(
            "SQL Server at {} redirected the connection more than once",
            self.target
        )))
    }

    /// Runs `query` on the kept connection (or a new one) within the budget, keeping the
    /// connection only if everything went well.
    async fn run(&self, query: Query<'_>, token: &[&str]) -> Result<Vec<Vec<Row>>, RegistrarError> {
        let work = async {
            let mut slot = self.connection.lock().await;
            // Taken out while in use, so that a call abandoned half-way leaves nothing behind.
            let mut client = match slot.take() {
                Some(client) => client,
                None => self.open(token).await?,
            };
            let sets = match query.query(&mut client).await {
                Ok(stream) => stream.into_results().await,
                Err(e) => Err(e),
            }
            .map_err(|e| self.error(&e, token))?;
            *slot = Some(client);
            Ok(sets)
        };
        tokio::time::timeout(self.budget(), work)
            .await
            .unwrap_or_else(|_| {
                Err(RegistrarError::Unavailable(format!(
                    "SQL Server at {} did not answer within {:?}",
                    self.target,
                    self.budget()
                )))
            })
    }

    /// What the procedure's answer (its result sets and return code) means for the caller: see
    /// [`decide`]. An answer the contract does not define is never a registration: it is
    /// [`RegistrarError::Misconfigured`], which the worker logs as an error before it retries
    /// the update and at last dead-letters it, rather than a refusal that would tell the user
    /// their credentials are wrong and leave no trace of a procedure that answers nothing.
    fn answer(&self, sets: &[Vec<Row>]) -> Result<bool, RegistrarError> {
        decide(sets).map_err(|why| {
            RegistrarError::Misconfigured(format!(
                "stored procedure {}: {why}; see botline-registrar's README for the contract",
                self.procedure
            ))
        })
    }

    /// What a driver error means for the caller, its text scrubbed of the password and `token`.
    fn error(&self, e: &TdsError, token: &[&str]) -> RegistrarError {
        let text = self.secrets.scrub(&e.to_string(), token);
        let procedure = &self.procedure;
        match (classify(e), e.code()) {
            (Class::Unavailable, _) => {
                RegistrarError::Unavailable(format!("SQL Server at {}: {text}", self.target))
            }
            (Class::Misconfigured, Some(2812 | 201 | 8144 | 8145 | 8146)) => {
                RegistrarError::Misconfigured(format!(
                    "stored procedure {procedure} cannot be called with {PARAMETERS}: {text}; \
                     see botline-registrar's README for the contract"
                ))
            }
            (Class::Misconfigured, _) => RegistrarError::Misconfigured(format!(
                "SQL Server at {} refused {procedure}: {text}",
                self.target
            )),
        }
    }
}

#[async_trait]
impl Registrar for SqlServerRegistrar {
    async fn register(&self, request: &RegistrationRequest<'_>) -> Result<bool, RegistrarError> {
        let call = ProcedureCall::new(&self.procedure, request);
        let sets = self.run(call.into_query(), &[request.token]).await?;
        self.answer(&sets)
    }

    async fn ping(&self) -> Result<(), RegistrarError> {
        self.run(Query::new("SELECT 1"), &[]).await.map(drop)
    }
}

/// One bound parameter of the call.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Param<'a> {
    NVarChar(&'a str),
    BigInt(i64),
}

/// Text parameters show their length only: one of them is the token.
impl fmt::Debug for Param<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NVarChar(text) => write!(f, "NVarChar({} chars)", text.chars().count()),
            Self::BigInt(n) => write!(f, "BigInt({n})"),
        }
    }
}

/// The statement and parameters of one call, apart from sending them so that both can be
/// checked without a server.
#[derive(Clone, PartialEq, Eq)]
struct ProcedureCall<'a> {
    sql: String,
    params: [Param<'a>; 4],
}

impl fmt::Debug for ProcedureCall<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProcedureCall")
            .field("sql", &self.sql)
            .field("params", &self.params)
            .finish()
    }
}

impl<'a> ProcedureCall<'a> {
    fn new(procedure: &QualifiedName, request: &RegistrationRequest<'a>) -> Self {
        Self {
            sql: format!(
                "SET NOCOUNT ON;\n\
                 DECLARE @rc int;\n\
                 EXEC @rc = {procedure} @Username = @P1, @Token = @P2, \
                 @TelegramUserId = @P3, @ChatId = @P4;\n\
                 SELECT @rc AS {RETURN_CODE_COLUMN};"
            ),
            params: [
                Param::NVarChar(request.username),
                Param::NVarChar(request.token),
                Param::BigInt(request.telegram_user_id),
                Param::BigInt(request.chat_id),
            ],
        }
    }

    fn into_query(self) -> Query<'a> {
        let mut query = Query::new(self.sql);
        for param in self.params {
            match param {
                Param::NVarChar(text) => query.bind(text),
                Param::BigInt(n) => query.bind(n),
            }
        }
        query
    }
}

/// The column of the batch's last result set: `SELECT @rc AS botline_return_code`.
const RETURN_CODE_COLUMN: &str = "botline_return_code";

/// Registered or not, from the result sets of the call: the procedure's own sets, then the
/// return code (the last set, `SELECT @rc`). Fails closed: only an explicit yes registers.
///
/// | the procedure's answer | result |
/// | --- | --- |
/// | first result set: one row, first column `1` (`bit` or integer), return code 0 | `Ok(true)` |
/// | first result set: no row, or first column `0` or `NULL` (any return code) | `Ok(false)` |
/// | no result set, return code not 0 | `Ok(false)` |
/// | no result set, return code 0 (what a procedure that says nothing returns) | `Err` |
/// | first column `1` but return code not 0 (the procedure contradicts itself) | `Err` |
/// | first column an integer other than 0 or 1, a decimal with a fraction, or another type | `Err` |
/// | first result set of more than one row, or of no column | `Err` |
/// | the return code is missing, `NULL` or not an `int` | `Err` |
///
/// `Err` is an answer the contract does not define: [`SqlServerRegistrar`] reports it as
/// [`RegistrarError::Misconfigured`], never as a registration.
fn decide(sets: &[Vec<Row>]) -> Result<bool, String> {
    let Some((last, procedure_sets)) = sets.split_last() else {
        return Err("the call returned no result at all, not even its return code".into());
    };
    let code = return_code(last)?;
    let Some(first) = procedure_sets.first() else {
        return match code {
            0 => Err(
                "it returned no result set and return code 0, which is not an answer (it is \
                 also what a procedure that says nothing returns): not registered. It must \
                 SELECT 1 (registered) or 0 (refused) as its first result set"
                    .into(),
            ),
            _ => Ok(false),
        };
    };
    let row = match first.as_slice() {
        [] => return Ok(false),
        [row] => row,
        rows => {
            return Err(format!(
                "its first result set has {} rows; expected one row whose first column is 1 \
                 (registered) or 0 (refused)",
                rows.len()
            ));
        }
    };
    let Some((column, value)) = row.cells().next() else {
        return Err("its first result set has no column".into());
    };
    match flag(value) {
        Flag::Yes if code == 0 => Ok(true),
        Flag::Yes => Err(format!(
            "its first result set says registered but its return code is {code}; \
             registered is 1 with return code 0"
        )),
        Flag::No | Flag::Null => Ok(false),
        Flag::Other => Err(format!(
            "its first result column {:?} is {}; expected a bit or an integer, \
             1 = registered, 0 = refused",
            column.name(),
            number_text(value).unwrap_or_else(|| format!("of type {:?}", column.column_type()))
        )),
    }
}

/// The return code from the batch's last result set: one row, one `int` column named
/// [`RETURN_CODE_COLUMN`], not `NULL`.
fn return_code(set: &[Row]) -> Result<i32, String> {
    let cell = match set {
        [row] => row.cells().next(),
        _ => None,
    };
    match cell {
        Some((column, ColumnData::I32(Some(code)))) if column.name() == RETURN_CODE_COLUMN => {
            Ok(*code)
        }
        _ => Err("its return code could not be read".into()),
    }
}

/// What the first column of the answer row says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flag {
    /// `1`: registered.
    Yes,
    /// `0`: refused.
    No,
    /// `NULL`: refused.
    Null,
    /// Any other value or type: no answer.
    Other,
}

/// A bit or an integer (`tinyint` … `bigint`, or a `decimal` without a fraction) as a flag.
fn flag(value: &ColumnData<'_>) -> Flag {
    let number = |n: Option<i128>| match n {
        None => Flag::Null,
        Some(1) => Flag::Yes,
        Some(0) => Flag::No,
        Some(_) => Flag::Other,
    };
    match value {
        ColumnData::Bit(None) => Flag::Null,
        ColumnData::Bit(Some(true)) => Flag::Yes,
        ColumnData::Bit(Some(false)) => Flag::No,
        ColumnData::U8(n) => number(n.map(i128::from)),
        ColumnData::I16(n) => number(n.map(i128::from)),
        ColumnData::I32(n) => number(n.map(i128::from)),
        ColumnData::I64(n) => number(n.map(i128::from)),
        ColumnData::Numeric(None) => Flag::Null,
        ColumnData::Numeric(Some(n)) if n.dec_part() == 0 => number(Some(n.int_part())),
        _ => Flag::Other,
    }
}

/// A number as an error message shows it; `None` for other values (a text column could echo
/// anything, the token included, so only its type is shown).
fn number_text(value: &ColumnData<'_>) -> Option<String> {
    match value {
        ColumnData::U8(Some(n)) => Some(n.to_string()),
        ColumnData::I16(Some(n)) => Some(n.to_string()),
        ColumnData::I32(Some(n)) => Some(n.to_string()),
        ColumnData::I64(Some(n)) => Some(n.to_string()),
        ColumnData::Numeric(Some(n)) => Some(n.to_string()),
        _ => None,
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Class {
    Unavailable,
    Misconfigured,
}

/// Retry or call an operator. Network, TLS, protocol and timeout trouble and most server errors
/// (deadlocks, Azure's transient 40613/40501/49918…, errors the procedure raises itself) are
/// worth a retry; an unsupported encoding, a failed conversion and the server errors of
/// [`classify_server_error`] need an operator.
fn classify(e: &TdsError) -> Class {
    match e {
        TdsError::Server(token) => classify_server_error(token.code()),
        TdsError::Encoding(_) | TdsError::Conversion(_) => Class::Misconfigured,
        _ => Class::Unavailable,
    }
}

/// SQL Server errors that no retry mends: the procedure or an object it uses is missing, the
/// parameters do not fit it, a value does not convert, the login or a permission is refused.
fn classify_server_error(code: u32) -> Class {
    match code {
        // Could not find stored procedure; parameter expected / too many / not a parameter.
        2812 | 201 | 8144 | 8145 | 8146
        // Invalid object or column name, syntax errors inside the procedure.
        | 208 | 207 | 102 | 156
        // Conversion failures between the parameters and the procedure's types.
        | 245 | 8114 | 8115
        // Permission denied; the login cannot use the database.
        | 229 | 230 | 262 | 297 | 300 | 916
        // Login failed, untrusted domain, account locked or password expired.
        | 18456 | 18452 | 18486 | 18487 | 18488 => Class::Misconfigured,
        _ => Class::Unavailable,
    }
}

/// The password in an ADO.NET connection string, and the string itself.
fn connection_string_secrets(ado: &str) -> Secrets {
    let mut secrets = Secrets::default();
    secrets.add(ado);
    if let Ok(pairs) = connection_string::AdoNetString::from_str(ado) {
        for key in ["password", "pwd"] {
            if let Some(password) = pairs.get(key) {
                secrets.add(password.as_str());
            }
        }
    }
    secrets
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use tiberius::ColumnType;
    use tiberius::numeric::Numeric;

    use super::*;

    const ADO: &str = "server=tcp:127.0.0.1,1433;database=party;user=bot;\
                       password={S3cret;Pa55};TrustServerCertificate=true";

    fn request(token: &str) -> RegistrationRequest<'_> {
        RegistrationRequest {
            username: "alice",
            token,
            telegram_user_id: 7_000_000_001,
            chat_id: -1_001_234_567_890,
        }
    }

    fn procedure(name: &str) -> QualifiedName {
        QualifiedName::parse(name, Dialect::SqlServer).unwrap()
    }

    fn row(value: ColumnData<'static>, column_type: ColumnType) -> Row {
        Row::builder().column("answer", column_type, value).build()
    }

    fn return_code(code: i32) -> Vec<Row> {
        vec![
            Row::builder()
                .column(
                    RETURN_CODE_COLUMN,
                    ColumnType::Int4,
                    ColumnData::I32(Some(code)),
                )
                .build(),
        ]
    }

    #[test]
    fn the_call_execs_the_quoted_procedure_with_bound_parameters() {
        let token = "tok-Secret-123";
        let call = ProcedureCall::new(
            &procedure("dbo.PartyTelegramUser_REGISTER_tr"),
            &request(token),
        );
        assert_eq!(
            call.sql,
            "SET NOCOUNT ON;\n\
             DECLARE @rc int;\n\
             EXEC @rc = [dbo].[PartyTelegramUser_REGISTER_tr] @Username = @P1, @Token = @P2, \
             @TelegramUserId = @P3, @ChatId = @P4;\n\
             SELECT @rc AS botline_return_code;"
        );
        assert_eq!(
            call.params,
            [
                Param::NVarChar("alice"),
                Param::NVarChar(token),
                Param::BigInt(7_000_000_001),
                Param::BigInt(-1_001_234_567_890),
            ]
        );
        assert!(!call.sql.contains(token) && !call.sql.contains("alice"));
        assert!(!format!("{call:?}").contains(token));
        assert_eq!(call.into_query().param_count(), 4);
    }

    #[test]
    fn the_procedure_name_cannot_smuggle_sql_in() {
        let call = ProcedureCall::new(&procedure("[x]]; DROP TABLE t; --]"), &request("t0ken-123"));
        assert!(
            call.sql
                .contains("EXEC @rc = [x]]; DROP TABLE t; --] @Username"),
            "{}",
            call.sql
        );
        for bad in ["x; DROP TABLE t", "dbo.x --", "a.b.c", "x'", ""] {
            assert!(
                matches!(
                    SqlServerRegistrar::new(ADO, bad),
                    Err(RegistrarError::Misconfigured(_))
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn the_procedures_first_result_set_decides() {
        let bit = |b| vec![row(ColumnData::Bit(b), ColumnType::Bit)];
        assert_eq!(decide(&[bit(Some(true)), return_code(0)]), Ok(true));
        assert_eq!(decide(&[bit(None), return_code(0)]), Ok(false));
        // A refusal is a refusal whatever the return code.
        assert_eq!(decide(&[bit(Some(false)), return_code(0)]), Ok(false));
        assert_eq!(decide(&[bit(Some(false)), return_code(3)]), Ok(false));
        assert_eq!(decide(&[bit(None), return_code(3)]), Ok(false));
        let int = |n| vec![row(ColumnData::I32(n), ColumnType::Int4)];
        assert_eq!(decide(&[int(Some(1)), return_code(0)]), Ok(true));
        assert_eq!(decide(&[int(Some(0)), return_code(0)]), Ok(false));
        assert_eq!(decide(&[int(None), return_code(0)]), Ok(false));
        let tiny = vec![row(ColumnData::U8(Some(1)), ColumnType::Int1)];
        assert_eq!(decide(&[tiny, return_code(0)]), Ok(true));
        let small = vec![row(ColumnData::I16(Some(0)), ColumnType::Int2)];
        assert_eq!(decide(&[small, return_code(0)]), Ok(false));
        let big = vec![row(ColumnData::I64(Some(1)), ColumnType::Int8)];
        assert_eq!(decide(&[big, return_code(0)]), Ok(true));
        let decimal = |value, scale| {
            vec![row(
                ColumnData::Numeric(Some(Numeric::new_with_scale(value, scale))),
                ColumnType::Decimaln,
            )]
        };
        assert_eq!(decide(&[decimal(100, 2), return_code(0)]), Ok(true));
        assert_eq!(decide(&[decimal(0, 2), return_code(0)]), Ok(false));
        // Only the first set counts, and an empty one is a refusal.
        assert_eq!(
            decide(&[vec![], bit(Some(true)), return_code(0)]),
            Ok(false)
        );
        assert_eq!(
            decide(&[bit(Some(true)), bit(Some(false)), return_code(0)]),
            Ok(true)
        );
        // Further columns are the procedure's own business.
        let wide = Row::builder()
            .column("Registered", ColumnType::Bit, ColumnData::Bit(Some(true)))
            .column(
                "Message",
                ColumnType::NVarchar,
                ColumnData::String(Some(Cow::Borrowed("welcome"))),
            )
            .build();
        assert_eq!(decide(&[vec![wide], return_code(0)]), Ok(true));
    }

    #[test]
    fn without_a_result_set_only_a_failing_return_code_answers() {
        // RETURN 1 (or any code but 0) without a result set: refused, as SQL Server's
        // convention has it.
        assert_eq!(decide(&[return_code(1)]), Ok(false));
        assert_eq!(decide(&[return_code(-4)]), Ok(false));
        // RETURN 0 or no RETURN at all: no answer (below), never a registration.
        assert!(decide(&[return_code(0)]).is_err());
        assert!(decide(&[]).is_err());
        assert!(decide(&[vec![]]).is_err());
    }

    #[test]
    fn no_result_set_and_return_code_0_is_not_a_registration() {
        // What a procedure returns when it says nothing at all (an empty body, a missing
        // SELECT, a RETURN without a value): no answer, so no registration.
        let err = decide(&[return_code(0)]).expect_err("silence is not a yes");
        assert!(
            err.contains("no result set") && err.contains("return code 0"),
            "{err}"
        );
    }

    #[test]
    fn only_an_explicit_one_registers() {
        let int = |n| vec![row(ColumnData::I32(Some(n)), ColumnType::Int4)];
        // Integers other than 0 and 1 are no answer the contract defines.
        for n in [2, -1, 100] {
            assert!(decide(&[int(n), return_code(0)]).is_err(), "{n}");
        }
        let big = vec![row(ColumnData::I64(Some(42)), ColumnType::Int8)];
        assert!(decide(&[big, return_code(0)]).is_err());
        // A yes that the return code contradicts.
        let yes = || row(ColumnData::Bit(Some(true)), ColumnType::Bit);
        assert!(decide(&[vec![yes()], return_code(5)]).is_err());
        // More than one row: which one is the answer?
        assert!(decide(&[vec![yes(), yes()], return_code(0)]).is_err());
    }

    #[test]
    fn more_shapes_the_contract_does_not_define_are_no_registration() {
        // 1.5 is neither 1 nor 0.
        let fraction = vec![row(
            ColumnData::Numeric(Some(Numeric::new_with_scale(15, 1))),
            ColumnType::Decimaln,
        )];
        let err = decide(&[fraction, return_code(0)]).unwrap_err();
        assert!(err.contains("1.5"), "{err}");
        let yes = || vec![row(ColumnData::Bit(Some(true)), ColumnType::Bit)];
        // A return code that is NULL, of another type or under another name.
        let null_code = vec![
            Row::builder()
                .column(RETURN_CODE_COLUMN, ColumnType::Int4, ColumnData::I32(None))
                .build(),
        ];
        assert!(decide(&[yes(), null_code]).is_err());
        let big_code = vec![
            Row::builder()
                .column(
                    RETURN_CODE_COLUMN,
                    ColumnType::Int8,
                    ColumnData::I64(Some(0)),
                )
                .build(),
        ];
        assert!(decide(&[yes(), big_code]).is_err());
        let other_name = vec![row(ColumnData::I32(Some(0)), ColumnType::Int4)];
        assert!(decide(&[yes(), other_name]).is_err());
        // A row without a column.
        assert!(decide(&[vec![Row::builder().build()], return_code(0)]).is_err());
    }

    #[tokio::test]
    async fn an_undefined_answer_is_misconfigured_never_registered() {
        let registrar = SqlServerRegistrar::new(ADO, "dbo.Register").unwrap();
        let err = registrar
            .answer(&[return_code(0)])
            .expect_err("not registered");
        assert!(matches!(err, RegistrarError::Misconfigured(_)), "{err}");
        assert!(!err.is_retryable());
        let text = err.to_string();
        assert!(
            text.contains("[dbo].[Register]") && text.contains("README"),
            "{text}"
        );
        let contradiction = vec![row(ColumnData::Bit(Some(true)), ColumnType::Bit)];
        assert!(matches!(
            registrar.answer(&[contradiction, return_code(1)]),
            Err(RegistrarError::Misconfigured(_))
        ));
        // The defined answers pass through.
        let yes = vec![row(ColumnData::Bit(Some(true)), ColumnType::Bit)];
        assert_eq!(registrar.answer(&[yes, return_code(0)]), Ok(true));
        assert_eq!(registrar.answer(&[return_code(1)]), Ok(false));
    }

    #[test]
    fn an_answer_of_another_type_is_a_misconfiguration() {
        let text = vec![row(
            ColumnData::String(Some(Cow::Borrowed("OK"))),
            ColumnType::NVarchar,
        )];
        let err = decide(&[text, return_code(0)]).unwrap_err();
        assert!(
            err.contains("bit or an integer") && err.contains("answer"),
            "{err}"
        );
    }

    #[test]
    fn driver_errors_are_sorted_into_retry_and_operator() {
        use tiberius::error::IoErrorKind;
        let unavailable = [
            TdsError::Io {
                kind: IoErrorKind::ConnectionRefused,
                message: "refused".into(),
            },
            TdsError::Io {
                kind: IoErrorKind::TimedOut,
                message: "timed out".into(),
            },
            TdsError::Protocol("unexpected token".into()),
            TdsError::Tls("handshake failed".into()),
            TdsError::Routing {
                host: "other".into(),
                port: 1433,
            },
            TdsError::Utf16,
        ];
        for e in &unavailable {
            assert_eq!(classify(e), Class::Unavailable, "{e}");
        }
        for e in [
            TdsError::Conversion("nvarchar to bigint".into()),
            TdsError::Encoding("unsupported collation".into()),
        ] {
            assert_eq!(classify(&e), Class::Misconfigured, "{e}");
        }
    }

    #[test]
    fn server_errors_are_sorted_into_retry_and_operator() {
        for code in [2812, 201, 8144, 8145, 229, 208, 8114, 18456, 18488, 916] {
            assert_eq!(classify_server_error(code), Class::Misconfigured, "{code}");
        }
        // Deadlock victim, lock timeout, Azure's transient errors, a procedure's own RAISERROR.
        for code in [
            1205, 1222, 4060, 40613, 40501, 40197, 49918, 10928, 233, 50000,
        ] {
            assert_eq!(classify_server_error(code), Class::Unavailable, "{code}");
        }
    }

    #[tokio::test]
    async fn error_text_names_the_procedure_and_hides_secrets() {
        let registrar = SqlServerRegistrar::new(ADO, "dbo.Register").unwrap();
        let e = TdsError::Conversion("could not convert tok-Secret-123".into());
        let err = registrar.error(&e, &["tok-Secret-123"]);
        let text = format!("{err} {err:?}");
        assert!(matches!(err, RegistrarError::Misconfigured(_)));
        assert!(text.contains("[dbo].[Register]"), "{text}");
        assert!(!text.contains("tok-Secret-123"), "{text}");
        let e = TdsError::Protocol("echo S3cret;Pa55".into());
        let text = registrar.error(&e, &[]).to_string();
        assert!(
            !text.contains("S3cret;Pa55") && text.contains("127.0.0.1:1433"),
            "{text}"
        );
    }

    #[test]
    fn the_password_is_found_in_the_connection_string_and_kept_out_of_debug() {
        let secrets = connection_string_secrets(ADO);
        assert_eq!(secrets.scrub("x S3cret;Pa55 y", &[]), "x [redacted] y");
        let secrets = connection_string_secrets("Server=h;User Id=u;Pwd=plainpw;");
        assert_eq!(secrets.scrub("plainpw", &[]), "[redacted]");
        let registrar = SqlServerRegistrar::new(ADO, "dbo.Register").unwrap();
        let debug = format!("{registrar:?}");
        assert!(!debug.contains("S3cret"), "{debug}");
        assert!(debug.contains("[dbo].[Register]") && debug.contains("127.0.0.1:1433"));
    }

    #[test]
    fn a_bad_connection_string_is_misconfigured_without_echoing_it() {
        let err = SqlServerRegistrar::new("server=tcp:h,notaport;password=Hunter2pw", "dbo.X")
            .unwrap_err();
        assert!(matches!(err, RegistrarError::Misconfigured(_)), "{err}");
        assert!(!format!("{err} {err:?}").contains("Hunter2pw"), "{err}");
    }

    #[test]
    fn options_have_sane_defaults_and_setters() {
        let o = SqlServerOptions::default()
            .connect_timeout(Duration::from_millis(250))
            .query_timeout(Duration::from_secs(2));
        assert_eq!(o.connect_timeout, Duration::from_millis(250));
        assert_eq!(o.query_timeout, Duration::from_secs(2));
    }
}
