//! HTTP outbounds against a direct connection, haproxy (http mode) and
//! nginx (reverse proxy), all in one run so only ratios count. The backend
//! is nginx answering a fixed body (HTTP/1.1 on one port, h2c on another).
//!
//! - HTTP/1.1 keep-alive requests per second through one VIP (wrk);
//! - HTTP/2 requests per second, 100 streams on 4 connections (h2load);
//! - latency added over direct at 50 % of haproxy's peak rate, p50 and p99
//!   (`loopmesh_bench::paced`: an open-loop client whose requests leave on
//!   schedule, not when the previous one returns), the median of five
//!   rounds against each round's direct run, with their range;
//! - memory per idle client connection and per 1,000 pooled upstream ones;
//! - user-space instructions per request under callgrind (haproxy and
//!   loopmesh): a count, as steady from run to run as times are not, so a
//!   change to the HTTP path can be judged by it.
//!
//! Every proxy runs on one thread (haproxy `nbthread 1`, one nginx worker,
//! the sidecar's `--workers 1`): the load generators need the other core.
//!
//! Needs wrk, h2load, nginx, haproxy and valgrind on PATH (`bench/run http`
//! installs them). Arguments pick sections (`rate`, `latency`, or one
//! protocol's `latency-h1` / `latency-h2`, `memory`, `instructions`; none:
//! all); `LOOPMESH_BENCH_LOAD` lists the latency test's fractions of the
//! peak (0.5; say `0.3,0.4,0.5` for a curve).
#![allow(clippy::unwrap_used, clippy::disallowed_types)] // a benchmark measures wall time and fails loudly

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use loopmesh_bench::paced::paced;
use loopmesh_bench::*;
use loopmesh_tests::process::{ChildGuard, admin_get, workspace_binary};
use tokio::net::TcpStream;

const SECONDS: &str = "4";

/// An nginx of its own: a config holding `servers`, logs off, one worker
/// (as each proxy gets: the machine has 2 cores and the load generator
/// needs one), and no master process: killing a master leaves its worker
/// running, and one left from a run spun at 30 % of a core through the next.
fn nginx(dir: &std::path::Path, name: &str, servers: &str) -> ChildGuard {
    let prefix = dir.join(name);
    std::fs::create_dir_all(prefix.join("logs")).unwrap();
    let conf = prefix.join("nginx.conf");
    let text = format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\npid {pid};\nerror_log /dev/null crit;\nevents {{ worker_connections 8192; }}\nhttp {{\n  access_log off;\n  keepalive_requests 1000000;\n  client_body_temp_path {tmp};\n  proxy_temp_path {tmp};\n{servers}\n}}\n",
        pid = prefix.join("nginx.pid").display(),
        tmp = prefix.join("tmp").display(),
    );
    std::fs::write(&conf, text).unwrap();
    spawn(Command::new("nginx").arg("-p").arg(&prefix).arg("-c").arg(&conf))
}

/// haproxy's configuration: HTTP/1.1 on `listen_h1` to `h1`, h2c on `listen_h2` to `h2`.
fn haproxy_config(
    dir: &std::path::Path,
    listen_h1: SocketAddr,
    listen_h2: SocketAddr,
    h1: SocketAddr,
    h2: SocketAddr,
) -> std::path::PathBuf {
    let cfg = format!(
        "global\n  maxconn 8000\n  nbthread 1\ndefaults\n  mode http\n  timeout connect 2s\n  timeout client 1h\n  timeout server 1h\n  http-reuse always\n\
         frontend f1\n  bind {listen_h1}\n  default_backend b1\nbackend b1\n  server s {h1}\n\
         frontend f2\n  bind {listen_h2} proto h2\n  default_backend b2\nbackend b2\n  server s {h2} proto h2\n"
    );
    let path = dir.join(format!("haproxy-http-{}.cfg", listen_h1.port()));
    std::fs::write(&path, cfg).unwrap();
    path
}

/// wrk's requests per second: 2 threads, 50 connections.
fn wrk(target: SocketAddr) -> f64 {
    let out = Command::new("wrk")
        .args(["-t", "2", "-c", "50", "-d", &format!("{SECONDS}s"), &format!("http://{target}/")])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let rps = text.lines().find_map(|l| l.strip_prefix("Requests/sec:")).map(|v| v.trim().parse().unwrap());
    rps.unwrap_or_else(|| panic!("wrk against {target}: {text}"))
}

/// h2load's requests per second: 4 connections of 25 streams each (h2c).
fn h2load(target: SocketAddr) -> f64 {
    let out = Command::new("h2load")
        .args(["-c", "4", "-m", "25", "-t", "1", "-D", SECONDS, &format!("http://{target}/")])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| l.starts_with("finished in")).unwrap_or_else(|| panic!("h2load: {text}"));
    let failed = text.lines().find(|l| l.starts_with("requests:")).unwrap_or_default();
    assert!(failed.contains(" 0 failed"), "h2load against {target}: {failed}");
    line.split(',').nth(1).unwrap().split_whitespace().next().unwrap().parse().unwrap()
}

/// CPU ticks of a process and its children (nginx's worker).
fn cpu_tree(pid: u32) -> u64 {
    let parent = |p: u32| -> Option<u32> {
        let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
        stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
    };
    let children: u64 = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| parent(*p) == Some(pid))
        .map(cpu_ticks)
        .sum();
    cpu_ticks(pid) + children
}

/// An HTTP/1.1 backend on each of `ips` at `port`, answering after `delay`,
/// so that concurrent requests each hold an upstream connection.
async fn slow_backend(ips: &[Ipv4Addr], port: u16, delay: Duration) {
    for ip in ips {
        let l = tokio::net::TcpListener::bind((*ip, port)).await.unwrap();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |_req| async move {
                        tokio::time::sleep(delay).await;
                        let body = http_body_util::Full::new(Bytes::from_static(b"pooled\n"));
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(body))
                    });
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(s), service).await;
                });
            }
        });
    }
}

/// A sidecar serving `view_file` on one worker; returns it once ready.
async fn sidecar(view_file: &std::path::Path, admin: SocketAddr) -> ChildGuard {
    let child = spawn(
        Command::new(workspace_binary("loopmesh-sidecar"))
            .args(["run", "--bind-outbounds", "--view-file"])
            .arg(view_file)
            .args(["--admin-address", &admin.to_string(), "--workers", "1"])
            .env("RUST_LOG", "warn"),
    );
    while admin_get(admin, "/ready").0 != 200 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child
}

/// Rounds per target: this machine's runs vary by 15 %, so each target
/// runs `ROUNDS` times, the order rotated each round, and the median counts.
const ROUNDS: usize = 3;

/// Rounds of the latency test: a p99 on two shared cores moves by
/// milliseconds when the scheduler stalls a process, so it takes more.
const LATENCY_ROUNDS: usize = 5;

/// The sections an argument can pick.
const SECTIONS: [&str; 6] = ["rate", "latency", "latency-h1", "latency-h2", "memory", "instructions"];

/// Runs each load `ROUNDS` times per target, rotating the order: (median
/// requests per second, that round's proxy CPU us per request).
fn rates(targets: &[SocketAddr], pids: &[Option<u32>], load: fn(SocketAddr) -> f64) -> Vec<(f64, f64)> {
    let secs: f64 = SECONDS.parse().unwrap();
    let mut rounds: Vec<Vec<(f64, f64)>> = vec![Vec::new(); targets.len()];
    for round in 0..ROUNDS {
        for k in 0..targets.len() {
            let i = (k + round) % targets.len();
            let before = pids[i].map_or(0, cpu_tree);
            let rps = load(targets[i]);
            let spent = pids[i].map_or(0, cpu_tree) - before;
            rounds[i].push((rps, spent as f64 * 10_000.0 / (rps * secs)));
        }
    }
    rounds
        .into_iter()
        .map(|mut r| {
            r.sort_by(|a, b| a.0.total_cmp(&b.0));
            r[r.len() / 2]
        })
        .collect()
}

fn print_rates(names: &[&str], rows: &[(f64, f64)]) {
    for (name, (rps, cpu)) in names.iter().zip(rows) {
        println!(
            "{name:<13} {rps:>9.0} req/s  {:>5.2}x direct  {:>5.2}x haproxy  proxy CPU {cpu:.1} us/request",
            rps / rows[0].0,
            rps / rows[1].0,
        );
    }
}

/// Requests counted under callgrind, after as many to warm up.
const COUNTED: u32 = 20_000;

/// User-space instructions per request of `program` (started under
/// callgrind, serving `target`): counters zeroed after a warm-up, then
/// `COUNTED` requests from h2load (HTTP/1.1 over 50 connections, or
/// HTTP/2 as 4 connections x 25 streams), then dumped.
fn instructions(dir: &std::path::Path, program: &mut Command, target: SocketAddr, h2: bool) -> f64 {
    let out = dir.join(format!("callgrind.{}.out", free_port()));
    let mut cmd = Command::new("valgrind");
    cmd.arg("--tool=callgrind").arg(format!("--callgrind-out-file={}", out.display()));
    cmd.arg(program.get_program()).args(program.get_args());
    for (k, v) in program.get_envs() {
        if let Some(v) = v {
            cmd.env(k, v);
        }
    }
    let child = spawn(&mut cmd);
    let pid = child.0.id().to_string();
    let url = format!("http://{target}/");
    let load = |n: u32| {
        let n = n.to_string();
        let mut args = vec!["-n", &n, "-t", "1"];
        args.extend(if h2 { ["-c", "4", "-m", "25"].as_slice() } else { ["--h1", "-c", "50"].as_slice() });
        Command::new("h2load").args(&args).arg(&url).output().unwrap()
    };
    // Valgrind starts slowly: the warm-up waits until it answers.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !String::from_utf8_lossy(&load(100).stdout).contains(" 100 succeeded") {
        assert!(Instant::now() < deadline, "{target} never answered under callgrind");
        std::thread::sleep(Duration::from_millis(500));
    }
    load(COUNTED / 10);
    assert!(Command::new("callgrind_control").args(["-z", &pid]).output().unwrap().status.success());
    let text = String::from_utf8_lossy(&load(COUNTED).stdout).into_owned();
    assert!(text.contains(&format!(" {COUNTED} succeeded")), "h2load under callgrind: {text}");
    assert!(Command::new("callgrind_control").args(["-d", &pid]).output().unwrap().status.success());
    drop(child);
    let dump = std::fs::read_to_string(format!("{}.1", out.display())).unwrap();
    let total: f64 = dump
        .lines()
        .find_map(|l| l.strip_prefix("summary:").or_else(|| l.strip_prefix("totals:")))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    total / f64::from(COUNTED)
}

fn view(outbounds: &[(Ipv4Addr, &str, &str, &[SocketAddr])]) -> String {
    let items: Vec<String> = outbounds
        .iter()
        .map(|(vip, name, protocol, to)| {
            let endpoints: Vec<String> = to.iter().map(|a| format!(r#"{{"address":"{a}"}}"#)).collect();
            format!(
                r#"{{"service":"{name}","vip":"{vip}","port":8080,"protocol":"{protocol}","endpoints":[{}]}}"#,
                endpoints.join(",")
            )
        })
        .collect();
    format!(r#"{{"outbounds":[{}]}}"#, items.join(","))
}

fn metric(admin: SocketAddr, name: &str, service: &str) -> f64 {
    let (_, text) = admin_get(admin, "/metrics");
    text.lines()
        .find(|l| l.starts_with(name) && l.contains(&format!("service=\"{service}\"")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::main]
async fn main() {
    // Sections to run; none named runs all.
    let picked: Vec<String> = std::env::args().skip(1).collect();
    let wants = |name: &str| picked.is_empty() || picked.iter().any(|p| p == name);
    if let Some(unknown) = picked.iter().find(|p| !SECTIONS.contains(&p.as_str())) {
        eprintln!("{unknown:?} is not a section: pick from {}", SECTIONS.join(", "));
        std::process::exit(2);
    }
    // Read before anything starts: a bad value must not leave servers behind.
    let loads = latency_loads();
    let dir = std::env::temp_dir().join(format!("loopmesh-bench-http-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let port = |_| SocketAddr::from(([127, 0, 0, 1], free_port()));
    let (h1_backend, h2_backend) = (port(0), port(0));
    let _backend = nginx(
        &dir,
        "backend",
        &format!(
            "  server {{ listen {h1_backend}; location / {{ return 200 'hello from the backend\\n'; }} }}\n  server {{ listen {h2_backend} http2; location / {{ return 200 'hello from the backend\\n'; }} }}"
        ),
    );
    let (ha_h1, ha_h2) = (port(0), port(0));
    let ha = spawn(Command::new("haproxy").arg("-f").arg(haproxy_config(&dir, ha_h1, ha_h2, h1_backend, h2_backend)));
    let (ng_h1, ng_h2) = (port(0), port(0));
    let ng = nginx(
        &dir,
        "proxy",
        &format!(
            "  upstream b {{ server {h1_backend}; keepalive 64; }}\n  server {{ listen {ng_h1}; location / {{ proxy_pass http://b; proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }}\n  server {{ listen {ng_h2} http2; location / {{ proxy_pass http://b; proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }}"
        ),
    );

    // loopmesh: an http VIP, an http2 VIP and a tcp VIP to the same backend.
    let (lm_h1, lm_h2, lm_tcp) = (
        SocketAddr::from(([127, 30, 0, 1], 8080)),
        SocketAddr::from(([127, 30, 0, 2], 8080)),
        SocketAddr::from(([127, 30, 0, 3], 8080)),
    );
    let view_file = dir.join("view.json");
    std::fs::write(
        &view_file,
        view(&[
            (Ipv4Addr::new(127, 30, 0, 1), "h1", "http", &[h1_backend]),
            (Ipv4Addr::new(127, 30, 0, 2), "h2", "http2", &[h2_backend]),
            (Ipv4Addr::new(127, 30, 0, 3), "tcp", "tcp", &[h1_backend]),
        ]),
    )
    .unwrap();
    let lm = sidecar(&view_file, SocketAddr::from(([127, 0, 0, 1], free_port()))).await;
    // Every target answers before anything is measured.
    for t in [h1_backend, ha_h1, ng_h1, lm_h1, lm_tcp] {
        paced(t, false, 100.0, 0.2).await;
    }
    for t in [h2_backend, ha_h2, ng_h2, lm_h2] {
        paced(t, true, 100.0, 0.2).await;
    }
    let names = ["direct", "haproxy", "nginx", "loopmesh", "loopmesh tcp"];
    let pids = [None, Some(ha.0.id()), Some(ng.0.id()), Some(lm.0.id()), Some(lm.0.id())];
    let h1_targets = [h1_backend, ha_h1, ng_h1, lm_h1, lm_tcp];
    let h2_targets = [h2_backend, ha_h2, ng_h2, lm_h2];

    // haproxy's peaks: from the rate section, or (run alone) one round each.
    let (mut h1_peak, mut h2_peak) = (None, None);
    if wants("rate") {
        println!(
            "HTTP/1.1 keep-alive, requests per second (wrk, 2 threads, 50 connections, {SECONDS} s; median of {ROUNDS} rounds, order rotated)"
        );
        let h1 = rates(&h1_targets, &pids, wrk);
        print_rates(&names, &h1);
        println!(
            "\nHTTP/2, requests per second (h2load, 4 connections x 25 streams, {SECONDS} s, median of {ROUNDS}; nginx proxies to HTTP/1.1)"
        );
        let h2 = rates(&h2_targets, &pids[..4], h2load);
        print_rates(&names[..4], &h2);
        (h1_peak, h2_peak) = (Some(h1[1].0), Some(h2[1].0));
    }

    // The latency test's loads (`loads`) are fractions of haproxy's peak.
    let latency_rounds =
        [("HTTP/1.1", "latency-h1", false, &h1_targets[..4]), ("HTTP/2", "latency-h2", true, &h2_targets[..])];
    for (label, _, is_h2, targets) in latency_rounds.into_iter().filter(|r| wants("latency") || wants(r.1)) {
        let peak =
            if is_h2 { h2_peak } else { h1_peak }.unwrap_or_else(|| if is_h2 { h2load(ha_h2) } else { wrk(ha_h1) });
        for &load in &loads {
            latency(label, is_h2, targets, &names, peak, load).await;
        }
    }
    drop(lm);
    if wants("memory") {
        memory(&dir, h1_backend).await;
    }
    if wants("instructions") {
        instructions_section(&dir, h1_backend, h2_backend);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The `LOOPMESH_BENCH_LOAD` fractions of the peak (0.5 when unset).
fn latency_loads() -> Vec<f64> {
    let Ok(v) = std::env::var("LOOPMESH_BENCH_LOAD") else { return vec![0.5] };
    v.split(',')
        .map(|f| match f.trim().parse::<f64>() {
            Ok(l) if l > 0.0 && l <= 1.0 => l,
            _ => {
                eprintln!("LOOPMESH_BENCH_LOAD: {f:?} is not a fraction of the peak in (0, 1]");
                std::process::exit(2)
            }
        })
        .collect()
}

/// Added latency p50 and p99 of each target at `load` x `peak` requests
/// per second: the median of rounds against that round's direct run.
async fn latency(label: &str, is_h2: bool, targets: &[SocketAddr], names: &[&str], peak: f64, load: f64) {
    let rate = peak * load;
    println!(
        "\n{label} latency at {rate:.0} req/s ({:.0} % of haproxy's peak), open loop, 8 connections, 4 s; median of {LATENCY_ROUNDS} rounds (and their range), order rotated",
        load * 100.0
    );
    // Each round's added latency is against that round's direct run.
    let mut p50s = vec![Vec::new(); targets.len()];
    let mut p99s = vec![Vec::new(); targets.len()];
    for round in 0..LATENCY_ROUNDS {
        let mut results = vec![(0.0, 0.0); targets.len()];
        for k in 0..targets.len() {
            let i = (k + round) % targets.len();
            results[i] = paced(targets[i], is_h2, rate, 4.0).await;
        }
        for (i, (p50, p99)) in results.iter().enumerate() {
            p50s[i].push((*p50, p50 - results[0].0));
            p99s[i].push((*p99, p99 - results[0].1));
        }
    }
    // (absolute, added) of the median round, and the range of the added.
    let median = |v: &mut Vec<(f64, f64)>| {
        v.sort_by(|a, b| a.1.total_cmp(&b.1));
        (v[v.len() / 2], v[0].1, v[v.len() - 1].1)
    };
    for i in 0..targets.len() {
        let ((p50, a50), lo50, hi50) = median(&mut p50s[i]);
        let ((p99, a99), lo99, hi99) = median(&mut p99s[i]);
        println!(
            "{:<13} p50 {p50:>6.0} us  p99 {p99:>6.0} us  added p50 {a50:>+5.0} us ({lo50:+.0}..{hi50:+.0})  added p99 {a99:>+6.0} us ({lo99:+.0}..{hi99:+.0})",
            names[i]
        );
    }
}

/// Memory per idle client connection and per 1,000 pooled upstream ones,
/// on a fresh sidecar of its own.
async fn memory(dir: &std::path::Path, h1_backend: SocketAddr) {
    println!("\nmemory (a fresh sidecar of its own)");
    let slow_port = free_port();
    let pool_ips: Vec<Ipv4Addr> = (1..=4).map(|i| Ipv4Addr::new(127, 0, 0, i)).collect();
    slow_backend(&pool_ips, slow_port, Duration::from_millis(500)).await;
    let pool_endpoints: Vec<SocketAddr> = pool_ips.iter().map(|ip| SocketAddr::from((*ip, slow_port))).collect();
    let mem_view = dir.join("view-memory.json");
    std::fs::write(
        &mem_view,
        view(&[
            (Ipv4Addr::new(127, 31, 0, 1), "h1", "http", &[h1_backend]),
            (Ipv4Addr::new(127, 31, 0, 2), "pool", "http", &pool_endpoints),
        ]),
    )
    .unwrap();
    let (mem_h1, mem_pool) = (SocketAddr::from(([127, 31, 0, 1], 8080)), SocketAddr::from(([127, 31, 0, 2], 8080)));
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let lm = sidecar(&mem_view, admin).await;
    paced(mem_h1, false, 100.0, 0.2).await;
    let base = rss_kib(&lm.0);
    let mut idle = Vec::new();
    for _ in 0..1000 {
        let io = TokioIo::new(TcpStream::connect(mem_h1).await.unwrap());
        let (mut s, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(conn);
        s.ready().await.unwrap();
        let req = Request::builder().uri("/").header("host", "bench").body(Empty::<Bytes>::new()).unwrap();
        s.send_request(req).await.unwrap().into_body().collect().await.unwrap();
        idle.push(s);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let with_idle = rss_kib(&lm.0);
    println!(
        "idle HTTP/1.1 client connections: {:.1} KiB each (1,000 kept open after one request each; RSS {base} -> {with_idle} KiB)",
        with_idle.saturating_sub(base) as f64 / 1000.0
    );
    drop(idle);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // 1,000 requests at once on one HTTP/2 client connection to an http
    // outbound whose backends answer after 500 ms: 1,000 upstream HTTP/1.1
    // connections, which then wait in the pool.
    let before_pool = rss_kib(&lm.0);
    let io = TokioIo::new(TcpStream::connect(mem_pool).await.unwrap());
    let (sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await.unwrap();
    tokio::spawn(conn);
    let mut sends = tokio::task::JoinSet::new();
    for _ in 0..1000 {
        let mut s = sender.clone();
        sends.spawn(async move {
            s.ready().await.unwrap();
            let req = Request::builder().uri(format!("http://{mem_pool}/")).body(Empty::<Bytes>::new()).unwrap();
            s.send_request(req).await.unwrap().into_body().collect().await.unwrap();
        });
    }
    while let Some(r) = sends.join_next().await {
        r.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pooled = metric(admin, "loopmesh_http_upstream_connections_idle", "pool");
    let with_pool = rss_kib(&lm.0);
    println!(
        "pooled upstream connections: {pooled:.0} waiting after 1,000 concurrent requests; RSS {before_pool} -> {with_pool} KiB: {:.0} KiB per 1,000 pooled (an upper bound: it also holds what the requests left in the allocator)",
        with_pool.saturating_sub(before_pool) as f64 * 1000.0 / pooled.max(1.0)
    );
    drop(lm);
}

/// User-space instructions per request, haproxy against loopmesh.
fn instructions_section(dir: &std::path::Path, h1_backend: SocketAddr, h2_backend: SocketAddr) {
    let port = |_| SocketAddr::from(([127, 0, 0, 1], free_port()));
    println!("\nuser-space instructions per request (callgrind, {COUNTED} requests after a warm-up; h2load)");
    let (ha_h1, ha_h2) = (port(0), port(0));
    let ha_cfg = haproxy_config(dir, ha_h1, ha_h2, h1_backend, h2_backend);
    let cg_view = dir.join("view-callgrind.json");
    let (cg_h1, cg_h2) = (SocketAddr::from(([127, 32, 0, 1], 8080)), SocketAddr::from(([127, 32, 0, 2], 8080)));
    std::fs::write(
        &cg_view,
        view(&[
            (Ipv4Addr::new(127, 32, 0, 1), "h1", "http", &[h1_backend]),
            (Ipv4Addr::new(127, 32, 0, 2), "h2", "http2", &[h2_backend]),
        ]),
    )
    .unwrap();
    let mut sidecar_cmd = Command::new(workspace_binary("loopmesh-sidecar"));
    sidecar_cmd
        .args(["run", "--bind-outbounds", "--view-file"])
        .arg(&cg_view)
        .args(["--admin-address", &SocketAddr::from(([127, 0, 0, 1], free_port())).to_string(), "--workers", "1"])
        .env("RUST_LOG", "warn");
    for (label, h2, ha, lm) in [("HTTP/1.1", false, ha_h1, cg_h1), ("HTTP/2", true, ha_h2, cg_h2)] {
        let haproxy = instructions(dir, Command::new("haproxy").arg("-f").arg(&ha_cfg), ha, h2);
        let loopmesh = instructions(dir, &mut sidecar_cmd, lm, h2);
        println!("{label:<9} haproxy {haproxy:>7.0}  loopmesh {loopmesh:>7.0}  ({:.2}x haproxy)", loopmesh / haproxy);
    }
}
