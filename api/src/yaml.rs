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
}

/// Parses every document of a YAML (or JSON) text and validates each.
/// Empty documents (a stray `---`) are skipped. Fails on the first bad
/// document, naming it by its position.
pub fn parse_documents(text: &str) -> Result<Vec<Resource>, ParseError> {
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
