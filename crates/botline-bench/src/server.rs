//! A `botline serve` this process starts, kills, restarts and stops itself: [`ManagedServer`].
//!
//! It runs on a loopback port that was free when it started, on a data directory of its own,
//! with a generated webhook secret, and its stdout and stderr appended to `botline-serve.log` in
//! that directory. It does not inherit the caller's `BOTLINE_*` variables (a developer's bot
//! token must never be called with made-up updates, and a `BOTLINE_BACKEND` must not move the
//! store elsewhere): it sees its secret and the variables of [`ServerConfig::env`], nothing else
//! of Botline's. It runs in its data directory, so no `botline.toml` of the caller's working
//! directory is read. Everything here blocks; async code calls it from the blocking pool.

use crate::config::BenchError;
use rand::Rng;
use rand::distr::Alphanumeric;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The log file in the data directory.
pub const LOG_FILE: &str = "botline-serve.log";

/// Botline's lease when `BOTLINE_LEASE` does not set one: how long an update taken by a worker
/// stays invisible to the others, so also how long one in flight at a SIGKILL waits before the
/// restarted server takes it up again.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);

/// Variables the managed server gets from this module, not from [`ServerConfig::env`].
const RESERVED_ENV: [(&str, &str); 3] = [
    ("BOTLINE_DATA_DIR", "the data directory is --data-dir's"),
    (
        "BOTLINE_LISTEN",
        "the server listens on a free loopback port",
    ),
    (
        "BOTLINE_BACKEND",
        "a managed server runs the embedded store, which is what is verified",
    ),
];

/// How to start a managed `botline serve`.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    /// The `botline` binary.
    pub bin: PathBuf,
    /// The data directory: created if missing, refused if not empty. `None` makes a new one in
    /// the system's temporary directory, kept after the run.
    pub data_dir: Option<PathBuf>,
    /// Extra environment, such as `BOTLINE_LEASE=2s` or `BOTLINE_LOG=debug`. A
    /// `BOTLINE_WEBHOOK_SECRET` here replaces the generated secret.
    pub env: Vec<(String, String)>,
    /// How long a start may take until `/health` answers 200.
    pub start_timeout: Duration,
}

impl ServerConfig {
    /// `bin serve` on a new temporary data directory with no extra environment.
    pub fn new(bin: impl Into<PathBuf>) -> Self {
        Self {
            bin: bin.into(),
            data_dir: None,
            env: Vec::new(),
            start_timeout: Duration::from_secs(30),
        }
    }
}

/// A running `botline serve` (see the module's documentation). Dropping it kills the process.
pub struct ManagedServer {
    bin: PathBuf,
    data_dir: PathBuf,
    log: PathBuf,
    listen: SocketAddr,
    secret: String,
    env: Vec<(String, String)>,
    start_timeout: Duration,
    child: Option<Child>,
}

impl fmt::Debug for ManagedServer {
    /// Leaves the secret out.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManagedServer")
            .field("bin", &self.bin)
            .field("data_dir", &self.data_dir)
            .field("listen", &self.listen)
            .field("pid", &self.pid())
            .finish_non_exhaustive()
    }
}

impl ManagedServer {
    /// Starts `bin serve` and waits until its `/health` answers 200.
    pub fn start(config: ServerConfig) -> Result<Self, BenchError> {
        for (key, _) in &config.env {
            check_env_key(key)?;
        }
        let bin = std::fs::canonicalize(&config.bin).map_err(|e| {
            BenchError::Server(format!("cannot find {}: {e}", config.bin.display()))
        })?;
        let data_dir = fresh_data_dir(config.data_dir.as_deref())?;
        let secret = config
            .env
            .iter()
            .rev()
            .find(|(key, _)| key == "BOTLINE_WEBHOOK_SECRET")
            .map_or_else(generate_secret, |(_, value)| value.clone());
        let mut server = Self {
            bin,
            log: data_dir.join(LOG_FILE),
            data_dir,
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?)),
            secret,
            env: config.env,
            start_timeout: config.start_timeout,
            child: None,
        };
        server.launch()?;
        Ok(server)
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.listen)
    }

    /// Where Telegram would post updates.
    pub fn webhook_url(&self) -> String {
        self.url("/telegram/webhook")
    }

    pub fn listen(&self) -> SocketAddr {
        self.listen
    }

    /// The webhook secret the server checks.
    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// The binary, absolute.
    pub fn bin(&self) -> &Path {
        &self.bin
    }

    /// The data directory, absolute.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The log of every start.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// Its lease: `BOTLINE_LEASE` of [`ServerConfig::env`] when set and readable, else
    /// [`DEFAULT_LEASE`].
    pub fn lease(&self) -> Duration {
        lease_of(&self.env)
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Its resident memory (`VmRSS` of `/proc/PID/status`), KiB; `None` when it is not running
    /// or not on Linux.
    pub fn rss_kib(&self) -> Option<u64> {
        self.pid().and_then(rss_kib)
    }

    /// How it exited, if it did since it was last started (reaps it).
    pub fn exited(&mut self) -> Result<Option<ExitStatus>, BenchError> {
        let Some(child) = self.child.as_mut() else {
            return Ok(None);
        };
        let status = child
            .try_wait()
            .map_err(|e| BenchError::Server(format!("cannot wait for botline serve: {e}")))?;
        if status.is_some() {
            self.child = None;
        }
        Ok(status)
    }

    /// SIGKILL: no chance to clean up. Waits until the process is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Fails only when it has exited already; `wait` reaps it either way.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills it if it runs, then starts it again on the same data directory and port and waits
    /// until it is healthy.
    pub fn restart(&mut self) -> Result<(), BenchError> {
        self.kill();
        self.launch()
    }

    /// SIGTERM, then waits up to `within` for the exit; past that, SIGKILL and an error.
    pub fn terminate(&mut self, within: Duration) -> Result<ExitStatus, BenchError> {
        let Some(child) = self.child.as_mut() else {
            return Err(BenchError::Server(
                "botline serve is not running".to_owned(),
            ));
        };
        send_sigterm(child)?;
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.exited()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                self.kill();
                return Err(BenchError::Server(format!(
                    "botline serve did not exit within {within:?} of SIGTERM; killed it"
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The last lines of the log, for an error message.
    pub fn log_tail(&self) -> String {
        log_tail(&self.log, 20)
    }

    /// Spawns `bin serve` and waits until `/health` answers 200.
    fn launch(&mut self) -> Result<(), BenchError> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|source| BenchError::Write {
                path: self.log.clone(),
                source,
            })?;
        let log_err = log.try_clone().map_err(|source| BenchError::Write {
            path: self.log.clone(),
            source,
        })?;
        let mut command = Command::new(&self.bin);
        command
            .arg("serve")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--listen")
            .arg(self.listen.to_string())
            .current_dir(&self.data_dir);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("BOTLINE_") {
                command.env_remove(key);
            }
        }
        command
            .env("BOTLINE_WEBHOOK_SECRET", &self.secret)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        let child = command.spawn().map_err(|e| {
            BenchError::Server(format!("cannot start {} serve: {e}", self.bin.display()))
        })?;
        self.child = Some(child);
        self.wait_healthy()
    }

    fn wait_healthy(&mut self) -> Result<(), BenchError> {
        let deadline = Instant::now() + self.start_timeout;
        loop {
            if let Some(status) = self.exited()? {
                return Err(BenchError::Server(format!(
                    "botline serve exited with {status} before it was healthy; end of {}:\n{}",
                    self.log.display(),
                    self.log_tail()
                )));
            }
            if healthy(self.listen) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.kill();
                return Err(BenchError::Server(format!(
                    "botline serve was not healthy within {:?}; end of {}:\n{}",
                    self.start_timeout,
                    self.log.display(),
                    self.log_tail()
                )));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}

impl Drop for ManagedServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn lease_of(env: &[(String, String)]) -> Duration {
    env.iter()
        .rev()
        .find(|(key, _)| key == "BOTLINE_LEASE")
        .and_then(|(_, value)| crate::parse_duration(value).ok())
        .unwrap_or(DEFAULT_LEASE)
}

/// Parses `KEY=VALUE`, as `--server-env` takes it.
pub fn parse_env(text: &str) -> Result<(String, String), String> {
    let Some((key, value)) = text.split_once('=') else {
        return Err(format!("{text:?} is not KEY=VALUE"));
    };
    check_env_key(key).map_err(|e| match e {
        BenchError::Config(message) => message,
        other => other.to_string(),
    })?;
    if value.contains('\0') {
        return Err(format!("the value of {key} holds a NUL byte"));
    }
    Ok((key.to_owned(), value.to_owned()))
}

fn check_env_key(key: &str) -> Result<(), BenchError> {
    if key.is_empty() || key.contains(['=', '\0']) {
        return Err(BenchError::Config(format!(
            "{key:?} is not an environment variable name"
        )));
    }
    if let Some((_, why)) = RESERVED_ENV.iter().find(|(reserved, _)| *reserved == key) {
        return Err(BenchError::Config(format!(
            "{key} cannot be set for a managed server: {why}"
        )));
    }
    Ok(())
}

/// `dir` created if missing and checked empty, or a new temporary directory; absolute.
fn fresh_data_dir(dir: Option<&Path>) -> Result<PathBuf, BenchError> {
    let Some(dir) = dir else {
        return tempfile::Builder::new()
            .prefix("botline-bench-")
            .tempdir()
            .map(tempfile::TempDir::keep)
            .map_err(|e| BenchError::Server(format!("cannot make a temporary data dir: {e}")));
    };
    let invalid = |why: String| BenchError::Config(format!("data dir {}: {why}", dir.display()));
    std::fs::create_dir_all(dir).map_err(|e| invalid(e.to_string()))?;
    let mut entries = std::fs::read_dir(dir).map_err(|e| invalid(e.to_string()))?;
    if entries.next().is_some() {
        return Err(invalid(
            "not empty: a managed server starts on a fresh data directory".to_owned(),
        ));
    }
    std::fs::canonicalize(dir).map_err(|e| invalid(e.to_string()))
}

/// A webhook secret as Telegram accepts them: 32 of A-Z, a-z, 0-9.
fn generate_secret() -> String {
    rand::rng()
        .sample_iter(Alphanumeric)
        .take(32)
        .map(char::from)
        .collect()
}

/// A loopback port nothing listened on a moment ago.
fn free_port() -> Result<u16, BenchError> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .map_err(|e| BenchError::Server(format!("no free loopback port: {e}")))
}

/// Whether `GET /health` answers 200.
fn healthy(addr: SocketAddr) -> bool {
    let timeout = Duration::from_secs(2);
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, timeout) else {
        return false;
    };
    let request = format!("GET /health HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let mut status_line = [0u8; 12];
    stream.set_read_timeout(Some(timeout)).is_ok()
        && stream.set_write_timeout(Some(timeout)).is_ok()
        && stream.write_all(request.as_bytes()).is_ok()
        && stream.read_exact(&mut status_line).is_ok()
        && matches!(&status_line, b"HTTP/1.1 200" | b"HTTP/1.0 200")
}

/// `VmRSS` of a process in KiB, from `/proc/PID/status`.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_vm_rss(&status)
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()
}

#[cfg(unix)]
fn send_sigterm(child: &Child) -> Result<(), BenchError> {
    use rustix::process::{Pid, Signal, kill_process};
    kill_process(Pid::from_child(child), Signal::TERM)
        .map_err(|e| BenchError::Server(format!("cannot send SIGTERM to botline serve: {e}")))
}

/// No SIGTERM off Unix: the closest is to end the process.
#[cfg(not(unix))]
fn send_sigterm(child: &mut Child) -> Result<(), BenchError> {
    child
        .kill()
        .map_err(|e| BenchError::Server(format!("cannot stop botline serve: {e}")))
}

/// The last `lines` lines of a file (of its last 16 KiB at most).
fn log_tail(path: &Path, lines: usize) -> String {
    let Ok(mut file) = File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(16 * 1024)));
    let mut bytes = Vec::new();
    let _ = file.read_to_end(&mut bytes);
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_vm_rss() {
        let status = "Name:\tbotline\nVmPeak:\t  200000 kB\nVmRSS:\t   48212 kB\nThreads:\t9\n";
        assert_eq!(parse_vm_rss(status), Some(48212));
        assert_eq!(parse_vm_rss("Name:\tzombie\nState:\tZ (zombie)\n"), None);
        // This very process has one.
        assert!(rss_kib(std::process::id()).is_some_and(|kib| kib > 0));
    }

    #[test]
    fn parses_server_env() {
        assert_eq!(
            parse_env("BOTLINE_LEASE=2s"),
            Ok(("BOTLINE_LEASE".to_owned(), "2s".to_owned()))
        );
        assert_eq!(
            parse_env("RUST_LOG=a=b"),
            Ok(("RUST_LOG".to_owned(), "a=b".to_owned()))
        );
        assert!(parse_env("BOTLINE_LEASE").is_err());
        assert!(parse_env("=x").is_err());
        let reserved = parse_env("BOTLINE_LISTEN=0.0.0.0:80").expect_err("reserved");
        assert!(reserved.contains("free loopback port"), "{reserved}");
    }

    #[test]
    fn the_lease_comes_from_the_env_or_is_botlines_default() {
        let env = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        assert_eq!(lease_of(&env(&[])), DEFAULT_LEASE);
        assert_eq!(
            lease_of(&env(&[("BOTLINE_LEASE", "5s"), ("BOTLINE_LEASE", "2s")])),
            Duration::from_secs(2)
        );
        assert_eq!(lease_of(&env(&[("BOTLINE_LEASE", "soon")])), DEFAULT_LEASE);
    }

    #[test]
    fn secrets_are_what_telegram_accepts() {
        let secret = generate_secret();
        assert_eq!(secret.len(), 32);
        assert!(secret.bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_ne!(secret, generate_secret());
    }

    #[test]
    fn a_data_dir_must_be_fresh() {
        let parent = tempfile::tempdir().expect("temp dir");
        let dir = parent.path().join("new");
        let made = fresh_data_dir(Some(&dir)).expect("a new directory is fresh");
        assert!(made.is_absolute() && made.is_dir());
        std::fs::write(dir.join("botline.db"), b"").expect("write");
        let error = fresh_data_dir(Some(&dir)).expect_err("not empty");
        assert!(error.to_string().contains("not empty"), "{error}");
        let temporary = fresh_data_dir(None).expect("a temporary directory");
        assert!(temporary.is_dir());
        std::fs::remove_dir(temporary).expect("remove");
    }

    #[test]
    fn a_missing_binary_is_an_error() {
        let error = ManagedServer::start(ServerConfig::new("/nonexistent/botline"))
            .expect_err("no such binary");
        assert!(error.to_string().contains("cannot find"), "{error}");
    }

    #[test]
    fn a_server_that_exits_at_once_is_an_error_with_its_log() {
        // `false` exits 1 at once, whatever its arguments.
        let Ok(bin) = which("false") else {
            return;
        };
        let dir = tempfile::tempdir().expect("temp dir");
        let error = ManagedServer::start(ServerConfig {
            data_dir: Some(dir.path().join("data")),
            ..ServerConfig::new(bin)
        })
        .expect_err("exits");
        assert!(
            error.to_string().contains("before it was healthy"),
            "{error}"
        );
    }

    fn which(name: &str) -> Result<PathBuf, ()> {
        ["/bin", "/usr/bin"]
            .iter()
            .map(|dir| Path::new(dir).join(name))
            .find(|path| path.exists())
            .ok_or(())
    }

    #[test]
    fn tails_a_log() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("log");
        let text: String = (0..100).map(|n| format!("line {n}\n")).collect();
        std::fs::write(&path, text).expect("write");
        assert_eq!(log_tail(&path, 2), "line 98\nline 99");
        assert_eq!(log_tail(&dir.path().join("missing"), 2), "");
    }
}
