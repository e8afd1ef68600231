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
    Check(CommonArgs),
    /// Replay a capture with output discarded and report packets/s, Gbit/s and time per stage.
    Bench(BenchArgs),
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
}

#[derive(Args, Debug)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub out: OutputArgs,
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
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Capture files to replay.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
}
