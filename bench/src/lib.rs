//! What the data-path benchmarks share: echo servers, iperf3 runs with the
//! CPU they cost, connection rates and round trips.
#![allow(clippy::unwrap_used, clippy::disallowed_types)] // a benchmark measures wall time and fails loudly

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use loopmesh_tests::process::ChildGuard;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub mod paced;

pub const IPERF_SECONDS: &str = "4";

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub fn spawn(cmd: &mut Command) -> ChildGuard {
    ChildGuard(cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap())
}

pub fn rss_kib(child: &Child) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    status.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)).unwrap().parse().unwrap()
}

/// Echoes until the client closes.
pub async fn echo_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    a
}

/// Echoes one byte and closes first, as an HTTP/1.0 server does. The
/// TIME_WAIT sockets then stay on the accepting sides, so the kernel's
/// search for a free ephemeral port (which grows with them, and swings
/// with the order the targets run in) does not decide the connection rate.
pub async fn echo_once_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut b = [0u8; 1];
                if s.read_exact(&mut b).await.is_ok() {
                    let _ = s.write_all(&b).await;
                }
            });
        }
    });
    a
}

/// One iperf3 run: whether it ended without an error, and its Gbit/s.
pub fn iperf(target: SocketAddr, streams: &str, seconds: &str) -> (bool, f64) {
    let out = Command::new("iperf3")
        .args(["-c", &target.ip().to_string(), "-p", &target.port().to_string(), "-t", seconds, "-P", streams, "-J"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    (
        out.status.success() && v.get("error").is_none(),
        v["end"]["sum_received"]["bits_per_second"].as_f64().unwrap_or(0.0) / 1e9,
    )
}

/// Busy and total jiffies of the whole machine so far (all CPUs).
pub fn machine_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap();
    let cpu: Vec<u64> = stat.lines().next().unwrap().split_whitespace().skip(1).map(|v| v.parse().unwrap()).collect();
    let total: u64 = cpu.iter().sum();
    // idle and iowait are the 4th and 5th.
    (total - cpu[3] - cpu[4], total)
}

/// One target's throughput and what it cost.
#[derive(Debug)]
pub struct Throughput {
    pub gbps: f64,
    /// Share of the machine's CPU time busy while it ran.
    pub busy: f64,
    /// CPU time of the proxy process per GB carried, in milliseconds.
    pub proxy_ms_per_gb: Option<f64>,
}

/// Median of 3 iperf3 runs through `target`, with the CPU they used.
pub fn throughput(target: SocketAddr, streams: &str, proxy: Option<u32>) -> Throughput {
    let (busy0, total0) = machine_ticks();
    let ticks0 = proxy.map_or(0, cpu_ticks);
    let runs: Vec<f64> = (0..3).map(|_| iperf(target, streams, IPERF_SECONDS).1).collect();
    let (busy1, total1) = machine_ticks();
    let ticks = proxy.map_or(0, cpu_ticks) - ticks0;
    let gigabytes: f64 = runs.iter().map(|gbps| gbps * IPERF_SECONDS.parse::<f64>().unwrap() / 8.0).sum();
    Throughput {
        gbps: median(runs),
        busy: (busy1 - busy0) as f64 / (total1 - total0).max(1) as f64,
        proxy_ms_per_gb: proxy.map(|_| ticks as f64 * 10.0 / gigabytes.max(f64::MIN_POSITIVE)),
    }
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Connections completed and failed in `secs` by 32 workers that each
/// connect, send a byte, read it back and the server's close.
pub async fn connections(target: SocketAddr, secs: f64) -> (u64, u64) {
    let (done, errors, stop) =
        (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false)));
    let workers: Vec<_> = (0..32)
        .map(|_| {
            let (done, errors, stop) = (done.clone(), errors.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let ok = async {
                        let mut s = TcpStream::connect(target).await.ok()?;
                        s.write_all(b"x").await.ok()?;
                        let mut b = [0u8; 2];
                        (s.read(&mut b).await.ok()? == 1 && s.read(&mut b).await.ok()? == 0).then_some(())
                    }
                    .await;
                    let counter = if ok.is_some() { &done } else { &errors };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    (done.load(Ordering::Relaxed), errors.load(Ordering::Relaxed))
}

/// CPU time a process has used so far, in clock ticks (1/100 s).
pub fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name, which may hold spaces: utime is the
    // 12th and stime the 13th of them.
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// One target's connection figures.
#[derive(Debug)]
pub struct Rate {
    pub per_second: f64,
    pub errors: u64,
    /// The proxy process's CPU time per connection, in microseconds.
    pub cpu_us: Option<f64>,
}

/// Connections per second and errors of each target (and the CPU its proxy
/// process spent per connection), measured in rounds of one second per
/// target with the order rotated each round, so the machine's drift does
/// not favour whichever target goes first.
pub async fn connection_rates(targets: [(SocketAddr, Option<u32>); 3]) -> [Rate; 3] {
    const ROUNDS: usize = 6;
    let mut totals = [(0u64, 0u64, 0u64); 3];
    for round in 0..ROUNDS {
        for k in 0..3 {
            let i = (round + k) % 3;
            let (target, pid) = targets[i];
            let before = pid.map_or(0, cpu_ticks);
            let (done, errors) = connections(target, 1.0).await;
            totals[i].0 += done;
            totals[i].1 += errors;
            totals[i].2 += pid.map_or(0, cpu_ticks) - before;
        }
    }
    std::array::from_fn(|i| {
        let (done, errors, ticks) = totals[i];
        Rate {
            per_second: done as f64 / ROUNDS as f64,
            errors,
            cpu_us: targets[i].1.map(|_| ticks as f64 * 10_000.0 / done.max(1) as f64),
        }
    })
}

pub async fn round_trips(target: SocketAddr) -> (f64, f64) {
    let mut s = TcpStream::connect(target).await.unwrap();
    s.set_nodelay(true).unwrap();
    let mut samples = Vec::with_capacity(20_000);
    let mut b = [0u8; 1];
    for i in 0..21_000 {
        let t = Instant::now();
        s.write_all(b"x").await.unwrap();
        s.read_exact(&mut b).await.unwrap();
        if i >= 1_000 {
            samples.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    samples.sort_by(f64::total_cmp);
    (samples[samples.len() / 2], samples[samples.len() * 99 / 100])
}
