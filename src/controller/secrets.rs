//! Reading KooDrive credentials and user passwords from Secrets in the UserBatch's namespace.
//!
//! Need to know: the operator watches Secrets *metadata only* (names and versions, to notice
//! changes), never their data, and reads a Secret's data only when a UserBatch references
//! it. What it read is kept in memory by `resourceVersion` ([`SecretCache`]), so a thousand
//! UserBatches sharing one credentials Secret cost one read, not a thousand.
//!
//! Problems here are expected states (a Secret not created yet, a key misspelt, RBAC that
//! does not allow the read), not crashes: they come back as [`SecretProblem`] and become a
//! condition naming the Secret and key — never the value.

use crate::crd::{
    CredentialsRef, DEFAULT_ACCESS_KEY_KEY, DEFAULT_SECRET_KEY_KEY, DEFAULT_USER_ID_KEY,
    SecretKeyRef, User,
};
use k8s_openapi::api::core::v1::Secret;
use koodrive_client::{Credentials, Password, RegisterUser, SecretKey};
use kube::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

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
    #[error(
        "the operator may not read Secret {namespace}/{name}: {message}; grant its service account `get` on secrets (the Helm chart's RBAC does)"
    )]
    Forbidden {
        namespace: String,
        name: String,
        message: String,
    },
    /// A password that is one of the credentials: the operator would send a secret key (or
    /// access key, or user ID) to KooDrive as a user's password.
    #[error(
        "user {phone}'s password comes from {source_ref}, which holds the KooDrive credentials; a credential is never sent as a password"
    )]
    CredentialAsPassword { phone: String, source_ref: String },
}

/// Secrets read so far, by namespace/name, valid while their `resourceVersion` is the one
/// the metadata watch reports.
#[derive(Default)]
pub struct SecretCache {
    entries: Mutex<HashMap<(String, String), Arc<Secret>>>,
}

impl SecretCache {
    fn get(&self, namespace: &str, name: &str, version: Option<&str>) -> Option<Arc<Secret>> {
        let version = version?;
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .get(&(namespace.to_string(), name.to_string()))
            .filter(|s| s.metadata.resource_version.as_deref() == Some(version))
            .cloned()
    }

    fn put(&self, namespace: &str, name: &str, secret: Option<Arc<Secret>>) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let key = (namespace.to_string(), name.to_string());
        match secret {
            Some(secret) => entries.insert(key, secret),
            None => entries.remove(&key),
        };
    }

    /// Drops a Secret that was deleted or is no longer referenced.
    pub fn evict(&self, namespace: &str, name: &str) {
        self.put(namespace, name, None);
    }
}

/// Reads referenced Secrets once per reconcile and remembers their resourceVersions, which
/// identify the inputs a permanent failure was seen with.
pub struct SecretReader<'a> {
    api: Api<Secret>,
    namespace: String,
    cache: &'a SecretCache,
    versions: &'a Store<PartialObjectMeta<Secret>>,
    fetched: BTreeMap<String, Option<Arc<Secret>>>,
}

impl<'a> SecretReader<'a> {
    pub fn new(
        client: kube::Client,
        namespace: &str,
        cache: &'a SecretCache,
        versions: &'a Store<PartialObjectMeta<Secret>>,
    ) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_string(),
            cache,
            versions,
            fetched: BTreeMap::new(),
        }
    }

    async fn secret(&mut self, name: &str) -> Result<Option<Arc<Secret>>, SecretRead> {
        if let Some(secret) = self.fetched.get(name) {
            return Ok(secret.clone());
        }
        let watched = self
            .versions
            .get(&ObjectRef::new(name).within(&self.namespace))
            .and_then(|meta| meta.metadata.resource_version.clone());
        let secret = match self.cache.get(&self.namespace, name, watched.as_deref()) {
            Some(secret) => Some(secret),
            None => {
                let secret = match self.api.get_opt(name).await {
                    Ok(secret) => secret.map(Arc::new),
                    Err(kube::Error::Api(status)) if status.code == 403 => {
                        return Err(SecretRead::Problem(SecretProblem::Forbidden {
                            namespace: self.namespace.clone(),
                            name: name.to_string(),
                            message: status.message,
                        }));
                    }
                    Err(source) => return Err(SecretRead::Api(source)),
                };
                self.cache.put(&self.namespace, name, secret.clone());
                secret
            }
        };
        self.fetched.insert(name.to_string(), secret.clone());
        Ok(secret)
    }

    /// Reads a Secret (or learns it is absent or unreadable) so its version counts in
    /// [`SecretReader::versions`]; only API failures are errors.
    pub async fn touch(&mut self, name: &str) -> Result<(), kube::Error> {
        match self.secret(name).await {
            Ok(_) | Err(SecretRead::Problem(_)) => Ok(()),
            Err(SecretRead::Api(source)) => Err(source),
        }
    }

    async fn value(&mut self, name: &str, key: &str) -> Result<String, SecretRead> {
        let namespace = self.namespace.clone();
        let Some(secret) = self.secret(name).await? else {
            return Err(SecretRead::Problem(SecretProblem::SecretNotFound {
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
            return Err(SecretRead::Problem(SecretProblem::KeyMissing {
                namespace,
                name: name.to_string(),
                key: key.to_string(),
            }));
        };
        match String::from_utf8(raw) {
            Ok(text) if !text.trim().is_empty() => Ok(text.trim().to_string()),
            _ => Err(SecretRead::Problem(SecretProblem::KeyUnusable {
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
    ) -> Result<Credentials, SecretRead> {
        let [access_key, secret_key, user_id] = credential_keys(reference);
        Ok(Credentials {
            access_key: self.value(&reference.name, &access_key).await?,
            secret_key: SecretKey::new(self.value(&reference.name, &secret_key).await?),
            user_id: self.value(&reference.name, &user_id).await?,
        })
    }

    /// Builds the KooDrive request entries for `users`, resolving `passwordSecretRef`s. A
    /// password read from where the credentials live — or equal to the secret key — is
    /// refused: a tenant must not be able to make the operator send the SK to KooDrive (or
    /// anywhere) as somebody's password.
    /// `credentials` carries the credentials Secret's reference when it is in this reader's
    /// namespace (where a `passwordSecretRef` could name it).
    pub async fn register_users(
        &mut self,
        users: &[&User],
        credentials: Option<(Option<&CredentialsRef>, &Credentials)>,
    ) -> Result<Vec<RegisterUser>, SecretRead> {
        let mut out = Vec::with_capacity(users.len());
        for user in users {
            let password = match (&user.password, &user.password_secret_ref) {
                (Some(inline), _) => Some(inline.clone()),
                (None, Some(SecretKeyRef { name, key })) => {
                    if let Some((Some(reference), _)) = credentials
                        && reference.name == *name
                        && credential_keys(reference).contains(key)
                    {
                        return Err(SecretRead::Problem(SecretProblem::CredentialAsPassword {
                            phone: user.phone.clone(),
                            source_ref: format!("key {key:?} of Secret {}/{name}", self.namespace),
                        }));
                    }
                    Some(self.value(name, key).await?)
                }
                (None, None) => None,
            };
            if let (Some(password), Some((reference, credentials))) = (&password, credentials)
                && credentials.secret_key.matches(password)
            {
                let holder = match reference {
                    Some(reference) => format!("Secret {}/{}", self.namespace, reference.name),
                    None => "the account's credentials Secret".to_string(),
                };
                return Err(SecretRead::Problem(SecretProblem::CredentialAsPassword {
                    phone: user.phone.clone(),
                    source_ref: format!("a value equal to the secret key of {holder}"),
                }));
            }
            out.push(RegisterUser {
                firstname: user.firstname.clone(),
                surname: user.surname.clone(),
                phone: user.phone.clone(),
                email: user.email.clone(),
                password: password.map(Password::new),
            });
        }
        Ok(out)
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

    /// The `resourceVersion` of a Secret read in this pass.
    pub fn version_of(&self, name: &str) -> String {
        self.fetched
            .get(name)
            .and_then(|s| s.as_ref())
            .and_then(|s| s.metadata.resource_version.clone())
            .unwrap_or_else(|| "-".into())
    }
}

/// The keys holding the access key, secret key and user ID.
fn credential_keys(reference: &CredentialsRef) -> [String; 3] {
    let key = |k: &Option<String>, default: &str| k.clone().unwrap_or_else(|| default.to_string());
    [
        key(&reference.access_key_key, DEFAULT_ACCESS_KEY_KEY),
        key(&reference.secret_key_key, DEFAULT_SECRET_KEY_KEY),
        key(&reference.user_id_key, DEFAULT_USER_ID_KEY),
    ]
}

/// Why a Secret could not be used: a problem to report, or an API failure to retry.
#[derive(Debug, thiserror::Error)]
pub enum SecretRead {
    #[error(transparent)]
    Problem(SecretProblem),
    #[error("cannot read a Secret")]
    Api(#[source] kube::Error),
}
