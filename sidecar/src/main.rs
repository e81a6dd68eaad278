//! `loopmesh-sidecar run`: the sidecar container of a mesh task.
//!
//! Accepts the command of the Kong Mesh ECS example task definitions
//! (`run --bind-outbounds --dataplane-var k=v ...` with the Dataplane template
//! in `KUMA_DATAPLANE_RUNTIME_RESOURCE`), so an operator swaps the image and
//! keeps the task definition.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use loopmesh_shared::config::Settings;
use loopmesh_shared::model::DataplaneVars;
use loopmesh_shared::store::dynamo::DynamoMeshView;
use loopmesh_sidecar::admin::Admin;
use loopmesh_sidecar::listeners::{InboundSpec, Listeners};
use loopmesh_sidecar::proxy::ProxySettings;
use loopmesh_sidecar::source::{Cadence, Source, ViewStatus, refresh};
use loopmesh_sidecar::task::{self, TaskMetadata};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(
    name = "loopmesh-sidecar",
    version,
    about = "The loopmesh data path: VIP listeners, load balancing, inbounds"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve this task's outbounds and inbounds.
    ///
    /// Example (ECS task definition command):
    ///   run --bind-outbounds --dataplane-var address=10.0.2.11 --dataplane-var dpname=redis-1
    /// Example (a static view, no AWS):
    ///   run --bind-outbounds --view-file view.json --zone us-east-1a
    Run(Box<RunArgs>),
    /// Exit 0 when the sidecar on this task answers `/ready` with 200: the
    /// ECS container health check, without curl in the image.
    ///
    /// Example: HealthCheck: {Command: [CMD, loopmesh-sidecar, ready]}
    Ready {
        #[arg(long, env = "LOOPMESH_SIDECAR_ADMIN_ADDRESS", default_value = "127.0.0.1:9901")]
        admin_address: SocketAddr,
    },
}

fn duration(v: &str) -> Result<Duration, String> {
    humantime::parse_duration(v).map_err(|e| format!("{v:?} is not a duration like 500ms, 2s or 1m: {e}"))
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Listen on the VIPs of the mesh's services, as kuma-dp does with this
    /// flag. Without it the sidecar serves only its inbounds (a task that
    /// calls nobody, or several local "tasks" sharing one machine).
    #[arg(long)]
    bind_outbounds: bool,
    /// KEY=VALUE for the Dataplane template; `address`, `dpname` and `zone`
    /// default to the ECS task metadata.
    #[arg(long = "dataplane-var", value_name = "KEY=VALUE", value_parser = key_value)]
    dataplane_vars: Vec<(String, String)>,
    /// A static view (the JSON `/config` prints) instead of the table; read
    /// again when it changes.
    #[arg(long, value_name = "FILE")]
    view_file: Option<PathBuf>,
    /// The mesh to read when there is no Dataplane template.
    #[arg(long)]
    mesh: Option<String>,
    /// This task's availability zone (default: the ECS task metadata, or the `zone` variable).
    #[arg(long)]
    zone: Option<String>,
    #[arg(long, env = "LOOPMESH_SIDECAR_ADMIN_ADDRESS", default_value = "127.0.0.1:9901")]
    admin_address: SocketAddr,
    /// How often the view is checked, until wake-ups arrive.
    #[arg(long, env = "LOOPMESH_SIDECAR_REFRESH_INTERVAL", default_value = "1s", value_parser = duration)]
    refresh_interval: Duration,
    /// Where wake-ups arrive (UDP); `off` polls at the refresh interval only.
    #[arg(long, env = "LOOPMESH_SIDECAR_WAKE_ADDRESS", default_value = "0.0.0.0:15099")]
    wake_address: String,
    /// The poll period once wake-ups arrive: a safety net for a lost one.
    #[arg(long, env = "LOOPMESH_SIDECAR_SAFETY_INTERVAL", default_value = "60s", value_parser = duration)]
    safety_interval: Duration,
    #[arg(long, env = "LOOPMESH_SIDECAR_CONNECT_TIMEOUT", default_value = "2s", value_parser = duration)]
    connect_timeout: Duration,
    /// A connection that moves no byte for this long is closed.
    #[arg(long, env = "LOOPMESH_SIDECAR_IDLE_TIMEOUT", default_value = "1h", value_parser = duration)]
    idle_timeout: Duration,
    /// How long open connections may finish after SIGTERM or their VIP's removal.
    #[arg(long, env = "LOOPMESH_SIDECAR_DRAIN_TIMEOUT", default_value = "20s", value_parser = duration)]
    drain_timeout: Duration,
    /// Prefer endpoints in this task's availability zone while any there is healthy.
    #[arg(long, env = "LOOPMESH_SIDECAR_ZONE_PREFERENCE", default_value_t = true, action = clap::ArgAction::Set)]
    zone_preference: bool,
    /// One log line per connection.
    #[arg(long, env = "LOOPMESH_SIDECAR_ACCESS_LOG")]
    access_log: bool,
    /// Threads that carry connections (0: one per CPU the task may use, its
    /// CPU limit included). 1 runs everything on one thread, the cheapest
    /// for a task with one vCPU or less.
    #[arg(long, env = "LOOPMESH_SIDECAR_WORKERS", default_value_t = 0)]
    workers: usize,
    /// The issuer function (name or ARN) that signs this sidecar's
    /// certificate when its mesh enables mTLS.
    #[arg(long, env = "LOOPMESH_ISSUER_FUNCTION")]
    issuer: Option<String>,
    /// Resume TLS 1.3 sessions with peer sidecars (`false` makes every
    /// mTLS connection a full handshake; for measuring what resumption buys).
    #[arg(long, env = "LOOPMESH_SIDECAR_TLS_RESUMPTION", default_value_t = true, action = clap::ArgAction::Set)]
    tls_resumption: bool,
    /// For a control-plane server; loopmesh has none.
    #[arg(long, hide = true)]
    cp_address: Option<String>,
    #[arg(long, hide = true)]
    auth_type: Option<String>,
}

fn key_value(v: &str) -> Result<(String, String), String> {
    v.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())).ok_or_else(|| format!("{v:?} is not KEY=VALUE"))
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let mut args = match Cli::parse().command {
        Command::Run(args) => *args,
        Command::Ready { admin_address } => return ready(admin_address),
    };
    // `available_parallelism` counts the task's CPU limit (cgroup quota),
    // not the host's cores.
    let workers = match args.workers {
        0 => std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
        n => n,
    };
    args.workers = workers;
    let runtime = match workers {
        1 => tokio::runtime::Builder::new_current_thread().enable_all().build(),
        n => tokio::runtime::Builder::new_multi_thread().worker_threads(n).enable_all().build(),
    };
    let outcome = match runtime {
        Ok(runtime) => runtime.block_on(run(args)),
        Err(e) => Err(format!("cannot start the async runtime: {e}")),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "loopmesh-sidecar cannot start");
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn ready(admin: SocketAddr) -> ExitCode {
    use std::io::{Read, Write};
    let answer = (|| -> std::io::Result<String> {
        let mut s = std::net::TcpStream::connect_timeout(&admin, Duration::from_secs(1))?;
        s.set_read_timeout(Some(Duration::from_secs(1)))?;
        s.write_all(b"GET /ready HTTP/1.0\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })();
    match answer {
        Ok(text) if text.starts_with("HTTP/1.0 200") || text.starts_with("HTTP/1.1 200") => ExitCode::SUCCESS,
        Ok(text) => {
            eprintln!("not ready: {}", text.lines().next().unwrap_or_default());
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("not ready: {admin}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Raises the open-file limit to the hard limit: each listener and each
/// connection's two sockets hold a descriptor.
fn raise_nofile() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::info!(
            open_files = limit,
            listeners = limit.saturating_sub(64),
            "open-file limit raised; each listener takes one, each connection two (four while it moves data)"
        ),
        Err(e) => tracing::warn!(error = %e, "could not raise the open-file limit"),
    }
}

async fn run(args: RunArgs) -> Result<(), String> {
    if args.cp_address.is_some() || args.auth_type.is_some() {
        tracing::warn!(
            "--cp-address and --auth-type are for a control-plane server; loopmesh has none and ignores them"
        );
    }
    raise_nofile();
    let vars: DataplaneVars = args.dataplane_vars.iter().cloned().collect();
    let template = std::env::var("KUMA_DATAPLANE_RUNTIME_RESOURCE").ok().filter(|t| !t.trim().is_empty());
    let meta = match std::env::var("ECS_CONTAINER_METADATA_URI_V4") {
        Ok(uri) if !uri.is_empty() => task::metadata(&uri).await?,
        _ => TaskMetadata::default(),
    };
    let (mesh, inbounds, explicit) = match &template {
        Some(t) => {
            let dp = task::render(t, vars.clone(), &meta)?;
            let ib = task::inbounds(&dp)?;
            tracing::info!(dataplane = %dp.name, mesh = %dp.mesh, address = %dp.address, inbounds = ib.len(), outbounds = dp.outbounds.len(), "dataplane rendered");
            (Some(dp.mesh), ib, dp.outbounds)
        }
        None => (args.mesh.clone(), Vec::<InboundSpec>::new(), Vec::new()),
    };
    // A Dataplane with explicit outbounds (the pre-2.11 form) needs the view
    // for their endpoints, with or without --bind-outbounds.
    // So does a sidecar that may have to serve its inbounds with mTLS.
    let needs_view = args.bind_outbounds || !explicit.is_empty() || (args.issuer.is_some() && !inbounds.is_empty());
    let services: Vec<String> = {
        let mut s: Vec<String> = inbounds.iter().map(|i| i.service.clone()).collect();
        s.sort();
        s.dedup();
        s
    };
    let zone = args.zone.clone().or_else(|| vars.get("zone").cloned()).or(meta.zone);
    let source = match (needs_view, &args.view_file, mesh) {
        (false, _, _) => None,
        (true, Some(path), _) => Some(Source::File(path.clone())),
        (true, None, Some(mesh)) => {
            let settings = Settings::from_env().map_err(|e| e.to_string())?;
            let client = aws_sdk_dynamodb::Client::new(&loopmesh_shared::aws::sdk_config().await);
            Some(Source::table(DynamoMeshView::new(client, settings.table_name), mesh, settings.vip_port))
        }
        (true, None, None) => {
            return Err("--bind-outbounds needs a view: --view-file FILE, or KUMA_DATAPLANE_RUNTIME_RESOURCE or --mesh to read the table".into());
        }
    };
    let settings = ProxySettings {
        connect_timeout: args.connect_timeout,
        idle_timeout: args.idle_timeout,
        access_log: args.access_log,
    };
    let listeners = Arc::new(Listeners::with_outbounds(
        settings,
        zone.filter(|_| args.zone_preference),
        args.drain_timeout,
        args.bind_outbounds,
        explicit,
    ));
    listeners.start_inbounds(&inbounds)?;
    let status = Arc::new(ViewStatus::default());
    let stop = CancellationToken::new();
    let admin = tokio::net::TcpListener::bind(args.admin_address)
        .await
        .map_err(|e| format!("admin address {}: {e}", args.admin_address))?;
    // The admin endpoint outlives the listeners: `/ready` says 503 while draining.
    let admin_stop = CancellationToken::new();
    tokio::spawn(Admin { listeners: listeners.clone(), status: status.clone() }.serve(admin, admin_stop.clone()));
    let mut cadence = Cadence::polling(args.refresh_interval);
    if let Some(Source::Table { mesh, .. }) = &source
        && args.wake_address != "off"
    {
        let address: std::net::SocketAddr =
            args.wake_address.parse().map_err(|e| format!("--wake-address {:?}: {e} (or off)", args.wake_address))?;
        if let Some(socket) = loopmesh_sidecar::wake::bind(address).await {
            tracing::info!(%address, safety_interval_s = args.safety_interval.as_secs_f64(), "listening for wake-ups");
            tokio::spawn(loopmesh_sidecar::wake::listen(socket, mesh.clone(), status.wakes.clone(), stop.clone()));
            cadence = Cadence {
                interval: args.refresh_interval,
                safety: args.safety_interval,
                wakes: Some(status.wakes.clone()),
            };
        }
    }
    let issuer = match &args.issuer {
        Some(function) => {
            let sdk = loopmesh_shared::aws::sdk_config().await;
            let region = sdk.region().map(|r| r.to_string()).unwrap_or_else(|| "us-east-1".to_owned());
            let credentials = sdk.credentials_provider().ok_or("--issuer needs AWS credentials (the task role)")?;
            let table = Settings::from_env().map_err(|e| e.to_string())?.table_name;
            Some(loopmesh_sidecar::certs::IssuerClient {
                lambda: aws_sdk_lambda::Client::new(&sdk),
                function: function.clone(),
                credentials,
                sts_endpoint: loopmesh_shared::mtls::proof::sts_endpoint(&region, |k| std::env::var(k).ok()),
                region,
                issuer_id: table,
            })
        }
        None => None,
    };
    listeners.mtls.set_resumption(args.tls_resumption);
    let keeper = tokio::spawn(loopmesh_sidecar::certs::keep(
        issuer,
        services,
        listeners.clone(),
        listeners.mtls.clone(),
        stop.clone(),
    ));
    let refresher = match source {
        Some(source) => tokio::spawn(refresh(source, listeners.clone(), status, cadence, stop.clone())),
        None => {
            // Inbounds only: ready as soon as they listen.
            listeners.apply(loopmesh_sidecar::view::View::default())?;
            tokio::spawn(async {})
        }
    };
    tracing::info!(admin = %args.admin_address, workers = args.workers, "sidecar started");

    shutdown_signal().await;
    let open = listeners.open_connections();
    tracing::info!(open, drain_timeout_s = args.drain_timeout.as_secs_f64(), "SIGTERM: draining");
    stop.cancel();
    let _ = refresher.await;
    let _ = keeper.await;
    let cut = listeners.shutdown().await;
    admin_stop.cancel();
    tracing::info!(cut, "drained; exiting");
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
