//! Hostname templates: the subset of Go's text/template that HostnameGenerators use.
//!
//! Written by hand because the Rust ports of Go templates are unmaintained and
//! accept far more than a hostname needs: here an action is a field
//! (`.Name`, `.DisplayName`, `.Mesh`, `.Zone`, `.Namespace`) or `label "key"`,
//! with Go's `{{-` / `-}}` trim markers. Anything else is a parse error that
//! says where and what, so a bad generator is refused when it is applied.

use std::collections::BTreeMap;
use std::fmt;

/// A parsed template, ready to render many times.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostnameTemplate {
    source: String,
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Field(Field),
    Label(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Name,
    DisplayName,
    Mesh,
    Zone,
    Namespace,
}

/// What a template may read about the resource it names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TemplateInput<'a> {
    pub name: &'a str,
    pub display_name: &'a str,
    pub mesh: &'a str,
    pub zone: &'a str,
    pub namespace: &'a str,
    pub labels: Option<&'a BTreeMap<String, String>>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("action opened at byte {0} is never closed with }}}}")]
    Unclosed(usize),
    #[error("action at byte {at} is empty")]
    Empty { at: usize },
    #[error("unknown field {field:?} at byte {at}; use .Name, .DisplayName, .Mesh, .Zone or .Namespace")]
    UnknownField { field: String, at: usize },
    #[error("unsupported action {action:?} at byte {at}; use a field such as .DisplayName or label \"key\"")]
    Unsupported { action: String, at: usize },
    #[error("label at byte {at} takes one quoted key, as in label \"kuma.io/display-name\"")]
    LabelArgument { at: usize },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    #[error("{0} is empty for this resource")]
    EmptyField(&'static str),
    #[error("the resource has no label {0:?}")]
    MissingLabel(String),
}

impl HostnameTemplate {
    pub fn parse(source: &str) -> Result<Self, TemplateError> {
        let mut parts = Vec::new();
        let mut rest = source;
        let mut offset = 0;
        let mut trim_next_text = false;
        while let Some(open) = rest.find("{{") {
            let mut text = &rest[..open];
            if trim_next_text {
                text = text.trim_start();
            }
            let after_open = &rest[open + 2..];
            let (trim_before, body_start) = match after_open.strip_prefix("- ") {
                Some(_) => (true, 2),
                None => (false, 0),
            };
            if trim_before {
                text = text.trim_end();
            }
            if !text.is_empty() {
                parts.push(Part::Text(text.to_owned()));
            }
            let at = offset + open;
            let close = after_open.find("}}").ok_or(TemplateError::Unclosed(at))?;
            let mut body = &after_open[body_start..close];
            trim_next_text = body.ends_with(" -");
            if trim_next_text {
                body = &body[..body.len() - 2];
            }
            parts.push(parse_action(body.trim(), at)?);
            let consumed = open + 2 + close + 2;
            rest = &rest[consumed..];
            offset += consumed;
        }
        let text = if trim_next_text { rest.trim_start() } else { rest };
        if !text.is_empty() {
            parts.push(Part::Text(text.to_owned()));
        }
        Ok(Self { source: source.to_owned(), parts })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// What this template renders for a stand-in resource whose every field
    /// and label is `probe`: the shape of every name it will make, which
    /// validation checks before a generator is accepted.
    pub fn probe(&self) -> Result<String, RenderError> {
        let labels: BTreeMap<String, String> = self
            .parts
            .iter()
            .filter_map(|p| match p {
                Part::Label(k) => Some((k.clone(), "probe".to_owned())),
                _ => None,
            })
            .collect();
        self.render(&TemplateInput {
            name: "probe",
            display_name: "probe",
            mesh: "probe",
            zone: "probe",
            namespace: "probe",
            labels: Some(&labels),
        })
    }

    /// Renders to a lower-case name; the caller checks it is a valid DNS name.
    pub fn render(&self, input: &TemplateInput<'_>) -> Result<String, RenderError> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Field(f) => {
                    let (value, what) = match f {
                        Field::Name => (input.name, ".Name"),
                        Field::DisplayName => (input.display_name, ".DisplayName"),
                        Field::Mesh => (input.mesh, ".Mesh"),
                        Field::Zone => (input.zone, ".Zone (the kuma.io/zone label)"),
                        Field::Namespace => (input.namespace, ".Namespace (the k8s.kuma.io/namespace label)"),
                    };
                    // An empty field would leave an empty label in the name.
                    if value.is_empty() {
                        return Err(RenderError::EmptyField(what));
                    }
                    out.push_str(value);
                }
                Part::Label(key) => {
                    let value =
                        input.labels.and_then(|l| l.get(key)).ok_or_else(|| RenderError::MissingLabel(key.clone()))?;
                    out.push_str(value);
                }
            }
        }
        Ok(out.to_ascii_lowercase())
    }
}

impl fmt::Display for HostnameTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

fn parse_action(body: &str, at: usize) -> Result<Part, TemplateError> {
    if body.is_empty() {
        return Err(TemplateError::Empty { at });
    }
    if let Some(field) = body.strip_prefix('.') {
        let field = match field {
            "Name" => Field::Name,
            "DisplayName" => Field::DisplayName,
            "Mesh" => Field::Mesh,
            "Zone" => Field::Zone,
            "Namespace" => Field::Namespace,
            other => return Err(TemplateError::UnknownField { field: format!(".{other}"), at }),
        };
        return Ok(Part::Field(field));
    }
    if let Some(arg) = body.strip_prefix("label") {
        if !arg.starts_with(char::is_whitespace) {
            return Err(TemplateError::Unsupported { action: body.to_owned(), at });
        }
        let arg = arg.trim();
        let key = arg
            .strip_prefix('"')
            .and_then(|a| a.strip_suffix('"'))
            .or_else(|| arg.strip_prefix('`').and_then(|a| a.strip_suffix('`')))
            .filter(|k| !k.is_empty() && !k.contains(['"', '`']))
            .ok_or(TemplateError::LabelArgument { at })?;
        return Ok(Part::Label(key.to_owned()));
    }
    Err(TemplateError::Unsupported { action: body.to_owned(), at })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input<'a>(labels: &'a BTreeMap<String, String>) -> TemplateInput<'a> {
        TemplateInput {
            name: "redis-x7",
            display_name: "Redis",
            mesh: "default",
            zone: "ecs",
            namespace: "",
            labels: Some(labels),
        }
    }

    #[test]
    fn renders_fields_and_labels() {
        let labels = BTreeMap::from([("team".to_owned(), "Cache".to_owned())]);
        let t = HostnameTemplate::parse("{{ .DisplayName }}.{{ label \"team\" }}.{{.Mesh}}.svc.mesh.local").unwrap();
        assert_eq!(t.render(&input(&labels)).unwrap(), "redis.cache.default.svc.mesh.local");
        let t = HostnameTemplate::parse("{{ .Name }}-{{ .Zone }}").unwrap();
        assert_eq!(t.render(&input(&labels)).unwrap(), "redis-x7-ecs");
    }

    #[test]
    fn plain_text_is_a_template() {
        let t = HostnameTemplate::parse(".svc.mesh.local").unwrap();
        assert_eq!(t.render(&TemplateInput::default()).unwrap(), ".svc.mesh.local");
    }

    #[test]
    fn trim_markers() {
        let t = HostnameTemplate::parse("a  {{- .Mesh -}}  .b").unwrap();
        assert_eq!(t.render(&TemplateInput { mesh: "m", ..Default::default() }).unwrap(), "am.b");
    }

    #[test]
    fn missing_label_is_an_error() {
        let labels = BTreeMap::new();
        let t = HostnameTemplate::parse("{{ label `k8s.kuma.io/namespace` }}.x").unwrap();
        assert_eq!(t.render(&input(&labels)), Err(RenderError::MissingLabel("k8s.kuma.io/namespace".into())));
    }

    #[test]
    fn parse_errors_say_where() {
        assert_eq!(HostnameTemplate::parse("a{{ .DisplayName "), Err(TemplateError::Unclosed(1)));
        assert_eq!(
            HostnameTemplate::parse("{{ .Port }}"),
            Err(TemplateError::UnknownField { field: ".Port".into(), at: 0 })
        );
        assert_eq!(HostnameTemplate::parse("x{{}}"), Err(TemplateError::Empty { at: 1 }));
        assert_eq!(HostnameTemplate::parse("{{ label team }}"), Err(TemplateError::LabelArgument { at: 0 }));
        assert!(matches!(HostnameTemplate::parse("{{ printf \"%s\" .Name }}"), Err(TemplateError::Unsupported { .. })));
    }
}
