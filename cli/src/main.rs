//! `chainkeeper`: the one-machine entry point. `serve` runs every route and the refresh schedule on embedded
//! storage (SQLite + a local key file); `token issue` prints an API token (recorded, so `token list` and
//! `token revoke` find it); `routes` prints the route table. With the `aws` feature, `--aws` runs `org export`,
//! `org import`, `migrate due-shards` and `token issue|list|revoke` on DynamoDB, KMS and Secrets Manager,
//! configured from the same environment variables as the Lambda functions (`CHAINKEEPER_TABLE`, `CHAINKEEPER_SIGNING_KEY_SECRET`, …).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};

use chainkeeper::app::App;
use chainkeeper::app::api_tokens::NewApiToken;
use chainkeeper::auth::{Claims, issue};
use chainkeeper::config::Config;
use chainkeeper::ids::OrgId;
use chainkeeper::wiring::{DataDir, embedded_system};

/// mimalloc: the warm token path allocates a little per request, and glibc's malloc showed in profiles.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "chainkeeper",
    version,
    about = "Keeps OAuth2 and other credentials of data containers alive and safe."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run every HTTP route and the refresh schedule in one process, on embedded storage.
    Serve(ServeArgs),
    /// API tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Run one refresh sweep over the chains that are due, print what it did, and exit.
    Sweep(StorageArgs),
    /// Organisations: export one to a file sealed under its own key; import such a file.
    #[command(subcommand)]
    Org(OrgCommand),
    /// The API-token signing key of a data directory.
    #[command(subcommand)]
    SigningKey(SigningKeyCommand),
    /// Single-instance identifiers (`client_id#user_id`): which organisation, database and container hold one;
    /// release one whose holder cannot be reached.
    #[command(subcommand)]
    Identifier(IdentifierCommand),
    /// Print a single-use sign-in link to the web console (valid for `--minutes`), for an organisation's people
    /// (`--org`) or the platform's operators (`--platform`), with the given scopes.
    ConsoleLink(ConsoleLinkArgs),
    /// Store migrations between versions.
    #[command(subcommand)]
    Migrate(MigrateCommand),
    /// Print the route table: method, path, Lambda function, public, resource (what the SAM template must serve).
    Routes {
        /// One JSON array of objects instead of tab-separated lines.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Clone)]
struct StorageArgs {
    /// Directory for the SQLite store and the key files; created (mode 0700) if missing.
    #[arg(long, env = "CHAINKEEPER_DATA_DIR", default_value = "chainkeeper-data")]
    data_dir: PathBuf,
    /// TOML config file: provider profiles, app registrations, engine settings (see README "Configuration").
    #[arg(long, env = "CHAINKEEPER_CONFIG")]
    config: Option<PathBuf>,
}

#[derive(Args)]
struct ServeArgs {
    /// Address and port to listen on.
    #[arg(long, env = "CHAINKEEPER_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Also serve `GET /metrics` (Prometheus text) on this address; off when not given. Keep it on loopback or
    /// an internal network: it has no authentication (the API's port never serves it).
    #[arg(long, env = "CHAINKEEPER_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    #[command(flatten)]
    storage: StorageArgs,
}

#[derive(Args)]
struct ConsoleLinkArgs {
    #[command(flatten)]
    storage: StorageArgs,
    #[command(flatten)]
    on: OnAws,
    /// A link for the platform's operators (every organisation).
    #[arg(long, conflicts_with = "org", required_unless_present = "org")]
    platform: bool,
    /// A link for this organisation's people.
    #[arg(long)]
    org: Option<String>,
    /// A scope the session grants; repeat for more (`admin`, `containers.read`, a scope group, …).
    #[arg(long = "scope", required = true, num_args = 1..)]
    scopes: Vec<String>,
    /// How long the link stays valid (1-60 minutes).
    #[arg(long, default_value_t = 10)]
    minutes: u32,
    /// The link's lifetime in seconds instead (tests).
    #[arg(long, hide = true, conflicts_with = "minutes")]
    seconds: Option<u32>,
    /// Who the link is for (shown in the audit log and the console).
    #[arg(long, default_value = "operator")]
    subject: String,
    /// The address people open the console at; default: `[server] public_url`, else http://127.0.0.1:8080.
    #[arg(long, env = "CHAINKEEPER_PUBLIC_URL")]
    base_url: Option<String>,
}

#[derive(Subcommand)]
enum MigrateCommand {
    /// Move every chain of the unsharded `due` index partition (written by versions before the shards), and of
    /// shards at or above a lowered `engine.due_shards`, into its shard; then sweeps read only the shards. Safe to
    /// run twice and while chainkeeper runs; run it once every process runs this version. Prints a JSON report;
    /// `"drained": false` (chains being refreshed right now were left) means: run it again.
    DueShards(MigrateArgs),
}

#[derive(Args)]
struct MigrateArgs {
    #[command(flatten)]
    storage: StorageArgs,
    #[command(flatten)]
    on: OnAws,
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Print one signed API token (and nothing else) on stdout: `TOKEN=$(chainkeeper token issue …)`.
    Issue(IssueArgs),
    /// List the operator's platform tokens, or an organisation's tokens (`--org`), as JSON lines.
    List(ListArgs),
    /// Revoke a token by id, and every token issued through it (`--org` for an organisation's token).
    Revoke(RevokeArgs),
}

/// `--aws`: the commands that work on a data directory can work on an AWS deployment instead.
#[derive(Args)]
struct OnAws {
    /// Run on AWS (DynamoDB, KMS, Secrets Manager) instead of a data directory, configured from the Lambda
    /// functions' environment variables (`CHAINKEEPER_TABLE`, `CHAINKEEPER_STAGE`, `CHAINKEEPER_KMS_ALIAS_PREFIX`, …;
    /// `AWS_ENDPOINT_URL` for a stand-in). Needs the `aws` feature.
    #[arg(long, conflicts_with = "data_dir")]
    aws: bool,
}

#[derive(Args)]
struct ListArgs {
    #[arg(long, env = "CHAINKEEPER_DATA_DIR", default_value = "chainkeeper-data")]
    data_dir: PathBuf,
    #[command(flatten)]
    on: OnAws,
    /// The organisation whose tokens to list; without it, the platform tokens.
    #[arg(long)]
    org: Option<String>,
}

#[derive(Args)]
struct RevokeArgs {
    #[arg(long, env = "CHAINKEEPER_DATA_DIR", default_value = "chainkeeper-data")]
    data_dir: PathBuf,
    #[command(flatten)]
    on: OnAws,
    /// The organisation of the token; without it, a platform token.
    #[arg(long)]
    org: Option<String>,
    /// The token's id (`token list`, or `GET …/api-tokens`). Ids are random base64url and may start with `-`.
    #[arg(allow_hyphen_values = true)]
    id: String,
}

#[derive(Subcommand)]
enum OrgCommand {
    /// Write everything held for one organisation to a file sealed under the organisation's key (its secrets
    /// stay sealed; infra/README.md "Organisation export and import" says what is in it).
    Export(ExportArgs),
    /// Import an export file. Refuses an organisation that exists, a file of another organisation (`--org`), and
    /// a file that does not open here (corrupted, or this directory lacks the source's master key).
    Import(ImportArgs),
}

#[derive(Args)]
struct ExportArgs {
    #[command(flatten)]
    storage: StorageArgs,
    #[command(flatten)]
    on: OnAws,
    /// The organisation to export.
    #[arg(long)]
    org: String,
    /// The file to write (mode 0600; an existing file is not overwritten).
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args)]
struct ImportArgs {
    #[command(flatten)]
    storage: StorageArgs,
    #[command(flatten)]
    on: OnAws,
    /// The export file.
    #[arg(long = "in")]
    input: PathBuf,
    /// The organisation the file must hold.
    #[arg(long)]
    org: Option<String>,
}

#[derive(Subcommand)]
enum IdentifierCommand {
    /// Print the holder of an identifier as JSON (organisation, database, alias, since).
    Show(IdentifierArgs),
    /// Release an identifier, with a reason recorded in the holder's audit log (and the asking organisation's).
    Release(ReleaseArgs),
}

#[derive(Args)]
struct IdentifierArgs {
    #[command(flatten)]
    storage: StorageArgs,
    #[command(flatten)]
    on: OnAws,
    /// The identifier, `client_id#user_id`.
    identifier: String,
}

#[derive(Args)]
struct ReleaseArgs {
    #[command(flatten)]
    id: IdentifierArgs,
    /// Why (goes into the audit logs).
    #[arg(long)]
    reason: String,
    /// The organisation that asked for the release.
    #[arg(long)]
    asked_by_org: Option<String>,
}

#[derive(Subcommand)]
enum SigningKeyCommand {
    /// New tokens are signed with a new key; tokens of the old key stay valid for `--window`, or until the
    /// next rotation, whichever comes first. Running `serve` processes on the directory pick it up within a
    /// second. Prints the key ids (never a key) as JSON.
    Rotate(RotateArgs),
}

#[derive(Args)]
struct RotateArgs {
    #[arg(long, env = "CHAINKEEPER_DATA_DIR", default_value = "chainkeeper-data")]
    data_dir: PathBuf,
    /// How long tokens signed with the old key are still accepted, e.g. `7d`, `12h`, `0s` (refused at once).
    #[arg(long, default_value = "7d")]
    window: humantime::Duration,
}

#[derive(Args)]
#[command(group(clap::ArgGroup::new("owner").required(true).args(["platform", "org"])))]
struct IssueArgs {
    /// The data directory of the `serve` that will accept the token (its signing key lives there).
    #[arg(long, env = "CHAINKEEPER_DATA_DIR", default_value = "chainkeeper-data")]
    data_dir: PathBuf,
    /// Read the signing key from standard input instead, as the text stored in Secrets Manager (AWS deployments):
    /// `aws secretsmanager get-secret-value --secret-id ARN --query SecretString --output text | chainkeeper token issue --signing-key-stdin …`
    /// (`--data-dir` is then not used.) The token is not recorded: `--aws` is the way that records it.
    #[arg(long, conflicts_with = "aws")]
    signing_key_stdin: bool,
    /// Sign with the key in Secrets Manager (`CHAINKEEPER_SIGNING_KEY_SECRET`) and record the token in DynamoDB
    /// (`CHAINKEEPER_TABLE`), so that `token list --aws` and `token revoke --aws` find it. Needs the `aws` feature.
    #[arg(long, conflicts_with = "data_dir")]
    aws: bool,
    /// A platform token: not limited to one organisation (needed to create organisations).
    #[arg(long)]
    platform: bool,
    /// Limit the token to this organisation.
    #[arg(long)]
    org: Option<String>,
    /// A scope the token grants; repeat for more (`admin`, `containers.read`, `tokens.readwrite`, …).
    #[arg(long = "scope", required = true, num_args = 1..)]
    scopes: Vec<String>,
    /// Who the token is for (shown in the audit log).
    #[arg(long, default_value = "cli")]
    subject: String,
    /// How long the token is valid, e.g. `90d`, `12h`.
    #[arg(long, default_value = "90d")]
    expires_in: humantime::Duration,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Token(TokenCommand::Issue(a)) => issue_token(a),
        Command::Token(TokenCommand::List(a)) => runtime()?.block_on(list_tokens(a)),
        Command::Token(TokenCommand::Revoke(a)) => runtime()?.block_on(revoke_token(a)),
        Command::Serve(a) => runtime()?.block_on(serve(a)),
        Command::Sweep(a) => runtime()?.block_on(sweep(a)),
        Command::Migrate(MigrateCommand::DueShards(a)) => runtime()?.block_on(migrate_due_shards(a)),
        Command::Routes { json } => print_routes(json),
        Command::ConsoleLink(a) => runtime()?.block_on(console_link(a)),
        Command::SigningKey(SigningKeyCommand::Rotate(a)) => rotate_signing_key(a),
        Command::Org(OrgCommand::Export(a)) => runtime()?.block_on(export_org(a)),
        Command::Org(OrgCommand::Import(a)) => runtime()?.block_on(import_org(a)),
        Command::Identifier(c) => runtime()?.block_on(identifier(c)),
    }
}

async fn identifier(c: IdentifierCommand) -> anyhow::Result<()> {
    let (args, release) = match c {
        IdentifierCommand::Show(a) => (a, None),
        IdentifierCommand::Release(r) => (r.id, Some((r.reason, r.asked_by_org))),
    };
    let app = app_for(&args.storage, args.on.aws).await?;
    let holder = match release {
        None => app.identifiers.find(&args.identifier).await?,
        Some((reason, asked_by)) => {
            let asked_by = asked_by.as_deref().map(OrgId::parse).transpose()?;
            app.identifiers.release("operator", &args.identifier, &reason, asked_by.as_ref()).await?
        }
    };
    let c = &holder.container;
    let view = serde_json::json!({"identifier": holder.identifier, "org": c.org, "database": c.db, "alias": c.alias,
        "since": chainkeeper::clock::rfc3339(holder.since_ms)});
    println!("{view}");
    Ok(())
}

async fn console_link(a: ConsoleLinkArgs) -> anyhow::Result<()> {
    let app = app_for(&a.storage, a.on.aws).await?;
    let org = a.org.as_deref().map(OrgId::parse).transpose()?;
    if let Some(org) = &org {
        app.orgs.get(org).await?;
    }
    let (token, expires_at_ms) = app
        .console
        .create_link(&a.subject, org.as_ref(), a.scopes, a.seconds.unwrap_or(a.minutes.saturating_mul(60)))
        .await?;
    let base = a.base_url.or_else(|| app.config.server.public_url.clone());
    let base = base.as_deref().unwrap_or("http://127.0.0.1:8080").trim_end_matches('/');
    println!("{base}/console/signin/link?t={token}");
    eprintln!("single use, valid until {}", chainkeeper::clock::rfc3339(expires_at_ms));
    Ok(())
}

async fn export_org(a: ExportArgs) -> anyhow::Result<()> {
    let app = app_for(&a.storage, a.on.aws).await?;
    let org = chainkeeper::ids::OrgId::parse(&a.org)?;
    let file = app.backup.export("cli", &org).await?;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    std::io::Write::write_all(&mut f, file.as_bytes())?;
    f.sync_all()?;
    eprintln!("exported organisation {org} to {}", a.out.display());
    Ok(())
}

async fn import_org(a: ImportArgs) -> anyhow::Result<()> {
    let app = app_for(&a.storage, a.on.aws).await?;
    let org = a.org.as_deref().map(chainkeeper::ids::OrgId::parse).transpose()?;
    let file = std::fs::read_to_string(&a.input).with_context(|| format!("reading {}", a.input.display()))?;
    let done = app.backup.import("cli", &file, org.as_ref()).await?;
    println!("{}", serde_json::to_string_pretty(&done)?);
    Ok(())
}

fn rotate_signing_key(a: RotateArgs) -> anyhow::Result<()> {
    let data = DataDir::open(&a.data_dir).with_context(|| format!("data directory {}", a.data_dir.display()))?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as i64;
    let window_ms = i64::try_from(a.window.as_millis()).unwrap_or(i64::MAX);
    let done = data.rotate_signing_key(now, window_ms)?;
    println!("{}", serde_json::to_string_pretty(&done)?);
    Ok(())
}

fn print_routes(json: bool) -> anyhow::Result<()> {
    // The route table, then the console's routes (served by the manage function, public: the console checks its
    // own sessions).
    let console = chainkeeper::api::console::GATEWAY_ROUTES.iter().map(|(m, p)| (*m, *p, "manage", true, "console"));
    let rows = chainkeeper::api::routes::ROUTES
        .iter()
        .map(|r| (r.method, r.path, r.function, r.public, r.resource))
        .chain(console);
    if json {
        let rows: Vec<_> = rows
            .map(|(method, path, function, public, resource)| {
                serde_json::json!({"method": method, "path": path, "function": function, "public": public, "resource": resource})
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        rows.for_each(|(m, p, f, public, res)| {
            println!("{m}\t{p}\t{f}\t{}\t{res}", if public { "public" } else { "auth" })
        });
    }
    Ok(())
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

fn issue_token(a: IssueArgs) -> anyhow::Result<()> {
    let org = a.org.as_deref().map(OrgId::parse).transpose()?;
    let ttl = a.expires_in.as_secs();
    if !a.signing_key_stdin {
        // Signed and recorded in the store (the data directory's, or DynamoDB with the key in Secrets Manager), so
        // that it can be listed and revoked by id.
        let rt = runtime()?;
        let app = rt.block_on(token_app(&a.data_dir, a.aws))?;
        let new = NewApiToken { subject: a.subject, scopes: a.scopes, expires_in_s: Some(ttl) };
        let issued = rt.block_on(app.api_tokens.issue_by_operator(org.as_ref(), new))?;
        println!("{}", secrecy::ExposeSecret::expose_secret(&issued.token));
        return Ok(());
    }
    let key: zeroize::Zeroizing<Vec<u8>> = {
        let mut text = zeroize::Zeroizing::new(String::new());
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
            .context("reading the signing key from standard input")?;
        // The same bytes the Secrets Manager adapter signs with: the secret's text, without the newline a shell adds.
        let key = text.trim_end_matches(['\n', '\r']);
        anyhow::ensure!(
            key.len() >= 32,
            "the signing key on standard input must be at least 32 characters (the secret's text)"
        );
        zeroize::Zeroizing::new(key.as_bytes().to_vec())
    };
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs() as i64;
    let claims = Claims {
        sub: a.subject,
        org: org.map(|o| o.to_string()),
        scopes: a.scopes,
        exp: now + ttl as i64,
        iat: now,
        jti: chainkeeper::ids::random_id(),
    };
    eprintln!(
        "note: a token signed with --signing-key-stdin is not recorded in the store (id {}); `token issue --aws` records it",
        claims.jti
    );
    println!("{}", issue(&key, &claims)?);
    Ok(())
}

async fn list_tokens(a: ListArgs) -> anyhow::Result<()> {
    let app = token_app(&a.data_dir, a.on.aws).await?;
    let tokens = match a.org.as_deref().map(OrgId::parse).transpose()? {
        Some(org) => app.api_tokens.list(&org).await?,
        None => app.api_tokens.list_platform().await?,
    };
    for t in tokens {
        println!("{}", serde_json::to_string(&t)?);
    }
    Ok(())
}

async fn revoke_token(a: RevokeArgs) -> anyhow::Result<()> {
    let app = token_app(&a.data_dir, a.on.aws).await?;
    match a.org.as_deref().map(OrgId::parse).transpose()? {
        Some(org) => app.api_tokens.revoke(&org, "operator", &a.id).await?,
        None => {
            let n = app.api_tokens.revoke_platform("operator", &a.id).await?;
            eprintln!("revoked {n} token(s)");
        }
    }
    Ok(())
}

/// The app of `token issue|list|revoke`: the built-in config on a data directory, or on AWS.
async fn token_app(data_dir: &std::path::Path, aws: bool) -> anyhow::Result<Arc<App>> {
    if aws {
        return aws_app(Config::built_in()).await;
    }
    embedded_system(&DataDir::open(data_dir)?, Config::built_in())
}

/// The app of `org export|import`: the configured data directory, or AWS.
async fn app_for(storage: &StorageArgs, aws: bool) -> anyhow::Result<Arc<App>> {
    if aws {
        return aws_app(Config::load(storage.config.as_deref())?).await;
    }
    Ok(load(storage)?.1)
}

/// The library's AWS wiring, from the environment variables the Lambda functions read.
#[cfg(feature = "aws")]
async fn aws_app(config: Config) -> anyhow::Result<Arc<App>> {
    chainkeeper::wiring::aws(chainkeeper::aws::AwsEnv::from_env()?, config).await
}

#[cfg(not(feature = "aws"))]
async fn aws_app(_: Config) -> anyhow::Result<Arc<App>> {
    anyhow::bail!("this chainkeeper was built without AWS support: cargo build -p chainkeeper-cli --features aws")
}

fn load(storage: &StorageArgs) -> anyhow::Result<(DataDir, Arc<App>)> {
    let config = Config::load(storage.config.as_deref())?;
    let data =
        DataDir::open(&storage.data_dir).with_context(|| format!("data directory {}", storage.data_dir.display()))?;
    let app = embedded_system(&data, config)?;
    Ok((data, app))
}

async fn serve(a: ServeArgs) -> anyhow::Result<()> {
    chainkeeper::telemetry::init();
    let (data, app) = load(&a.storage)?;
    let listener =
        tokio::net::TcpListener::bind(a.listen).await.with_context(|| format!("listening on {}", a.listen))?;
    let addr = listener.local_addr()?;
    let dir = std::fs::canonicalize(&data.root).unwrap_or(data.root.clone());
    println!("chainkeeper serving on http://{addr}");
    println!("  store:       {}", dir.join("chainkeeper.sqlite").display());
    println!("  master key:  {}", dir.join("master.key").display());
    println!("  signing key: {}", dir.join("signing.key").display());
    println!("  first admin API token:");
    println!("    TOKEN=$(chainkeeper token issue --data-dir {} --platform --scope admin)", dir.display());
    println!(
        "    (from a checkout: cargo run --release -p chainkeeper-cli -- token issue --data-dir {} --platform --scope admin)",
        dir.display()
    );
    println!("  web console: a single-use sign-in link to http://{addr}/console, valid for 10 minutes:");
    println!(
        "    chainkeeper console-link --data-dir {} --platform --scope admin --base-url http://{addr}",
        dir.display()
    );
    use std::io::Write;
    std::io::stdout().flush()?;
    let metrics = match a.metrics_listen {
        Some(at) => {
            let l = tokio::net::TcpListener::bind(at).await.with_context(|| format!("metrics listener on {at}"))?;
            println!("  metrics:     http://{}/metrics", l.local_addr()?);
            Some(tokio::spawn(async move { axum::serve(l, chainkeeper::telemetry::metrics_router()).await }))
        }
        None => None,
    };
    let ticker = chainkeeper::wiring::spawn_schedule(app.clone());
    let limits = app.config.limits.clone();
    let router = chainkeeper::api::router(app);
    chainkeeper::api::server::serve(listener, router, &limits, shutdown()).await?;
    ticker.abort();
    if let Some(m) = metrics {
        m.abort();
    }
    Ok(())
}

async fn shutdown() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("signal handler");
        tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

async fn sweep(a: StorageArgs) -> anyhow::Result<()> {
    chainkeeper::telemetry::init();
    let (_, app) = load(&a)?;
    let report = app.sweep.run_once(100_000).await?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

async fn migrate_due_shards(a: MigrateArgs) -> anyhow::Result<()> {
    let app = app_for(&a.storage, a.on.aws).await?;
    let report = app.sweep.due.migrate().await?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    if !report.drained {
        eprintln!("{} chains were being refreshed and stay where they are: run it again in a minute", report.busy);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::{Cli, Command, TokenCommand};

    #[test]
    fn a_token_id_that_starts_with_a_hyphen_is_an_id_not_a_flag() {
        let cli = Cli::try_parse_from(["chainkeeper", "token", "revoke", "--data-dir", "d", "-5y-6TxQ"]).unwrap();
        let Command::Token(TokenCommand::Revoke(a)) = cli.command else { panic!("not token revoke") };
        assert_eq!(a.id, "-5y-6TxQ");
    }
}
