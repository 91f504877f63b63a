//! `exact-sim [--port 0] [--b2c-port 0] [--config FILE.json] [--clock-factor N]`: serves the simulator on 127.0.0.1
//! with the system clock (or a clock N× as fast as real time) and, when ready, prints
//! `listening on http://127.0.0.1:PORT` (the start host: authorize, token, API) as its first line to stdout, then
//! `b2c host on http://127.0.0.1:PORT2` (the sign-in host). Faults, grace, rates, the clock and the counters are
//! then driven over HTTP under `/_sim/` (see `server.rs`).

use std::io::Write;
use std::net::SocketAddr;

use anyhow::Context;
use clap::Parser;
use exact_sim::{ExactSim, SimClock, SimConfig};

#[derive(Parser, Debug)]
#[command(name = "exact-sim", about = "Exact Online simulator (OAuth2 + a slice of the REST API)")]
struct Args {
    /// Port on 127.0.0.1 (0 = any free port).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Port of the B2C sign-in host on 127.0.0.1 (0 = any free port).
    #[arg(long, default_value_t = 0)]
    b2c_port: u16,
    /// JSON config: {"apps":[…],"users":[…],"access_token_lifetime":600,"min_token_interval":570,
    /// "refresh_token_idle_expiry":2592000,"code_lifetime":180,"require_activation":false,
    /// "token_latency":0,"minutely_limit":60,"daily_limit":5000,
    /// "refresh_grace":{"mode":"off"} or {"mode":"until_new_pair_used","max":null},
    /// "dataset":{"seed":1,"accounts":130,"transaction_lines":2500},"sign_in":"simple"|"azure_b2c",
    /// "sign_in_behaviours":{"bob":{"outcome":"recaptcha","user_agent_step":true}}} — every key optional,
    /// durations in seconds (grace "max" in milliseconds).
    #[arg(long)]
    config: Option<std::path::PathBuf>,
    /// Run the simulator's clock this many times as fast as real time, from now (1 = the system clock).
    #[arg(long, default_value_t = 1.0)]
    clock_factor: f64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .init();
    let args = Args::parse();
    let config = match &args.config {
        Some(p) => {
            let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            SimConfig::from_json(&text).with_context(|| format!("parsing {}", p.display()))?
        }
        None => SimConfig::default(),
    };
    let addr: SocketAddr = ([127, 0, 0, 1], args.port).into();
    anyhow::ensure!(
        args.clock_factor.is_finite() && args.clock_factor > 0.0,
        "--clock-factor must be a positive number, got {}",
        args.clock_factor
    );
    let clock = if args.clock_factor == 1.0 {
        SimClock::system()
    } else {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as i64;
        SimClock::scaled(now, args.clock_factor)
    };
    let b2c_addr: SocketAddr = ([127, 0, 0, 1], args.b2c_port).into();
    let sim = ExactSim::start_with_b2c_on(config, clock, addr, b2c_addr).await?;
    {
        let mut out = std::io::stdout().lock();
        // One write for both lines: a reader that takes the first line and closes the pipe still gets both.
        write!(out, "listening on {}\nb2c host on {}\n", sim.base_url, sim.b2c_base_url)?;
        out.flush()?;
    }
    tokio::signal::ctrl_c().await?;
    drop(sim);
    Ok(())
}
