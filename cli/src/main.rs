//! `loopmesh`: the operator's tool over the loopmesh table.
//!
//! There is no control-plane API: `apply`, `delete`, `get` and `status` read
//! and write the same DynamoDB table the functions and sidecars use.

mod output;
mod status;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use loopmesh_shared::aws::sdk_config;
use loopmesh_shared::config::Settings;
use loopmesh_shared::error::{StoreError, StoreErrorKind};
use loopmesh_shared::model::{ResourceKind, parse_documents, parse_documents_with_text};
use loopmesh_shared::store::dynamo::{self, DynamoResources, DynamoVipLedger, WriteError, declared_key};
use loopmesh_shared::store::table;
use loopmesh_shared::vip::{ServiceKey, ServiceKind, VipPool, allocate, unix_now};
use output::{Format, structured};

#[derive(Debug, Parser)]
#[command(name = "loopmesh", version, about = "Validate, apply and inspect loopmesh without a control-plane server")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate resource files and the configuration in the environment; works offline.
    ///
    /// Example: loopmesh validate -f mesh.yaml -f hostname-generators.yaml
    Validate {
        /// A YAML or JSON file; several documents per file are allowed.
        #[arg(short = 'f', long = "file", required = true)]
        files: Vec<PathBuf>,
    },
    /// Validate, then write resources to the table (create or replace).
    ///
    /// A resource is replaced only if nobody changed it since this command
    /// read it; the losing writer is told and nothing of its is written.
    ///
    /// Example: loopmesh apply -f infra/examples/resources.yaml
    Apply {
        #[arg(short = 'f', long = "file", required = true)]
        files: Vec<PathBuf>,
        #[arg(short = 'o', long, value_enum, default_value_t)]
        output: Format,
    },
    /// Delete a resource; a service it declared stops listening at once and
    /// loses its name and VIP after the deletion grace.
    ///
    /// Example: loopmesh delete meshexternalservice httpbin --mesh default
    Delete {
        /// Mesh, HostnameGenerator, MeshService, MeshExternalService or MeshMultiZoneService.
        kind: String,
        name: String,
        #[arg(long, default_value = "default")]
        mesh: String,
    },
    /// Show resources, services or endpoints.
    ///
    /// KIND is a resource kind (mesh, hostnamegenerator, meshservice,
    /// meshexternalservice, meshmultizoneservice), `services` or `endpoints`.
    ///
    /// Example: loopmesh get services --mesh default -o json
    Get {
        kind: String,
        name: Option<String>,
        #[arg(long, default_value = "default")]
        mesh: String,
        #[arg(short = 'o', long, value_enum, default_value_t)]
        output: Format,
    },
    /// Services with VIPs, names, zones and endpoint counts; endpoints;
    /// identity refusals; DNS conflicts; pool use; the last sync.
    ///
    /// Example: loopmesh status --mesh default
    Status {
        /// One mesh (default: every mesh with services).
        #[arg(long)]
        mesh: Option<String>,
        #[arg(short = 'o', long, value_enum, default_value_t)]
        output: Format,
    },
    /// Manage the table.
    #[command(subcommand)]
    Table(TableCommand),
    /// Allocate (or show) VIPs.
    #[command(subcommand)]
    Vip(VipCommand),
}

#[derive(Debug, Subcommand)]
enum TableCommand {
    /// Create the table LOOPMESH_TABLE_NAME as infra/template.yaml defines it.
    ///
    /// Example: AWS_ENDPOINT_URL=http://127.0.0.1:5000 loopmesh table create
    Create,
}

#[derive(Debug, Subcommand)]
enum VipCommand {
    /// Give each named service a VIP from its kind's pool (idempotent) and print it.
    ///
    /// Example: loopmesh vip allocate --mesh default redis demo-app
    Allocate {
        #[arg(long, default_value = "default")]
        mesh: String,
        #[arg(long, value_enum, default_value_t = Kind::Service)]
        kind: Kind,
        #[arg(required = true)]
        names: Vec<String>,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Kind {
    Service,
    MeshService,
    MeshExternalService,
    MeshMultiZoneService,
}

impl From<Kind> for ServiceKind {
    fn from(k: Kind) -> Self {
        match k {
            Kind::Service => Self::Service,
            Kind::MeshService => Self::MeshService,
            Kind::MeshExternalService => Self::MeshExternalService,
            Kind::MeshMultiZoneService => Self::MeshMultiZoneService,
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command).await {
        Ok(code) => code,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// One line that says what failed and what to check.
fn aws_hint(e: &StoreError, table: &str) -> String {
    let check = match e.kind {
        StoreErrorKind::Rejected => {
            format!("check LOOPMESH_TABLE_NAME (now {table:?}), AWS_REGION, and that the credentials may use the table")
        }
        StoreErrorKind::Unavailable => {
            "check AWS_ENDPOINT_URL, AWS_REGION, the network and the credentials (AWS_PROFILE or AWS_ACCESS_KEY_ID)"
                .into()
        }
        StoreErrorKind::Throttled => "the table is throttled; retry in a moment".into(),
        StoreErrorKind::Conflict => "another writer got in between; run the command again".into(),
        StoreErrorKind::Corrupt => format!("an item of table {table:?} was not written by loopmesh"),
    };
    format!("{} ({check})", e.to_string().replace('\n', " "))
}

fn write_error(e: WriteError, table: &str) -> String {
    match e {
        WriteError::Store(s) => aws_hint(&s, table),
        other => other.to_string(),
    }
}

fn resource_kind(kind: &str) -> Result<ResourceKind, String> {
    let k = kind.trim_end_matches('s');
    let k = if k.eq_ignore_ascii_case("meshe") { "mesh" } else { k };
    ResourceKind::parse(k).filter(|k| *k != ResourceKind::Dataplane).ok_or_else(|| {
        format!(
            "{kind:?} is not a kind: mesh, hostnamegenerator, meshservice, meshexternalservice, meshmultizoneservice"
        )
    })
}

async fn client() -> aws_sdk_dynamodb::Client {
    aws_sdk_dynamodb::Client::new(&sdk_config().await)
}

async fn run(command: Command) -> Result<ExitCode, String> {
    match command {
        Command::Validate { files } => Ok(validate(&files)),
        Command::Apply { files, output } => apply(&files, output).await,
        Command::Delete { kind, name, mesh } => {
            let settings = settings()?;
            let kind = resource_kind(&kind)?;
            let mesh = match kind {
                ResourceKind::HostnameGenerator => None,
                ResourceKind::Mesh => Some(name.clone()),
                _ => Some(mesh),
            };
            let store = DynamoResources::new(client().await, &settings.table_name);
            let declared = declared_key(kind, mesh.as_deref(), &name);
            store
                .delete(kind, mesh.as_deref(), &name, declared.as_ref(), unix_now())
                .await
                .map_err(|e| write_error(e, &settings.table_name))?;
            println!("{kind} {name:?} deleted");
            Ok(ExitCode::SUCCESS)
        }
        Command::Get { kind, name, mesh, output } => get(&kind, name.as_deref(), &mesh, output).await,
        Command::Status { mesh, output } => {
            let settings = settings()?;
            let status = status::gather(&client().await, &settings, mesh.as_deref(), true)
                .await
                .map_err(|e| aws_hint(&e, &settings.table_name))?;
            print!("{}", structured(output, &status).unwrap_or_else(|| status::render(&status)));
            Ok(ExitCode::SUCCESS)
        }
        Command::Table(TableCommand::Create) => {
            let settings = settings()?;
            let client = aws_sdk_dynamodb::Client::new(&sdk_config().await);
            let def = table::definition().map_err(|e| e.to_string())?;
            let created = dynamo::create_table(&client, &settings.table_name, &def).await.map_err(|e| {
                format!("{e}\n  check AWS credentials, AWS_REGION and AWS_ENDPOINT_URL, and that the caller may create tables")
            })?;
            println!("table {} {}", settings.table_name, if created { "created" } else { "already exists" });
            Ok(ExitCode::SUCCESS)
        }
        Command::Vip(VipCommand::Allocate { mesh, kind, names }) => {
            let settings = settings()?;
            let kind = ServiceKind::from(kind);
            let pool = VipPool::new(settings.pools.for_kind(kind)).map_err(|e| e.to_string())?;
            let client = aws_sdk_dynamodb::Client::new(&sdk_config().await);
            let ledger = DynamoVipLedger::new(client, settings.table_name.clone());
            let now = unix_now();
            println!("{:<24} {:<12} {:<16}", "SERVICE", "MESH", "VIP");
            for name in names {
                let key = ServiceKey::new(&mesh, kind, &name);
                let vip = allocate(&ledger, &pool, &key, now)
                    .await
                    .map_err(|e| format!("{e}\n  check AWS credentials, AWS_REGION and LOOPMESH_TABLE_NAME"))?
                    .vip;
                println!("{name:<24} {mesh:<12} {vip:<16}");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Validates every file first: one bad document and nothing is written.
async fn apply(files: &[PathBuf], output: Format) -> Result<ExitCode, String> {
    let settings = settings()?;
    let mut resources = Vec::new();
    let mut failed = false;
    for file in files {
        let text = std::fs::read_to_string(file).map_err(|e| format!("{}: cannot read: {e}", file.display()))?;
        for (doc, yaml) in parse_documents_with_text(&text) {
            match doc {
                Ok(r) => resources.push((r, yaml)),
                Err(e) => {
                    for err in &e.errors.0 {
                        eprintln!("{}: document {}: {err}", file.display(), e.document);
                    }
                    failed = true;
                }
            }
        }
    }
    if failed {
        return Err("nothing applied: fix the errors above".into());
    }
    let client = client().await;
    let store = DynamoResources::new(client.clone(), &settings.table_name);
    let ledger = DynamoVipLedger::new(client, settings.table_name.clone());
    let mut results = Vec::new();
    let mut errors = 0;
    for (resource, yaml) in &resources {
        match store.apply(&ledger, &settings.pools, resource, yaml, unix_now()).await {
            Ok(a) => results.push(a),
            Err(e) => {
                errors += 1;
                eprintln!("{} {:?}: {}", resource.kind(), resource.name(), write_error(e, &settings.table_name));
            }
        }
    }
    match structured(output, &results) {
        Some(text) => print!("{text}"),
        None => {
            for a in &results {
                let vip = a.vip.map(|v| format!(" (VIP {v})")).unwrap_or_default();
                println!("{} {:?} {}: version {}{vip}", a.kind, a.name, a.change, a.version);
            }
        }
    }
    Ok(if errors == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

async fn get(kind: &str, name: Option<&str>, mesh: &str, output: Format) -> Result<ExitCode, String> {
    let settings = settings()?;
    let client = client().await;
    let lower = kind.to_ascii_lowercase();
    if ["services", "service", "svc", "endpoints", "endpoint", "ep"].contains(&lower.as_str()) {
        let mut status = status::gather(&client, &settings, Some(mesh), false)
            .await
            .map_err(|e| aws_hint(&e, &settings.table_name))?;
        let services = lower.starts_with("s");
        for m in &mut status.meshes {
            if let Some(n) = name {
                m.services.retain(|s| s.name == n);
                m.endpoints.retain(|e| e.service == n);
            }
        }
        let text = if services {
            let list: Vec<_> = status.meshes.iter().flat_map(|m| &m.services).collect();
            structured(output, &list).unwrap_or_else(|| status::services_table(&status))
        } else {
            let list: Vec<_> = status.meshes.iter().flat_map(|m| &m.endpoints).collect();
            structured(output, &list).unwrap_or_else(|| status::endpoints_table(&status))
        };
        print!("{text}");
        return Ok(ExitCode::SUCCESS);
    }
    let kind = resource_kind(kind)?;
    let store = DynamoResources::new(client, &settings.table_name);
    let hint = |e: StoreError| aws_hint(&e, &settings.table_name);
    let found = match (kind, name) {
        (ResourceKind::Mesh, None) => store.meshes().await.map_err(hint)?,
        (ResourceKind::Mesh, Some(n)) => store.get(kind, Some(n), n).await.map_err(hint)?.into_iter().collect(),
        (ResourceKind::HostnameGenerator, None) => store.list(kind, None).await.map_err(hint)?,
        (ResourceKind::HostnameGenerator, Some(n)) => {
            store.get(kind, None, n).await.map_err(hint)?.into_iter().collect()
        }
        (_, None) => store.list(kind, Some(mesh)).await.map_err(hint)?,
        (_, Some(n)) => store.get(kind, Some(mesh), n).await.map_err(hint)?.into_iter().collect(),
    };
    if let (Some(n), true) = (name, found.is_empty()) {
        return Err(format!(
            "{kind} {n:?} not found{}",
            if kind.is_mesh_scoped() { format!(" in mesh {mesh:?}") } else { String::new() }
        ));
    }
    let text = match output {
        Format::Yaml => found.iter().map(|r| r.doc.clone()).collect::<Vec<_>>().join("---\n"),
        Format::Json => {
            let docs: Vec<serde_json::Value> = found
                .iter()
                .map(|r| {
                    let doc: serde_json::Value = serde_yaml_ng::from_str(&r.doc).unwrap_or_default();
                    serde_json::json!({"kind": r.kind, "name": r.name, "mesh": r.mesh, "version": r.version, "updated_at": r.updated_at, "resource": doc})
                })
                .collect();
            serde_json::to_string_pretty(&docs).unwrap_or_default() + "\n"
        }
        Format::Table => {
            let rows: Vec<Vec<String>> = found
                .iter()
                .map(|r| vec![r.name.clone(), r.mesh.clone().unwrap_or_else(|| "-".into()), r.version.to_string()])
                .collect();
            output::table(&["NAME", "MESH", "VERSION"], &rows)
        }
    };
    print!("{text}");
    Ok(ExitCode::SUCCESS)
}

fn settings() -> Result<Settings, String> {
    Settings::from_env().map_err(|e| e.to_string())
}

/// Prints every error of every file; the exit code says whether there was one.
fn validate(files: &[PathBuf]) -> ExitCode {
    let mut failed = false;
    if let Err(e) = Settings::from_env() {
        eprintln!("environment: {e}");
        failed = true;
    }
    for file in files {
        let text = match std::fs::read_to_string(file) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("{}: cannot read: {e}", file.display());
                failed = true;
                continue;
            }
        };
        for doc in parse_documents(&text) {
            match doc {
                Ok(r) => println!("{}: {} {:?} is valid", file.display(), r.kind(), r.name()),
                Err(e) => {
                    for err in &e.errors.0 {
                        let what = match (&e.kind, &e.name) {
                            (Some(k), Some(n)) => format!(" ({k} {n:?})"),
                            _ => String::new(),
                        };
                        eprintln!("{}: document {}{what}: {err}", file.display(), e.document);
                    }
                    failed = true;
                }
            }
        }
    }
    if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}
