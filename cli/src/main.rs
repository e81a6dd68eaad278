//! `loopmesh`: the operator's tool over the loopmesh table.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use loopmesh_shared::aws::sdk_config;
use loopmesh_shared::config::Settings;
use loopmesh_shared::model::parse_documents;
use loopmesh_shared::store::dynamo::{self, DynamoVipLedger};
use loopmesh_shared::store::table;
use loopmesh_shared::vip::{ServiceKey, ServiceKind, VipPool, allocate, unix_now};

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

async fn run(command: Command) -> Result<ExitCode, String> {
    match command {
        Command::Validate { files } => Ok(validate(&files)),
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
