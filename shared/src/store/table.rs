//! The table's definition, read from the `Table` resource of
//! `infra/template.yaml` so the deployed table and every local or test table
//! come from one source.

use serde::Deserialize;

/// The SAM template, compiled in.
pub const TEMPLATE: &str = include_str!("../../../infra/template.yaml");

/// The logical id of the table in the template.
pub const LOGICAL_ID: &str = "Table";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableDefinition {
    /// (name, scalar type) pairs of the key attributes.
    pub attributes: Vec<(String, String)>,
    /// (name, HASH or RANGE) pairs.
    pub key_schema: Vec<(String, String)>,
    pub billing_mode: String,
    pub stream_view_type: Option<String>,
    pub ttl_attribute: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("infra/template.yaml: resource {LOGICAL_ID}: {0}")]
pub struct DefinitionError(String);

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Props {
    attribute_definitions: Vec<AttrDef>,
    key_schema: Vec<KeyDef>,
    billing_mode: String,
    #[serde(default)]
    stream_specification: Option<Stream>,
    #[serde(default)]
    time_to_live_specification: Option<Ttl>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct AttrDef {
    attribute_name: String,
    attribute_type: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct KeyDef {
    attribute_name: String,
    key_type: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Stream {
    stream_view_type: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Ttl {
    attribute_name: String,
    enabled: bool,
}

/// The table as the template defines it.
pub fn definition() -> Result<TableDefinition, DefinitionError> {
    definition_from(TEMPLATE)
}

fn definition_from(template: &str) -> Result<TableDefinition, DefinitionError> {
    let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(template).map_err(|e| DefinitionError(e.to_string()))?;
    let props = doc
        .get("Resources")
        .and_then(|r| r.get(LOGICAL_ID))
        .and_then(|t| t.get("Properties"))
        .ok_or_else(|| DefinitionError("not found".into()))?
        .clone();
    let p: Props = serde_yaml_ng::from_value(props).map_err(|e| DefinitionError(e.to_string()))?;
    Ok(TableDefinition {
        attributes: p.attribute_definitions.into_iter().map(|a| (a.attribute_name, a.attribute_type)).collect(),
        key_schema: p.key_schema.into_iter().map(|k| (k.attribute_name, k.key_type)).collect(),
        billing_mode: p.billing_mode,
        stream_view_type: p.stream_specification.map(|s| s.stream_view_type),
        ttl_attribute: p.time_to_live_specification.filter(|t| t.enabled).map(|t| t.attribute_name),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::keys;

    #[test]
    fn the_template_defines_the_keys_the_code_uses() {
        let d = definition().unwrap();
        assert_eq!(d.key_schema, [(keys::PK.to_owned(), "HASH".to_owned()), (keys::SK.to_owned(), "RANGE".to_owned())]);
        assert_eq!(d.billing_mode, "PAY_PER_REQUEST");
        assert!(d.attributes.iter().all(|(_, t)| t == "S"));
    }

    #[test]
    fn a_template_without_the_table_is_an_error() {
        assert!(definition_from("Resources: {}").unwrap_err().to_string().contains("not found"));
    }
}
