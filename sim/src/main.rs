//! `exact-sim [--port 0] [--config FILE.json]`: serves the simulator on 127.0.0.1 with the system clock
//! and prints exactly one line `listening on http://127.0.0.1:PORT` to stdout when ready.

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
    /// JSON config: {"apps":[…],"users":[…],"access_token_lifetime":600,"min_token_interval":570,
    /// "refresh_token_idle_expiry":2592000,"code_lifetime":180,"require_activation":false,
    /// "token_latency":0,"minutely_limit":60} — every key optional, durations in seconds.
    #[arg(long)]
    config: Option<std::path::PathBuf>,
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
    let sim = ExactSim::start_on(config, SimClock::system(), addr).await?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on {}", sim.base_url)?;
        out.flush()?;
    }
    tokio::signal::ctrl_c().await?;
    drop(sim);
    Ok(())
}
