//! `SqlServerRegistrar` against what can run here: ports that refuse, hang up or stay silent.
//! No SQL Server runs here, so the TDS exchange itself is not exercised (see the crate docs).
#![cfg(feature = "sqlserver")]

use std::time::{Duration, Instant};

use botline_registrar::{
    Registrar, RegistrarError, RegistrationRequest, SqlServerOptions, SqlServerRegistrar,
};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

const PASSWORD: &str = "Mssql-Passw0rd!";
const TOKEN: &str = "Tok3n-for-alice_0001";
const PROCEDURE: &str = "dbo.PartyTelegramUser_REGISTER_tr";

fn connection_string(port: u16) -> String {
    format!(
        "server=tcp:127.0.0.1,{port};database=party;user=bot;password={PASSWORD};\
         TrustServerCertificate=true"
    )
}

fn alice() -> RegistrationRequest<'static> {
    RegistrationRequest {
        username: "alice",
        token: TOKEN,
        telegram_user_id: 42,
        chat_id: 42,
    }
}

fn assert_unavailable_and_hidden(result: Result<bool, RegistrarError>) -> RegistrarError {
    let err = result.expect_err("no SQL Server there");
    assert!(matches!(err, RegistrarError::Unavailable(_)), "{err}");
    let text = format!("{err} | {err:?}");
    assert!(!text.contains(PASSWORD) && !text.contains(TOKEN), "{text}");
    err
}

fn options() -> SqlServerOptions {
    SqlServerOptions::default()
        .connect_timeout(Duration::from_millis(500))
        .query_timeout(Duration::from_millis(500))
}

#[tokio::test]
async fn a_closed_port_is_unavailable_at_once_and_again_on_the_next_call() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let registrar =
        SqlServerRegistrar::new(&connection_string(port), PROCEDURE).expect("valid config");
    assert!(!format!("{registrar:?}").contains(PASSWORD));
    for _ in 0..2 {
        let started = Instant::now();
        let err = assert_unavailable_and_hidden(registrar.register(&alice()).await);
        assert!(err.to_string().contains("cannot connect"), "{err}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }
    let err = registrar.ping().await.expect_err("no server");
    assert!(matches!(err, RegistrarError::Unavailable(_)), "{err}");
}

#[tokio::test]
async fn a_server_that_hangs_up_is_unavailable() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let server = tokio::spawn(async move {
        for _ in 0..2 {
            let (socket, _) = listener.accept().await.expect("accept");
            drop(socket);
        }
    });
    let registrar =
        SqlServerRegistrar::with_options(&connection_string(port), PROCEDURE, options())
            .expect("valid config");
    for _ in 0..2 {
        assert_unavailable_and_hidden(registrar.register(&alice()).await);
    }
    server.await.expect("server");
}

#[tokio::test]
async fn a_server_that_never_answers_is_unavailable_within_the_timeouts() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let server = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.expect("accept");
        // Read the prelogin and say nothing, until the client gives up.
        let mut buf = [0u8; 1024];
        while matches!(socket.read(&mut buf).await, Ok(n) if n > 0) {}
    });
    let registrar =
        SqlServerRegistrar::with_options(&connection_string(port), PROCEDURE, options())
            .expect("valid config");
    let started = Instant::now();
    assert_unavailable_and_hidden(registrar.register(&alice()).await);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    drop(registrar);
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("the client hung up")
        .expect("server");
}
