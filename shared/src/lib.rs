//! loopmesh core: what every loopmesh binary shares.
//!
//! # Layout
//!
//! - [`config`]: the configuration contract (Kong Mesh's variable names plus
//!   `LOOPMESH_` settings), validated all at once.
//! - [`model`]: the resources operators write (Dataplane, Mesh, MeshService,
//!   MeshExternalService, MeshMultiZoneService, HostnameGenerator), parsed from
//!   YAML or JSON with field-path errors.
//! - [`template`]: HostnameGenerator templates; [`dns_name`]: DNS name rules;
//!   [`excerpt`]: how messages quote outside text (a bounded prefix).
//! - [`identity`]: which Dataplanes a task role's `kuma.io/*` tags allow.
//! - [`vip`]: VIP pools and the allocator, written against the [`vip::VipLedger`] port.
//! - [`registration`]: what task-events does with an ECS task state change,
//!   over ports for task definitions, role tags and the table.
//! - [`dns`]: desired records, the planner, batching, the Route53 rate limiter
//!   and one dns-sync run over ports for Route53 and the table.
//! - [`resources`]: applied resources: where each lives and the service it declares.
//! - [`retry`]: the bounded, jittered retry policies every repeated call uses.
//! - [`error`]: [`error::StoreError`], what every port returns.
//! - [`store`]: the table: definition, key layout, DynamoDB adapters.
//! - [`aws`]: ECS and IAM adapters, SDK configuration and error mapping.
//! - [`view`]: the mesh view a sidecar serves, built from service and endpoint rows.
//!
//! Domain modules never see an AWS SDK type; adapters live under [`store`] and
//! translate at the edge.

pub mod aws;
pub mod config;
pub mod dns;
pub mod dns_name;
pub mod error;
pub mod excerpt;
pub mod identity;
pub mod model;
pub mod mtls;
pub mod registration;
pub mod resources;
pub mod retry;
pub mod store;
pub mod template;
pub mod view;
pub mod vip;
