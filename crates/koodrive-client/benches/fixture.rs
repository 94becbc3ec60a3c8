//! What both signing benches measure: a client, 1000 users with every field set (135 KB of
//! JSON), and the floor's body — serde_json's encoding of those users, checked to be the
//! very bytes the client signs.

use koodrive_client::{
    Client, ClientConfig, Credentials, Password, RegisterUser, SecretKey, signer,
};

/// The create body as serde_json encodes it (a `json!` value would sort the keys); the
/// client's own encoder produces the same bytes (unit-tested in `body.rs`).
#[derive(serde::Serialize)]
pub struct CreateBody<'a> {
    #[serde(rename = "userList")]
    pub user_list: &'a [RegisterUser],
}

pub struct Fixture {
    pub client: Client,
    pub users: Vec<RegisterUser>,
    pub trace_id: String,
    pub now: jiff::Timestamp,
    /// The body the floor hashes.
    pub body: Vec<u8>,
}

pub fn fixture() -> Fixture {
    let client = Client::new(
        "https://intl.myhuaweicloud-koodrive.com",
        Credentials {
            access_key: "a378331eca141163119eb602adb67b7802cc79cd33ba44c7d2fe61d1586c96a1".into(),
            secret_key: SecretKey::new("bench-secret-key".into()),
            user_id: "1505084218764547200".into(),
        },
        ClientConfig::default(),
    )
    .expect("valid endpoint");
    let users: Vec<RegisterUser> = (0..1000)
        .map(|i| RegisterUser {
            firstname: format!("First{i}"),
            surname: Some(format!("Surname{i}")),
            phone: format!("86138{i:08}"),
            email: Some(format!("user{i}@example.com")),
            password: Some(Password::new(format!("Initial-Passw0rd-{i}"))),
        })
        .collect();
    let trace_id = koodrive_client::new_trace_id();
    let now = jiff::Timestamp::now();
    let body = serde_json::to_vec(&CreateBody { user_list: &users }).expect("json");
    // The floor must hash the very bytes the client signs.
    let prepared = client
        .prepare_create(&users, &trace_id, now)
        .expect("valid request");
    assert_eq!(prepared.body_len(), body.len());
    assert!(
        prepared
            .signature
            .canonical_request
            .ends_with(&signer::sha256_hex(&body)),
        "the client signs other bytes than serde_json's encoding"
    );
    Fixture {
        client,
        users,
        trace_id,
        now,
        body,
    }
}
