//! Finding the sidecar in a task definition and reading its Dataplane
//! template and `--dataplane-var` pairs, in the form of the Kong Mesh ECS
//! example: often one shell string run by `sh -c`, with values in backticks
//! that only the task itself can evaluate.

use std::collections::BTreeMap;

use crate::model::{DataplaneVars, ValidationErrors};

/// The environment variable that holds the Dataplane template.
pub const TEMPLATE_ENV: &str = "KUMA_DATAPLANE_RUNTIME_RESOURCE";

/// The parts of a task definition loopmesh reads, free of SDK types.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskDefinitionDoc {
    pub arn: String,
    pub task_role_arn: Option<String>,
    pub containers: Vec<ContainerDoc>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerDoc {
    pub name: String,
    /// The container has an ECS health check: the task's health is known.
    pub health_check: bool,
    pub environment: Vec<(String, String)>,
    pub entry_point: Vec<String>,
    pub command: Vec<String>,
}

/// The sidecar's Dataplane template and variables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SidecarSpec {
    pub container: String,
    pub template: String,
    /// Values given literally.
    pub vars: DataplaneVars,
    /// Values the shell computes inside the task (`` `hostname -i` ``, `$(...)`, `$VAR`), by key.
    pub runtime_vars: BTreeMap<String, String>,
}

/// Variables task-events can compute for the task from its event.
pub const RUNTIME_FILLED: [&str; 2] = ["dpname", "address"];

impl SidecarSpec {
    /// The variables for rendering: literal ones, plus `dpname` and `address`
    /// from the task when the task definition leaves them to the shell or out.
    pub fn vars_for_task(&self, task_id: &str, address: Option<&str>) -> Result<DataplaneVars, ValidationErrors> {
        let mut errors = ValidationErrors::default();
        for (k, v) in &self.runtime_vars {
            if !RUNTIME_FILLED.contains(&k.as_str()) {
                errors.push(
                    format!("containerDefinitions[{}].command", self.container),
                    format!(
                        "--dataplane-var {k}={v} is evaluated by the shell inside the task; task-events can fill only dpname and address, so give {k} a literal value"
                    ),
                );
            }
        }
        let mut vars = self.vars.clone();
        vars.entry("dpname".into()).or_insert_with(|| task_id.to_owned());
        if let Some(a) = address {
            vars.entry("address".into()).or_insert_with(|| a.to_owned());
        }
        errors.into_result(vars)
    }
}

impl TaskDefinitionDoc {
    /// The task definition as this task runs it: RunTask's role and
    /// container overrides applied (a command replaces the container's; an
    /// environment variable replaces the one of the same name).
    pub fn with_overrides(&self, o: &super::event::Overrides) -> Self {
        let mut td = self.clone();
        if let Some(role) = &o.task_role_arn {
            td.task_role_arn = Some(role.clone());
        }
        for co in &o.container_overrides {
            let Some(c) = td.containers.iter_mut().find(|c| c.name == co.name) else { continue };
            if let Some(command) = &co.command {
                c.command = command.clone();
            }
            for kv in &co.environment {
                c.environment.retain(|(k, _)| *k != kv.name);
                c.environment.push((kv.name.clone(), kv.value.clone().unwrap_or_default()));
            }
        }
        td
    }
}

/// The container whose environment holds [`TEMPLATE_ENV`], if any.
pub fn find_sidecar(doc: &TaskDefinitionDoc) -> Option<SidecarSpec> {
    doc.containers.iter().find_map(|c| {
        let template = c.environment.iter().find(|(k, _)| k == TEMPLATE_ENV)?.1.clone();
        let words = command_words(c);
        let (vars, runtime_vars) = split_runtime(dataplane_vars(&words));
        Some(SidecarSpec { container: c.name.clone(), template, vars, runtime_vars })
    })
}

/// The argv the container runs: shell strings under `sh -c` are split as the shell would.
fn command_words(c: &ContainerDoc) -> Vec<String> {
    let all: Vec<&String> = c.entry_point.iter().chain(&c.command).collect();
    let shell_at = all.windows(2).position(|w| w[0].ends_with("sh") && w[1] == "-c");
    match shell_at {
        Some(i) => all[i + 2..].iter().flat_map(|s| shell_words(s)).collect(),
        None => all.into_iter().cloned().collect(),
    }
}

/// `--dataplane-var key=value` and `--dataplane-var=key=value` pairs, in order; a later key wins.
pub fn dataplane_vars<S: AsRef<str>>(args: &[S]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut it = args.iter().map(AsRef::as_ref);
    while let Some(a) = it.next() {
        let pair = if a == "--dataplane-var" { it.next() } else { a.strip_prefix("--dataplane-var=") };
        if let Some((k, v)) = pair.and_then(|p| p.split_once('=')) {
            out.push((k.to_owned(), v.to_owned()));
        }
    }
    out
}

fn split_runtime(pairs: Vec<(String, String)>) -> (DataplaneVars, BTreeMap<String, String>) {
    let mut literal = DataplaneVars::new();
    let mut runtime = BTreeMap::new();
    for (k, v) in pairs {
        if v.contains('`') || v.contains('$') {
            literal.remove(&k);
            runtime.insert(k, v);
        } else {
            runtime.remove(&k);
            literal.insert(k, v);
        }
    }
    (literal, runtime)
}

/// Splits a shell command line into words: quotes group and are removed;
/// backticks and `$(...)` group and are kept, as they are evaluated later.
pub fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                for n in chars.by_ref() {
                    if n == '\'' {
                        break;
                    }
                    word.push(n);
                }
            }
            '"' => {
                in_word = true;
                while let Some(n) = chars.next() {
                    match n {
                        '"' => break,
                        '\\' => word.extend(chars.next()),
                        _ => word.push(n),
                    }
                }
            }
            '`' => {
                in_word = true;
                word.push('`');
                for n in chars.by_ref() {
                    word.push(n);
                    if n == '`' {
                        break;
                    }
                }
            }
            '$' if chars.peek() == Some(&'(') => {
                in_word = true;
                word.push('$');
                let mut depth = 0;
                for n in chars.by_ref() {
                    word.push(n);
                    match n {
                        '(' => depth += 1,
                        ')' => {
                            depth -= 1;
                            if depth == 0 {
                                break;
                            }
                        }
                        _ => {}
                    }
                }
            }
            '\\' => {
                in_word = true;
                word.extend(chars.next());
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_like_a_shell() {
        assert_eq!(
            shell_words("kuma-dp run --dataplane-var dpname=`hostname -s` --x 'a b' \"c \\\"d\\\"\" $(echo (x)) e\\ f"),
            [
                "kuma-dp",
                "run",
                "--dataplane-var",
                "dpname=`hostname -s`",
                "--x",
                "a b",
                "c \"d\"",
                "$(echo (x))",
                "e f"
            ]
        );
        assert!(shell_words("  ").is_empty());
        assert_eq!(shell_words("''"), [""]);
    }

    fn kong_example() -> TaskDefinitionDoc {
        TaskDefinitionDoc {
            arn: "arn:aws:ecs:us-east-1:1:task-definition/demo-app:3".into(),
            task_role_arn: Some("arn:aws:iam::1:role/demo".into()),
            containers: vec![
                ContainerDoc { name: "workload".into(), ..Default::default() },
                ContainerDoc {
                    name: "kuma-dp".into(),
                    environment: vec![(TEMPLATE_ENV.into(), "type: Dataplane".into())],
                    entry_point: vec!["sh".into(), "-c".into()],
                    command: vec!["kuma-dp run --cp-address https://cp:5678 --dataplane-var dpname=`hostname -s` --dataplane-var address=`hostname -i` --dataplane-var mesh=default --dataplane-var=port=15000 --dataplane-var service=demo-app --bind-outbounds".into()],
                    health_check: false,
                },
            ],
        }
    }

    #[test]
    fn finds_the_sidecar_and_its_variables() {
        let spec = find_sidecar(&kong_example()).unwrap();
        assert_eq!(spec.container, "kuma-dp");
        assert_eq!(spec.vars.get("mesh").map(String::as_str), Some("default"));
        assert_eq!(spec.vars.get("port").map(String::as_str), Some("15000"));
        assert_eq!(spec.runtime_vars.keys().collect::<Vec<_>>(), ["address", "dpname"]);
        let vars = spec.vars_for_task("abc123", Some("10.0.0.9")).unwrap();
        assert_eq!(vars.get("dpname").map(String::as_str), Some("abc123"));
        assert_eq!(vars.get("address").map(String::as_str), Some("10.0.0.9"));
    }

    #[test]
    fn argv_form_without_a_shell() {
        let mut doc = kong_example();
        doc.containers[1].entry_point.clear();
        doc.containers[1].command =
            vec!["run".into(), "--dataplane-var".into(), "mesh=prod".into(), "--dataplane-var".into(), "x=a b".into()];
        let spec = find_sidecar(&doc).unwrap();
        assert_eq!(spec.vars.get("mesh").map(String::as_str), Some("prod"));
        assert_eq!(spec.vars.get("x").map(String::as_str), Some("a b"));
    }

    #[test]
    fn a_shell_value_task_events_cannot_compute_is_an_error() {
        let mut doc = kong_example();
        doc.containers[1].command[0].push_str(" --dataplane-var port=$(cat /port)");
        let spec = find_sidecar(&doc).unwrap();
        let err = spec.vars_for_task("t", None).unwrap_err().to_string();
        assert!(err.contains("--dataplane-var port=$(cat /port) is evaluated by the shell inside the task"), "{err}");
    }

    #[test]
    fn no_template_no_sidecar() {
        let mut doc = kong_example();
        doc.containers[1].environment.clear();
        assert_eq!(find_sidecar(&doc), None);
    }
}
