//! The simulator's HTTP surface: KooDrive's provisioning and user-management calls behind
//! signature verification, and the `/_sim/` control endpoints.

use super::{Fault, Inner, Outcome, State, Task};
use axum::body::{Body, Bytes};
use axum::extract::State as Extract;
use axum::routing::{get, post};
use axum::{Json, Router};
use http::{HeaderMap, Method, StatusCode, Uri};
use koodrive_client::signer::{self, parse_authorization};
use koodrive_client::{CREATE_PATH, GET_PATH, MAX_USERS_PER_REQUEST, USERS_PATH};
use rand::RngExt;
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

/// KooDrive's "parameter validation failed".
const PARAMETER_INVALID: i64 = 13000102;
/// Not documented by KooDrive: the simulator's code for an unknown task.
const TASK_NOT_FOUND: i64 = 13000103;
/// Not documented by KooDrive: the simulator's code for an `X-User-Id` that is not the app's.
const USER_MISMATCH: i64 = 13000104;
/// Not documented by KooDrive: per-user codes in task results.
const USER_EXISTS: &str = "13000301";
const USER_FAILED: &str = "13000302";
/// Not documented by KooDrive: the simulator's answer for an unknown user (HTTP 404).
const USER_NOT_FOUND: i64 = 13000404;
const MAX_PAGE_SIZE: usize = 1000;

pub(super) fn router(state: Arc<State>) -> Router {
    Router::new()
        .route("/_sim/submissions", get(submissions))
        .route("/_sim/requests", get(requests))
        .route("/_sim/faults", post(add_faults))
        .fallback(koodrive_api)
        .with_state(state)
}

async fn submissions(Extract(state): Extract<Arc<State>>) -> Json<Value> {
    Json(json!(state.lock().submissions))
}

async fn requests(Extract(state): Extract<Arc<State>>) -> Json<Value> {
    let log = state
        .log
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .clone();
    Json(json!(super::stats_by_access_key(&log)))
}

#[derive(Deserialize)]
#[serde(untagged)]
enum FaultsBody {
    One(Fault),
    Many(Vec<Fault>),
}

async fn add_faults(
    Extract(state): Extract<Arc<State>>,
    Json(body): Json<FaultsBody>,
) -> StatusCode {
    let faults = match body {
        FaultsBody::One(fault) => vec![fault],
        FaultsBody::Many(faults) => faults,
    };
    let mut inner = state.lock();
    for fault in faults {
        tracing::info!(?fault, "simulator fault queued");
        inner.faults.push_back(fault);
    }
    StatusCode::NO_CONTENT
}

/// The gateway's envelope: `{"error_code","error_msg","request_id"}`.
pub(super) fn gateway_error(status: StatusCode, code: &str, msg: &str) -> http::Response<Body> {
    let body = json!({"error_code": code, "error_msg": msg, "request_id": request_id()});
    respond(status, &body)
}

/// KooDrive's envelope: `{"code","msg"}` with a numeric code, as its examples show.
pub(super) fn koodrive_error(status: StatusCode, code: i64, msg: &str) -> http::Response<Body> {
    respond(status, &json!({"code": code, "msg": msg}))
}

pub(super) fn respond(status: StatusCode, body: &Value) -> http::Response<Body> {
    let mut response = http::Response::new(Body::from(body.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

fn request_id() -> String {
    let mut rng = rand::rng();
    (0..32)
        .map(|_| char::from(b"0123456789abcdef"[rng.random_range(0..16)]))
        .collect()
}

/// Why a request was not authenticated.
enum AuthFailure {
    /// The gateway's `APIG.0303` with this detail.
    Gateway(String),
    /// Signed correctly, but for a user ID that is not the app's (KooDrive's own envelope).
    UserMismatch(String),
}

impl AuthFailure {
    fn into_response(self) -> http::Response<Body> {
        match self {
            AuthFailure::Gateway(detail) => gateway_error(
                StatusCode::UNAUTHORIZED,
                "APIG.0303",
                &format!("Incorrect app authentication information: {detail}"),
            ),
            AuthFailure::UserMismatch(msg) => {
                koodrive_error(StatusCode::UNAUTHORIZED, USER_MISMATCH, &msg)
            }
        }
    }
}

fn auth_failure(detail: &str) -> AuthFailure {
    AuthFailure::Gateway(detail.to_string())
}

async fn koodrive_api(
    Extract(state): Extract<Arc<State>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> http::Response<Body> {
    let trace_id = header(&headers, "x-traceid").unwrap_or("-").to_string();
    let path = uri.path();
    let user_path = path
        .strip_prefix(USERS_PATH)
        .and_then(|rest| rest.strip_prefix('/'))
        .filter(|id| !id.is_empty() && !id.contains('/'));
    let known = (method == Method::POST && path == CREATE_PATH)
        || (method == Method::GET && path == GET_PATH)
        || (user_path.is_some() && (method == Method::GET || method == Method::DELETE));
    if !known {
        tracing::info!(%method, path, trace_id, "simulator: no such API");
        return gateway_error(
            StatusCode::NOT_FOUND,
            "APIG.0101",
            "The API does not exist or has not been published in the environment",
        );
    }
    let mut inner = state.lock();
    let user_id = match authenticate(&inner, &method, &uri, &headers, &body) {
        Ok(user_id) => user_id,
        Err(failure) => {
            let response = failure.into_response();
            tracing::info!(%method, path, trace_id, status = response.status().as_u16(), "simulator: authentication failed");
            return response;
        }
    };
    let response = match (user_path, &method) {
        (Some(target), &Method::DELETE) => delete_user(&mut inner, &user_id, target),
        (Some(target), _) => get_user(&inner, &user_id, target),
        (None, _) if path == CREATE_PATH => create(&mut inner, &user_id, &body),
        (None, _) => get_task(&inner, &user_id, uri.query().unwrap_or("")),
    };
    tracing::info!(%method, path, trace_id, status = response.status().as_u16(), "simulator: answered");
    response
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Recomputes the signature from what was received. `Ok` carries the caller's user ID.
fn authenticate(
    inner: &Inner,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<String, AuthFailure> {
    let authorization = header(headers, "authorization")
        .ok_or_else(|| auth_failure("authorization header not found"))?;
    let parsed = parse_authorization(authorization)
        .ok_or_else(|| auth_failure("authorization format incorrect, expected HMAC-SHA256 AppId=...,SignedHeaders=...,Signature=..."))?;
    let account = inner
        .accounts
        .get(&parsed.access_key)
        .ok_or_else(|| auth_failure(&format!("app not found, appkey {}", parsed.access_key)))?;
    for required in ["host", "x-date", "x-user-id"] {
        if !parsed.signed_headers.iter().any(|h| h == required) {
            return Err(auth_failure(&format!(
                "signed headers must include host, x-date and x-user-id, {required} is missing"
            )));
        }
    }
    let x_date =
        header(headers, "x-date").ok_or_else(|| auth_failure("x-date header not found"))?;
    let signed_at = signer::parse_x_date(x_date)
        .map_err(|_| auth_failure("x-date format incorrect, expected yyyyMMddTHHmmssZ"))?;
    let now = inner.now();
    let age = now.duration_since(signed_at);
    let too_old = age.as_secs() > i64::try_from(inner.max_clock_skew.as_secs()).unwrap_or(i64::MAX);
    if too_old {
        return Err(auth_failure(&format!(
            "signature expired, signature time:{x_date},server time:{}",
            signer::format_x_date(now)
        )));
    }
    // KooDrive names no time when the date is ahead of its clock: a client learns the
    // offset only from the `Date` header.
    if age.is_negative() {
        return Err(auth_failure(
            "the signature time cannot be later than the current time",
        ));
    }
    let authority = uri.authority().map(|a| a.as_str());
    let mut values = Vec::with_capacity(parsed.signed_headers.len());
    for name in &parsed.signed_headers {
        let value = if name == "host" {
            header(headers, "host").or(authority)
        } else {
            header(headers, name)
        };
        let value = value.ok_or_else(|| auth_failure(&format!("{name} header not found")))?;
        values.push((name.as_str(), value));
    }
    let canonical = signer::canonical_request(
        method.as_str(),
        uri.path(),
        &signer::parse_query(uri.query().unwrap_or("")),
        &values,
        &signer::sha256_hex(body),
    );
    let string_to_sign = signer::string_to_sign(&canonical);
    if !signer::verify_hmac_hex(&account.secret_key, &string_to_sign, &parsed.signature) {
        return Err(auth_failure(&format!(
            "verify signature fail, canonicalRequest:{}",
            canonical.replace('\n', "|")
        )));
    }
    let user_id = header(headers, "x-user-id").unwrap_or_default();
    if user_id != account.user_id {
        return Err(AuthFailure::UserMismatch(format!(
            "not authorized: X-User-Id {user_id} does not belong to app {}",
            account.access_key
        )));
    }
    Ok(account.user_id.clone())
}

fn invalid(detail: &str) -> http::Response<Body> {
    koodrive_error(
        StatusCode::BAD_REQUEST,
        PARAMETER_INVALID,
        &format!("parameter validation failed: {detail}"),
    )
}

/// Checks the create body as KooDrive documents it; returns the phones in order.
fn validate_create_body(body: &[u8]) -> Result<Vec<String>, String> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| format!("body is not JSON ({e})"))?;
    let object = value.as_object().ok_or("body must be a JSON object")?;
    if let Some(unknown) = object.keys().find(|k| *k != "userList") {
        return Err(format!("unknown field {unknown}"));
    }
    let users = object
        .get("userList")
        .and_then(Value::as_array)
        .ok_or("userList is required and must be an array")?;
    if users.is_empty() {
        return Err("userList must not be empty".into());
    }
    if users.len() > MAX_USERS_PER_REQUEST {
        return Err(format!(
            "userList has {} entries, at most {MAX_USERS_PER_REQUEST} are allowed",
            users.len()
        ));
    }
    let mut phones = Vec::with_capacity(users.len());
    let mut seen = HashSet::with_capacity(users.len());
    for (index, user) in users.iter().enumerate() {
        let user = user
            .as_object()
            .ok_or_else(|| format!("userList[{index}] must be an object"))?;
        for (field, value) in user {
            if !["firstname", "surname", "phone", "email", "password"].contains(&field.as_str()) {
                return Err(format!("userList[{index}].{field} is not a known field"));
            }
            if !value.is_string() {
                return Err(format!("userList[{index}].{field} must be a string"));
            }
        }
        for required in ["firstname", "phone"] {
            let present = user
                .get(required)
                .and_then(Value::as_str)
                .is_some_and(|v| !v.trim().is_empty());
            if !present {
                return Err(format!("userList[{index}].{required} is required"));
            }
        }
        let phone = user
            .get("phone")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        if !seen.insert(phone.clone()) {
            return Err(format!("userList[{index}].phone {phone} appears twice"));
        }
        phones.push(phone);
    }
    Ok(phones)
}

fn create(inner: &mut Inner, user_id: &str, body: &[u8]) -> http::Response<Body> {
    let phones = match validate_create_body(body) {
        Ok(phones) => phones,
        Err(detail) => return invalid(&detail),
    };
    let task_id = inner.next_task_id.to_string();
    inner.next_task_id += 1;
    let mut users = Vec::with_capacity(phones.len());
    for (index, phone) in phones.into_iter().enumerate() {
        *inner.submissions.entry(phone.clone()).or_default() += 1;
        let exists = inner.registered_phones.contains(&phone)
            || inner
                .users
                .get(user_id)
                .is_some_and(|users| users.contains_key(&phone));
        let outcome = if exists {
            Outcome::Skipped
        } else if inner.failing_phones.contains(&phone) {
            Outcome::Failed
        } else {
            let new_id = format!("{task_id}{index:04}");
            inner
                .users
                .entry(user_id.to_string())
                .or_default()
                .insert(phone.clone(), new_id.clone());
            Outcome::Registered { user_id: new_id }
        };
        users.push((phone, outcome));
    }
    tracing::info!(task_id, users = users.len(), "simulator: task created");
    inner.tasks.insert(
        task_id.clone(),
        Task {
            owner_user_id: user_id.to_string(),
            created: Instant::now(),
            users,
        },
    );
    respond(
        StatusCode::OK,
        &json!({"code": 0, "msg": "Success", "data": task_id}),
    )
}

fn get_task(inner: &Inner, user_id: &str, raw_query: &str) -> http::Response<Body> {
    let query = signer::parse_query(raw_query);
    let param = |name: &str| {
        query
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    let Some(task_id) = param("taskId").filter(|t| !t.is_empty()) else {
        return invalid("taskId is required");
    };
    let page_size = match param("pageSize") {
        None | Some("") => MAX_PAGE_SIZE,
        Some(text) => match text.parse::<usize>() {
            Ok(size) if (1..=MAX_PAGE_SIZE).contains(&size) => size,
            _ => return invalid("pageSize must be between 1 and 1000"),
        },
    };
    let offset = match param("cursor") {
        None | Some("") => 0,
        Some(text) => match text.parse::<usize>() {
            Ok(offset) => offset,
            Err(_) => return invalid("cursor is not valid"),
        },
    };
    let Some(task) = inner
        .tasks
        .get(task_id)
        .filter(|t| t.owner_user_id == user_id)
    else {
        return koodrive_error(
            StatusCode::BAD_REQUEST,
            TASK_NOT_FOUND,
            &format!("task {task_id} not found"),
        );
    };
    let quirks = &inner.quirks;
    let total = task.users.len();
    let ready = task.created.elapsed() >= inner.result_delay;
    let count = |wanted: fn(&Outcome) -> bool| {
        if ready {
            task.users.iter().filter(|(_, o)| wanted(o)).count()
        } else {
            0
        }
    };
    let status = match (quirks.numeric_status, ready) {
        (true, true) => json!(2),
        (true, false) => json!(1),
        (false, true) => json!("FINISHED"),
        (false, false) => json!("PROCESSING"),
    };
    // A task that never finishes reports one user short of its total, forever.
    let success = count(|o| matches!(o, Outcome::Registered { .. }));
    let success = if quirks.never_finish {
        success.min(total.saturating_sub(1))
    } else {
        success
    };
    let task_info = json!({
        "taskId": task_id,
        "status": status,
        "totalCount": total,
        "successCount": success,
        "failCount": count(|o| matches!(o, Outcome::Failed)),
        "skipCount": count(|o| matches!(o, Outcome::Skipped)),
    });
    let page_size = page_size.min(inner.page_limit.unwrap_or(MAX_PAGE_SIZE));
    let (entries, next) = if ready {
        let end = offset.saturating_add(page_size).min(total);
        let page: Vec<Value> = task
            .users
            .get(offset.min(total)..end)
            .unwrap_or_default()
            .iter()
            .enumerate()
            .map(|(i, (phone, outcome))| {
                let id = format!("{task_id}-{}", offset + i);
                match outcome {
                    Outcome::Registered { user_id } => {
                        json!({"id": id, "userId": user_id, "phone": phone})
                    }
                    Outcome::Skipped if quirks.numeric_reason => {
                        json!({"id": id, "phone": phone, "code": 13000301, "reason": 1})
                    }
                    Outcome::Failed if quirks.numeric_reason => {
                        json!({"id": id, "phone": phone, "code": 13000302, "reason": 2})
                    }
                    Outcome::Skipped => json!({"id": id, "phone": phone, "code": USER_EXISTS,
                                               "reason": "user already registered"}),
                    Outcome::Failed => json!({"id": id, "phone": phone, "code": USER_FAILED,
                                              "reason": "simulated registration failure"}),
                }
            })
            .collect();
        let last = quirks.end_cursor.clone().unwrap_or_default();
        let next = if end < total { end.to_string() } else { last };
        (page, next)
    } else {
        (Vec::new(), quirks.end_cursor.clone().unwrap_or_default())
    };
    let register_list = if quirks.null_register_list && entries.is_empty() {
        Value::Null
    } else {
        Value::Array(entries)
    };
    // The string form of `code`, so clients are exercised with both forms KooDrive uses.
    respond(
        StatusCode::OK,
        &json!({"code": "0", "msg": "Success", "data": {
            "taskInfo": task_info, "registerList": register_list, "nextPageCursor": next}}),
    )
}

/// The user `target` among those `owner`'s account created: its phone.
fn owned_user<'a>(inner: &'a Inner, owner: &str, target: &str) -> Option<&'a String> {
    inner
        .users
        .get(owner)?
        .iter()
        .find(|(_, id)| id.as_str() == target)
        .map(|(phone, _)| phone)
}

fn user_not_found(target: &str) -> http::Response<Body> {
    koodrive_error(
        StatusCode::NOT_FOUND,
        USER_NOT_FOUND,
        &format!("user {target} does not exist"),
    )
}

/// `DELETE users/{userId}`: the user and "the corresponding resources" go; the phone can be
/// registered again.
fn delete_user(inner: &mut Inner, owner: &str, target: &str) -> http::Response<Body> {
    *inner.deletions.entry(target.to_string()).or_default() += 1;
    let Some(phone) = owned_user(inner, owner, target).cloned() else {
        return user_not_found(target);
    };
    if let Some(users) = inner.users.get_mut(owner) {
        users.remove(&phone);
    }
    tracing::info!(user_id = target, "simulator: user deleted");
    respond(StatusCode::OK, &json!({"code": 0, "msg": "success"}))
}

/// `GET users/{userId}`, with the enterprise edition's documented fields (mobile masked).
fn get_user(inner: &Inner, owner: &str, target: &str) -> http::Response<Body> {
    let Some(phone) = owned_user(inner, owner, target) else {
        return user_not_found(target);
    };
    let masked: String = phone
        .chars()
        .enumerate()
        .map(|(i, c)| {
            if (3..phone.len().saturating_sub(4)).contains(&i) {
                '*'
            } else {
                c
            }
        })
        .collect();
    respond(
        StatusCode::OK,
        &json!({"code": 0, "msg": "success", "data": {
            "id": target, "userId": target, "mobile": masked, "name": "", "status": 0}}),
    )
}

#[cfg(test)]
mod tests {
    use super::validate_create_body;

    #[test]
    fn create_bodies_are_validated_like_koodrive() {
        assert_eq!(
            validate_create_body(br#"{"userList":[{"firstname":"A","phone":"1"},{"firstname":"B","phone":"2","email":"b@x"}]}"#).unwrap(),
            ["1", "2"]
        );
        let err = |body: &str| validate_create_body(body.as_bytes()).unwrap_err();
        assert!(err("[]").contains("object"));
        assert!(err(r#"{"userList":[]}"#).contains("empty"));
        assert!(
            err(r#"{"userList":[{"phone":"1"}]}"#).contains("userList[0].firstname is required")
        );
        assert!(
            err(r#"{"userList":[{"firstname":"A","phone":"1","surname":null}]}"#)
                .contains("must be a string")
        );
        assert!(
            err(r#"{"userList":[{"firstname":"A","phone":"1"},{"firstname":"B","phone":"1"}]}"#)
                .contains("twice")
        );
        assert!(
            err(r#"{"userList":[{"firstname":"A","phone":"1","age":"3"}]}"#)
                .contains("not a known field")
        );
        let many: Vec<String> = (0..1001)
            .map(|i| format!(r#"{{"firstname":"A","phone":"{i}"}}"#))
            .collect();
        assert!(err(&format!(r#"{{"userList":[{}]}}"#, many.join(","))).contains("at most 1000"));
    }
}
