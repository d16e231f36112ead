//! JSON Schema sets: named schemas loaded from files at startup and compiled
//! once. Used for form validation (seed 004's `validate_field`) and for
//! collection schemas, which the engine enforces on every local push.
//!
//! The `jsonschema` crate is built without default features, so a `$ref`
//! to a remote or file URL is refused at load time instead of being fetched.

use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// A schema file that cannot be used; names the config key and the file.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not JSON: {message}")]
    Json { path: PathBuf, message: String },
    #[error("{path} is not a usable JSON Schema: {message}")]
    Compile { path: PathBuf, message: String },
}

/// One broken rule, attributed to a top-level field of the checked object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The top-level property at fault ("" when the object as a whole is).
    pub field: String,
    /// The JSON Schema keyword that failed (`required`, `minLength`, ...).
    pub rule: String,
    /// The validator's own description of the failure.
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "field `{}` breaks rule `{}`: {}",
            self.field, self.rule, self.message
        )
    }
}

struct Compiled {
    path: PathBuf,
    validator: jsonschema::Validator,
}

/// Named compiled schemas.
#[derive(Default)]
pub struct SchemaSet {
    map: BTreeMap<String, Compiled>,
}

impl fmt::Debug for SchemaSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.map.iter().map(|(k, c)| (k, &c.path)))
            .finish()
    }
}

impl SchemaSet {
    /// Load and compile each `name = path`; relative paths are resolved
    /// against `base` (the config file's directory). Returns the failing
    /// entry's name with the error.
    pub fn load(
        entries: &BTreeMap<String, PathBuf>,
        base: Option<&Path>,
    ) -> Result<SchemaSet, (String, SchemaError)> {
        let mut map = BTreeMap::new();
        for (name, path) in entries {
            let path = match base {
                Some(b) if path.is_relative() => b.join(path),
                _ => path.clone(),
            };
            let text = std::fs::read_to_string(&path).map_err(|source| {
                (
                    name.clone(),
                    SchemaError::Read {
                        path: path.clone(),
                        source,
                    },
                )
            })?;
            let raw: Value = serde_json::from_str(&text).map_err(|e| {
                (
                    name.clone(),
                    SchemaError::Json {
                        path: path.clone(),
                        message: e.to_string(),
                    },
                )
            })?;
            let validator = compile(&raw).map_err(|message| {
                (
                    name.clone(),
                    SchemaError::Compile {
                        path: path.clone(),
                        message,
                    },
                )
            })?;
            map.insert(name.clone(), Compiled { path, validator });
        }
        Ok(SchemaSet { map })
    }

    /// A set from in-memory schemas (tests, embedding).
    pub fn from_values(schemas: BTreeMap<String, Value>) -> Result<SchemaSet, String> {
        let mut map = BTreeMap::new();
        for (name, raw) in schemas {
            let validator = compile(&raw).map_err(|m| format!("{name}: {m}"))?;
            map.insert(
                name,
                Compiled {
                    path: PathBuf::new(),
                    validator,
                },
            );
        }
        Ok(SchemaSet { map })
    }

    pub fn contains(&self, name: &str) -> bool {
        self.map.contains_key(name)
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Check `instance` against the schema `name`: None if there is no such
    /// schema, else every violation (empty when valid).
    pub fn check(&self, name: &str, instance: &Value) -> Option<Vec<Violation>> {
        let c = self.map.get(name)?;
        Some(c.validator.iter_errors(instance).map(violation).collect())
    }

    /// Check an object of fields, as a form or entity. Convenience over `check`.
    pub fn check_object(&self, name: &str, fields: &Map<String, Value>) -> Option<Vec<Violation>> {
        // One clone per check; the validator needs a `Value` to walk.
        self.check(name, &Value::Object(fields.clone()))
    }
}

fn compile(raw: &Value) -> Result<jsonschema::Validator, String> {
    // Formats (email, date-time, ...) are checked: forms rely on them.
    jsonschema::options()
        .should_validate_formats(true)
        .build(raw)
        .map_err(|e| e.to_string())
}

/// Name the top-level field a validation error is about.
fn violation(e: jsonschema::ValidationError<'_>) -> Violation {
    use jsonschema::error::ValidationErrorKind as K;
    let field = match e.kind() {
        K::Required { property } => property
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| property.to_string()),
        K::AdditionalProperties { unexpected } if e.instance_path().as_str().is_empty() => {
            unexpected.join(", ")
        }
        _ => first_segment(e.instance_path().as_str()),
    };
    Violation {
        field,
        rule: e.kind().keyword().to_string(),
        message: e.to_string(),
    }
}

/// The first reference token of a JSON pointer, unescaped (`/a~1b/0` → `a/b`).
fn first_segment(pointer: &str) -> String {
    pointer
        .strip_prefix('/')
        .map(|p| p.split('/').next().unwrap_or(""))
        .unwrap_or("")
        .replace("~1", "/")
        .replace("~0", "~")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn contact() -> SchemaSet {
        SchemaSet::from_values(BTreeMap::from([(
            "contact".to_string(),
            json!({
                "type": "object",
                "required": ["email"],
                "additionalProperties": false,
                "properties": {
                    "email": {"type": "string", "format": "email"},
                    "message": {"type": "string", "minLength": 10},
                    "a/b": {"type": "integer"}
                }
            }),
        )]))
        .unwrap()
    }

    #[test]
    fn names_field_and_rule() {
        let s = contact();
        let v = s
            .check(
                "contact",
                &json!({"email": "x@example.com", "message": "short"}),
            )
            .unwrap();
        assert_eq!(v.len(), 1);
        assert_eq!(
            (v[0].field.as_str(), v[0].rule.as_str()),
            ("message", "minLength")
        );
        let v = s
            .check("contact", &json!({"message": "long enough text"}))
            .unwrap();
        assert_eq!(
            (v[0].field.as_str(), v[0].rule.as_str()),
            ("email", "required")
        );
        let v = s
            .check("contact", &json!({"email": "not-an-email"}))
            .unwrap();
        assert_eq!(
            (v[0].field.as_str(), v[0].rule.as_str()),
            ("email", "format")
        );
        let v = s
            .check("contact", &json!({"email": "x@example.com", "zip": 1}))
            .unwrap();
        assert_eq!(
            (v[0].field.as_str(), v[0].rule.as_str()),
            ("zip", "additionalProperties")
        );
        let v = s
            .check("contact", &json!({"email": "x@example.com", "a/b": "x"}))
            .unwrap();
        assert_eq!((v[0].field.as_str(), v[0].rule.as_str()), ("a/b", "type"));
        assert!(s
            .check("contact", &json!({"email": "x@example.com"}))
            .unwrap()
            .is_empty());
        assert!(s.check("nope", &json!({})).is_none());
        assert!(v[0].to_string().contains("field `a/b` breaks rule `type`"));
    }

    #[test]
    fn load_resolves_relative_paths_and_names_bad_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("forms")).unwrap();
        std::fs::write(
            dir.path().join("forms/ok.json"),
            r#"{"type":"object","properties":{"n":{"type":"integer"}}}"#,
        )
        .unwrap();
        std::fs::write(dir.path().join("forms/bad.json"), "{not json").unwrap();
        std::fs::write(dir.path().join("forms/invalid.json"), r#"{"type": 12}"#).unwrap();
        let ok = BTreeMap::from([("ok".to_string(), PathBuf::from("forms/ok.json"))]);
        let set = SchemaSet::load(&ok, Some(dir.path())).unwrap();
        assert!(set.contains("ok"));
        assert_eq!(set.check("ok", &json!({"n": "x"})).unwrap().len(), 1);
        for (file, want) in [
            ("forms/bad.json", "is not JSON"),
            ("forms/invalid.json", "not a usable JSON Schema"),
            ("forms/missing.json", "cannot read"),
        ] {
            let m = BTreeMap::from([("f".to_string(), PathBuf::from(file))]);
            let (name, e) = SchemaSet::load(&m, Some(dir.path())).unwrap_err();
            assert_eq!(name, "f");
            assert!(e.to_string().contains(want), "{e}");
        }
    }

    #[test]
    fn remote_refs_are_not_fetched() {
        let e = SchemaSet::from_values(BTreeMap::from([(
            "r".to_string(),
            json!({"$ref": "https://example.com/schema.json"}),
        )]));
        assert!(e.is_err());
    }
}
