//! The resource model: the documents an operator writes (Kuma's universal
//! format, YAML or JSON), parsed into validated types.
//!
//! Parsing goes through two layers: `raw` serde structs that accept what the
//! operator wrote (with unknown fields refused at the top level, so a typo is
//! an error), then a validating constructor per kind that checks every rule and
//! reports every violation with its field path.

mod dataplane;
mod document;
mod external_tls;
mod hostname_generator;
pub mod limits;
mod mesh;
pub mod policy;
mod protocol;
mod services;
mod tags;
mod traffic_permission;
mod validation;

pub use dataplane::{Dataplane, DataplaneVars, Inbound, MAX_INBOUNDS, StaticOutbound, render_dataplane};
pub use document::{DocumentError, Resource, ResourceKind, parse_documents, parse_documents_with_text, parse_one};
pub use external_tls::{ExternalTls, SanMatch, TlsVersion, VerificationMode};
pub use hostname_generator::{HostnameGenerator, HostnameTarget, NamedZone};
pub use mesh::{CaBackend, CaKind, Mesh, MeshServicesMode, Mtls, MtlsMode};
pub use policy::OutboundPolicies;
pub use protocol::Protocol;
pub use services::{
    DISPLAY_NAME_LABEL, ExternalEndpoint, MeshExternalService, MeshMultiZoneService, MeshService, ServicePort,
    display_name,
};
pub use tags::{KNOWN_PROTOCOLS, PROTOCOL_TAG, SERVICE_TAG, validate_tag_key, validate_tag_value};
pub use traffic_permission::{Action, FromRule, MeshTrafficPermission, TargetRef};
pub use validation::{ValidationError, ValidationErrors, validate_resource_name};

/// Labels on a resource, ordered so rendering and comparisons are deterministic.
pub type Labels = std::collections::BTreeMap<String, String>;
