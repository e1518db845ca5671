//! Reading and writing resource documents (YAML, several per file; JSON too,
//! since JSON is YAML).

use serde::Deserialize;

use crate::resource::DocumentError;
use crate::{Resource, ValidationErrors};

/// What is wrong with one document of a file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The text is not YAML.
    #[error("document {document}: not valid YAML: {message}")]
    Syntax {
        /// 1-based index of the document in the file.
        document: usize,
        /// The YAML parser's message (with line and column).
        message: String,
    },
    /// The YAML is not a resource.
    #[error("document {document}: {error}")]
    Document {
        /// 1-based index of the document in the file.
        document: usize,
        /// Which field and why.
        error: DocumentError,
    },
    /// The resource breaks a rule.
    #[error("document {document}: {errors}")]
    Invalid {
        /// 1-based index of the document in the file.
        document: usize,
        /// The broken rules.
        errors: ValidationErrors,
    },
    /// The file holds no document.
    #[error("no resource found (expected YAML documents with kind, metadata and spec)")]
    Empty,
    /// Nested deeper than any resource is (checked before parsing: the
    /// parser's time grows fast with depth).
    #[error("line {line}: nested deeper than {MAX_NESTING} levels; no resource needs that")]
    TooDeep {
        /// 1-based line where the limit is passed.
        line: usize,
    },
}

/// Deepest nesting a resource document may have (the deepest resource,
/// a Route's header match, is under 10).
pub const MAX_NESTING: usize = 32;

/// Refuses text nested deeper than [`MAX_NESTING`], before a parser sees
/// it: flow collections (`[`, `{`) outside quotes and comments count one
/// level each; a block line's indentation counts one level per two
/// columns, and each leading `- ` one more. Rough on purpose (it may
/// over-count odd indentation), never under-counting.
pub fn check_nesting(text: &str) -> Result<(), ParseError> {
    let mut flow: usize = 0;
    for (n, line) in text.lines().enumerate() {
        let too_deep = Err(ParseError::TooDeep { line: n + 1 });
        if flow == 0 {
            let indent = line.len() - line.trim_start_matches([' ', '\t']).len();
            let mut rest = &line[indent..];
            let mut dashes = 0;
            while let Some(r) = rest.strip_prefix("- ").or_else(|| rest.strip_prefix("? ")) {
                dashes += 1;
                rest = r.trim_start();
            }
            if indent / 2 + dashes > MAX_NESTING {
                return too_deep;
            }
        }
        let mut quote: Option<char> = None;
        for c in line.chars() {
            match (quote, c) {
                (Some(q), c) if c == q => quote = None,
                (Some(_), _) => {}
                (None, '"' | '\'') => quote = Some(c),
                (None, '#') => break,
                (None, '[' | '{') => {
                    flow += 1;
                    if flow > MAX_NESTING {
                        return too_deep;
                    }
                }
                (None, ']' | '}') => flow = flow.saturating_sub(1),
                _ => {}
            }
        }
    }
    Ok(())
}

/// Parses every document of a YAML (or JSON) text and validates each.
/// Empty documents (a stray `---`) are skipped. Fails on the first bad
/// document, naming it by its position.
pub fn parse_documents(text: &str) -> Result<Vec<Resource>, ParseError> {
    check_nesting(text)?;
    let mut out = Vec::new();
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let document = i + 1;
        let value = serde_json::Value::deserialize(doc).map_err(|e| ParseError::Syntax {
            document,
            message: e.to_string(),
        })?;
        if value.is_null() {
            continue;
        }
        let res = Resource::from_value(value)
            .map_err(|error| ParseError::Document { document, error })?;
        res.validate()
            .map_err(|errors| ParseError::Invalid { document, errors })?;
        out.push(res);
    }
    if out.is_empty() {
        return Err(ParseError::Empty);
    }
    Ok(out)
}

/// Writes resources as YAML documents separated by `---`.
pub fn to_yaml(resources: &[Resource]) -> Result<String, serde_yaml_ng::Error> {
    let mut out = String::new();
    for (i, r) in resources.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        out.push_str(&serde_yaml_ng::to_string(r)?);
    }
    Ok(out)
}

#[cfg(test)]
mod nesting_tests {
    use super::*;

    #[test]
    fn text_nested_deeper_than_any_resource_is_refused_before_parsing() {
        let flow = format!(
            "kind: Service\nmetadata: {{name: a}}\nspec: {}{}",
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert_eq!(check_nesting(&flow), Err(ParseError::TooDeep { line: 3 }));
        let block: String = (0..5000)
            .map(|i| format!("{}a:\n", " ".repeat(i * 2)))
            .collect();
        assert!(matches!(
            parse_documents(&block),
            Err(ParseError::TooDeep { .. })
        ));
        let dashes = format!("{}x\n", "- ".repeat(100));
        assert!(check_nesting(&dashes).is_err());
        // Brackets in quotes and comments do not count; real resources pass.
        let quoted = format!("a: \"{}\" # {}\n", "[".repeat(100), "{".repeat(100));
        assert_eq!(check_nesting(&quoted), Ok(()));
        let route = "kind: Route\nmetadata: {name: web}\nspec:\n  service: web\n  rules:\n    - matches:\n        - headers: {x-canary: \"true\"}\n      backends:\n        - subset: {version: v2}\n          weight: 100\n";
        assert_eq!(parse_documents(route).map(|r| r.len()), Ok(1));
    }
}
