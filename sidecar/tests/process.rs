//! The `loopmesh-sidecar` binary as ECS runs it: a view file read again when
//! it changes, `/ready`, `/metrics` and `/config` on the admin address, an
//! inbound from `KUMA_DATAPLANE_RUNTIME_RESOURCE`, and the SIGTERM drain.
#![allow(clippy::unwrap_used)] // a test fails loudly on a broken assumption

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use loopmesh_tests::process::{ChildGuard as Sidecar, admin_get as get, free_port};

/// The value of a metric line starting with `prefix`; panics when it is missing.
fn metric(text: &str, prefix: &str) -> f64 {
    loopmesh_tests::process::metric(text, prefix).unwrap_or_else(|| panic!("no metric {prefix} in\n{text}"))
}

const TEMPLATE: &str = r#"
type: Dataplane
name: "{{ dpname }}"
mesh: default
networking:
  address: "{{ address }}"
  inbound:
    - port: {{ port }}
      servicePort: {{ app }}
      tags:
        kuma.io/service: redis
"#;

/// A std echo server on its own thread.
fn echo() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut r = s.try_clone().unwrap();
                let mut w = s;
                let _ = std::io::copy(&mut r, &mut w);
            });
        }
    });
    addr
}

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    for _ in 0..200 {
        if ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting for {what}");
}

fn echo_once(addr: SocketAddr, msg: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(msg).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    out
}

fn view_json(outbounds: &[(&str, SocketAddr, SocketAddr)]) -> String {
    let items: Vec<String> = outbounds
        .iter()
        .map(|(service, at, to)| {
            format!(
                r#"{{"service":"{service}","vip":"{}","port":{},"endpoints":[{{"address":"{to}"}}]}}"#,
                at.ip(),
                at.port()
            )
        })
        .collect();
    format!(r#"{{"outbounds":[{}]}}"#, items.join(","))
}

fn sigterm(child: &Child) {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
}

#[test]
fn serves_a_view_file_with_inbound_admin_and_drains_on_sigterm() {
    let dir = std::env::temp_dir().join(format!("loopmesh-sidecar-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let view_file = dir.join("view.json");
    let endpoint = echo();
    let first = SocketAddr::from(([127, 1, 201, 1], free_port("127.1.201.1")));
    let second = SocketAddr::from(([127, 1, 201, 2], free_port("127.1.201.2")));
    std::fs::write(&view_file, view_json(&[("redis", first, endpoint)])).unwrap();
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port("127.0.0.1")));
    let inbound_port = free_port("127.0.0.31");
    let template =
        TEMPLATE.replace("{{ port }}", &inbound_port.to_string()).replace("{{ app }}", &endpoint.port().to_string());

    let child = Command::new(env!("CARGO_BIN_EXE_loopmesh-sidecar"))
        .args(["run", "--bind-outbounds", "--cp-address", "https://cp:5678"])
        .args(["--dataplane-var", "address=127.0.0.31", "--dataplane-var", "dpname=redis-1"])
        .arg("--view-file")
        .arg(&view_file)
        .args(["--admin-address", &admin.to_string(), "--refresh-interval", "100ms", "--drain-timeout", "10s"])
        .env("KUMA_DATAPLANE_RUNTIME_RESOURCE", template)
        .env_remove("ECS_CONTAINER_METADATA_URI_V4")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let sidecar = Sidecar(child);
    wait_for("/ready", || get(admin, "/ready").0 == 200);
    let probe = Command::new(env!("CARGO_BIN_EXE_loopmesh-sidecar"))
        .args(["ready", "--admin-address", &admin.to_string()])
        .status()
        .unwrap();
    assert!(probe.success(), "the health-check command agrees");

    // Outbound through the VIP, inbound to the application.
    assert_eq!(echo_once(first, b"PING"), b"PING");
    let inbound = SocketAddr::from(([127, 0, 0, 31], inbound_port));
    assert_eq!(echo_once(inbound, b"HELLO"), b"HELLO");

    // A new VIP in the file opens without a restart.
    std::fs::write(&view_file, view_json(&[("redis", first, endpoint), ("api", second, endpoint)])).unwrap();
    wait_for("the added VIP", || TcpStream::connect(second).is_ok());
    assert_eq!(echo_once(second, b"NEW"), b"NEW");

    let (_, config) = get(admin, "/config");
    let config: serde_json::Value = serde_json::from_str(&config).unwrap();
    assert_eq!(config["outbounds"].as_array().unwrap().len(), 2);
    assert_eq!(config["inbounds"][0]["listen"], inbound.to_string());

    let (status, metrics) = get(admin, "/metrics");
    assert_eq!(status, 200);
    let labels = |service: &str, at: SocketAddr| format!("{{service=\"{service}\",listener=\"{at}\"}}");
    assert_eq!(metric(&metrics, &format!("loopmesh_outbound_connections_total{}", labels("redis", first))), 1.0);
    assert_eq!(metric(&metrics, &format!("loopmesh_outbound_bytes_sent_total{}", labels("redis", first))), 4.0);
    assert_eq!(metric(&metrics, &format!("loopmesh_outbound_bytes_received_total{}", labels("redis", first))), 4.0);
    assert_eq!(metric(&metrics, &format!("loopmesh_inbound_connections_total{}", labels("redis", inbound))), 1.0);
    // The probe that saw the listener open, and the echo.
    assert_eq!(metric(&metrics, &format!("loopmesh_outbound_connections_total{}", labels("api", second))), 2.0);
    assert_eq!(metric(&metrics, "loopmesh_outbound_listeners"), 2.0);
    assert!(metric(&metrics, "loopmesh_view_age_seconds") < 5.0);
    assert_eq!(metric(&metrics, "loopmesh_view_refresh_errors_total"), 0.0);

    // A broken file is rejected whole; the last good view keeps serving.
    std::fs::write(&view_file, "{ not json").unwrap();
    wait_for("the refresh error", || metric(&get(admin, "/metrics").1, "loopmesh_view_refresh_errors_total") >= 1.0);
    assert_eq!(echo_once(second, b"STILL"), b"STILL");
    // It stays broken for a while, then is fixed: the fix is read on the next
    // tick, not after a backoff grown by the failures (a file costs nothing to read).
    wait_for("nine failed refreshes", || metric(&get(admin, "/metrics").1, "loopmesh_view_refresh_failing") >= 9.0);
    let third = SocketAddr::from(([127, 1, 201, 3], free_port("127.1.201.3")));
    std::fs::write(
        &view_file,
        view_json(&[("redis", first, endpoint), ("api", second, endpoint), ("web", third, endpoint)]),
    )
    .unwrap();
    wait_for("the fixed file's new VIP", || TcpStream::connect(third).is_ok());

    // A client that connects to the admin endpoint and sends nothing is cut
    // off after the header timeout instead of holding a descriptor forever.
    let mut idle = TcpStream::connect(admin).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut answer = Vec::new();
    let end = idle.read_to_end(&mut answer);
    assert!(
        !matches!(&end, Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)),
        "the admin endpoint closes a silent connection: {end:?}"
    );

    // SIGTERM: stop accepting, let the open connection finish, exit 0.
    let mut open = TcpStream::connect(first).unwrap();
    open.write_all(b"a").unwrap();
    let mut one = [0u8; 1];
    open.read_exact(&mut one).unwrap();
    sigterm(&sidecar.0);
    wait_for("listeners closed", || TcpStream::connect(first).is_err());
    assert_eq!(get(admin, "/ready").0, 503, "not ready while draining");
    open.write_all(b"b").unwrap();
    open.read_exact(&mut one).unwrap();
    assert_eq!(&one, b"b", "an open connection keeps working while draining");
    drop(open);
    let mut sidecar = sidecar;
    let mut exit = None;
    wait_for("exit", || {
        exit = sidecar.0.try_wait().unwrap();
        exit.is_some()
    });
    assert!(exit.unwrap().success(), "pid {pid} exits 0 after the drain");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn bad_settings_and_templates_are_named() {
    let out = Command::new(env!("CARGO_BIN_EXE_loopmesh-sidecar"))
        .args(["run", "--connect-timeout", "soon", "--view-file", "x"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--connect-timeout") && err.contains("\"soon\" is not a duration"), "{err}");

    let out = Command::new(env!("CARGO_BIN_EXE_loopmesh-sidecar"))
        .args(["run", "--admin-address", "127.0.0.1:0"])
        .env(
            "KUMA_DATAPLANE_RUNTIME_RESOURCE",
            "type: Dataplane\nname: x\nmesh: default\nnetworking:\n  address: \"{{ address }}\"\n",
        )
        .env_remove("ECS_CONTAINER_METADATA_URI_V4")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("KUMA_DATAPLANE_RUNTIME_RESOURCE") && err.contains("address"), "{err}");
}
