//! TEMPORARY interface stub; replaced by the real client on merge.
#![allow(dead_code, unused_variables)]
use std::time::Duration;

pub const MAX_USERS_PER_REQUEST: usize = 1000;
pub struct SecretKey(String);
impl SecretKey {
    pub fn new(s: String) -> Self {
        Self(s)
    }
}
pub struct Password(String);
impl Password {
    pub fn new(s: String) -> Self {
        Self(s)
    }
}
pub struct Credentials {
    pub access_key: String,
    pub secret_key: SecretKey,
    pub user_id: String,
}
pub struct RegisterUser {
    pub firstname: String,
    pub surname: Option<String>,
    pub phone: String,
    pub email: Option<String>,
    pub password: Option<Password>,
}
pub fn new_trace_id() -> String {
    "0".repeat(58)
}
#[derive(Clone, Debug)]
pub struct ClientConfig {
    pub allow_insecure_endpoints: bool,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}
impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            allow_insecure_endpoints: false,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            max_attempts: 3,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(10),
        }
    }
}
#[derive(Clone, Debug)]
pub struct Client;
impl Client {
    pub fn new(
        endpoint: &str,
        credentials: Credentials,
        config: ClientConfig,
    ) -> Result<Client, Error> {
        todo!()
    }
    pub async fn create_batch(
        &self,
        users: &[RegisterUser],
        trace_id: &str,
    ) -> Result<CreatedTask, Error> {
        todo!()
    }
    pub async fn get_task(&self, task_id: &str) -> Result<TaskReport, Error> {
        todo!()
    }
}
pub struct CreatedTask {
    pub task_id: String,
    pub code: String,
    pub message: String,
    pub trace_id: String,
}
pub struct TaskReport {
    pub task_id: String,
    pub status: Option<String>,
    pub total: i64,
    pub succeeded: i64,
    pub failed: i64,
    pub skipped: i64,
    pub users: Vec<UserResult>,
}
impl TaskReport {
    pub fn is_finished(&self) -> bool {
        todo!()
    }
}
pub struct UserResult {
    pub phone: String,
    pub user_id: Option<String>,
    pub code: Option<String>,
    pub reason: Option<String>,
}
#[derive(Debug, thiserror::Error)]
#[error("stub")]
pub struct Error;
impl Error {
    pub fn class(&self) -> ErrorClass {
        todo!()
    }
    pub fn code(&self) -> Option<&str> {
        todo!()
    }
    pub fn message(&self) -> String {
        todo!()
    }
}
pub enum ErrorClass {
    Transient { retry_after: Option<Duration> },
    Authentication,
    Rejected,
    Invalid,
    InDoubt,
}
