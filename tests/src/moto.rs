//! moto in server mode (PyPI `moto[server]`): DynamoDB, KMS and Secrets Manager on a free loopback port, started
//! through `tests/peers/moto/serve.py` (moto's server, one request at a time).

use std::process::Stdio;
use std::time::Duration;

use anyhow::bail;

pub struct Moto {
    pub endpoint: String,
    _child: tokio::process::Child,
}

impl Moto {
    pub async fn start() -> anyhow::Result<Moto> {
        let port = crate::free_port();
        // moto's own server with requests applied one at a time, so that conditional writes are atomic as in
        // DynamoDB (see tests/peers/moto/serve.py for why plain `moto_server` is not enough).
        let script = crate::workspace().join("tests/peers/moto/serve.py");
        let child = tokio::process::Command::new("python3")
            .arg(&script)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| anyhow::anyhow!("moto did not start ({e}): pip install 'moto[server]'"))?;
        let endpoint = format!("http://127.0.0.1:{port}");
        for _ in 0..200 {
            if reqwest::get(format!("{endpoint}/moto-api/")).await.is_ok() {
                return Ok(Moto { endpoint, _child: child });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("moto (tests/peers/moto/serve.py) did not answer on {endpoint}")
    }
}
