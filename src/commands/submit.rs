//! `koodrive-operator submit`: sign and send a UserBatch manifest's users straight to
//! KooDrive, to check credentials and endpoint before deploying.

use crate::cli::CliError;
use crate::commands::shared::TlsArgs;
use crate::commands::shared::{CREDENTIALS_HELP, MissingEnv, credentials_from_env};
use crate::crd::UserBatch;
use koodrive_client::{CaBundleError, Client, MAX_USERS_PER_REQUEST, Password, RegisterUser};
use std::path::PathBuf;
use std::process::ExitCode;

/// Help text shared by `submit` and `task`.
#[derive(clap::Args, Debug)]
#[command(after_help = CREDENTIALS_HELP)]
pub struct Args {
    /// UserBatch manifest (YAML). Users must use inline `password` or none: without a
    /// cluster, `passwordSecretRef` cannot be read.
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: PathBuf,
    /// Print, per request, the canonical request, string to sign and headers; send nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// KooDrive endpoint; defaults to the manifest's `spec.endpoint`.
    #[arg(long, env = "KOODRIVE_ENDPOINT")]
    pub endpoint: Option<String>,
    /// Accept an `http://` endpoint (simulator, tests). Never in production.
    #[arg(
        long,
        env = "KOODRIVE_ALLOW_INSECURE_ENDPOINTS",
        default_value_t = false
    )]
    pub allow_insecure_endpoints: bool,
    #[command(flatten)]
    pub tls: TlsArgs,
    /// Most users per request (KooDrive's limit is 1000).
    #[arg(long, default_value_t = 1000,
          value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub batch_size: u16,
}

#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("cannot read {path}")]
    ReadManifest {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    // The YAML parser's message can quote the offending line, which may hold a password:
    // only its position is kept.
    #[error(
        "{path} is not a UserBatch manifest ({location}); check it with `koodrive-operator validate -f {path}`"
    )]
    ParseManifest { path: PathBuf, location: String },
    #[error("{path} lists no users")]
    NoUsers { path: PathBuf },
    #[error(
        "user {phone} uses passwordSecretRef, which `submit` cannot read without a cluster; use an inline `password` or none"
    )]
    PasswordSecretRef { phone: String },
    #[error("no KooDrive endpoint: pass --endpoint, set KOODRIVE_ENDPOINT or spec.endpoint")]
    NoEndpoint,
    #[error(transparent)]
    MissingEnv(#[from] MissingEnv),
    #[error(transparent)]
    Client(Box<koodrive_client::Error>),
    #[error(transparent)]
    CaBundle(#[from] CaBundleError),
    #[error(
        "request {index} of {requests} ({users} users, trace {trace_id}) failed{}",
        not_sent_note(*not_sent_users, *not_sent_requests)
    )]
    Request {
        index: usize,
        requests: usize,
        users: usize,
        trace_id: String,
        not_sent_users: usize,
        not_sent_requests: usize,
        #[source]
        source: Box<koodrive_client::Error>,
    },
}

impl SubmitError {
    pub(crate) fn client(err: koodrive_client::Error) -> Self {
        SubmitError::Client(Box::new(err))
    }
}

fn not_sent_note(users: usize, requests: usize) -> String {
    if users == 0 {
        String::new()
    } else {
        format!(" ({users} users in {requests} later requests were not sent)")
    }
}

/// Reads the manifest and turns its users into KooDrive's `RegisterUserInfo`.
fn load_manifest(path: &PathBuf) -> Result<(Vec<RegisterUser>, Option<String>), SubmitError> {
    let text = std::fs::read_to_string(path).map_err(|source| SubmitError::ReadManifest {
        path: path.clone(),
        source,
    })?;
    let batch: UserBatch =
        serde_saphyr::from_str(&text).map_err(|err| SubmitError::ParseManifest {
            path: path.clone(),
            location: crate::manifests::YamlProblem::of(&err).to_string(),
        })?;
    if batch.spec.users.is_empty() {
        return Err(SubmitError::NoUsers { path: path.clone() });
    }
    let users = batch
        .spec
        .users
        .into_iter()
        .map(|user| {
            if user.password_secret_ref.is_some() {
                return Err(SubmitError::PasswordSecretRef { phone: user.phone });
            }
            Ok(RegisterUser {
                firstname: user.firstname,
                surname: user.surname,
                phone: user.phone,
                email: user.email,
                password: user.password.map(Password::new),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((users, batch.spec.endpoint))
}

pub async fn run(args: Args) -> Result<ExitCode, CliError> {
    let (users, manifest_endpoint) = load_manifest(&args.file)?;
    let endpoint = args
        .endpoint
        .clone()
        .filter(|e| !e.is_empty())
        .or(manifest_endpoint)
        .ok_or(SubmitError::NoEndpoint)?;
    let client = Client::new(
        &endpoint,
        credentials_from_env()?,
        args.tls.client_config(args.allow_insecure_endpoints)?,
    )
    .map_err(SubmitError::client)?;
    let batch_size = usize::from(args.batch_size).min(MAX_USERS_PER_REQUEST);
    let chunks: Vec<&[RegisterUser]> = users.chunks(batch_size).collect();
    if args.dry_run {
        print_dry_run(&client, &chunks)?;
        return Ok(ExitCode::SUCCESS);
    }
    for (index, chunk) in chunks.iter().enumerate() {
        let trace_id = koodrive_client::new_trace_id();
        match client.create_batch(chunk, &trace_id).await {
            Ok(task) => println!(
                "task {} code {} users {} trace {}",
                task.task_id,
                task.code,
                chunk.len(),
                task.trace_id
            ),
            Err(source) => {
                crate::commands::shared::explain_signature_mismatch(&source);
                let later = &chunks[index + 1..];
                // Stop at the first failure: after an authentication failure, more requests
                // would only bring the AK/SK closer to Huawei's 5-minute lock.
                return Err(SubmitError::Request {
                    index: index + 1,
                    requests: chunks.len(),
                    users: chunk.len(),
                    trace_id,
                    not_sent_users: later.iter().map(|c| c.len()).sum(),
                    not_sent_requests: later.len(),
                    source: Box::new(source),
                }
                .into());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_dry_run(client: &Client, chunks: &[&[RegisterUser]]) -> Result<(), SubmitError> {
    for (index, chunk) in chunks.iter().enumerate() {
        let trace_id = koodrive_client::new_trace_id();
        let prepared = client
            .prepare_create(chunk, &trace_id, jiff::Timestamp::now())
            .map_err(SubmitError::client)?;
        println!(
            "# request {} of {}: {} users, {} body bytes (not shown: it holds passwords)",
            index + 1,
            chunks.len(),
            chunk.len(),
            prepared.body_len()
        );
        println!("{} {}", prepared.method, prepared.url);
        println!(
            "## canonical request\n{}",
            prepared.signature.canonical_request
        );
        println!("## string to sign\n{}", prepared.signature.string_to_sign);
        println!("## headers\nHost: {}", prepared.host);
        for (name, value) in &prepared.headers {
            println!("{name}: {value}");
        }
        println!();
    }
    Ok(())
}
