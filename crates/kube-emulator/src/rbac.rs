//! Authentication by bearer token and RBAC authorization, for an emulator started with
//! [`crate::Rbac`]: every request is authorized against the Roles, ClusterRoles and bindings
//! currently stored (they are served under `rbac.authorization.k8s.io/v1`, so a test can
//! edit them while the emulator runs), and refused with the API server's `403 Forbidden`.
//!
//! As on a real cluster: `system:masters` may do anything; a RoleBinding grants a Role's or
//! ClusterRole's rules in its own namespace; a ClusterRoleBinding grants a ClusterRole's
//! rules everywhere; rules match verbs, API groups, resources (`*`, `userbatches/status`,
//! `*/status`) and `resourceNames`. Not emulated: ClusterRole aggregation, escalation
//! checks when writing RBAC objects, and other authorizers (Node, webhooks).

use super::error::ApiError;
use super::resources::ResourceDef;
use super::store::{ResourceKey, Store};
use serde_json::{Value, json};

/// The group that may do anything, as on a real cluster.
pub const MASTERS_GROUP: &str = "system:masters";

/// Who sent a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub groups: Vec<String>,
}

/// What a request asks to do, in the terms RBAC rules use.
#[derive(Debug, Clone)]
pub struct Attributes<'a> {
    pub verb: &'a str,
    pub group: &'a str,
    pub resource: &'a str,
    pub subresource: Option<&'a str>,
    pub name: Option<&'a str>,
    /// Empty for cluster-scoped requests (and requests across all namespaces).
    pub namespace: &'a str,
}

fn rbac_key(plural: &str) -> ResourceKey {
    ResourceKey {
        group: "rbac.authorization.k8s.io".into(),
        plural: plural.into(),
    }
}

fn strings<'a>(value: &'a Value, field: &str) -> Vec<&'a str> {
    value
        .get(field)
        .and_then(Value::as_array)
        .map(|items| items.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

fn str_at<'a>(value: &'a Value, pointer: &str) -> &'a str {
    value.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

/// Whether a binding subject is this user; `binding_namespace` is the default namespace of
/// ServiceAccount subjects of a RoleBinding.
fn subject_matches(subject: &Value, user: &User, binding_namespace: &str) -> bool {
    let name = str_at(subject, "/name");
    match str_at(subject, "/kind") {
        "User" => user.name == name,
        "Group" => user.groups.iter().any(|g| g == name),
        "ServiceAccount" => {
            let namespace = match str_at(subject, "/namespace") {
                "" => binding_namespace,
                ns => ns,
            };
            user.name == format!("system:serviceaccount:{namespace}:{name}")
        }
        _ => false,
    }
}

/// RBAC's `ResourceMatches`: exact, `*`, or `*/<subresource>`.
fn resource_matches(rule: &Value, combined: &str, subresource: Option<&str>) -> bool {
    strings(rule, "resources").iter().any(|r| {
        *r == "*"
            || *r == combined
            || subresource.is_some_and(|sub| r.strip_prefix("*/") == Some(sub))
    })
}

fn rule_allows(rule: &Value, attributes: &Attributes<'_>) -> bool {
    let verbs = strings(rule, "verbs");
    if !verbs.iter().any(|v| *v == "*" || *v == attributes.verb) {
        return false;
    }
    if !strings(rule, "apiGroups")
        .iter()
        .any(|g| *g == "*" || *g == attributes.group)
    {
        return false;
    }
    let combined = match attributes.subresource {
        Some(sub) => format!("{}/{sub}", attributes.resource),
        None => attributes.resource.to_string(),
    };
    if !resource_matches(rule, &combined, attributes.subresource) {
        return false;
    }
    let names = strings(rule, "resourceNames");
    names.is_empty() || attributes.name.is_some_and(|n| names.contains(&n))
}

fn non_resource_rule_allows(rule: &Value, verb: &str, path: &str) -> bool {
    let verbs = strings(rule, "verbs");
    verbs.iter().any(|v| *v == "*" || *v == verb)
        && strings(rule, "nonResourceURLs").iter().any(|url| {
            *url == path
                || url
                    .strip_suffix('*')
                    .is_some_and(|prefix| path.starts_with(prefix))
        })
}

/// The rules of the role a binding refers to.
fn role_rules<'a>(store: &'a Store, binding: &Value, binding_namespace: &str) -> Vec<&'a Value> {
    let name = str_at(binding, "/roleRef/name");
    let role = match str_at(binding, "/roleRef/kind") {
        "ClusterRole" => store.get(&rbac_key("clusterroles"), "", name),
        "Role" => store.get(&rbac_key("roles"), binding_namespace, name),
        _ => None,
    };
    role.and_then(|r| r.value().get("rules"))
        .and_then(Value::as_array)
        .map(|rules| rules.iter().collect())
        .unwrap_or_default()
}

/// Every rule granted to `user` where the request applies: cluster-wide, and in
/// `namespace` when there is one.
fn granted_rules<'a>(store: &'a Store, user: &User, namespace: &str) -> Vec<&'a Value> {
    let mut rules = Vec::new();
    for binding in store.list(&rbac_key("clusterrolebindings"), None) {
        let subjects = binding.get("subjects").and_then(Value::as_array);
        if subjects.is_some_and(|s| s.iter().any(|s| subject_matches(s, user, ""))) {
            rules.extend(role_rules(store, binding, ""));
        }
    }
    if !namespace.is_empty() {
        for binding in store.list(&rbac_key("rolebindings"), Some(namespace)) {
            let subjects = binding.get("subjects").and_then(Value::as_array);
            if subjects.is_some_and(|s| s.iter().any(|s| subject_matches(s, user, namespace))) {
                rules.extend(role_rules(store, binding, namespace));
            }
        }
    }
    rules
}

/// Authorizes a request on a resource; `Err` is the API server's 403.
pub fn authorize(store: &Store, user: &User, attributes: &Attributes<'_>) -> Result<(), ApiError> {
    if user.groups.iter().any(|g| g == MASTERS_GROUP) {
        return Ok(());
    }
    if granted_rules(store, user, attributes.namespace)
        .into_iter()
        .any(|rule| rule_allows(rule, attributes))
    {
        return Ok(());
    }
    Err(forbidden(user, attributes))
}

/// Authorizes a request outside the resource paths (discovery, `/version`, OpenAPI). Every
/// authenticated user may read them, as the bootstrap `system:discovery` and
/// `system:public-info-viewer` roles grant; other verbs need a `nonResourceURLs` rule.
pub fn authorize_path(store: &Store, user: &User, verb: &str, path: &str) -> Result<(), ApiError> {
    if user.groups.iter().any(|g| g == MASTERS_GROUP)
        || verb == "get"
        || granted_rules(store, user, "")
            .into_iter()
            .any(|rule| non_resource_rule_allows(rule, verb, path))
    {
        return Ok(());
    }
    Err(ApiError::new(
        403,
        "Forbidden",
        format!(
            "forbidden: User \"{}\" cannot {verb} path \"{path}\"",
            user.name
        ),
    ))
}

/// The API server's message: `<resource> "<name>" is forbidden: User "<user>" cannot <verb>
/// resource "<resource[/sub]>" in API group "<group>" in the namespace "<ns>"`.
fn forbidden(user: &User, a: &Attributes<'_>) -> ApiError {
    let combined = match a.subresource {
        Some(sub) => format!("{}/{sub}", a.resource),
        None => a.resource.to_string(),
    };
    let scope = if a.namespace.is_empty() {
        "at the cluster scope".to_string()
    } else {
        format!("in the namespace \"{}\"", a.namespace)
    };
    let reason = format!(
        "User \"{}\" cannot {} resource \"{combined}\" in API group \"{}\" {scope}",
        user.name, a.verb, a.group
    );
    let qualified = if a.group.is_empty() {
        a.resource.to_string()
    } else {
        format!("{}.{}", a.resource, a.group)
    };
    let name = a.name.unwrap_or_default();
    let message = if name.is_empty() {
        format!("{qualified} is forbidden: {reason}")
    } else {
        format!("{qualified} \"{name}\" is forbidden: {reason}")
    };
    let mut err = ApiError::new(403, "Forbidden", message);
    err.details = Some(json!({"name": name, "group": a.group, "kind": a.resource}));
    err
}

/// The RBAC kinds, served whether or not RBAC is enforced.
pub fn resource_defs() -> Vec<ResourceDef> {
    [
        ("roles", "Role", true),
        ("clusterroles", "ClusterRole", false),
        ("rolebindings", "RoleBinding", true),
        ("clusterrolebindings", "ClusterRoleBinding", false),
    ]
    .into_iter()
    .map(|(plural, kind, namespaced)| {
        ResourceDef::builtin("rbac.authorization.k8s.io", "v1", plural, kind, namespaced)
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs<'a>(verb: &'a str, resource: &'a str, sub: Option<&'a str>) -> Attributes<'a> {
        Attributes {
            verb,
            group: "koodrive.io",
            resource,
            subresource: sub,
            name: Some("b"),
            namespace: "default",
        }
    }

    #[test]
    fn rules_match_verbs_groups_subresources_and_names() {
        let rule = json!({"apiGroups": ["koodrive.io"], "resources": ["userbatches/status"], "verbs": ["patch"]});
        assert!(rule_allows(
            &rule,
            &attrs("patch", "userbatches", Some("status"))
        ));
        assert!(!rule_allows(&rule, &attrs("patch", "userbatches", None)));
        assert!(!rule_allows(
            &rule,
            &attrs("update", "userbatches", Some("status"))
        ));
        let wildcard = json!({"apiGroups": ["*"], "resources": ["*/status"], "verbs": ["*"]});
        assert!(rule_allows(
            &wildcard,
            &attrs("update", "userbatches", Some("status"))
        ));
        let named = json!({"apiGroups": ["koodrive.io"], "resources": ["userbatches"], "verbs": ["get"], "resourceNames": ["a"]});
        assert!(!rule_allows(&named, &attrs("get", "userbatches", None)));
    }

    #[test]
    fn the_forbidden_message_is_the_api_servers() {
        let user = User {
            name: "system:serviceaccount:ns:sa".into(),
            groups: vec![],
        };
        let err = forbidden(&user, &attrs("get", "userbatches", Some("status")));
        assert_eq!(
            err.message,
            "userbatches.koodrive.io \"b\" is forbidden: User \"system:serviceaccount:ns:sa\" cannot get resource \"userbatches/status\" in API group \"koodrive.io\" in the namespace \"default\""
        );
    }
}
