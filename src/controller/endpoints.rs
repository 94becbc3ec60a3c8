//! Which KooDrive endpoints the operator talks to.
//!
//! Whoever may create a UserBatch chooses `spec.endpoint`; the operator then signs requests
//! for it with the credentials it reads (the AK and user ID travel in headers) and sends
//! users' passwords in the body. So it sends requests only to endpoints its operator was
//! told to trust: `--default-endpoint` and `--allowed-endpoints`. Any other endpoint stops
//! the UserBatch before a Secret is read.

use koodrive_client::normalize_endpoint;
use std::collections::BTreeSet;

#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error(
        "{endpoint:?} is not a usable KooDrive endpoint URL (e.g. https://intl.myhuaweicloud-koodrive.com)"
    )]
    Unusable { endpoint: String },
}

/// The endpoints requests may go to, in canonical form.
#[derive(Debug, Clone)]
pub struct Trusted {
    default: String,
    allowed: BTreeSet<String>,
}

impl Trusted {
    pub fn new(default: &str, allowed: &[String]) -> Result<Trusted, EndpointError> {
        let canonical = |endpoint: &str| {
            normalize_endpoint(endpoint).ok_or_else(|| EndpointError::Unusable {
                endpoint: endpoint.to_string(),
            })
        };
        let default = canonical(default)?;
        let mut set = BTreeSet::from([default.clone()]);
        for endpoint in allowed.iter().filter(|e| !e.trim().is_empty()) {
            set.insert(canonical(endpoint.trim())?);
        }
        Ok(Trusted {
            default,
            allowed: set,
        })
    }

    /// The endpoint a UserBatch's requests go to, if the operator may send them there.
    pub fn resolve(&self, requested: Option<&str>) -> Result<String, String> {
        let Some(requested) = requested else {
            return Ok(self.default.clone());
        };
        match normalize_endpoint(requested) {
            Some(canonical) if self.allowed.contains(&canonical) => Ok(canonical),
            _ => Err(format!(
                "spec.endpoint {requested:?} is not an endpoint this operator trusts ({}); nothing is read or sent for this UserBatch. Ask the operator's administrators to add it to --allowed-endpoints (Helm value koodrive.allowedEndpoints), or remove spec.endpoint to use the default",
                self.allowed.iter().cloned().collect::<Vec<_>>().join(", ")
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_default_and_the_allowed_endpoints_are_trusted() {
        let trusted = Trusted::new(
            "https://intl.myhuaweicloud-koodrive.com",
            &["https://cn.myhuaweicloud-koodrive.com/".into()],
        )
        .unwrap();
        assert_eq!(
            trusted.resolve(None).unwrap(),
            "https://intl.myhuaweicloud-koodrive.com"
        );
        // Spelled differently, same endpoint.
        assert!(
            trusted
                .resolve(Some("https://INTL.myhuaweicloud-koodrive.com:443/"))
                .is_ok()
        );
        assert!(
            trusted
                .resolve(Some("https://cn.myhuaweicloud-koodrive.com"))
                .is_ok()
        );
        let refused = trusted
            .resolve(Some("https://capture.example.com"))
            .unwrap_err();
        assert!(refused.contains("capture.example.com"), "{refused}");
        assert!(
            trusted
                .resolve(Some("https://intl.myhuaweicloud-koodrive.com.evil.io"))
                .is_err()
        );
        assert!(trusted.resolve(Some("not a url")).is_err());
        assert!(Trusted::new("nope", &[]).is_err());
    }
}
