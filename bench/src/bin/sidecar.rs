//! The data path against a direct connection and haproxy (tcp mode, and with
//! splice), all in one run so only ratios count: iperf3 throughput through
//! one VIP (1 and 8 streams, median of 3), new connections per second (32
//! workers, connect + 1-byte echo), held-connection round trip (p50, p99),
//! memory with 10,000 VIP listeners and per idle connection, and
//! reconfiguration (1,000 VIPs added to 10,000; 1,000 removed under a running
//! iperf3). Needs iperf3 and haproxy on PATH (`bench/run sidecar` installs them).
#![allow(clippy::unwrap_used, clippy::disallowed_types)] // a benchmark measures wall time and fails loudly

use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use loopmesh_tests::process::{ChildGuard, admin_get, workspace_binary};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const IPERF_SECONDS: &str = "4";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn spawn(cmd: &mut Command) -> ChildGuard {
    ChildGuard(cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap())
}

fn rss_kib(child: &Child) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    status.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)).unwrap().parse().unwrap()
}

/// Echoes until the client closes.
async fn echo_server() -> SocketAddr {
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
async fn echo_once_server() -> SocketAddr {
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

/// `maxconn 4000`: with splice haproxy also reserves descriptors for its
/// pipes, and refuses to start when that passes the open-file hard limit
/// (20,000 on the machine these figures come from).
fn haproxy(listen: SocketAddr, backend: SocketAddr, splice: bool) -> ChildGuard {
    let cfg = format!(
        "global\n  maxconn 4000\n{}\ndefaults\n  mode tcp\n  timeout connect 2s\n  timeout client 1h\n  timeout server 1h\n{}\nfrontend f\n  bind {listen}\n  default_backend b\nbackend b\n  server s {backend}\n",
        if splice { "" } else { "  nosplice" },
        if splice { "  option splice-auto" } else { "" },
    );
    let path = std::env::temp_dir().join(format!("haproxy-{}-{splice}.cfg", listen.port()));
    std::fs::write(&path, cfg).unwrap();
    spawn(Command::new("haproxy").arg("-f").arg(path))
}

fn view(outbounds: &[(Ipv4Addr, u16, SocketAddr)]) -> String {
    let items: Vec<String> = outbounds
        .iter()
        .map(|(vip, port, to)| {
            format!(r#"{{"service":"s{vip}","vip":"{vip}","port":{port},"endpoints":[{{"address":"{to}"}}]}}"#)
        })
        .collect();
    format!(r#"{{"outbounds":[{}]}}"#, items.join(","))
}

fn vip(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(127, 20, 0, 1)) + i)
}

fn write_view(path: &std::path::Path, text: &str) {
    // Atomic replace, so the sidecar never reads half a file.
    let tmp = path.with_extension("tmp");
    std::fs::File::create(&tmp).unwrap().write_all(text.as_bytes()).unwrap();
    std::fs::rename(tmp, path).unwrap();
}

/// One iperf3 run: whether it ended without an error, and its Gbit/s.
fn iperf(target: SocketAddr, streams: &str, seconds: &str) -> (bool, f64) {
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
fn machine_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap();
    let cpu: Vec<u64> = stat.lines().next().unwrap().split_whitespace().skip(1).map(|v| v.parse().unwrap()).collect();
    let total: u64 = cpu.iter().sum();
    // idle and iowait are the 4th and 5th.
    (total - cpu[3] - cpu[4], total)
}

/// One target's throughput and what it cost.
struct Throughput {
    gbps: f64,
    /// Share of the machine's CPU time busy while it ran.
    busy: f64,
    /// CPU time of the proxy process per GB carried, in milliseconds.
    proxy_ms_per_gb: Option<f64>,
}

/// Median of 3 iperf3 runs through `target`, with the CPU they used.
fn throughput(target: SocketAddr, streams: &str, proxy: Option<u32>) -> Throughput {
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

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Connections completed and failed in `secs` by 32 workers that each
/// connect, send a byte, read it back and the server's close.
async fn connections(target: SocketAddr, secs: f64) -> (u64, u64) {
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
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name, which may hold spaces: utime is the
    // 12th and stime the 13th of them.
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// One target's connection figures.
struct Rate {
    per_second: f64,
    errors: u64,
    /// The proxy process's CPU time per connection, in microseconds.
    cpu_us: Option<f64>,
}

/// Connections per second and errors of each target (and the CPU its proxy
/// process spent per connection), measured in rounds of one second per
/// target with the order rotated each round, so the machine's drift does
/// not favour whichever target goes first.
async fn connection_rates(targets: [(SocketAddr, Option<u32>); 3]) -> [Rate; 3] {
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

async fn round_trips(target: SocketAddr) -> (f64, f64) {
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

#[tokio::main]
async fn main() {
    // Sections to run (default: all), e.g. `-- throughput connections`.
    let picked: Vec<String> = std::env::args().skip(1).collect();
    let wants = |name: &str| picked.is_empty() || picked.iter().any(|p| p == name);

    let sidecar_bin = workspace_binary("loopmesh-sidecar");
    let echo = echo_server().await;
    let (once_d, once_h, once_l) = (echo_once_server().await, echo_once_server().await, echo_once_server().await);
    let iperf_port = free_port();
    let _iperf_server = spawn(Command::new("iperf3").args(["-s", "-p", &iperf_port.to_string()]));
    let iperf_at = SocketAddr::from(([127, 0, 0, 1], iperf_port));
    let (ha_echo, ha_iperf, ha_once, has_iperf) = (
        SocketAddr::from(([127, 0, 0, 1], free_port())),
        SocketAddr::from(([127, 0, 0, 1], free_port())),
        SocketAddr::from(([127, 0, 0, 1], free_port())),
        SocketAddr::from(([127, 0, 0, 1], free_port())),
    );
    let (_ha_echo_proc, ha_iperf_proc, ha_once_proc) =
        (haproxy(ha_echo, echo, false), haproxy(ha_iperf, iperf_at, false), haproxy(ha_once, once_h, false));
    let has_iperf_proc = haproxy(has_iperf, iperf_at, true);

    // The sidecar: three VIPs (echo, iperf3, echo-once), later 10,000 idle ones.
    let dir = std::env::temp_dir().join(format!("loopmesh-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let view_file = dir.join("view.json");
    let (lm_echo, lm_iperf) = (SocketAddr::from((vip(0), 8080)), SocketAddr::from((vip(1), 8080)));
    let lm_once = SocketAddr::from(([127, 21, 0, 1], 8080));
    let mut outbounds = vec![(vip(0), 8080, echo), (vip(1), 8080, iperf_at)];
    let once = [(Ipv4Addr::new(127, 21, 0, 1), 8080, once_l)];
    write_view(&view_file, &view(&[outbounds.as_slice(), &once].concat()));
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let sidecar = spawn(
        Command::new(&sidecar_bin)
            .args(["run", "--bind-outbounds", "--view-file"])
            .arg(&view_file)
            .args(["--admin-address", &admin.to_string(), "--refresh-interval", "20ms"])
            .env("RUST_LOG", "warn"),
    );
    while admin_get(admin, "/ready").0 != 200 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    if wants("throughput") {
        println!("throughput through one VIP (iperf3, {IPERF_SECONDS} s, median of 3), Gbit/s");
        let proxies = [None, Some(ha_iperf_proc.0.id()), Some(has_iperf_proc.0.id()), Some(sidecar.0.id())];
        let mut rows = Vec::new();
        for streams in ["1", "8"] {
            let targets = [iperf_at, ha_iperf, has_iperf, lm_iperf];
            let [d, h, hs, l] = std::array::from_fn(|i| throughput(targets[i], streams, proxies[i]));
            rows.push((streams, d, h, hs, l));
        }
        println!(
            "{:<8} {:>8} {:>8} {:>12} {:>9} {:>10} {:>14}",
            "streams", "direct", "haproxy", "haproxy+spl", "loopmesh", "vs direct", "vs haproxy+spl"
        );
        for (s, d, h, hs, l) in &rows {
            println!(
                "{s:<8} {:>8.1} {:>8.1} {:>12.1} {:>9.1} {:>9.2}x {:>13.2}x",
                d.gbps,
                h.gbps,
                hs.gbps,
                l.gbps,
                l.gbps / d.gbps,
                l.gbps / hs.gbps
            );
        }
        println!("what it cost: machine CPU busy (2 cores = 100 %), and the proxy's own CPU per GB carried");
        for (s, d, h, hs, l) in &rows {
            let ms = |t: &Throughput| t.proxy_ms_per_gb.unwrap_or(0.0);
            println!(
                "{s:<8} busy: direct {:.0} %, haproxy {:.0} %, haproxy+spl {:.0} %, loopmesh {:.0} %; proxy CPU per GB: haproxy {:.0} ms, haproxy+spl {:.0} ms, loopmesh {:.0} ms",
                d.busy * 100.0,
                h.busy * 100.0,
                hs.busy * 100.0,
                l.busy * 100.0,
                ms(h),
                ms(hs),
                ms(l)
            );
        }
    }
    if wants("connections") {
        println!(
            "\nnew connections per second (32 workers, connect + 1-byte echo; 6 rounds of 1 s per target, order rotated)"
        );
        let [d, h, l] =
            connection_rates([(once_d, None), (ha_once, Some(ha_once_proc.0.id())), (lm_once, Some(sidecar.0.id()))])
                .await;
        println!(
            "direct {:.0} ({} errors), haproxy {:.0} ({} errors), loopmesh {:.0} ({} errors): {:.2}x direct, {:.2}x haproxy",
            d.per_second,
            d.errors,
            h.per_second,
            h.errors,
            l.per_second,
            l.errors,
            l.per_second / d.per_second,
            l.per_second / h.per_second
        );
        let (hc, lc) = (h.cpu_us.unwrap_or(0.0), l.cpu_us.unwrap_or(0.0));
        println!("proxy CPU per connection: haproxy {hc:.1} us, loopmesh {lc:.1} us ({:.2}x haproxy)", lc / hc);
    }
    if wants("latency") {
        println!("\nheld-connection round trip, 1 byte, TCP_NODELAY, 20,000 samples (us)");
        let (dp50, dp99) = round_trips(echo).await;
        let (hp50, hp99) = round_trips(ha_echo).await;
        let (lp50, lp99) = round_trips(lm_echo).await;
        println!(
            "direct p50 {dp50:.1} p99 {dp99:.1}; haproxy p50 {hp50:.1} p99 {hp99:.1}; loopmesh p50 {lp50:.1} p99 {lp99:.1}"
        );
        println!(
            "added by loopmesh: p50 +{:.1} us, p99 +{:.1} us (haproxy: +{:.1}, +{:.1})",
            lp50 - dp50,
            lp99 - dp99,
            hp50 - dp50,
            hp99 - dp99
        );
    }
    if !(wants("memory") || wants("reconfiguration")) {
        return;
    }
    let rss_before = rss_kib(&sidecar.0);
    outbounds.extend((2..10_002).map(|i| (vip(i), 8080, echo)));
    write_view(&view_file, &view(&outbounds));
    while TcpStream::connect((vip(10_001), 8080)).await.is_err() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_10k = rss_kib(&sidecar.0);
    println!(
        "\nmemory: {} KiB resident with 2 VIP listeners, {} KiB with 10,002 ({:.1} MiB; {:.0} bytes per listener)",
        rss_before,
        rss_10k,
        rss_10k as f64 / 1024.0,
        (rss_10k - rss_before) as f64 * 1024.0 / 10_000.0
    );
    let mut idle = Vec::new();
    for _ in 0..1_000 {
        let mut s = TcpStream::connect(lm_echo).await.unwrap();
        s.write_all(b"x").await.unwrap();
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.unwrap();
        idle.push(s);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_idle = rss_kib(&sidecar.0);
    println!(
        "idle established connections: {:.0} bytes each (RSS delta over 1,000, buffers and task state)",
        (rss_idle.saturating_sub(rss_10k)) as f64 * 1024.0 / 1_000.0
    );
    drop(idle);

    // Reconfiguration: 1,000 more VIPs; time from the view's write until all
    // accept. A view is applied in address order, so the highest new VIP is
    // the last to listen: the time is taken when it accepts, and then every
    // one of the 1,000 is checked (connecting to each in turn would time
    // this benchmark's own 1,000 handshakes instead).
    outbounds.extend((10_002..11_002).map(|i| (vip(i), 8080, echo)));
    let t = Instant::now();
    write_view(&view_file, &view(&outbounds));
    while TcpStream::connect((vip(11_001), 8080)).await.is_err() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let added = t.elapsed();
    let mut refused = 0;
    for i in 10_002..11_002 {
        refused += usize::from(TcpStream::connect((vip(i), 8080)).await.is_err());
    }
    println!(
        "\nreconfiguration: 1,000 VIPs added to 10,002 all accepting {:.0} ms after the view file was written (refresh interval 20 ms, file read and parse included); {refused} of them refused afterwards",
        added.as_secs_f64() * 1e3
    );
    // 1,000 removed while an iperf3 runs through an untouched VIP.
    let run = std::thread::spawn(move || iperf(lm_iperf, "1", "3"));
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    outbounds.truncate(10_002);
    write_view(&view_file, &view(&outbounds));
    let (clean, gbps) = run.join().unwrap();
    let metrics = admin_get(admin, "/metrics").1;
    let listeners = loopmesh_tests::process::metric(&metrics, "loopmesh_outbound_listeners").unwrap_or(0.0);
    println!(
        "1,000 VIPs removed during an iperf3 through another VIP: iperf3 {} ({gbps:.1} Gbit/s), {listeners} listeners left",
        if clean { "finished cleanly" } else { "FAILED" }
    );
}
