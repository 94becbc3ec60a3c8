//! KooDrive's batch-provisioning API: request signing ([`signer`]) and the HTTP client.
//! Nothing in here knows about Kubernetes.
