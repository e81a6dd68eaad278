//! `loopmesh-sidecar run --view-file FILE`: serves the outbounds of a static
//! view. Flags of the Kong Mesh example (`--bind-outbounds`,
//! `--dataplane-var`, `--cp-address`, `--auth-type`) are accepted so a task
//! definition keeps its command; the DynamoDB view, inbounds and the admin
//! endpoint are not built yet.

use std::sync::Arc;

use loopmesh_sidecar::balance::Balancer;
use loopmesh_sidecar::proxy::{OutboundStats, ProxySettings, serve};
use loopmesh_sidecar::view::View;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) != Some("run") {
        eprintln!("usage: loopmesh-sidecar run --view-file FILE [--zone ZONE]");
        return std::process::ExitCode::from(2);
    }
    let value = |flag: &str| args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).cloned();
    if args.iter().any(|a| a.starts_with("--cp-address") || a.starts_with("--auth-type")) {
        tracing::warn!(
            "--cp-address and --auth-type are for a control-plane server; loopmesh has none and ignores them"
        );
    }
    let Some(path) = value("--view-file") else {
        eprintln!("error: --view-file FILE is required (the DynamoDB view is not built yet)");
        return std::process::ExitCode::from(2);
    };
    let view: View = match std::fs::read_to_string(&path)
        .map_err(|e| e.to_string())
        .and_then(|t| serde_json::from_str(&t).map_err(|e| e.to_string()))
    {
        Ok(v) => v,
        Err(e) => {
            eprintln!("error: {path}: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    if let Err(e) = view.validate() {
        eprintln!("error: {path}: {e}");
        return std::process::ExitCode::FAILURE;
    }
    let zone = value("--zone");
    for o in &view.outbounds {
        let listener = match tokio::net::TcpListener::bind((o.vip, o.port)).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("error: binding {}:{} for {}: {e}", o.vip, o.port, o.service);
                return std::process::ExitCode::FAILURE;
            }
        };
        let balancer = Arc::new(Balancer::new(&o.endpoints, zone.clone()));
        tracing::info!(service = %o.service, vip = %o.vip, port = o.port, endpoints = o.endpoints.len(), "outbound listening");
        tokio::spawn(serve(
            listener,
            balancer,
            Arc::new(OutboundStats::default()),
            ProxySettings::default(),
            std::future::pending(),
        ));
    }
    let _ = tokio::signal::ctrl_c().await;
    std::process::ExitCode::SUCCESS
}
