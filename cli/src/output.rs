//! How results are printed: aligned tables for people, JSON or YAML for scripts.

use clap::ValueEnum;
use serde::Serialize;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum Format {
    #[default]
    Table,
    Json,
    Yaml,
}

/// Prints `value` as JSON or YAML; `None` for the table form, which the caller prints.
pub fn structured<T: Serialize>(format: Format, value: &T) -> Option<String> {
    match format {
        Format::Table => None,
        Format::Json => Some(serde_json::to_string_pretty(value).unwrap_or_default()),
        Format::Yaml => Some(serde_yaml_ng::to_string(value).unwrap_or_default()),
    }
}

/// A table with a header row; columns as wide as their widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.trim_end().to_owned() + "\n"
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligns_columns() {
        let t = table(&["NAME", "VIP"], &[vec!["redis".into(), "127.1.0.7".into()], vec!["a".into(), "-".into()]]);
        assert_eq!(t, "NAME   VIP\nredis  127.1.0.7\na      -\n");
    }
}
