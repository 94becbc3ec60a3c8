//! Reading KooDrive credentials and user passwords from Secrets in the UserBatch's namespace.
//!
//! Problems here are expected states (a Secret not created yet, a key misspelt), not crashes:
//! they come back as [`SecretProblem`] and become a condition naming the Secret and key —
//! never the value.

use crate::crd::{
    CredentialsRef, DEFAULT_ACCESS_KEY_KEY, DEFAULT_SECRET_KEY_KEY, DEFAULT_USER_ID_KEY,
    SecretKeyRef, User,
};
use k8s_openapi::api::core::v1::Secret;
use koodrive_client::{Credentials, Password, RegisterUser, SecretKey};
use kube::Api;
use std::collections::BTreeMap;

/// A referenced Secret or key that cannot be used. The message names what is missing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretProblem {
    #[error("Secret {namespace}/{name} not found")]
    SecretNotFound { namespace: String, name: String },
    #[error("Secret {namespace}/{name} has no key {key:?}")]
    KeyMissing {
        namespace: String,
        name: String,
        key: String,
    },
    #[error("key {key:?} of Secret {namespace}/{name} is empty or not UTF-8 text")]
    KeyUnusable {
        namespace: String,
        name: String,
        key: String,
    },
}

/// Reads referenced Secrets once per reconcile and remembers their resourceVersions, which
/// identify the inputs a permanent failure was seen with.
pub struct SecretReader {
    api: Api<Secret>,
    namespace: String,
    fetched: BTreeMap<String, Option<Secret>>,
}

impl SecretReader {
    pub fn new(client: kube::Client, namespace: &str) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_string(),
            fetched: BTreeMap::new(),
        }
    }

    async fn secret(&mut self, name: &str) -> Result<Option<&Secret>, kube::Error> {
        if !self.fetched.contains_key(name) {
            let secret = self.api.get_opt(name).await?;
            self.fetched.insert(name.to_string(), secret);
        }
        Ok(self.fetched.get(name).and_then(Option::as_ref))
    }

    async fn value(
        &mut self,
        name: &str,
        key: &str,
    ) -> Result<Result<String, SecretProblem>, kube::Error> {
        let namespace = self.namespace.clone();
        let Some(secret) = self.secret(name).await? else {
            return Ok(Err(SecretProblem::SecretNotFound {
                namespace,
                name: name.to_string(),
            }));
        };
        // `stringData` is write-only in a real API server, but manifests applied to test
        // servers may still carry it; `data` wins when both are present.
        let raw = secret
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .map(|b| b.0.clone())
            .or_else(|| {
                secret
                    .string_data
                    .as_ref()
                    .and_then(|d| d.get(key))
                    .map(|s| s.clone().into_bytes())
            });
        let Some(raw) = raw else {
            return Ok(Err(SecretProblem::KeyMissing {
                namespace,
                name: name.to_string(),
                key: key.to_string(),
            }));
        };
        match String::from_utf8(raw) {
            Ok(text) if !text.trim().is_empty() => Ok(Ok(text.trim().to_string())),
            _ => Ok(Err(SecretProblem::KeyUnusable {
                namespace,
                name: name.to_string(),
                key: key.to_string(),
            })),
        }
    }

    /// The KooDrive AK/SK and user ID from the credentials Secret.
    pub async fn credentials(
        &mut self,
        reference: &CredentialsRef,
    ) -> Result<Result<Credentials, SecretProblem>, kube::Error> {
        let key =
            |k: &Option<String>, default: &str| k.clone().unwrap_or_else(|| default.to_string());
        let access_key = match self
            .value(
                &reference.name,
                &key(&reference.access_key_key, DEFAULT_ACCESS_KEY_KEY),
            )
            .await?
        {
            Ok(v) => v,
            Err(p) => return Ok(Err(p)),
        };
        let secret_key = match self
            .value(
                &reference.name,
                &key(&reference.secret_key_key, DEFAULT_SECRET_KEY_KEY),
            )
            .await?
        {
            Ok(v) => v,
            Err(p) => return Ok(Err(p)),
        };
        let user_id = match self
            .value(
                &reference.name,
                &key(&reference.user_id_key, DEFAULT_USER_ID_KEY),
            )
            .await?
        {
            Ok(v) => v,
            Err(p) => return Ok(Err(p)),
        };
        Ok(Ok(Credentials {
            access_key,
            secret_key: SecretKey::new(secret_key),
            user_id,
        }))
    }

    /// Builds the KooDrive request entries for `users`, resolving `passwordSecretRef`s.
    pub async fn register_users(
        &mut self,
        users: &[&User],
    ) -> Result<Result<Vec<RegisterUser>, SecretProblem>, kube::Error> {
        let mut out = Vec::with_capacity(users.len());
        for user in users {
            let password = match (&user.password, &user.password_secret_ref) {
                (Some(inline), _) => Some(Password::new(inline.clone())),
                (None, Some(SecretKeyRef { name, key })) => match self.value(name, key).await? {
                    Ok(v) => Some(Password::new(v)),
                    Err(p) => return Ok(Err(p)),
                },
                (None, None) => None,
            };
            out.push(RegisterUser {
                firstname: user.firstname.clone(),
                surname: user.surname.clone(),
                phone: user.phone.clone(),
                email: user.email.clone(),
                password,
            });
        }
        Ok(Ok(out))
    }

    /// `name=resourceVersion` of every Secret read so far (absent ones as `name=-`), sorted:
    /// part of the fingerprint of a reconcile's inputs.
    pub fn versions(&self) -> String {
        self.fetched
            .iter()
            .map(|(name, s)| {
                let rv = s
                    .as_ref()
                    .and_then(|s| s.metadata.resource_version.as_deref())
                    .unwrap_or("-");
                format!("{name}={rv}")
            })
            .collect::<Vec<_>>()
            .join(",")
    }
}
