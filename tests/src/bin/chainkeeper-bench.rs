//! chainkeeper's benchmarks. They print figures; nothing here passes or fails on speed.
//!
//!     cargo build --release -p chainkeeper-cli -p chainkeeper-e2e
//!     target/release/chainkeeper-bench [amplification|warm|odata|waiters|sweep|faults|all]
//!     target/release/chainkeeper-bench faults [chains] [rounds] [run]   (default 1000 100: 100,000 refreshes;
//!                                          run: one of grace-on, grace-on-4 (four worker processes), grace-off,
//!                                          needs-repair, needs-repair-4 (with auto-recovery); default all)
//!     target/release/chainkeeper-bench lambda-init [target/lambda]
//!     target/release/chainkeeper-bench scale [chains] [active share] [shards]   (default 1000000 0.2 64: the
//!                                          slice on the real engine, then the model of a day; see tests/src/scale.rs)
//!
//! `warm` and `odata` need `wrk` (Debian package) and the release `chainkeeper` binary; for their ratio, the limit
//! server (`cargo build --release --manifest-path ../shared/bench/limit-server/Cargo.toml`, or its `tokbench`
//! binary named by `CHAINKEEPER_LIMIT_SERVER`). `lambda-init` times the init phase of
//! the Lambda artifacts that `infra/build.sh` (`sam build`) builds (each `<dir>/<function>/bootstrap` or `bootstrap.zip`).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use chainkeeper_e2e::exact::{
    CLIENT_ID, CLIENT_SECRET, ExactHarness, four_processes, sim_app_toml, sim_profile_toml, sim_user,
};
use chainkeeper_e2e::{Api, Serve, container_path, free_port, issue_token};
use exact_sim::{ExactSim, SimApp, SimClock, SimConfig};
use serde_json::json;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let what = std::env::args().nth(1).unwrap_or_else(|| "all".into());
    if what == "faults-worker" {
        // Hidden: one worker process of the multi-process fault campaign (driven over stdin/stdout).
        let dir = std::env::args().nth(2).ok_or_else(|| anyhow::anyhow!("faults-worker DIR"))?;
        return chainkeeper_e2e::campaign::worker(std::path::Path::new(&dir)).await;
    }
    let build = if what == "lambda-init" {
        "figures are the artifacts' own; this harness's build does not matter"
    } else if cfg!(debug_assertions) {
        "DEBUG build: figures are not representative"
    } else {
        "release build"
    };
    println!("chainkeeper benchmarks on {} cores ({build})", std::thread::available_parallelism()?.get());
    if what == "amplification" || what == "all" {
        amplification_one_process().await?;
        amplification_four_processes().await?;
    }
    if what == "waiters" || what == "all" {
        waiters().await?;
    }
    if what == "sweep" || what == "all" {
        sweep().await?;
    }
    if what == "warm" || what == "all" {
        warm().await?;
    }
    if what == "odata" || what == "all" {
        odata().await?;
    }
    if what == "faults" || what == "all" {
        let arg = |n: usize, default: usize| std::env::args().nth(n).and_then(|a| a.parse().ok()).unwrap_or(default);
        let only = std::env::args().nth(4).unwrap_or_default();
        faults(arg(2, 1000), arg(3, 100), &only).await?;
    }
    if what == "scale" {
        let chains = std::env::args().nth(2).and_then(|a| a.parse().ok()).unwrap_or(1_000_000);
        let share = std::env::args().nth(3).and_then(|a| a.parse().ok()).unwrap_or(0.2);
        let shards = std::env::args().nth(4).and_then(|a| a.parse().ok());
        scale(chains, share, shards).await?;
    }
    if what == "lambda-init" {
        let dir = std::env::args().nth(2).unwrap_or_else(|| "target/lambda".into());
        lambda_init(std::path::Path::new(&dir)).await?;
    }
    Ok(())
}

/// Cold start of each Lambda artifact: from spawning `bootstrap` to its first request for an event at the Runtime
/// API (what Lambda reports as Init Duration), with the environment the SAM template gives it (DynamoDB, KMS and
/// Secrets Manager adapters built; nothing is called before the first event). Median and max of 7 starts.
async fn lambda_init(dir: &std::path::Path) -> anyhow::Result<()> {
    use chainkeeper_e2e::lambda_runtime::LocalLambda;
    println!(
        "\n## Lambda cold start: init duration (spawn -> first `invocation/next`), 7 starts each; target <= 100 ms"
    );
    let tmp = tempfile::tempdir()?;
    let env = [
        ("CHAINKEEPER_TABLE", "chainkeeper-bench".to_string()),
        ("CHAINKEEPER_SIGNING_KEY_SECRET", "chainkeeper/bench/api-token-signing-key".to_string()),
        ("CHAINKEEPER_KMS_ALIAS_PREFIX", "alias/chainkeeper/bench/".to_string()),
        ("CHAINKEEPER_STAGE", "bench".to_string()),
        ("AWS_ACCESS_KEY_ID", "bench".to_string()),
        ("AWS_SECRET_ACCESS_KEY", "bench".to_string()),
        ("AWS_LAMBDA_LOG_FORMAT", "JSON".to_string()),
    ];
    for name in ["callback", "query", "manage", "refresh", "recover"] {
        let zip = dir.join(name).join("bootstrap.zip");
        let size = std::fs::metadata(&zip).map(|m| m.len()).ok();
        let binary = if dir.join(name).join("bootstrap").exists() {
            dir.join(name).join("bootstrap")
        } else if size.is_some() {
            // cargo lambda's zip holds one file, `bootstrap`: unpack it to run it.
            let out = tmp.path().join(name);
            std::fs::create_dir_all(&out)?;
            let status = std::process::Command::new("python3")
                .args(["-c", "import sys,zipfile,os; z=zipfile.ZipFile(sys.argv[1]); z.extract('bootstrap', sys.argv[2]); os.chmod(os.path.join(sys.argv[2],'bootstrap'), 0o755)"])
                .arg(&zip)
                .arg(&out)
                .status()?;
            anyhow::ensure!(status.success(), "cannot unpack {}", zip.display());
            out.join("bootstrap")
        } else {
            println!("{name:>8}: no artifact under {} (run infra/build.sh)", dir.join(name).display());
            continue;
        };
        let mut times = Vec::new();
        for _ in 0..7 {
            let f = LocalLambda::start(&binary, &env).await?;
            let t0 = Instant::now();
            let init = loop {
                if let Some(d) = f.init_duration() {
                    break d;
                }
                anyhow::ensure!(t0.elapsed() < Duration::from_secs(10), "{name} did not ask for an event within 10 s");
                tokio::time::sleep(Duration::from_millis(1)).await;
            };
            times.push(init);
        }
        times.sort();
        let zip_text = size.map_or_else(|| "no zip".to_string(), |b| format!("zip {:.2} MB", b as f64 / 1_000_000.0));
        println!(
            "{name:>8}: init median {:.1} ms, max {:.1} ms; {zip_text}",
            times[times.len() / 2].as_secs_f64() * 1000.0,
            times[times.len() - 1].as_secs_f64() * 1000.0
        );
    }
    Ok(())
}

/// Issue 13's fault campaign: `chains` chains refreshed `rounds` times on the simulator's clock, with 5 % transient
/// faults, 2 % lost answers and crash points, grace on and off (then with auto-recovery), in this process and in
/// four worker processes over one SQLite file.
async fn faults(chains: usize, rounds: usize, only: &str) -> anyhow::Result<()> {
    use chainkeeper_e2e::campaign::{Campaign, run};
    println!("\n## provider fault campaign: {chains} chains x {rounds} rounds, 5 % transient faults, 2 % lost answers");
    let base = Campaign::issue_13(chains, rounds, 64);
    let runs = [
        ("grace-on", "grace on, 1 process, lost_response = retry_previous (Exact's profile)", base.clone()),
        (
            "grace-on-4",
            "grace on, 4 processes on one SQLite file (each chain asked by all four every round)",
            Campaign { processes: 4, rounds: rounds.div_ceil(4), ..base.clone() },
        ),
        (
            "grace-off",
            "grace off, 1 process, lost_response = retry_previous, auto-recovery",
            Campaign { grace: false, recovery: true, ..base.clone() },
        ),
        (
            "needs-repair",
            "grace off, 1 process, lost_response = needs_repair, auto-recovery",
            Campaign { grace: false, recovery: true, lost_response: "needs_repair", ..base.clone() },
        ),
        (
            "needs-repair-4",
            "grace off, 4 processes on one SQLite file, lost_response = needs_repair, auto-recovery",
            Campaign {
                grace: false,
                recovery: true,
                lost_response: "needs_repair",
                processes: 4,
                rounds: rounds.div_ceil(4),
                ..base.clone()
            },
        ),
    ];
    for (name, title, cfg) in runs {
        if only.is_empty() || only == name {
            run(&cfg).await?.print(&format!("\n### {title}: {} chains x {} rounds", cfg.chains, cfg.rounds));
        }
    }
    Ok(())
}

/// Refresh amplification in one process: provider token requests ÷ refreshes needed, per number of callers.
async fn amplification_one_process() -> anyhow::Result<()> {
    println!("\n## refresh amplification, 1 process (token requests per needed refresh; ideal 1.00)");
    let h = ExactHarness::start(|_| {}).await;
    for callers in [1usize, 50, 200, 1000] {
        let rounds = 5;
        let before = h.sim.stats().refresh_requests;
        let start = Instant::now();
        for _ in 0..rounds {
            h.advance(Duration::from_secs(601));
            let tasks: Vec<_> = (0..callers)
                .map(|_| {
                    let engine = h.services.engine.clone();
                    let c = h.container.clone();
                    tokio::spawn(async move { engine.access_token(&c).await.is_ok() })
                })
                .collect();
            for t in tasks {
                assert!(t.await?, "a caller got no token");
            }
        }
        let requests = h.sim.stats().refresh_requests - before;
        println!(
            "callers {callers:>5}: {:.2} ({requests} requests for {rounds} refreshes, {:.1} ms per round)",
            requests as f64 / rounds as f64,
            start.elapsed().as_secs_f64() * 1000.0 / rounds as f64
        );
    }
    Ok(())
}

/// The same over four `serve` processes on one SQLite file, callers spread evenly.
async fn amplification_four_processes() -> anyhow::Result<()> {
    println!("\n## refresh amplification, 4 processes on one SQLite file (Exact's times scaled down 200x)");
    let (sim, apis, _serves, _dir) = four_processes(Duration::ZERO).await?;
    let path = format!("{}/token", container_path("acme", "finance", "eol"));
    for callers in [1usize, 50, 200, 1000] {
        let rounds = 3;
        let before = sim.stats().refresh_requests;
        for _ in 0..rounds {
            tokio::time::sleep(Duration::from_millis(3_100)).await;
            let calls = (0..callers).map(|i| {
                let api = apis[i % apis.len()].clone();
                let path = path.clone();
                async move { api.post(&path, json!({})).await.status }
            });
            let statuses = futures::future::join_all(calls).await;
            assert!(statuses.iter().all(|s| *s == 200), "every caller got a token");
        }
        let requests = sim.stats().refresh_requests - before;
        println!(
            "callers {callers:>5}: {:.2} ({requests} requests for {rounds} refreshes)",
            requests as f64 / rounds as f64
        );
    }
    Ok(())
}

/// How long callers that lose the race wait, compared with the provider's own token latency.
async fn waiters() -> anyhow::Result<()> {
    println!("\n## waiters during a refresh (provider token latency 100 ms, 50 callers on a cold chain, 10 rounds)");
    let h = ExactHarness::start(|c| c.token_latency = Duration::from_millis(100)).await;
    let mut extra = Vec::new();
    for _ in 0..10 {
        h.advance(Duration::from_secs(601));
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let engine = h.services.engine.clone();
                let c = h.container.clone();
                tokio::spawn(async move {
                    let t = Instant::now();
                    engine.access_token(&c).await.map(|_| t.elapsed())
                })
            })
            .collect();
        let mut lat: Vec<Duration> = Vec::new();
        for t in tasks {
            lat.push(t.await??);
        }
        lat.sort();
        // The refresher's own time includes the activation call; waiters only wait for the written token.
        for l in &lat[..lat.len() - 1] {
            extra.push(l.as_secs_f64() * 1000.0 - 100.0);
        }
    }
    extra.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let pct = |p: f64| extra[((extra.len() - 1) as f64 * p) as usize];
    println!(
        "waiter latency beyond the provider's 100 ms: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (target: max <= 20 ms)",
        pct(0.5),
        pct(0.99),
        extra.last().unwrap()
    );
    Ok(())
}

/// The keep-alive sweep over 10,000 chains with 100 ms token latency.
async fn sweep() -> anyhow::Result<()> {
    println!("\n## sweep of 10,000 chains (provider token latency 100 ms)");
    let h = ExactHarness::start_with(|c| c.token_latency = Duration::from_millis(100), "").await;
    let n = 10_000;
    let setup = Instant::now();
    for i in 0..n {
        h.services.vault.keys().create_org_key("bench").await?;
        h.install_minted_chain("bench", i, &format!("bench-user-{i}")).await?;
    }
    println!("set up {n} chains in {:.1} s", setup.elapsed().as_secs_f64());
    h.advance(Duration::from_secs(29 * 86_400 + 43_200));
    let writes_before = h.services.engine.stats.store_writes.load(Ordering::SeqCst);
    let requests_before = h.sim.stats().refresh_requests;
    let start = Instant::now();
    let mut total = chainkeeper::app::sweep::SweepReport::default();
    loop {
        let r = h.services.sweep.run_once(20_000).await?;
        total.refreshed += r.refreshed;
        total.transient_failures += r.transient_failures;
        total.broken += r.broken;
        if r.refreshed == 0 {
            break;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let writes = h.services.engine.stats.store_writes.load(Ordering::SeqCst) - writes_before;
    let requests = h.sim.stats().refresh_requests - requests_before;
    println!(
        "refreshed {} chains in {secs:.1} s ({:.0}/s) with concurrency {}: {requests} token requests, {:.2} store writes per refresh, {} broken, {} transient failures (target: <= 30 s, <= 2 writes)",
        total.refreshed,
        total.refreshed as f64 / secs,
        h.services.config.engine.sweep_concurrency,
        writes as f64 / total.refreshed.max(1) as f64,
        total.broken,
        total.transient_failures
    );
    Ok(())
}

struct Wrk {
    rps: f64,
    p50: String,
    p99: String,
    non2xx: String,
}

/// One wrk run: 2 threads, 64 connections, 8 s.
async fn wrk(script: &std::path::Path, url: &str) -> anyhow::Result<Wrk> {
    let out = tokio::process::Command::new("wrk")
        .args(["-t2", "-c64", "-d8s", "--latency", "-s"])
        .arg(script)
        .arg(url)
        .output()
        .await?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = |prefix: &str| {
        text.lines().map(str::trim).find(|l| l.starts_with(prefix)).map(|l| l[prefix.len()..].trim().to_string())
    };
    Ok(Wrk {
        rps: line("Requests/sec:").and_then(|v| v.parse().ok()).unwrap_or(0.0),
        p50: line("50%").unwrap_or_else(|| "?".into()),
        p99: line("99%").unwrap_or_else(|| "?".into()),
        non2xx: text.lines().find(|l| l.contains("Non-2xx")).unwrap_or("").trim().to_string(),
    })
}

/// The reference server of `../shared/bench/limit-server`, when it is built.
struct LimitServer {
    child: tokio::process::Child,
    url: String,
    script: std::path::PathBuf,
}

impl LimitServer {
    async fn start(dir: &std::path::Path) -> Option<Self> {
        let root = std::path::Path::new("../shared/bench/limit-server");
        let bin = std::env::var_os("CHAINKEEPER_LIMIT_SERVER")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| root.join("target/release/tokbench"));
        if !bin.exists() {
            return None;
        }
        let port = free_port();
        let child = tokio::process::Command::new(&bin)
            .args(["serve", "tl"])
            .env("DB", dir.join("limit.db"))
            .env("PORT", port.to_string())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .ok()?;
        // It fills its table before it listens.
        for _ in 0..600 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                let script = root.join("post_random.lua");
                return Some(Self { child, url: format!("http://127.0.0.1:{port}/"), script });
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        println!("the limit server at {} did not start listening", bin.display());
        None
    }
}

impl Drop for LimitServer {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// `serve` as deployed (release binary, system clock) beside the simulator, with one container `acme/finance/eol`
/// signed in, and an organisation token (admin) to load it with.
struct Deployed {
    serve: Serve,
    sim: ExactSim,
    token: String,
    dir: tempfile::TempDir,
}

/// [`Deployed`]; `extra_profile`: more keys for the `exact-online-nl` profile.
async fn deployed(extra_profile: &str) -> anyhow::Result<Deployed> {
    let port = free_port();
    let redirect = format!("http://127.0.0.1:{port}/v1/callback");
    let user = sim_user(1);
    let sim = ExactSim::start(
        SimConfig {
            apps: vec![SimApp {
                client_id: CLIENT_ID.into(),
                client_secret: CLIENT_SECRET.into(),
                redirect_uris: vec![redirect.clone()],
            }],
            users: vec![user.clone()],
            ..SimConfig::default()
        },
        SimClock::system(),
    )
    .await?;
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("chainkeeper.toml");
    // wrk drives one API token from 64 connections: the per-token limit is raised (still checked on every
    // request, so its cost is in the figure) and the cap on concurrent requests stays at its default.
    let limits = "[limits]\ntoken_requests_per_s = 1000000.0\ntoken_burst = 1000000\n";
    let toml = format!("{}{extra_profile}\n{}{limits}", sim_profile_toml(&sim), sim_app_toml(&redirect));
    std::fs::write(&config, toml)?;
    let serve = Serve::start_as_deployed(dir.path(), Some(&config), port).await?;
    let token = issue_token(dir.path(), &["--org", "acme"], &["admin"]);
    let admin = Api::new(&serve.base, &issue_token(dir.path(), &["--platform"], &["admin"]));
    admin.create_container("acme", "finance", "eol", "oauth2_code", Some("exact-online-nl")).await;
    let r = admin.post(&format!("{}/authorize", container_path("acme", "finance", "eol")), json!({})).await;
    let back = exact_sim::browser::login(
        r.body["authorize_url"].as_str().unwrap(),
        &user.username,
        &user.password,
        sim.totp_now(&user.username).as_deref(),
    )
    .await?;
    anyhow::ensure!(admin.with_token("").get(&back).await.status == 200);
    Ok(Deployed { serve, sim, token, dir })
}

/// wrk rounds side by side: each round runs every `(name, script, url)` in turn, then the limit server when it
/// runs (three rounds then, one without it). Returns the median requests/s of each, the limit server's last.
async fn side_by_side(
    runs: &[(&str, &std::path::Path, &str)],
    limit: Option<&LimitServer>,
) -> anyhow::Result<Vec<f64>> {
    let rounds = if limit.is_some() { 3 } else { 1 };
    let mut figures = vec![Vec::new(); runs.len() + 1];
    for round in 1..=rounds {
        let limit_run = limit.map(|l| ("limit server", l.script.as_path(), l.url.as_str()));
        for (i, (name, script, url)) in runs.iter().copied().chain(limit_run).enumerate() {
            let w = wrk(script, url).await?;
            println!("round {round} {name}: {:.0}/s; latency p50 {} p99 {} {}", w.rps, w.p50, w.p99, w.non2xx);
            figures[i].push(w.rps);
        }
    }
    Ok(figures
        .into_iter()
        .filter(|f| !f.is_empty())
        .map(|mut v| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        })
        .collect())
}

const NO_LIMIT_SERVER: &str = "no ratio: build ../shared/bench/limit-server with `cargo build --release \
    --manifest-path ../shared/bench/limit-server/Cargo.toml`, or set CHAINKEEPER_LIMIT_SERVER to its tokbench binary";

/// Warm token hand-out through `serve` over HTTP, auth middleware included, loaded by wrk, beside the bare limit
/// server.
async fn warm() -> anyhow::Result<()> {
    println!(
        "\n## warm token hand-out over HTTP beside the bare limit server (wrk, 2 threads, 64 connections, 8 s a round)"
    );
    if std::process::Command::new("wrk").arg("--version").output().is_err() {
        println!("wrk is not installed: apt-get install wrk");
        return Ok(());
    }
    let d = deployed("").await?;
    let script = d.dir.path().join("post.lua");
    std::fs::write(
        &script,
        format!("wrk.method = \"POST\"\nwrk.headers[\"Authorization\"] = \"Bearer {}\"\n", d.token),
    )?;
    let url = format!("{}{}/token", d.serve.base, container_path("acme", "finance", "eol"));
    // The bare limit server (../shared/bench/limit-server: axum + one SQLite read + one AES-GCM open, no auth),
    // measured side by side: rounds alternate, and the ratio is of the medians.
    let limit = LimitServer::start(d.dir.path()).await;
    let medians = side_by_side(&[("chainkeeper", &script, &url)], limit.as_ref()).await?;
    let ours = medians[0];
    match medians.get(1) {
        Some(theirs) => println!(
            "warm hand-out: chainkeeper {ours:.0}/s, limit server {theirs:.0}/s: {:.2}x (target >= 0.7x, p99 <= 5 ms)",
            ours / theirs
        ),
        None => println!("warm hand-out: chainkeeper {ours:.0}/s ({NO_LIMIT_SERVER})"),
    }
    println!("token requests to the provider during the run: {}", d.sim.stats().refresh_requests);
    Ok(())
}

/// Cache hits of one OData page through `serve` (auth middleware, `{division}`-free path, the feed's cache with
/// its links already rewritten), with a Bearer token and with `?api_key=`, beside the bare limit server; then the
/// 64 readers of `chainkeeper_e2e::bi` (the e2e test's run) against the simulator's 60 calls a minute.
async fn odata() -> anyhow::Result<()> {
    println!(
        "\n## OData feed cache hits over HTTP beside the bare limit server (wrk, 2 threads, 64 connections, 8 s a round)"
    );
    if std::process::Command::new("wrk").arg("--version").output().is_err() {
        println!("wrk is not installed: apt-get install wrk");
        return Ok(());
    }
    // A cache time longer than the run: every request is a hit.
    let d = deployed("odata_cache_ttl_s = 3600").await?;
    let division = sim_user(1).division;
    let page = format!(
        "{}{}/odata/v1/{division}/crm/Accounts?$select=ID,Name,City",
        d.serve.base,
        container_path("acme", "finance", "eol")
    );
    let keyed = format!("{page}&api_key={}", d.token);
    // The same page cut to 5 rows, to tell the cost of the body's size from the cost of the request.
    let small = format!("{page}&$top=5");
    let http = reqwest::Client::new();
    let (mut size, mut small_size) = (0, 0);
    let reads = [(&page, true), (&page, true), (&keyed, false), (&small, true), (&small, true)];
    for (i, (url, bearer)) in reads.into_iter().enumerate() {
        let mut req = http.get(url.as_str()).header("accept", "application/json");
        if bearer {
            req = req.bearer_auth(&d.token);
        }
        let res = req.send().await?;
        let cache = res.headers().get("x-chainkeeper-cache").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        anyhow::ensure!(res.status() == 200 && (i % 3 == 0 || cache == "hit"), "{}: {cache}", res.status());
        match url == &small {
            true => small_size = res.bytes().await?.len(),
            false => size = res.bytes().await?.len(),
        }
    }
    let calls = d.sim.stats().api_calls;
    let bearer = d.dir.path().join("bearer.lua");
    let accept = "wrk.headers[\"Accept\"] = \"application/json\"\n";
    std::fs::write(&bearer, format!("{accept}wrk.headers[\"Authorization\"] = \"Bearer {}\"\n", d.token))?;
    let key = d.dir.path().join("key.lua");
    std::fs::write(&key, accept)?;
    println!("one page of 60 accounts, {size} bytes of JSON; cut to 5 rows ($top=5), {small_size} bytes");
    let limit = LimitServer::start(d.dir.path()).await;
    let runs = [
        ("chainkeeper (Bearer)", bearer.as_path(), page.as_str()),
        ("chainkeeper (?api_key=)", &key, &keyed),
        ("chainkeeper (Bearer, 5 rows)", &bearer, &small),
    ];
    let medians = side_by_side(&runs, limit.as_ref()).await?;
    let provider_calls = d.sim.stats().api_calls - calls;
    match medians.get(3) {
        Some(theirs) => println!(
            "OData cache hits: chainkeeper {:.0}/s with Bearer ({:.2}x), {:.0}/s with ?api_key= ({:.2}x), {:.0}/s for 5 \
             rows ({:.2}x), limit server {theirs:.0}/s (target >= 0.5x); provider calls during the run: {provider_calls}",
            medians[0],
            medians[0] / theirs,
            medians[1],
            medians[1] / theirs,
            medians[2],
            medians[2] / theirs
        ),
        None => println!(
            "OData cache hits: chainkeeper {:.0}/s with Bearer, {:.0}/s with ?api_key= ({NO_LIMIT_SERVER}); provider \
             calls during the run: {provider_calls}",
            medians[0], medians[1]
        ),
    }
    drop((limit, d));

    println!(
        "\n## 64 readers page through 10,000 rows through the feed at 60 provider calls a minute (simulated minutes)"
    );
    let h = chainkeeper_e2e::bi::readers_harness().await;
    let run = chainkeeper_e2e::bi::page_through(&h, 64).await?;
    println!("{run}");
    Ok(())
}

/// Issue 19's simulation at scale: the measured slice, then the model of a day of `chains` chains, unsharded and
/// sharded, and what each chain costs a day in calls.
async fn scale(chains: u32, active_share: f64, shards: Option<u32>) -> anyhow::Result<()> {
    use chainkeeper_e2e::scale::{Model, measure_slice, per_chain_day, simulate};
    println!(
        "\n## scale: the slice (real engine, sweep and hand-out; in-memory store metered as DynamoDB; Exact simulator)"
    );
    let t = Instant::now();
    let c = measure_slice(200, 6, 10).await?;
    println!(
        "{} chains x 6 sweep rounds x 10 warm hand-outs per chain and round ({:.1} s); chain item {} bytes",
        c.chains,
        t.elapsed().as_secs_f64(),
        c.chain_item_bytes
    );
    println!(
        "per sweep refresh: {:.2} store reads, {:.2} writes = {:.2} WCU of which {:.2} on the due index, {:.2} KMS calls, {:.2} secrets-port calls",
        c.reads_per_refresh,
        c.writes_per_refresh,
        c.write_units_per_refresh,
        c.due_write_units_per_refresh,
        c.kms_per_refresh,
        c.secrets_per_refresh
    );
    println!(
        "per warm hand-out: {:.2} store reads, {:.3} writes (the usage record, once a minute per chain), {:.2} KMS calls; the first hand-out after a refresh in the same process: {:.2} KMS calls",
        c.reads_per_warm_handout, c.writes_per_warm_handout, c.kms_per_warm_handout, c.kms_per_first_handout
    );
    println!(
        "sweep: {:.1} index queries per run (2 per shard: the due chains, then the backlog), {:.2} RCU each; slice peaks (hand-outs and sweeps): {} WCU on one due#k value, {} on one table value, {} RCU; throttles {}",
        c.index_queries_per_sweep,
        c.read_units_per_index_query,
        c.meter.peak_due_wcu,
        c.meter.peak_table_wcu,
        c.meter.peak_rcu,
        c.meter.throttled_writes + c.meter.throttled_reads
    );
    println!(
        "{} waiters, another process refreshing for {} ms: {:.2} store reads per hand-out with one shared poll per process, {:.2} with each waiter polling alone (before the single-flight poll); reads on the chain's partition key value in that time: {} vs {} (limit {} a second)",
        c.waiters,
        c.wait_ms,
        c.reads_per_handout_shared,
        c.reads_per_handout_alone,
        c.waiter_peak_rcu[0],
        c.waiter_peak_rcu[1],
        chainkeeper_e2e::scale::RCU_PER_PARTITION
    );
    // The worker concurrency is sized for the sharded index; the unsharded run gets the same workers.
    let paced = Model::million(shards, c.due_write_units_per_refresh).with_paced_workers(0.6);
    let runs = [
        ("unsharded", 1, paced.workers),
        ("sharded", paced.shards, paced.workers),
        ("sharded, the template's workers", paced.shards, chainkeeper_e2e::scale::TEMPLATE_WORKERS),
    ];
    for (what, shards, workers) in runs {
        let mut m = paced.clone();
        m.shards = shards;
        m.workers = workers;
        println!("\n### {what}");
        m.chains = chains;
        m.active_share = active_share;
        let t = Instant::now();
        let r = simulate(&m);
        println!(
            "\n## scale: model, {} chains over a day, {:.0}% in use {} h ({} hand-outs/h), due index {} ({:.1} s)",
            m.chains,
            m.active_share * 100.0,
            m.use_hours,
            m.handouts_per_hour,
            if m.shards == 1 { "unsharded (`due`)".to_string() } else { format!("in {} shards", m.shards) },
            t.elapsed().as_secs_f64()
        );
        println!(
            "sweep every {} s, batches of {}, {} workers x {} in flight, {} ms per refresh; {} refreshes ({} by the sweep, {} by callers; {} found refreshed by the sweep)",
            m.sweep_interval_s,
            m.batch,
            m.workers,
            m.concurrency,
            m.refresh_latency_ms,
            r.refreshes,
            r.sweep_refreshes,
            r.caller_refreshes,
            r.not_due
        );
        println!(
            "peak WCU on one due partition key value: {} demanded, {} written (limit {}); {} throttled writes; sweep lag (oldest overdue) max {} s; {} sweep refreshes of chains in use after their token expired",
            r.peak_due_demand,
            r.peak_due_wcu,
            chainkeeper_e2e::scale::WCU_PER_PARTITION,
            r.throttled,
            r.max_lag_s,
            r.expired_before_refresh
        );
        let d = per_chain_day(&m, &r, &c);
        println!(
            "per chain per day: {:.2} refreshes, {:.1} hand-outs; store {:.1} reads ({:.1} RCU), {:.2} writes ({:.2} WCU); KMS {:.2}; Secrets Manager {:.4}; Lambda {:.2} invocations; API Gateway {:.1} requests",
            d.refreshes,
            d.handouts,
            d.store_reads,
            d.read_units,
            d.store_writes,
            d.write_units,
            d.kms,
            d.secrets,
            d.lambda,
            d.api_gateway
        );
        let prices = chainkeeper_e2e::scale::Prices::default();
        let cost = chainkeeper_e2e::scale::monthly_cost(&m, &r, &d, &prices);
        println!(
            "per 1,000 chains a month (us-east-1 prices of 2026-12-06): DynamoDB ${:.2}, KMS requests ${:.2} (+ ${:.2} per organisation's key), Lambda ${:.2} ({:.0} GB-s), API Gateway ${:.2}, Secrets Manager ${:.3}: ${:.2} + the keys",
            cost.dynamodb,
            cost.kms_requests,
            prices.kms_key_month,
            cost.lambda,
            cost.lambda_gb_s,
            cost.api_gateway,
            cost.secrets_manager,
            cost.total()
        );
    }
    Ok(())
}
