//! Cost of building and signing a full 1000-user `batchRegister/create` request, next to
//! the floor: hashing the same body bytes once with SHA-256 (the body must be hashed).

#[path = "fixture.rs"]
mod fixture;

use criterion::{Criterion, criterion_group, criterion_main};
use fixture::{CreateBody, Fixture};
use koodrive_client::{SecretKey, signer};
use std::hint::black_box;

fn bench_signing(c: &mut Criterion) {
    let Fixture {
        client,
        users,
        trace_id,
        now,
        body,
    } = fixture::fixture();

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
