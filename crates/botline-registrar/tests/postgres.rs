//! `PostgresRegistrar` against a real Postgres: a fresh database per test, created and dropped
//! here, with the README's example function installed from `sql/example_postgres.sql`.
//!
//! The server is `BOTLINE_TEST_POSTGRES` (default `postgres://postgres@127.0.0.1:5432`, a role
//! allowed to create databases). Without it these tests fail; they never skip.
#![cfg(feature = "postgres")]

use std::time::{Duration, Instant};

use botline_registrar::{
    PostgresOptions, PostgresRegistrar, Registrar, RegistrarError, RegistrationRequest,
};
use sqlx::{Connection, Executor, PgConnection};

const EXAMPLE_SQL: &str = include_str!("../sql/example_postgres.sql");
const FUNCTION: &str = "party_telegram_user_register";
const TOKEN: &str = "Tok3n-for-alice_0001";

fn server() -> String {
    std::env::var("BOTLINE_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned())
}

/// A database of its own for one test, dropped (with its connections) when the test ends,
/// whether it passed or not.
struct TestDb {
    name: String,
}

impl TestDb {
    async fn new() -> Self {
        let name = format!("botline_registrar_{}", uuid::Uuid::new_v4().simple());
        let admin = format!("{}/postgres", server());
        let mut conn = PgConnection::connect(&admin).await.unwrap_or_else(|e| {
            panic!(
                "these tests need Postgres at {admin} (set BOTLINE_TEST_POSTGRES to another \
                 server): {e}"
            )
        });
        conn.execute(format!(r#"CREATE DATABASE "{name}""#).as_str())
            .await
            .expect("CREATE DATABASE");
        conn.close().await.ok();
        Self { name }
    }

    /// The database's URL, with `password` in it if given (trust auth ignores it).
    fn url_with_password(&self, password: Option<&str>) -> String {
        let server = server();
        match password {
            Some(password) => format!(
                "{}/{}",
                server.replacen("postgres@", &format!("postgres:{password}@"), 1),
                self.name
            ),
            None => format!("{server}/{}", self.name),
        }
    }

    fn url(&self) -> String {
        self.url_with_password(None)
    }

    async fn conn(&self) -> PgConnection {
        PgConnection::connect(&self.url()).await.expect("connect")
    }

    async fn run(&self, sql: &str) {
        let mut conn = self.conn().await;
        sqlx::raw_sql(sql).execute(&mut conn).await.expect(sql);
        conn.close().await.ok();
    }

    /// A database with the example function, as an operator installs it.
    async fn with_example() -> Self {
        let db = Self::new().await;
        db.run(EXAMPLE_SQL).await;
        db
    }

    /// Issues `token` for `username`, valid for `ttl` seconds (negative: already expired).
    async fn issue(&self, token: &str, username: &str, ttl_seconds: i64) {
        let mut conn = self.conn().await;
        sqlx::query(
            "INSERT INTO party_registration_token (token_digest, username, expires_at)
             VALUES (sha256(convert_to($1, 'UTF8')), $2, now() + make_interval(secs => $3))",
        )
        .bind(token)
        .bind(username)
        .bind(ttl_seconds as f64)
        .execute(&mut conn)
        .await
        .expect("issue token");
        conn.close().await.ok();
    }

    async fn registrar(&self) -> PostgresRegistrar {
        PostgresRegistrar::connect(&self.url(), FUNCTION, PostgresOptions::default())
            .await
            .expect("connect")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = std::mem::take(&mut self.name);
        // Its own thread and runtime: a test's runtime may be gone, or panicking.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async {
                let mut conn = PgConnection::connect(&format!("{}/postgres", server())).await?;
                conn.execute(format!(r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#).as_str())
                    .await?;
                conn.close().await
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop a test database: {dropped:?}");
        }
    }
}

fn request<'a>(
    username: &'a str,
    token: &'a str,
    telegram_user_id: i64,
) -> RegistrationRequest<'a> {
    RegistrationRequest {
        username,
        token,
        telegram_user_id,
        chat_id: -1_001_234_567_890,
    }
}

/// Fails if `err`'s text or `Debug` shows a secret.
fn assert_hides(err: &RegistrarError, secrets: &[&str]) {
    let text = format!("{err} | {err:?}");
    for secret in secrets {
        assert!(!text.contains(secret), "{secret:?} leaked: {text}");
    }
}

/// A local port nothing listens on.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

#[tokio::test]
async fn a_good_token_registers_once_and_records_the_user() {
    let db = TestDb::with_example().await;
    db.issue(TOKEN, "alice", 3600).await;
    let registrar = db.registrar().await;
    registrar.ping().await.expect("ping");

    assert_eq!(
        registrar
            .register(&request("alice", TOKEN, 7_000_000_001))
            .await,
        Ok(true)
    );

    let mut conn = db.conn().await;
    let (username, chat_id): (String, i64) = sqlx::query_as(
        "SELECT username, chat_id FROM party_telegram_user WHERE telegram_user_id = $1",
    )
    .bind(7_000_000_001_i64)
    .fetch_one(&mut conn)
    .await
    .expect("registration recorded");
    assert_eq!((username.as_str(), chat_id), ("alice", -1_001_234_567_890));
    let redeemed_by: Option<i64> = sqlx::query_scalar(
        "SELECT redeemed_by FROM party_registration_token
          WHERE token_digest = sha256(convert_to($1, 'UTF8'))",
    )
    .bind(TOKEN)
    .fetch_one(&mut conn)
    .await
    .expect("token row");
    assert_eq!(redeemed_by, Some(7_000_000_001));
}

/// Issue 18: `sslmode=require` against this machine's Postgres (SSL on): the registrar's
/// connections are encrypted (`pg_stat_ssl`), and a registration goes through them.
#[tokio::test]
async fn sslmode_require_registers_over_tls() {
    let db = TestDb::with_example().await;
    db.issue(TOKEN, "alice", 3600).await;
    let url = format!(
        "{}?sslmode=require",
        db.url_with_password(Some("Url-Pw-123"))
    );
    let registrar = PostgresRegistrar::connect(&url, FUNCTION, PostgresOptions::default())
        .await
        .expect("connected over TLS");
    assert_eq!(
        registrar
            .register(&request("alice", TOKEN, 7_000_000_002))
            .await,
        Ok(true)
    );
    let mut conn = db.conn().await;
    let (encrypted, connections): (Option<bool>, i64) = sqlx::query_as(
        "SELECT bool_and(s.ssl), count(*) FROM pg_stat_ssl AS s
         JOIN pg_stat_activity AS a USING (pid)
         WHERE a.datname = current_database() AND a.application_name = 'botline-registrar'",
    )
    .fetch_one(&mut conn)
    .await
    .expect("pg_stat_ssl");
    assert!(
        connections >= 1 && encrypted == Some(true),
        "{connections} connections, encrypted: {encrypted:?}"
    );
}

#[tokio::test]
async fn the_same_user_presenting_a_redeemed_token_again_gets_true() {
    let db = TestDb::with_example().await;
    db.issue(TOKEN, "alice", 3600).await;
    let registrar = db.registrar().await;
    let alice = request("alice", TOKEN, 42);
    assert_eq!(registrar.register(&alice).await, Ok(true));
    // The worker crashed before recording the answer: the same message is processed again.
    assert_eq!(registrar.register(&alice).await, Ok(true));
    assert_eq!(registrar.register(&alice).await, Ok(true));

    let mut conn = db.conn().await;
    let users: i64 = sqlx::query_scalar("SELECT count(*) FROM party_telegram_user")
        .fetch_one(&mut conn)
        .await
        .expect("count");
    assert_eq!(users, 1);
}

#[tokio::test]
async fn the_same_user_replaying_after_the_token_expired_still_gets_true() {
    let db = TestDb::with_example().await;
    db.issue(TOKEN, "alice", 3600).await;
    let registrar = db.registrar().await;
    assert_eq!(
        registrar.register(&request("alice", TOKEN, 42)).await,
        Ok(true)
    );
    db.run("UPDATE party_registration_token SET expires_at = now() - interval '1 hour'")
        .await;
    assert_eq!(
        registrar.register(&request("alice", TOKEN, 42)).await,
        Ok(true)
    );
}

#[tokio::test]
async fn another_user_with_a_redeemed_token_is_refused() {
    let db = TestDb::with_example().await;
    db.issue(TOKEN, "alice", 3600).await;
    let registrar = db.registrar().await;
    assert_eq!(
        registrar.register(&request("alice", TOKEN, 42)).await,
        Ok(true)
    );
    assert_eq!(
        registrar.register(&request("alice", TOKEN, 43)).await,
        Ok(false)
    );
}

#[tokio::test]
async fn wrong_tokens_usernames_and_expired_tokens_are_refused() {
    let db = TestDb::with_example().await;
    db.issue(TOKEN, "alice", 3600).await;
    db.issue("Expired-token-0002", "bob", -60).await;
    let registrar = db.registrar().await;
    assert_eq!(
        registrar
            .register(&request("alice", "Wrong-token-0000", 42))
            .await,
        Ok(false)
    );
    assert_eq!(
        registrar.register(&request("mallory", TOKEN, 42)).await,
        Ok(false)
    );
    assert_eq!(
        registrar
            .register(&request("bob", "Expired-token-0002", 43))
            .await,
        Ok(false)
    );
    // None of the refusals used the token up.
    assert_eq!(
        registrar.register(&request("alice", TOKEN, 42)).await,
        Ok(true)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_many_users_racing_for_one_token_exactly_one_wins() {
    let db = TestDb::with_example().await;
    db.issue(TOKEN, "alice", 3600).await;
    let registrar = std::sync::Arc::new(db.registrar().await);
    let racers: Vec<_> = (0..8)
        .map(|user| {
            let registrar = registrar.clone();
            tokio::spawn(async move {
                registrar
                    .register(&request("alice", TOKEN, 100 + user))
                    .await
            })
        })
        .collect();
    let mut winners = 0;
    for racer in racers {
        if racer.await.expect("join").expect("an answer") {
            winners += 1;
        }
    }
    assert_eq!(winners, 1);
}

#[tokio::test]
async fn a_missing_function_is_misconfigured_and_says_what_to_create() {
    let db = TestDb::new().await;
    let err = PostgresRegistrar::connect(&db.url(), FUNCTION, PostgresOptions::default())
        .await
        .expect_err("no function yet");
    assert!(matches!(err, RegistrarError::Misconfigured(_)), "{err}");
    let text = err.to_string();
    assert!(
        text.contains(r#""party_telegram_user_register"(p_username text, p_token text"#)
            && text.contains("RETURNS boolean"),
        "{text}"
    );

    // Started lazily, the call itself says so.
    let registrar =
        PostgresRegistrar::connect_lazy(&db.url(), FUNCTION, PostgresOptions::default())
            .expect("lazy");
    let err = registrar
        .register(&request("alice", TOKEN, 42))
        .await
        .expect_err("no function");
    assert!(matches!(err, RegistrarError::Misconfigured(_)), "{err}");
    assert!(err.to_string().contains("42883"), "{err}");
    assert_hides(&err, &[TOKEN]);
}

#[tokio::test]
async fn a_function_of_another_result_type_is_misconfigured() {
    let db = TestDb::new().await;
    db.run(
        "CREATE FUNCTION party_telegram_user_register(text, text, bigint, bigint)
         RETURNS integer LANGUAGE sql AS 'SELECT 1'",
    )
    .await;
    let err = PostgresRegistrar::connect(&db.url(), FUNCTION, PostgresOptions::default())
        .await
        .expect_err("integer is not boolean");
    assert!(matches!(err, RegistrarError::Misconfigured(_)), "{err}");
    assert!(err.to_string().contains("expected boolean"), "{err}");

    let registrar =
        PostgresRegistrar::connect_lazy(&db.url(), FUNCTION, PostgresOptions::default())
            .expect("lazy");
    let err = registrar
        .register(&request("alice", TOKEN, 42))
        .await
        .expect_err("integer is not boolean");
    assert!(matches!(err, RegistrarError::Misconfigured(_)), "{err}");
    assert!(err.to_string().contains("must return boolean"), "{err}");
}

#[tokio::test]
async fn a_null_answer_is_a_refusal_and_quoted_schema_names_work() {
    let db = TestDb::new().await;
    db.run(
        r#"CREATE SCHEMA app;
           CREATE FUNCTION app."Null_Answer"(text, text, bigint, bigint)
           RETURNS boolean LANGUAGE sql AS 'SELECT NULL::boolean';"#,
    )
    .await;
    let registrar = PostgresRegistrar::connect(
        &db.url(),
        r#"app."Null_Answer""#,
        PostgresOptions::default(),
    )
    .await
    .expect("connect");
    assert_eq!(
        registrar.register(&request("alice", TOKEN, 42)).await,
        Ok(false)
    );
    assert!(format!("{registrar:?}").contains(r#""app"."Null_Answer""#));
}

#[tokio::test]
async fn a_function_slower_than_the_statement_timeout_is_unavailable() {
    let db = TestDb::new().await;
    db.run(
        "CREATE FUNCTION party_telegram_user_register(text, text, bigint, bigint)
         RETURNS boolean LANGUAGE sql AS 'SELECT pg_sleep(5) IS NULL'",
    )
    .await;
    let options = PostgresOptions::default().statement_timeout(Duration::from_millis(300));
    let registrar = PostgresRegistrar::connect(&db.url(), FUNCTION, options)
        .await
        .expect("connect");
    let started = Instant::now();
    let err = registrar
        .register(&request("alice", TOKEN, 42))
        .await
        .expect_err("cancelled");
    assert!(matches!(err, RegistrarError::Unavailable(_)), "{err}");
    assert!(err.to_string().contains("57014"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_token_the_function_echoes_in_an_error_is_scrubbed() {
    let db = TestDb::new().await;
    db.run(
        "CREATE FUNCTION party_telegram_user_register(
             p_username text, p_token text, p_user bigint, p_chat bigint)
         RETURNS boolean LANGUAGE plpgsql AS $$
         BEGIN RAISE EXCEPTION 'cannot register % with token %', p_username, p_token; END $$",
    )
    .await;
    let password = "Pg-Passw0rd-xyz";
    let registrar = PostgresRegistrar::connect(
        &db.url_with_password(Some(password)),
        FUNCTION,
        PostgresOptions::default(),
    )
    .await
    .expect("connect");
    let err = registrar
        .register(&request("alice", TOKEN, 42))
        .await
        .expect_err("raised");
    assert!(matches!(err, RegistrarError::Unavailable(_)), "{err}");
    assert!(
        err.to_string()
            .contains("cannot register alice with token [redacted]"),
        "{err}"
    );
    assert_hides(&err, &[TOKEN, password]);
    assert!(!format!("{registrar:?}").contains(password));
}

#[tokio::test]
async fn an_unreachable_server_is_unavailable_quickly_and_hides_the_password() {
    let password = "S3cret-Pg-pw";
    let url = format!(
        "postgres://postgres:{password}@127.0.0.1:{}/postgres",
        closed_port()
    );

    let started = Instant::now();
    let err = PostgresRegistrar::connect(&url, FUNCTION, PostgresOptions::default())
        .await
        .expect_err("nothing listens");
    assert!(matches!(err, RegistrarError::Unavailable(_)), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_hides(&err, &[password]);

    let options = PostgresOptions::default().acquire_timeout(Duration::from_millis(500));
    let registrar = PostgresRegistrar::connect_lazy(&url, FUNCTION, options).expect("lazy");
    assert!(
        !format!("{registrar:?}").contains(password),
        "{registrar:?}"
    );
    let started = Instant::now();
    let err = registrar
        .register(&request("alice", TOKEN, 42))
        .await
        .expect_err("nothing listens");
    assert!(matches!(err, RegistrarError::Unavailable(_)), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_hides(&err, &[password, TOKEN]);
    let err = registrar.ping().await.expect_err("nothing listens");
    assert!(matches!(err, RegistrarError::Unavailable(_)), "{err}");
}

#[tokio::test]
async fn a_missing_database_is_misconfigured_and_hides_the_password() {
    let password = "An0ther-Pg-pw";
    let url = format!(
        "{}/botline_registrar_no_such_db",
        server().replacen("postgres@", &format!("postgres:{password}@"), 1)
    );
    let err = PostgresRegistrar::connect(&url, FUNCTION, PostgresOptions::default())
        .await
        .expect_err("no database");
    assert!(matches!(err, RegistrarError::Misconfigured(_)), "{err}");
    assert!(err.to_string().contains("3D000"), "{err}");
    assert_hides(&err, &[password]);
}

#[tokio::test]
async fn an_invalid_function_name_or_url_is_refused_before_connecting() {
    for bad in ["", "fn()", "a.b.c", "x; DROP TABLE t", "1st"] {
        let err = PostgresRegistrar::connect_lazy(
            "postgres://postgres@127.0.0.1/postgres",
            bad,
            PostgresOptions::default(),
        )
        .expect_err(bad);
        assert!(
            matches!(err, RegistrarError::Misconfigured(_)),
            "{bad:?}: {err}"
        );
    }
    let err = PostgresRegistrar::connect_lazy(
        "postgres://postgres:Url-Pw-123@127.0.0.1:notaport/postgres",
        FUNCTION,
        PostgresOptions::default(),
    )
    .expect_err("bad port");
    assert!(matches!(err, RegistrarError::Misconfigured(_)), "{err}");
    assert_hides(&err, &["Url-Pw-123"]);
    let err = PostgresRegistrar::connect_lazy(
        "postgres://postgres:Url-Pw-123@127.0.0.1/postgres?sslmode=sometimes",
        FUNCTION,
        PostgresOptions::default(),
    )
    .expect_err("no such sslmode");
    assert!(err.to_string().contains("ssl_mode"), "{err}");
    assert_hides(&err, &["Url-Pw-123"]);
}

#[test]
fn the_readme_shows_the_example_sql_that_the_tests_install() {
    let readme = include_str!("../README.md");
    let start = EXAMPLE_SQL
        .find("CREATE TABLE")
        .expect("the example creates tables");
    assert!(
        readme.contains(&EXAMPLE_SQL[start..]),
        "README.md's example SQL differs from sql/example_postgres.sql"
    );
}
