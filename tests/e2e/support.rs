//! The test harness: backends, a gateway process and clients, so each test reads as a few lines.

#![allow(dead_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// The `sluice` binary built by cargo for these tests.
pub const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");

/// A request as a backend saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub version: http::Version,
    pub method: String,
    pub uri: String,
    pub headers: HeaderMap,
}

/// A backend on 127.0.0.1 that records what it receives.
pub struct Backend {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

type Handler =
    Arc<dyn Fn(Request<Incoming>) -> std::pin::Pin<Box<dyn Future<Output = Response<BoxBody>> + Send>> + Send + Sync>;
pub type BoxBody = http_body_util::combinators::BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// A body of `bytes`.
pub fn full(bytes: impl Into<Bytes>) -> BoxBody {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed()
}

impl Backend {
    /// A backend answering `200 NAME` with `x-backend: NAME`.
    pub async fn named(name: &'static str) -> Backend {
        Backend::start(
            move |_req| async move { Response::builder().header("x-backend", name).body(full(name)).unwrap() },
        )
        .await
    }

    /// A backend serving HTTP/1.1 (with upgrades) and HTTP/2 with `handler`.
    pub async fn start<F, Fut>(handler: F) -> Backend
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<BoxBody>> + Send + 'static,
    {
        let handler: Handler = Arc::new(move |req| Box::pin(handler(req)));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let (seen2, connections2) = (seen.clone(), connections.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                connections2.fetch_add(1, Ordering::SeqCst);
                let (handler, seen) = (handler.clone(), seen2.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        seen.lock().unwrap().push(Seen {
                            version: req.version(),
                            method: req.method().to_string(),
                            uri: req.uri().to_string(),
                            headers: req.headers().clone(),
                        });
                        let response = handler(req);
                        async move { Ok::<_, Infallible>(response.await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Backend { addr, seen, connections, task }
    }

    /// Every request received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// The last request received.
    pub fn last(&self) -> Seen {
        self.seen().pop().expect("the backend received no request")
    }

    /// How many TCP connections it accepted.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A running `sluice run` process.
pub struct Gateway {
    pub child: Child,
    pub listeners: HashMap<String, SocketAddr>,
    log: Arc<Mutex<Vec<String>>>,
    /// The folder holding the config file; tests may put plugin files there.
    pub dir: TempDir,
}

impl Gateway {
    /// Starts the gateway with `config` (TOML) and waits until it listens.
    pub fn start(config: &str) -> Gateway {
        Gateway::start_in(TempDir::new(), config)
    }

    /// Like [`Gateway::start`], with the config file in `dir` (which may hold plugin files).
    pub fn start_in(dir: TempDir, config: &str) -> Gateway {
        Gateway::launch(dir, config, 2, None)
    }

    /// Like [`Gateway::start`], allowed at most `max` open file descriptors (`RLIMIT_NOFILE`).
    pub fn start_with_open_files(config: &str, max: u64) -> Gateway {
        Gateway::launch(TempDir::new(), config, 2, Some(max))
    }

    /// Like [`Gateway::start`], with `workers` worker threads instead of 2.
    pub fn start_with_workers(config: &str, workers: usize) -> Gateway {
        Gateway::launch(TempDir::new(), config, workers, None)
    }

    fn launch(dir: TempDir, config: &str, workers: usize, max_open_files: Option<u64>) -> Gateway {
        let config = if config.contains("[admin]") {
            config.to_string()
        } else {
            format!("[admin]\nlisten = \"127.0.0.1:0\"\n\n{config}")
        };
        let path = dir.write("sluice.toml", &config);
        let mut command = Command::new(SLUICE);
        command.args(["run", "-c"]).arg(&path).arg("--workers").arg(workers.to_string());
        command.stdout(Stdio::null()).stderr(Stdio::piped());
        // The gateway gets SIGTERM when the thread that started it ends, so a test run that is
        // killed (or a test that panics past its drop) leaves no gateway behind.
        // SAFETY: prctl and setrlimit are async-signal-safe and touch nothing of the parent.
        unsafe {
            command.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if let Some(max) = max_open_files {
                    let limit = libc::rlimit { rlim_cur: max, rlim_max: max };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let mut child = command.spawn().expect("cannot start sluice");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let log2 = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if std::env::var_os("SLUICE_TEST_LOG").is_some() {
                    eprintln!("[sluice] {line}");
                }
                if let Some(listening) = parse_listening(&line) {
                    let _ = tx.send(Some(listening));
                } else if line.contains("sluice started") {
                    let _ = tx.send(None);
                }
                log2.lock().unwrap().push(line);
            }
        });
        // Every listener is logged before "sluice started", which comes once signals and file
        // watching are set up too.
        let mut listeners = HashMap::new();
        loop {
            match rx.recv_timeout(Duration::from_secs(30)) {
                Ok(Some((name, addr))) => {
                    listeners.insert(name, addr);
                }
                Ok(None) => break,
                Err(_) => panic!("sluice did not start; its log:\n{}", log.lock().unwrap().join("\n")),
            }
        }
        Gateway { child, listeners, log, dir }
    }

    /// The address of the listener named `public`, or else of the only one.
    pub fn addr(&self) -> SocketAddr {
        self.listeners
            .get("public")
            .copied()
            .unwrap_or_else(|| *self.listeners.iter().find(|(name, _)| *name != "admin").expect("a listener").1)
    }

    /// Replaces the config file (keeping the admin API where it is) without reloading.
    pub fn write_config(&self, config: &str) {
        let admin = format!("[admin]\nlisten = \"{}\"\n\n", self.admin());
        let text = if config.contains("[admin]") { config.to_string() } else { format!("{admin}{config}") };
        // Write then rename, as deploy tools do, so no reader sees half a file.
        let temporary = self.dir.write("sluice.toml.new", &text);
        std::fs::rename(temporary, self.dir.0.join("sluice.toml")).unwrap();
    }

    /// `POST /reload` on the admin API.
    pub async fn reload(&self) -> Reply {
        Client::connect(self.admin())
            .await
            .send(Request::post("/reload").header("host", "admin").body(full("")).unwrap())
            .await
    }

    /// `GET path` on the admin API, as JSON.
    pub async fn admin_json(&self, path: &str) -> serde_json::Value {
        let reply = get(self.admin(), "admin", path).await;
        serde_json::from_str(&reply.body).unwrap_or_else(|e| panic!("{path}: {e}: {}", reply.body))
    }

    /// Waits until the admin API's metrics hold `line` as a whole line (up to 10 s).
    pub async fn wait_for_metric(&self, line: &str) {
        let needle = format!("\n{line}\n");
        for _ in 0..200 {
            if get(self.admin(), "admin", "/metrics").await.body.contains(&needle) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the metrics never read {line:?}");
    }

    /// The address of a listener announced in the log after a reload.
    pub fn listener_from_log(&self, name: &str) -> SocketAddr {
        let needle = format!("listener=\"{name}\"");
        let line = self.wait_for_log(&needle);
        parse_listening(&line).expect("a listening line").1
    }

    /// The address of the admin API.
    pub fn admin(&self) -> SocketAddr {
        self.listeners["admin"]
    }

    /// The log lines written so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Waits until a log line contains `needle` (up to 5 s), and returns it.
    pub fn wait_for_log(&self, needle: &str) -> String {
        for _ in 0..500 {
            if let Some(line) = self.log().into_iter().find(|l| l.contains(needle)) {
                return line;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("no log line contains {needle:?}; log:\n{}", self.log().join("\n"))
    }

    /// Resident set size of the gateway process now and at its peak, in KiB.
    pub fn memory_kib(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap()
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// Sends a signal to the gateway process.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill").args(["-s", signal, &self.child.id().to_string()]).status().unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit (up to `limit`) and returns its exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let deadline = std::time::Instant::now() + limit;
        while std::time::Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("sluice did not exit within {limit:?}")
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `listener=NAME address=ADDR` from a text or JSON "listening" log line.
fn parse_listening(line: &str) -> Option<(String, SocketAddr)> {
    if !line.contains("listening") {
        return None;
    }
    let value = |key: &str| {
        let start = line
            .find(&format!("{key}="))
            .map(|i| i + key.len() + 1)
            .or_else(|| line.find(&format!("\"{key}\":")).map(|i| i + key.len() + 3))?;
        let rest = line[start..].trim_start_matches('"');
        let end = rest.find(['"', ' ', ',', '}']).unwrap_or(rest.len());
        Some(rest[..end].to_string())
    };
    Some((value("listener")?, value("address")?.parse().ok()?))
}

/// A folder under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("sluice-test-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A response with its body read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

/// An HTTP/1.1 keep-alive connection to `addr`.
pub struct Client {
    sender: hyper::client::conn::http1::SendRequest<BoxBody>,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
        tokio::spawn(connection.with_upgrades());
        Client { sender }
    }

    /// Sends `request` and returns the response with its body unread.
    pub async fn raw(&mut self, request: Request<BoxBody>) -> Response<Incoming> {
        self.sender.ready().await.unwrap();
        self.sender.send_request(request).await.unwrap()
    }

    /// Sends `request` and reads the whole response.
    pub async fn send(&mut self, request: Request<BoxBody>) -> Reply {
        let response = self.raw(request).await;
        let (parts, body) = response.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        Reply { status: parts.status, headers: parts.headers, body: String::from_utf8_lossy(&body).into_owned() }
    }

    /// `GET path` with `Host: host`.
    pub async fn get(&mut self, host: &str, path: &str) -> Reply {
        self.send(Request::get(path).header("host", host).body(full("")).unwrap()).await
    }
}

/// `GET path` with `Host: host` on a new connection.
pub async fn get(addr: SocketAddr, host: &str, path: &str) -> Reply {
    Client::connect(addr).await.get(host, path).await
}

/// An upstream block for `backends`.
pub fn upstream(name: &str, backends: &[&Backend]) -> String {
    let list: Vec<String> = backends.iter().map(|b| format!("\"{}\"", b.addr)).collect();
    format!("[[upstream]]\nname = \"{name}\"\nbackends = [{}]\n", list.join(", "))
}

/// The usual header of a test config: one `public` listener on a free port, access logs on.
pub const LISTENER: &str = "[[listener]]\nname = \"public\"\nlisten = \"127.0.0.1:0\"\nprotocol = \"http\"\n";

/// The path of a plugin component built by `scripts/build-plugins`.
pub fn plugin_wasm(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let path = target.join("wasm32-wasip2/release").join(format!("{name}.wasm"));
    assert!(path.exists(), "{} is missing: run scripts/build-plugins (scripts/test does) first", path.display());
    path
}

/// A `[[plugin]]` block for the testkit plugin in `mode`, with extra `key = value` lines.
pub fn testkit(name: &str, mode: &str, extra: &str) -> String {
    format!(
        "[[plugin]]\nname = \"{name}\"\npath = \"{}\"\n{extra}\n[plugin.config]\nmode = \"{mode}\"\nname = \"{name}\"\n",
        plugin_wasm("testkit").display()
    )
}

/// Whether connections to `addr` are refused within a second (a listener closes asynchronously).
pub async fn refuses_connections(addr: SocketAddr) -> bool {
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

/// Writes `request` on a new connection and reads until the gateway closes it, or 5 s; returns
/// what was read and whether the connection was closed.
pub async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> (String, bool) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut reply = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut reply)).await.is_ok();
    (String::from_utf8_lossy(&reply).into_owned(), closed)
}

/// Runs curl (installed by scripts/test) with `args`, 10 s at most; returns its exit code, stdout
/// and stderr.
pub async fn curl(args: &[&str]) -> (i32, String, String) {
    let output = tokio::process::Command::new("curl")
        .args(["--silent", "--show-error", "--max-time", "10"])
        .args(args)
        .output()
        .await
        .expect("curl is installed (scripts/test installs it)");
    let text = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
    (output.status.code().unwrap_or(-1), text(output.stdout), text(output.stderr))
}
