//! Label and field selectors (`labelSelector=`, `fieldSelector=`) as list and watch filters.

use super::error::ApiError;
use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// A parsed selector: every requirement must hold.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Selector {
    requirements: Vec<Requirement>,
    /// Label selectors look keys up in `metadata.labels`; field selectors follow dotted paths.
    fields: bool,
}

/// Splits on commas that are not inside `in (...)` value sets.
fn split_top_level(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
        .into_iter()
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect()
}

fn value_set(text: &str, whole: &str) -> Result<Vec<String>, ApiError> {
    let inner = text
        .trim()
        .strip_prefix('(')
        .and_then(|t| t.strip_suffix(')'))
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "unable to parse requirement {whole:?}: expected a parenthesised value set"
            ))
        })?;
    Ok(inner.split(',').map(|v| v.trim().to_string()).collect())
}

/// `k!=v`, `k==v` or `k=v`: the forms label and field selectors share.
fn equality(part: &str) -> Option<Requirement> {
    if let Some((k, v)) = part.split_once("!=") {
        Some(Requirement::NotEquals(k.trim().into(), v.trim().into()))
    } else if let Some((k, v)) = part.split_once("==") {
        Some(Requirement::Equals(k.trim().into(), v.trim().into()))
    } else {
        part.split_once('=')
            .map(|(k, v)| Requirement::Equals(k.trim().into(), v.trim().into()))
    }
}

impl Selector {
    pub fn labels(text: &str) -> Result<Selector, ApiError> {
        let mut requirements = Vec::new();
        for part in split_top_level(text) {
            let req = if let Some(req) = equality(part) {
                req
            } else if let Some((k, v)) = part.split_once(" notin ") {
                Requirement::NotIn(k.trim().into(), value_set(v, part)?)
            } else if let Some((k, v)) = part.split_once(" in ") {
                Requirement::In(k.trim().into(), value_set(v, part)?)
            } else if let Some(k) = part.strip_prefix('!') {
                Requirement::NotExists(k.trim().into())
            } else if part.contains([' ', '(', ')']) {
                return Err(ApiError::bad_request(format!(
                    "unable to parse label selector requirement {part:?}"
                )));
            } else {
                Requirement::Exists(part.into())
            };
            requirements.push(req);
        }
        Ok(Selector {
            requirements,
            fields: false,
        })
    }

    pub fn fields(text: &str) -> Result<Selector, ApiError> {
        let mut requirements = Vec::new();
        for part in split_top_level(text) {
            let req = if let Some(req) = equality(part) {
                req
            } else {
                return Err(ApiError::bad_request(format!(
                    "invalid field selector requirement {part:?}: expected key=value or key!=value"
                )));
            };
            requirements.push(req);
        }
        Ok(Selector {
            requirements,
            fields: true,
        })
    }

    fn lookup(&self, object: &Value, key: &str) -> Option<String> {
        let found = if self.fields {
            key.split('.').try_fold(object, |v, k| v.get(k))
        } else {
            object.pointer("/metadata/labels").and_then(|l| l.get(key))
        };
        found.map(|v| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
    }

    pub fn matches(&self, object: &Value) -> bool {
        self.requirements.iter().all(|req| match req {
            Requirement::Equals(k, v) => self.lookup(object, k).unwrap_or_default() == *v,
            Requirement::NotEquals(k, v) => self.lookup(object, k).unwrap_or_default() != *v,
            Requirement::In(k, vs) => self.lookup(object, k).is_some_and(|x| vs.contains(&x)),
            Requirement::NotIn(k, vs) => self.lookup(object, k).is_none_or(|x| !vs.contains(&x)),
            Requirement::Exists(k) => self.lookup(object, k).is_some(),
            Requirement::NotExists(k) => self.lookup(object, k).is_none(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn label_selectors_cover_equality_sets_and_existence() {
        let obj = json!({"metadata": {"labels": {"team": "a", "tier": "web"}}});
        assert!(
            Selector::labels("team=a,tier in (web, db)")
                .unwrap()
                .matches(&obj)
        );
        assert!(!Selector::labels("team!=a").unwrap().matches(&obj));
        assert!(
            Selector::labels("tier notin (db),!missing")
                .unwrap()
                .matches(&obj)
        );
        assert!(!Selector::labels("missing").unwrap().matches(&obj));
    }

    #[test]
    fn field_selectors_follow_dotted_paths() {
        let obj = json!({"metadata": {"name": "x"}, "involvedObject": {"kind": "UserBatch"}});
        assert!(
            Selector::fields("metadata.name=x,involvedObject.kind==UserBatch")
                .unwrap()
                .matches(&obj)
        );
        assert!(
            !Selector::fields("involvedObject.kind!=UserBatch")
                .unwrap()
                .matches(&obj)
        );
    }
}
