//! What the Postgres tests share: a fresh database per test, and a TCP proxy that can take the
//! server away.
//!
//! The server is `BOTLINE_TEST_POSTGRES` (default `postgres://postgres@127.0.0.1:5432`, a role
//! allowed to create databases). Without it the tests fail; they never skip.
#![allow(dead_code)]

use botline_core::QueueConfig;
use botline_postgres::{PostgresBackend, PostgresOptions};
use sqlx::{Connection, Executor, PgConnection};
use std::cell::RefCell;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub fn server() -> String {
    std::env::var("BOTLINE_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned())
        .trim_end_matches('/')
        .to_owned()
}

/// A database of its own for one test, dropped (with its connections) when this is dropped,
/// whether the test passed or not.
#[derive(Debug)]
pub struct TestDb {
    name: String,
}

impl TestDb {
    pub async fn new() -> Self {
        let name = format!("botline_pg_{}", uuid::Uuid::new_v4().simple());
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

    pub fn url(&self) -> String {
        format!("{}/{}", server(), self.name)
    }

    /// The database's URL with `password` in it (trust auth ignores it).
    pub fn url_with_password(&self, password: &str) -> String {
        let server = server();
        let (scheme, rest) = server.split_once("://").expect("a URL");
        let (user, host) = rest.split_once('@').expect("a user in the URL");
        let user = user.split(':').next().unwrap_or(user);
        format!("{scheme}://{user}:{password}@{host}/{}", self.name)
    }

    /// The database's URL through `proxy`.
    pub fn url_through(&self, proxy: &Proxy, password: &str) -> String {
        let server = server();
        let (scheme, rest) = server.split_once("://").expect("a URL");
        let (user, _) = rest.split_once('@').expect("a user in the URL");
        let user = user.split(':').next().unwrap_or(user);
        format!(
            "{scheme}://{user}:{password}@127.0.0.1:{}/{}",
            proxy.port, self.name
        )
    }

    pub async fn backend(&self, config: QueueConfig) -> PostgresBackend {
        PostgresBackend::connect(&self.url(), config)
            .await
            .expect("connect")
    }

    pub async fn backend_with(
        &self,
        config: QueueConfig,
        options: PostgresOptions,
    ) -> PostgresBackend {
        PostgresBackend::connect_with(&self.url(), config, options)
            .await
            .expect("connect")
    }

    pub async fn conn(&self) -> PgConnection {
        PgConnection::connect(&self.url()).await.expect("connect")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = std::mem::take(&mut self.name);
        // Its own thread and runtime: the test's runtime may be gone, or panicking.
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

thread_local! {
    /// The databases of the test running on this thread. libtest runs each test on a thread of
    /// its own, so they are dropped when the test ends, after its runtime.
    static TEST_DATABASES: RefCell<Vec<TestDb>> = const { RefCell::new(Vec::new()) };
}

/// A backend on a fresh database that lives as long as the test's thread: for factories, such
/// as the shared suite's, that can hand back only the backend.
pub async fn fresh_backend(config: QueueConfig) -> PostgresBackend {
    let db = TestDb::new().await;
    let backend = db.backend(config).await;
    TEST_DATABASES.with(|databases| databases.borrow_mut().push(db));
    backend
}

/// A local port nothing listens on.
pub fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

/// How the [`Proxy`] treats connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// Forwards to the server.
    Up,
    /// Closes every connection, open or new: the server is down.
    Down,
    /// Holds every connection and forwards nothing: the network stopped answering.
    Silent,
}

/// A TCP proxy in front of the test server whose link can be cut, for the tests of what the
/// backend does when Postgres goes away and comes back.
#[derive(Debug)]
pub struct Proxy {
    pub port: u16,
    link: watch::Sender<Link>,
}

impl Proxy {
    pub async fn start() -> Self {
        let upstream = {
            let server = server();
            let rest = server.split_once("://").expect("a URL").1;
            let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
            host.split('/').next().unwrap_or(host).to_owned()
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let (link, _) = watch::channel(Link::Up);
        let watcher = link.clone();
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let links = watcher.subscribe();
                let upstream = upstream.clone();
                tokio::spawn(relay(client, upstream, links));
            }
        });
        Self { port, link }
    }

    pub fn set(&self, link: Link) {
        self.link.send_replace(link);
    }
}

/// One proxied connection, for as long as the link lets it live.
async fn relay(mut client: TcpStream, upstream: String, mut links: watch::Receiver<Link>) {
    let link = *links.borrow_and_update();
    match link {
        Link::Down => {
            let _ = client.shutdown().await;
            return;
        }
        Link::Silent => {
            // Hold the connection without a word until the link changes, then drop it.
            let _ = links.changed().await;
            return;
        }
        Link::Up => {}
    }
    let Ok(mut server) = TcpStream::connect(&upstream).await else {
        return;
    };
    let cut = tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => return,
        cut = cut(&mut links) => cut,
    };
    if cut == Link::Silent {
        // Forward nothing more, and hold both ends until the link changes again.
        let _ = links.changed().await;
    }
}

/// The first link other than [`Link::Up`].
async fn cut(links: &mut watch::Receiver<Link>) -> Link {
    loop {
        if links.changed().await.is_err() {
            return Link::Down;
        }
        let link = *links.borrow_and_update();
        if link != Link::Up {
            return link;
        }
    }
}

/// A certificate authority made for one test, and a server certificate for `localhost` it
/// signed (rcgen: ECDSA P-256 keys), all PEM.
pub struct TestCertificates {
    pub ca: String,
    pub server_cert: String,
    pub server_key: String,
}

impl TestCertificates {
    pub fn new(ca_name: &str) -> Self {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
        let ca_key = KeyPair::generate().expect("a CA key");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, ca_name);
        let ca = ca.self_signed(&ca_key).expect("the CA certificate");
        let server_key = KeyPair::generate().expect("a server key");
        let server = CertificateParams::new(vec!["localhost".to_owned()])
            .expect("server parameters")
            .signed_by(&server_key, &ca, &ca_key)
            .expect("the server certificate");
        Self {
            ca: ca.pem(),
            server_cert: server.pem(),
            server_key: server_key.serialize_pem(),
        }
    }
}

/// A Postgres server of the test's own (initdb in a temporary directory, TLS on with the
/// given certificate, trust authentication, on a free port of 127.0.0.1), stopped and removed
/// when dropped. Needs the server's programs (`pg_config --bindir`, or
/// /usr/lib/postgresql/*/bin); run as root, it runs them as the `postgres` user, as initdb
/// refuses root. Fails, never skips, when they are missing.
pub struct PrivatePostgres {
    dir: std::path::PathBuf,
    bin: std::path::PathBuf,
    as_postgres: bool,
    pub port: u16,
}

impl PrivatePostgres {
    pub fn start(certificates: &TestCertificates) -> Self {
        use std::os::unix::fs::PermissionsExt;
        let bin = postgres_bindir();
        let as_postgres = is_root();
        let dir =
            std::env::temp_dir().join(format!("botline-pg-{}", uuid::Uuid::new_v4().simple()));
        let data = dir.join("data");
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let server = Self {
            dir,
            bin,
            as_postgres,
            port: free_port(),
        };
        if as_postgres {
            run_ok(
                std::process::Command::new("chown")
                    .arg("postgres:")
                    .arg(&server.dir),
            );
        }
        server.run(
            &[
                "initdb",
                "--auth=trust",
                "--username=postgres",
                "--no-sync",
                "-D",
            ],
            &data,
        );
        for (name, pem) in [
            ("server.crt", &certificates.server_cert),
            ("server.key", &certificates.server_key),
        ] {
            let path = data.join(name);
            std::fs::write(&path, pem).expect("a certificate file");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            if as_postgres {
                run_ok(
                    std::process::Command::new("chown")
                        .arg("postgres:")
                        .arg(&path),
                );
            }
        }
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c ssl=on -c fsync=off",
            server.port,
            server.dir.display()
        );
        let log = server.dir.join("log");
        server.run(
            &[
                "pg_ctl",
                "-w",
                "-t",
                "60",
                "-o",
                &options,
                "-l",
                &log.to_string_lossy(),
                "start",
                "-D",
            ],
            &data,
        );
        server
    }

    /// `postgres://postgres:{password}@{host}:{port}/postgres?{params}`.
    pub fn url(&self, host: &str, password: &str, params: &str) -> String {
        format!(
            "postgres://postgres:{password}@{host}:{}/postgres?{params}",
            self.port
        )
    }

    fn run(&self, program_and_args: &[&str], data: &std::path::Path) {
        let mut command = self.command(program_and_args[0]);
        command.args(&program_and_args[1..]).arg(data);
        run_ok(&mut command);
    }

    /// One of the server's programs, run as the `postgres` user when the test runs as root.
    fn command(&self, program: &str) -> std::process::Command {
        let program = self.bin.join(program);
        if self.as_postgres {
            let mut command = std::process::Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        } else {
            std::process::Command::new(program)
        }
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .args(["-m", "immediate", "stop", "-D"])
            .arg(self.dir.join("data"))
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn run_ok(command: &mut std::process::Command) {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(
        out.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn is_root() -> bool {
    let out = std::process::Command::new("id")
        .arg("-u")
        .output()
        .expect("id -u");
    String::from_utf8_lossy(&out.stdout).trim() == "0"
}

fn postgres_bindir() -> std::path::PathBuf {
    if let Ok(out) = std::process::Command::new("pg_config")
        .arg("--bindir")
        .output()
    {
        let dir = std::path::PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && dir.join("initdb").exists() {
            return dir;
        }
    }
    let mut found: Vec<_> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path().join("bin"))
        .filter(|bin| bin.join("initdb").exists())
        .collect();
    found.sort();
    found
        .pop()
        .expect("these tests need Postgres's server programs (initdb, pg_ctl): none found")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a free port")
}
