//! Runs the real `botline` binary and talks to it over HTTP, as Telegram and an operator would.

#![allow(dead_code)] // Each test file uses a different part.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_botline");

/// A running `botline serve` on its own port and data directory.
#[derive(Debug)]
pub struct Server {
    pub child: Child,
    pub port: u16,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    env: Vec<(String, String)>,
    /// `serve` or `poll`.
    command: &'static str,
    /// A `botline.toml` given with `--config`.
    config: Option<PathBuf>,
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

pub fn temp_dir() -> PathBuf {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("temp dir")
        .keep()
}

impl Server {
    /// Starts a server on a fresh data directory and waits until it is healthy.
    pub fn start(env: &[(&str, &str)]) -> Self {
        Self::start_in(&temp_dir(), free_port(), env)
    }

    pub fn start_in(data_dir: &Path, port: u16, env: &[(&str, &str)]) -> Self {
        Self::run("serve", data_dir, port, env)
    }

    /// Starts `botline poll` on a fresh data directory and waits until it is healthy.
    pub fn poll(env: &[(&str, &str)]) -> Self {
        Self::run("poll", &temp_dir(), free_port(), env)
    }

    /// Starts `botline serve --config FILE` with `toml` as the file's text.
    pub fn start_with_config(toml: &str, env: &[(&str, &str)]) -> Self {
        let data_dir = temp_dir();
        let config = data_dir.with_extension("toml");
        std::fs::write(&config, toml).expect("config file");
        Self::launch("serve", &data_dir, free_port(), env, Some(config))
    }

    fn run(command: &'static str, data_dir: &Path, port: u16, env: &[(&str, &str)]) -> Self {
        Self::launch(command, data_dir, port, env, None)
    }

    fn launch(
        command: &'static str,
        data_dir: &Path,
        port: u16,
        env: &[(&str, &str)],
        config: Option<PathBuf>,
    ) -> Self {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let log = data_dir.with_extension(format!("{}.log", unique()));
        let child = spawn(command, data_dir, port, &env, &log, config.as_deref());
        let mut server = Self {
            child,
            port,
            data_dir: data_dir.to_owned(),
            log,
            env,
            command,
            config,
        };
        server.wait_healthy();
        server
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn wait_healthy(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("botline serve exited with {status}: {}", self.logs());
            }
            if get(&self.url("/health")).0 == 200 {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("botline serve did not become healthy: {}", self.logs());
    }

    /// SIGKILL, no chance to clean up.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        signal(self.child.id(), "TERM");
        wait_exit(&mut self.child, Duration::from_secs(20))
    }

    /// Starts the server again on the same port and data directory.
    pub fn restart(&mut self) {
        self.kill();
        self.child = spawn(
            self.command,
            &self.data_dir,
            self.port,
            &self.env,
            &self.log,
            self.config.as_deref(),
        );
        self.wait_healthy();
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs an operator command against this server's data directory.
    pub fn cli(&self, args: &[&str]) -> Output {
        cli(&self.data_dir, args)
    }

    /// Waits until nothing is pending or in flight.
    pub fn wait_drained(&self) -> serde_json::Value {
        wait_drained(|| self.stats())
    }

    pub fn stats(&self) -> serde_json::Value {
        stats_of(self.cli(&["stats", "--json"]))
    }

    /// The exported messages, one JSON value each.
    pub fn messages(&self) -> Vec<serde_json::Value> {
        let out = self.cli(&["messages", "export", "--format", "jsonl"]);
        assert!(
            out.status.success(),
            "export: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .expect("UTF-8")
            .lines()
            .map(|line| serde_json::from_str(line).expect("a JSON line"))
            .collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

fn unique() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default()
}

fn spawn(
    command: &str,
    data_dir: &Path,
    port: u16,
    env: &[(String, String)],
    log: &Path,
    config: Option<&Path>,
) -> Child {
    let mut botline = Command::new(BIN);
    if let Some(config) = config {
        botline.arg("--config").arg(config);
    }
    with_server_args(botline, command, data_dir, port, env, log)
        .spawn()
        .expect("botline starts")
}

/// `program` (botline, or a wrapper that ends by running botline with the arguments that follow)
/// with `<command> --data-dir DIR --listen 127.0.0.1:PORT`, the test's `env` and nothing of the
/// developer's secrets, `info` logs appended to `log`.
fn with_server_args(
    mut program: Command,
    command: &str,
    data_dir: &Path,
    port: u16,
    env: &[(String, String)],
    log: &Path,
) -> Command {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("log file");
    program
        .args([command, "--data-dir"])
        .arg(data_dir)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env_remove("BOTLINE_WEBHOOK_SECRET")
        // A developer's real bot must never be called by the tests.
        .env_remove("BOTLINE_BOT_TOKEN")
        .env_remove("BOTLINE_BOT_TOKEN_FILE")
        .env_remove("BOTLINE_TELEGRAM_API_URL")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("BOTLINE_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    program
}

/// `botline serve` in a mount namespace of its own whose data directory is a tmpfs of its own,
/// so that a test can fill it up without filling the machine's disks. The tmpfs dies with the
/// server.
///
/// The operator CLI runs inside the same namespace (`nsenter`): SQLite resolves the
/// `/proc/PID/root` link the test process would reach the tmpfs through to the test's own `/`.
#[derive(Debug)]
pub struct ContainedServer {
    /// Its `data_dir` is the tmpfs inside the namespace; outside, an empty mount point. Use
    /// this type's `cli`, not the server's.
    pub server: Server,
}

impl ContainedServer {
    /// Starts `botline serve` on a fresh tmpfs of `size` (as `mount -o size=` takes it) and
    /// waits until it is healthy. Panics with the cause when `unshare`, `mount` or the tmpfs
    /// are not available (the tests need root).
    pub fn start(size: &str, env: &[(&str, &str)]) -> Self {
        let data_dir = temp_dir();
        let port = free_port();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let log = data_dir.with_extension(format!("{}.log", unique()));
        // Without --fork, unshare and sh exec in turn: the child's pid is botline's.
        let mut unshare = Command::new("unshare");
        unshare
            .args(["--mount", "--propagation", "private", "sh", "-c"])
            // mode=0700: a tmpfs is 1777 by default, a data directory botline refuses.
            .arg(r#"mount -t tmpfs -o "size=$1,mode=0700" botline-faults "$2" && shift 2 && exec "$@""#)
            .args(["sh", size])
            .arg(&data_dir)
            .arg(BIN);
        let child = with_server_args(unshare, "serve", &data_dir, port, &env, &log)
            .spawn()
            .expect("`unshare` runs (util-linux; these tests need root)");
        let mut server = Server {
            child,
            port,
            data_dir,
            log,
            env,
            command: "serve",
            config: None,
        };
        server.wait_healthy();
        Self { server }
    }

    /// The data directory as seen from outside the namespace, for plain file operations.
    pub fn outside_path(&self) -> PathBuf {
        Path::new(&format!("/proc/{}/root", self.server.child.id())).join(
            self.server
                .data_dir
                .strip_prefix("/")
                .expect("an absolute path"),
        )
    }

    /// Runs an operator command against the server's data directory, inside its namespace.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new("nsenter")
            .args(["--target", &self.server.child.id().to_string(), "--mount"])
            .arg(BIN)
            .args(args)
            .arg("--data-dir")
            .arg(&self.server.data_dir)
            .env_remove("BOTLINE_BOT_TOKEN")
            .env_remove("BOTLINE_TELEGRAM_API_URL")
            .stdin(Stdio::null())
            .output()
            .expect("`nsenter` runs (util-linux; these tests need root)")
    }

    pub fn stats(&self) -> serde_json::Value {
        stats_of(self.cli(&["stats", "--json"]))
    }

    /// Waits until nothing is pending or in flight.
    pub fn wait_drained(&self) -> serde_json::Value {
        wait_drained(|| self.stats())
    }

    /// `messages export --format jsonl`, as text.
    pub fn export_jsonl(&self) -> String {
        let out = self.cli(&["messages", "export", "--format", "jsonl"]);
        assert!(
            out.status.success(),
            "export: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("UTF-8")
    }
}

pub fn cli(data_dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .env_remove("BOTLINE_BOT_TOKEN")
        .env_remove("BOTLINE_TELEGRAM_API_URL")
        .stdin(Stdio::null())
        .output()
        .expect("botline runs")
}

pub fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
}

pub fn wait_exit(child: &mut Child, within: Duration) -> ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "process did not exit in {within:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into()
}

/// GET: (status, body); status 0 when the server could not be reached.
pub fn get(url: &str) -> (u16, String) {
    match agent().get(url).call() {
        Ok(mut response) => (
            response.status().as_u16(),
            response.body_mut().read_to_string().unwrap_or_default(),
        ),
        Err(_) => (0, String::new()),
    }
}

/// A webhook answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub retry_after: Option<String>,
    pub body: String,
}

/// POSTs an update as Telegram does; status 0 when the server could not be reached.
pub fn post(url: &str, secret: Option<&str>, body: &[u8]) -> Answer {
    let mut request = agent().post(url).header("content-type", "application/json");
    if let Some(secret) = secret {
        request = request.header("x-telegram-bot-api-secret-token", secret);
    }
    match request.send(body) {
        Ok(mut response) => Answer {
            status: response.status().as_u16(),
            retry_after: response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            body: response.body_mut().read_to_string().unwrap_or_default(),
        },
        Err(_) => Answer {
            status: 0,
            retry_after: None,
            body: String::new(),
        },
    }
}

/// Delivers like Telegram: retries the same body until it is answered 200.
pub fn deliver(url: &str, secret: Option<&str>, body: &[u8], give_up: Duration) -> u32 {
    let deadline = Instant::now() + give_up;
    let mut tries = 0;
    loop {
        tries += 1;
        if post(url, secret, body).status == 200 {
            return tries;
        }
        assert!(Instant::now() < deadline, "update never acknowledged");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A `message` update.
pub fn message(update_id: i64, chat: i64, message_id: i64, text: &str) -> Vec<u8> {
    serde_json::json!({
        "update_id": update_id,
        "message": {
            "message_id": message_id,
            "date": 1_714_564_800,
            "chat": {"id": chat, "type": if chat < 0 { "supergroup" } else { "private" }},
            "from": {"id": 42, "is_bot": false, "first_name": "Test", "username": "tester"},
            "text": text,
        }
    })
    .to_string()
    .into_bytes()
}

/// A `/register` message with `text`, as Telegram sends it (with its `bot_command` entity).
pub fn register(update_id: i64, chat: i64, text: &str) -> Vec<u8> {
    let mut body: serde_json::Value =
        serde_json::from_slice(&message(update_id, chat, update_id, text)).unwrap();
    body["message"]["entities"] =
        serde_json::json!([{"type": "bot_command", "offset": 0, "length": 9}]);
    body.to_string().into_bytes()
}

/// Every file under `dir`, its subdirectories' (the ingestion journal's segments) included.
pub fn stored_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(stored_files(&path));
        } else {
            files.push(path);
        }
    }
    files
}

pub fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/data")
}

/// Runs one SQL statement with `psql` on the local Postgres (127.0.0.1:5432, trust auth) and
/// returns its unaligned output. Fails the test when Postgres is not there.
pub fn psql(database: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .args(["-h", "127.0.0.1", "-U", "postgres", "-d", database])
        .args(["-v", "ON_ERROR_STOP=1", "-tA", "-c", sql])
        .output()
        .expect("psql runs: these tests need the Postgres client and server on 127.0.0.1:5432");
    assert!(
        out.status.success(),
        "psql failed (is Postgres running on 127.0.0.1:5432?): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// A fresh database on the local Postgres, dropped with its connections at the end.
#[derive(Debug)]
pub struct PgDb {
    pub name: String,
}

impl PgDb {
    pub fn new(prefix: &str) -> Self {
        let name = format!(
            "{prefix}_{}_{}",
            std::process::id(),
            unique() % 1_000_000_000
        );
        psql("postgres", &format!("CREATE DATABASE {name}"));
        Self { name }
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:5432/{}", self.name)
    }

    pub fn run_file(&self, path: &str) {
        let out = Command::new("psql")
            .args(["-h", "127.0.0.1", "-U", "postgres", "-d", &self.name])
            .args(["-v", "ON_ERROR_STOP=1", "-q", "-f", path])
            .output()
            .expect("psql runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .args(["-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-c"])
            .arg(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .output();
    }
}

/// The JSON of a `botline stats --json` that must have succeeded.
fn stats_of(out: Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "stats: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("stats JSON")
}

/// Reads `stats` until nothing is pending or in flight (30 s at most), and returns them.
fn wait_drained(stats: impl Fn() -> serde_json::Value) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let stats = stats();
        if stats["pending"] == 0 && stats["inFlight"] == 0 {
            return stats;
        }
        assert!(Instant::now() < deadline, "queue did not drain: {stats}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The texts Telegram (the Bot API stand-in) accepted in `chat`, in order.
pub fn replies(standin: &botline_standin::StandIn, chat: i64) -> Vec<String> {
    standin
        .calls_of("sendMessage")
        .into_iter()
        .filter(|call| call.status == Some(200) && call.params["chat_id"] == chat)
        .map(|call| call.params["text"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Waits until `done`, for `give_up` at most.
pub fn wait_until(what: &str, give_up: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + give_up;
    while !done() {
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
