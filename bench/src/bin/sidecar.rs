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
use std::process::Command;
use std::time::{Duration, Instant};

use loopmesh_bench::*;
use loopmesh_tests::process::{ChildGuard, admin_get, workspace_binary};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

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
