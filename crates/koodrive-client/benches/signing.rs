//! Cost of building and signing a full 1000-user `batchRegister/create` request, next to
//! the floor: hashing the same body bytes once with SHA-256 (the body must be hashed).

use criterion::{Criterion, criterion_group, criterion_main};
use koodrive_client::{
    Client, ClientConfig, Credentials, Password, RegisterUser, SecretKey, signer,
};
use std::hint::black_box;

/// The create body as serde_json encodes it; the client's own encoder produces the same
/// bytes (unit-tested in `koodrive::body`), asserted again below on the bench's users.
#[derive(serde::Serialize)]
struct CreateBody<'a> {
    #[serde(rename = "userList")]
    user_list: &'a [RegisterUser],
}

fn users() -> Vec<RegisterUser> {
    (0..1000)
        .map(|i| RegisterUser {
            firstname: format!("First{i}"),
            surname: Some(format!("Surname{i}")),
            phone: format!("86138{i:08}"),
            email: Some(format!("user{i}@example.com")),
            password: Some(Password::new(format!("Initial-Passw0rd-{i}"))),
        })
        .collect()
}

fn bench_signing(c: &mut Criterion) {
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
    let users = users();
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

    let mut group = c.benchmark_group("create_1000_users");
    group.throughput(criterion::Throughput::Bytes(body.len() as u64));
    group.bench_function("sha256_body_only", |b| {
        b.iter(|| signer::sha256_hex(black_box(&body)))
    });
    group.bench_function("serialize_and_sign", |b| {
        b.iter(|| {
            client
                .prepare_create(black_box(&users), &trace_id, now)
                .expect("valid request")
        })
    });
    // The encoding the client used before `koodrive::body` (serde_json's generic
    // serializer), kept as a reference point for the encoder's cost.
    group.bench_function("serde_json_encode_only", |b| {
        b.iter(|| {
            let mut out = Vec::with_capacity(body.len());
            serde_json::to_writer(
                &mut out,
                &CreateBody {
                    user_list: black_box(&users),
                },
            )
            .expect("json");
            out
        })
    });
    // The signing half alone (canonicalise + hash + HMAC over an already-built body), so
    // the remainder of the full figure is JSON encoding.
    let secret = SecretKey::new("bench-secret-key".into());
    group.bench_function("sign_prebuilt_body", |b| {
        b.iter(|| {
            signer::sign(
                &signer::SigningInput {
                    method: "POST",
                    path: koodrive_client::CREATE_PATH,
                    query: &[],
                    host: "intl.myhuaweicloud-koodrive.com",
                    user_id: "1505084218764547200",
                    body: black_box(&body),
                },
                "a378331eca141163119eb602adb67b7802cc79cd33ba44c7d2fe61d1586c96a1",
                &secret,
                now,
            )
        })
    });
    group.finish();
}

criterion_group!(benches, bench_signing);
criterion_main!(benches);
