//! Command-line arguments (clap). Raw values only; `settings` validates them.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "tapwatch",
    version,
    about = "Passive network anomaly detection for IoT and OT networks",
    long_about = "Passive network anomaly detection for IoT and OT networks.\n\nReads traffic from capture files or a live interface, tracks flows, parses MQTT, HTTP, Telnet, FTP and TLS, and writes alerts as JSON lines in Suricata's EVE shape."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Replay pcap/pcapng files (several files form one timeline; `-` reads standard input).
    Replay(ReplayArgs),
    /// Capture live from an interface through libpcap.
    Live(LiveArgs),
    /// Validate the config, the rules and the model, then exit (non-zero on any problem).
    Check(CheckArgs),
    /// Replay a capture with output discarded and report packets/s, Gbit/s, time per stage (one
    /// worker) or CPU time per thread (several), peak RSS and peak anonymous memory (the heap,
    /// apart from the capture's mapped pages).
    Bench(BenchArgs),
    /// Learn per-device baselines and the outlier model from normal traffic; write a model file.
    Train(TrainArgs),
    /// Print the devices seen in captures (table, or JSON with --json).
    Inventory(InventoryArgs),
    /// From EVE files written with --flows: per-device summaries, alert timelines and the flow
    /// log as CSV and Parquet (needs the `analytics` feature).
    Report(ReportArgs),
}

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// EVE JSON files written by `replay`/`live` with --flows.
    #[arg(required = true, value_name = "EVE")]
    pub files: Vec<PathBuf>,
    /// Directory to write the report files to (created if missing).
    #[arg(short, long, value_name = "DIR")]
    pub output_dir: PathBuf,
}

/// Worker threads [default: the number of cores].
#[derive(Args, Debug, Clone, Default)]
pub struct WorkerArgs {
    /// Worker threads, sharded by flow (1 runs every stage on one thread) [default: the number
    /// of cores, at most 64]
    #[arg(short, long, value_name = "N")]
    pub workers: Option<usize>,
}

impl WorkerArgs {
    pub fn count(&self) -> usize {
        self.workers.unwrap_or_else(cores).clamp(1, 64)
    }
}

/// The cores this process may run on (its CPU affinity; 1 when unknown).
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Model options of `replay`, `live` and `bench`.
#[derive(Args, Debug, Clone, Default)]
pub struct ModelArgs {
    /// Model file (baselines + learned model) [default: models/default.json if present].
    #[arg(short, long, value_name = "FILE")]
    pub model: Option<PathBuf>,
    /// Run without any model (no baseline or learned detection, unless --learn-for).
    #[arg(long, conflicts_with = "model")]
    pub no_model: bool,
    /// Learn baselines and a model during the first DURATION of packet time (e.g. 10m), then
    /// freeze them; replaces the model file.
    #[arg(long, value_name = "DURATION")]
    pub learn_for: Option<String>,
}

#[derive(Args, Debug)]
pub struct TrainArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Captures of normal traffic (or flow logs, with --flows).
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// The FILEs are flow logs: EVE JSON written with `replay --flows` (its `flow_window`
    /// events), or `flow_windows.parquet` from `tapwatch report`. Read through polars (needs the
    /// `analytics` feature); gives the same windows as training on the captures themselves.
    #[arg(long)]
    pub flows: bool,
    /// Model file to write.
    #[arg(short, long, value_name = "FILE")]
    pub output: PathBuf,
    /// Scoring model: kmeans (distance to the nearest centroid) or gmm (mixture likelihood).
    #[arg(long, default_value = "kmeans")]
    pub kind: String,
    /// Quantile of the training scores that calibrates the threshold.
    #[arg(long, default_value_t = 0.995)]
    pub quantile: f64,
    /// Multiplier on that quantile.
    #[arg(long, default_value_t = 1.5)]
    pub margin: f64,
    /// Also score the windows of this capture and report precision, recall and AUC against
    /// --truth (a lab truth file): a window is an attack window when its device is the source
    /// of a labelled attack-phase event during it.
    #[arg(long, value_name = "FILE", requires = "truth")]
    pub evaluate: Option<PathBuf>,
    #[arg(long, value_name = "FILE")]
    pub truth: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct InventoryArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// JSON lines instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Options shared by every command.
#[derive(Args, Debug, Clone, Default)]
pub struct CommonArgs {
    /// TOML config file (see README: every field is optional).
    #[arg(short, long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Rules directory [default: ./rules if present, else the built-in rules].
    #[arg(short, long, value_name = "DIR")]
    pub rules: Option<PathBuf>,
    /// Home networks, comma-separated CIDRs (overrides the config file).
    #[arg(long, value_name = "CIDR,...")]
    pub home_net: Option<String>,
}

#[derive(Args, Debug)]
pub struct CheckArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Model file to check [default: models/default.json if present].
    #[arg(short, long, value_name = "FILE")]
    pub model: Option<PathBuf>,
}

/// Output options of `replay` and `live`.
#[derive(Args, Debug, Clone, Default)]
pub struct OutputArgs {
    /// Write events to FILE (appended) instead of standard output.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Also write a `flow` event for every flow.
    #[arg(long)]
    pub flows: bool,
    /// Show passwords seen on the wire in alerts (forensic replay). Masked by default.
    #[arg(long)]
    pub reveal_secrets: bool,
    /// No summary or progress on standard error.
    #[arg(short, long)]
    pub quiet: bool,
    /// Start a new output file when it reaches SIZE bytes (suffixes K, M, G: powers of 1024);
    /// the full one is renamed FILE.1, FILE.2, ... Needs --output.
    #[arg(long, value_name = "SIZE", requires = "output", value_parser = parse_size)]
    pub rotate_size: Option<u64>,
    /// Start a new output file every SECS seconds (wall clock). Needs --output.
    #[arg(long, value_name = "SECS", requires = "output", value_parser = clap::value_parser!(u64).range(1..))]
    pub rotate_secs: Option<u64>,
}

/// A byte count with an optional K, M or G suffix (powers of 1024).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m: u64 = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                _ => return Err(format!("{s:?}: unknown suffix (use K, M or G)")),
            };
            (&t[..i], m)
        }
        _ => (t, 1),
    };
    let n: u64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?}: expected a number of bytes, e.g. 100M"))?;
    match n.checked_mul(mult) {
        Some(v) if v > 0 => Ok(v),
        Some(_) => Err("the size must be positive".into()),
        None => Err(format!("{s:?}: too large")),
    }
}

#[derive(Args, Debug)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub out: OutputArgs,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub workers: WorkerArgs,
    /// Capture files (pcap or pcapng, detected by content); `-` for standard input.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
}

#[derive(Args, Debug)]
pub struct LiveArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub out: OutputArgs,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub workers: WorkerArgs,
    /// Interface to capture on.
    #[arg(short, long, value_name = "IFACE")]
    pub interface: String,
    /// BPF capture filter.
    #[arg(short = 'f', long, value_name = "BPF")]
    pub filter: Option<String>,
    /// Bytes captured per packet.
    #[arg(long, default_value_t = 65535)]
    pub snaplen: i32,
    /// Put the interface in promiscuous mode.
    #[arg(long)]
    pub promisc: bool,
    /// Write a `stats` event every SECS seconds of packet time [default: config, 60].
    #[arg(long, value_name = "SECS")]
    pub stats_interval: Option<u64>,
    /// Once the capture is open (and the output file too), switch to this user and its groups,
    /// keeping no privilege. Needs to start as root.
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub workers: WorkerArgs,
    /// Capture files to replay.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
}
