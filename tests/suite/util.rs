//! Helpers: run the pipeline in-process or the binary, read EVE output, read the manifest.
#![allow(dead_code)]

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::AtomicBool;
use tapwatch::app::{self, OutputOptions, ReplayOptions, ReplayReport};
use tapwatch::settings::Settings;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn pcap(rel: &str) -> PathBuf {
    root().join("pcaps").join(rel)
}

/// One line of pcaps/MANIFEST.tsv.
pub struct ManifestEntry {
    pub path: String,
    pub packets: u64,
    pub license: String,
}

pub fn manifest() -> Vec<ManifestEntry> {
    let text = std::fs::read_to_string(root().join("pcaps/MANIFEST.tsv")).expect("manifest");
    text.lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let c: Vec<&str> = l.split('\t').collect();
            ManifestEntry {
                path: c[0].to_string(),
                license: c[4].to_string(),
                packets: c[6].parse().expect("packet count"),
            }
        })
        .collect()
}

/// Replays captures in-process with the shipped rules, output discarded.
pub fn replay_stats(files: &[PathBuf]) -> ReplayReport {
    let rules = app::load_rules(Some(&root().join("rules"))).expect("rules");
    let opts = ReplayOptions {
        inputs: files.to_vec(),
        output: OutputOptions {
            discard: true,
            ..Default::default()
        },
        progress: false,
        quiet: true,
        bench: false,
        model: None,
        learning: Default::default(),
        workers: 1,
    };
    app::replay(&Settings::default(), rules, &opts, &AtomicBool::new(false)).expect("replay")
}

pub fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tapwatch"));
    c.current_dir(root());
    c
}

/// Runs the binary and returns its output.
pub fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("run tapwatch")
}

/// Parses JSON lines.
pub fn events(stdout: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
        .collect()
}

/// Replays `files` with the binary (`--flows`, quiet) and returns the events.
pub fn replay_events(files: &[&Path], extra: &[&str]) -> Vec<Value> {
    let mut c = bin();
    c.args(["replay", "-q", "--flows"]).args(extra);
    for f in files {
        c.arg(f);
    }
    let out = c.output().expect("run");
    assert!(
        out.status.success(),
        "tapwatch failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    events(&out.stdout)
}

pub fn of_type<'a>(ev: &'a [Value], t: &str) -> Vec<&'a Value> {
    ev.iter().filter(|e| e["event_type"] == t).collect()
}

pub fn final_stats(ev: &[Value]) -> &Value {
    &ev.iter()
        .rev()
        .find(|e| e["event_type"] == "stats")
        .expect("a stats event")["stats"]
}
