//! Real Chromium for the console's tests: `tests/peers/browser/console.mjs` (playwright-core driving Debian's
//! `/usr/bin/chromium`, axe-core on every console page), kept open while a test sends it named steps and acts on
//! the world between them. Each step answers one JSON line: the page (URL, status, headings, text), its form
//! fields with the problem shown next to each, axe-core's violations by impact and a screenshot's path.
//!
//! Needs `/usr/bin/chromium` (`apt-get install chromium`; [`ConsoleBrowser::available`] says `false`, and why, when
//! it is absent) and `npm ci --prefix tests/peers/browser` (a test fails, saying so, when it was not run).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

/// How long one step may take (a sign-in through the simulator's pages is the longest, a few seconds).
const STEP_TIMEOUT: Duration = Duration::from_secs(90);

fn peer_dir() -> PathBuf {
    crate::workspace().join("tests/peers/browser")
}

/// Where the screenshots go: `target/console-screenshots/<run>/` (`CARGO_TARGET_DIR` respected).
pub fn screenshot_dir(run: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| crate::workspace().join("target"), PathBuf::from);
    target.join("console-screenshots").join(run)
}

/// A running `console.mjs`. The browser closes when its stdin does (on drop: the process is killed).
pub struct ConsoleBrowser {
    child: Child,
    stdin: Option<ChildStdin>,
    out: Lines<BufReader<ChildStdout>>,
    pub screenshots: PathBuf,
    /// Every step's answer, in order.
    pub reports: Vec<Value>,
}

impl ConsoleBrowser {
    /// Whether the browser tests can run here: `false` (and a message on stderr) when Chromium is not installed.
    /// Panics when Chromium is there but the npm packages are not (a set-up mistake, not an absent browser).
    pub fn available() -> bool {
        let path = std::env::var("CHROMIUM_PATH").unwrap_or_else(|_| "/usr/bin/chromium".to_string());
        if !Path::new(&path).exists() {
            eprintln!(
                "SKIPPED: {path} is not installed (apt-get install -y chromium); the real-browser test did not run"
            );
            return false;
        }
        for package in ["playwright-core", "axe-core"] {
            assert!(
                peer_dir().join("node_modules").join(package).is_dir(),
                "tests/peers/browser has no node_modules/{package}: run `npm ci --prefix tests/peers/browser`"
            );
        }
        true
    }

    /// Starts Chromium on `base` (chainkeeper's `http://127.0.0.1:PORT`); screenshots into [`screenshot_dir`]`(run)`.
    pub async fn start(base: &str, run: &str) -> anyhow::Result<ConsoleBrowser> {
        let screenshots = screenshot_dir(run);
        let _ = std::fs::remove_dir_all(&screenshots);
        let mut child = tokio::process::Command::new(std::env::var("NODE").unwrap_or_else(|_| "node".into()))
            .arg(peer_dir().join("console.mjs"))
            .args(["--base", base, "--timeout-ms", "20000"])
            .arg("--screenshots")
            .arg(&screenshots)
            .current_dir(peer_dir())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("starting node tests/peers/browser/console.mjs")?;
        let stdin = child.stdin.take();
        let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = tokio::time::timeout(Duration::from_secs(60), out.next_line())
            .await
            .context("Chromium did not start within 60 s")??;
        match first.as_deref().map(serde_json::from_str::<Value>) {
            Some(Ok(v)) if v["ready"] == true => {}
            other => bail!("console.mjs did not start: {other:?}"),
        }
        Ok(ConsoleBrowser { child, stdin, out, screenshots, reports: Vec::new() })
    }

    /// Runs one step; returns its answer whatever happened (see [`ConsoleBrowser::step`] for the checked kind).
    pub async fn try_step(&mut self, name: &str, actions: Value) -> Value {
        let line = json!({"step": name, "actions": actions}).to_string();
        let started = std::time::Instant::now();
        let stdin = self.stdin.as_mut().expect("browser open");
        stdin.write_all(format!("{line}\n").as_bytes()).await.expect("console.mjs reads its steps");
        stdin.flush().await.unwrap();
        let answer = tokio::time::timeout(STEP_TIMEOUT, self.out.next_line())
            .await
            .unwrap_or_else(|_| panic!("step {name}: no answer within {STEP_TIMEOUT:?}"))
            .expect("console.mjs answers")
            .unwrap_or_else(|| panic!("step {name}: console.mjs ended (see its stderr above)"));
        let v: Value = serde_json::from_str(&answer).unwrap_or_else(|e| panic!("step {name}: {e}: {answer}"));
        crate::assert_no_planted_secret(&format!("the page of step {name}"), &v["text"].to_string());
        crate::assert_no_planted_secret(&format!("the fields of step {name}"), &v["fields"].to_string());
        eprintln!(
            "[browser] {name} ({:.1} s): {} {} — {} (screenshot {})",
            started.elapsed().as_secs_f64(),
            v["status"],
            v["url"].as_str().unwrap_or(""),
            v["h1"].as_str().unwrap_or(""),
            v["screenshot"].as_str().unwrap_or("none")
        );
        self.reports.push(v.clone());
        v
    }

    /// Runs one step and asserts it went through: no action failed, nothing left loopback, on a console page
    /// axe-core found no serious or critical violation (all of them printed otherwise), and the page's console
    /// reported no Content-Security-Policy refusal.
    pub async fn step(&mut self, name: &str, actions: Value) -> Value {
        let v = self.try_step(name, actions).await;
        assert_eq!(v["ok"], true, "step {name} failed: {}\n{}", v["error"], page_summary(&v));
        assert_eq!(v["blocked_from_console"], json!([]), "step {name}: no console page asks for anything off loopback");
        assert_accessible(name, &v);
        let csp: Vec<&Value> = v["console"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|m| m.as_str().is_some_and(|m| m.contains("Content Security Policy")))
            .collect();
        assert!(csp.is_empty(), "step {name}: the page broke its Content-Security-Policy: {csp:?}");
        v
    }

    /// Closes the browser (and waits for Chromium to end).
    pub async fn close(mut self) {
        drop(self.stdin.take());
        let _ = tokio::time::timeout(Duration::from_secs(20), self.child.wait()).await;
    }
}

/// A step's page in a few lines, for failure messages.
pub fn page_summary(v: &Value) -> String {
    format!(
        "at {} (status {}), h1 {:?}\ntext: {}\nfields: {}\nthe page's console: {}",
        v["url"].as_str().unwrap_or(""),
        v["status"],
        v["h1"].as_str().unwrap_or(""),
        v["text"].as_str().unwrap_or(""),
        v["fields"],
        v["console"]
    )
}

/// axe-core: 0 serious, 0 critical (when the step was on a console page at all).
pub fn assert_accessible(name: &str, v: &Value) {
    let axe = &v["axe"];
    if axe.is_null() {
        return;
    }
    let (serious, critical) = (axe["serious"].as_u64().unwrap_or(0), axe["critical"].as_u64().unwrap_or(0));
    let listed = serde_json::to_string_pretty(&axe["violations"]).unwrap();
    assert!(
        serious == 0 && critical == 0,
        "step {name}: axe-core found serious or critical violations on {}:\n{listed}",
        v["url"]
    );
    if axe["violations"].as_array().is_some_and(|a| !a.is_empty()) {
        eprintln!("[browser] {name}: axe-core, moderate/minor only: {listed}");
    }
}

/// The problem shown next to the field labelled `label` (its `aria-describedby` text), or "".
pub fn field_problem(v: &Value, label: &str) -> String {
    field(v, label)["described"].as_str().unwrap_or("").to_string()
}

/// The field labelled `label` in a step's answer (`{label, name, value, invalid, described}`).
pub fn field<'a>(v: &'a Value, label: &str) -> &'a Value {
    v["fields"]
        .as_array()
        .and_then(|fs| fs.iter().find(|f| f["label"].as_str().is_some_and(|l| l.trim() == label)))
        .unwrap_or_else(|| panic!("no field labelled {label:?} on the page: {}", page_summary(v)))
}
