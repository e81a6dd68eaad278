//! Real binaries and real sockets for the end-to-end tests: the workspace's
//! built binaries, a child process that dies with its guard, a TCP forwarder
//! that can be cut or hung (the emulator going away or going silent), and the sidecar's admin API.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// A binary of this workspace, built by the same `cargo test` run (target/<profile>/<name>).
pub fn workspace_binary(name: &str) -> PathBuf {
    // A test runs from target/<profile>/deps, a benchmark from target/<profile>.
    let exe = std::env::current_exe().expect("test executable path");
    let dirs = exe.ancestors().skip(1).take(2);
    let found = dirs.map(|d| d.join(name)).find(|p| p.exists());
    found.unwrap_or_else(|| {
        panic!(
            "{name} is missing next to {}: run `cargo build --workspace --bins` first (scripts/test does)",
            exe.display()
        )
    })
}

/// Kills the child when dropped, so a failed assertion leaves nothing running.
#[derive(Debug)]
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A TCP forwarder to `upstream` that can fail the way networks do: `cut`
/// closes it and every connection (the emulator going away); `hang` keeps
/// accepting connections but never answers on them (an endpoint that is up
/// and silent); `heal` forwards again.
#[derive(Debug)]
pub struct Forwarder {
    pub url: String,
    tasks: JoinSet<()>,
    hanging: Arc<AtomicBool>,
    conns: Arc<Mutex<JoinSet<()>>>,
}

impl Forwarder {
    pub async fn start(upstream: &str) -> Self {
        let upstream: SocketAddr = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .replace("localhost", "127.0.0.1")
            .parse()
            .expect("upstream host:port");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind forwarder");
        let url = format!("http://{}", listener.local_addr().expect("local addr"));
        let hanging = Arc::new(AtomicBool::new(false));
        let conns = Arc::new(Mutex::new(JoinSet::new()));
        let mut tasks = JoinSet::new();
        let (h, c) = (hanging.clone(), conns.clone());
        tasks.spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let hang = h.load(Ordering::SeqCst);
                c.lock().expect("forwarder lock").spawn(async move {
                    if hang {
                        // Read whatever comes and never answer.
                        let mut sink = tokio::io::sink();
                        let _ = tokio::io::copy(&mut inbound, &mut sink).await;
                        std::future::pending::<()>().await;
                    } else if let Ok(mut out) = tokio::net::TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
            }
        });
        Self { url, tasks, hanging, conns }
    }

    /// The upstream is gone from here on: the listener and its connections close.
    pub fn cut(&mut self) {
        self.tasks.abort_all();
        self.conns.lock().expect("forwarder lock").abort_all();
    }

    /// From here on connections are accepted and never answered; open ones
    /// are closed, so pooled clients reconnect into the silence.
    pub fn hang(&self) {
        self.hanging.store(true, Ordering::SeqCst);
        self.conns.lock().expect("forwarder lock").abort_all();
    }

    /// Forwards again; the silent connections are closed.
    pub fn heal(&self) {
        self.hanging.store(false, Ordering::SeqCst);
        self.conns.lock().expect("forwarder lock").abort_all();
    }
}

/// A `loopmesh-sidecar` that binds the VIPs of `mesh`, read from `table`
/// (through `aws_endpoint` when given: a forwarder that can fail), with its
/// admin endpoint on `admin`, a 200 ms refresh, no wake-ups, and extra `args` and
/// `env` (which may set others).
pub fn table_sidecar(
    table: &str,
    mesh: &str,
    admin: SocketAddr,
    aws_endpoint: Option<&str>,
    args: &[&str],
    env: &[(&str, &str)],
) -> ChildGuard {
    let mut cmd = std::process::Command::new(workspace_binary("loopmesh-sidecar"));
    cmd.args(["run", "--bind-outbounds", "--mesh", mesh, "--admin-address", &admin.to_string()])
        .args(args)
        .env("LOOPMESH_TABLE_NAME", table)
        .env("LOOPMESH_SIDECAR_REFRESH_INTERVAL", "200ms")
        // Sidecars of one test host would share the default wake-up port;
        // a test that sends wake-ups names its own with `--wake-address`.
        .env("LOOPMESH_SIDECAR_WAKE_ADDRESS", "off")
        .envs(env.iter().copied())
        .env_remove("KUMA_DATAPLANE_RUNTIME_RESOURCE")
        .env_remove("ECS_CONTAINER_METADATA_URI_V4")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    if let Some(url) = aws_endpoint {
        cmd.env("AWS_ENDPOINT_URL", url);
    }
    ChildGuard(cmd.spawn().expect("start loopmesh-sidecar"))
}

/// `GET path` on the sidecar's admin address: (status, body); (0, "") when nothing listens.
pub fn admin_get(admin: SocketAddr, path: &str) -> (u16, String) {
    let Ok(mut s) = std::net::TcpStream::connect(admin) else { return (0, String::new()) };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    if write!(s, "GET {path} HTTP/1.0\r\nHost: admin\r\n\r\n").is_err() {
        return (0, String::new());
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

/// The value of the first metric line starting with `prefix`.
pub fn metric(text: &str, prefix: &str) -> Option<f64> {
    text.lines().find(|l| l.starts_with(prefix)).and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse().ok())
}

/// Polls `ok` every 50 ms for up to `limit`; panics naming `what` after that.
pub async fn eventually(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !ok() {
        assert!(tokio::time::Instant::now() < deadline, "timed out after {limit:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A free port on `ip`.
pub fn free_port(ip: &str) -> u16 {
    std::net::TcpListener::bind((ip, 0)).expect("bind").local_addr().expect("addr").port()
}
