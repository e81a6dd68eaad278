//! Limits that make hostile input fail fast. YAML parsers spend time that
//! grows with the square of nesting depth (60 KB of `[[[[...` costs seconds),
//! and a resource or Dataplane template arrives from anyone who can register
//! a task definition. One linear scan checks size and depth before any
//! parser sees the text; no real resource comes near either limit.

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

/// The most bytes one text of documents may have.
pub const MAX_BYTES: usize = 256 * 1024;
/// The most levels of nesting (block indentation, `- ` entries, `[` and `{`) a document may have.
pub const MAX_DEPTH: usize = 32;

/// Refuses a text over [`MAX_BYTES`] or nested deeper than [`MAX_DEPTH`], in
/// one pass over its bytes.
pub fn check(text: &str) -> Result<(), String> {
    if text.len() > MAX_BYTES {
        return Err(format!("the text is {} bytes, more than the limit of {MAX_BYTES}", text.len()));
    }
    let mut quote: Option<u8> = None;
    let mut flow = 0usize;
    // Indentations of the open block levels.
    let mut blocks: Vec<usize> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let bytes = line.as_bytes();
        let mut i = 0;
        let mut dashes = 0;
        if quote.is_none() && flow == 0 {
            let indent = bytes.iter().take_while(|b| **b == b' ').count();
            let rest = &bytes[indent..];
            if rest.is_empty() || rest[0] == b'#' {
                continue;
            }
            while blocks.last().is_some_and(|top| *top >= indent) {
                blocks.pop();
            }
            blocks.push(indent);
            // `- - - x` opens one sequence per dash on a single line.
            i = indent;
            while bytes.get(i) == Some(&b'-') && matches!(bytes.get(i + 1), Some(b' ') | None) {
                dashes += 1;
                i += 2;
            }
        }
        while i < bytes.len() {
            let b = bytes[i];
            match (quote, b) {
                (Some(b'"'), b'\\') => i += 1,
                (Some(q), _) if b == q => quote = None,
                (Some(_), _) => {}
                (None, b'"' | b'\'') => quote = Some(b),
                (None, b'#') if i == 0 || bytes[i - 1] == b' ' => break,
                (None, b'[' | b'{') => flow += 1,
                (None, b']' | b'}') => flow = flow.saturating_sub(1),
                _ => {}
            }
            if blocks.len() + flow + dashes > MAX_DEPTH {
                return Err(too_deep(n));
            }
            i += 1;
        }
    }
    Ok(())
}

fn too_deep(line: usize) -> String {
    format!("the document nests deeper than {MAX_DEPTH} levels at line {}; loopmesh refuses such input", line + 1)
}

/// A JSON value whose objects have no repeated key: serde_json keeps the
/// last of two equal keys silently, YAML refuses them; loopmesh refuses them in both.
pub(super) struct UniqueKeys(pub serde_json::Value);

impl<'de> Deserialize<'de> for UniqueKeys {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(UniqueVisitor)
    }
}

struct UniqueVisitor;

impl<'de> Visitor<'de> for UniqueVisitor {
    type Value = UniqueKeys;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys(v.into()))
    }
    fn visit_i64<E>(self, v: i64) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys(v.into()))
    }
    fn visit_f64<E>(self, v: f64) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys(v.into()))
    }
    fn visit_str<E>(self, v: &str) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys(v.into()))
    }
    fn visit_unit<E>(self) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys(serde_json::Value::Null))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<UniqueKeys, A::Error> {
        let mut out = Vec::new();
        while let Some(UniqueKeys(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(UniqueKeys(serde_json::Value::Array(out)))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<UniqueKeys, A::Error> {
        let mut out = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(de::Error::custom(format!("duplicate key {}", crate::excerpt::quoted(&key))));
            }
            let UniqueKeys(v) = map.next_value()?;
            out.insert(key, v);
        }
        Ok(UniqueKeys(serde_json::Value::Object(out)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_documents_pass() {
        let doc = "type: Mesh\nname: default\nmeshServices:\n  mode: Exclusive\nlabels:\n  - a\n  - b # c [\n";
        assert_eq!(check(doc), Ok(()));
        assert_eq!(check("{\"type\": \"Mesh\", \"name\": \"x\", \"a\": [1, {\"b\": \"]]]\"}]}"), Ok(()));
    }

    #[test]
    fn deep_flow_block_and_dash_nesting_are_refused() {
        let flow = format!("spec: {}{}", "[".repeat(40), "]".repeat(40));
        assert!(check(&flow).unwrap_err().contains("deeper than 32 levels at line 1"));
        let mut block = String::new();
        for i in 0..40 {
            block.push_str(&format!("{}a:\n", " ".repeat(i)));
        }
        assert!(check(&block).unwrap_err().contains("at line 33"), "{:?}", check(&block));
        let dashes = format!("a:\n  {}x\n", "- ".repeat(40));
        assert!(check(&dashes).unwrap_err().contains("at line 2"), "{:?}", check(&dashes));
    }

    #[test]
    fn a_huge_text_is_refused_by_its_size() {
        let text = "a: b\n".repeat(60_000);
        assert!(check(&text).unwrap_err().contains("more than the limit of 262144"));
    }

    #[test]
    fn json_with_a_repeated_key_is_refused() {
        let err = serde_json::from_str::<UniqueKeys>(r#"{"type": "Mesh", "name": "a", "name": "b"}"#).err().unwrap();
        assert!(err.to_string().contains("duplicate key \"name\""), "{err}");
        assert!(serde_json::from_str::<UniqueKeys>(r#"[{"a": 1}, {"a": 2}]"#).is_ok());
    }
}
