//! moto in server mode (PyPI `moto[server]`): DynamoDB, KMS and Secrets Manager on a free loopback port, started
//! through `tests/peers/moto/serve.py` (moto's server, one request at a time).
//!
//! The launcher binds port 0 and reports the port it got: a port picked here and released first could be taken by
//! another test's peer before moto binds it, and the test would then talk to someone else's moto.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, BufReader};

pub struct Moto {
    pub endpoint: String,
    _child: tokio::process::Child,
    /// Kept open: moto's server writes its request log to stdout.
    _stdout: tokio::task::JoinHandle<()>,
}

impl Moto {
    pub async fn start() -> anyhow::Result<Moto> {
        Self::start_with(&[], None).await
    }

    /// moto with extra environment (`MOTO_ENABLE_RECORDING` …), run in `dir` when given.
    pub async fn start_with(env: &[(&str, &Path)], dir: Option<&Path>) -> anyhow::Result<Moto> {
        let script = crate::workspace().join("tests/peers/moto/serve.py");
        let mut cmd = tokio::process::Command::new("python3");
        cmd.arg(&script).args(["-H", "127.0.0.1", "-p", "0"]);
        for (k, v) in env {
            cmd.env(k, v);
        }
        if let Some(dir) = dir {
            cmd.current_dir(dir);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| anyhow::anyhow!("moto did not start ({e}): pip install 'moto[server]'"))?;
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .context("moto (tests/peers/moto/serve.py) did not report its port within 30 s")??;
        let Some(port) = first.as_deref().and_then(|l| l.strip_prefix("port ")).and_then(|p| p.parse::<u16>().ok())
        else {
            bail!("moto (tests/peers/moto/serve.py) did not start: {first:?} (pip install 'moto[server]')");
        };
        let stdout = tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let endpoint = format!("http://127.0.0.1:{port}");
        for _ in 0..200 {
            if reqwest::get(format!("{endpoint}/moto-api/")).await.is_ok() {
                return Ok(Moto { endpoint, _child: child, _stdout: stdout });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("moto (tests/peers/moto/serve.py) did not answer on {endpoint}")
    }
}
