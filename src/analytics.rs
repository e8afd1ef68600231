//! Offline analytics over tapwatch's own logs, through polars (cargo feature `analytics`).
//!
//! Owns: reading a flow log (the `flow_window` events that `--flows` writes, as EVE JSON lines,
//! or the Parquet copy that `tapwatch report` writes) into a lazy frame; computing the device
//! window features from it with group-bys; `tapwatch report` (per-device summaries and alert
//! timelines as CSV and Parquet). Hands on: [`WindowVector`]s and a [`Learner`] for
//! `tapwatch train --flows`, and report files.
//!
//! The flow log holds each flow's part of each device window exactly as the device stage
//! counted it (see [`crate::device::FlowWindow`]), so the features computed here equal the ones
//! the device stage computes from the capture (tested on the lab and shared captures). Where
//! they can differ: when a device's peer set overflowed `device.max_peers`, or the device table
//! evicted a device, during the run that wrote the log.

use crate::device::baseline::Learner;
use crate::device::{DeviceId, WindowVector, ADDITIVE, FEATURES, N_FEATURES};
use crate::time::Timestamp;
use polars::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, Cursor};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// An analytics error: the file and what went wrong.
#[derive(Debug, thiserror::Error)]
pub enum AnalyticsError {
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
    #[error("{0}")]
    Polars(#[from] PolarsError),
}

fn file_err(p: &Path, reason: impl std::fmt::Display) -> AnalyticsError {
    AnalyticsError::File {
        path: p.display().to_string(),
        reason: reason.to_string(),
    }
}

/// New peers counted per window at most (as the device stage does).
const MAX_NEW_PEERS: i64 = 64;

/// The columns of a flow log row, as `flow_window` events write them.
fn flow_log_schema() -> Schema {
    let mut fields = vec![
        Field::new("timestamp".into(), DataType::String),
        Field::new("flow_id".into(), DataType::UInt64),
        Field::new("event_type".into(), DataType::String),
        Field::new("window".into(), DataType::Int64),
        Field::new("window_secs".into(), DataType::Int64),
        Field::new("device".into(), DataType::String),
        Field::new("device_ip".into(), DataType::String),
        Field::new("role".into(), DataType::String),
        Field::new("peer_ip".into(), DataType::String),
        Field::new("peer_device".into(), DataType::String),
        Field::new("proto".into(), DataType::String),
        Field::new("dest_port".into(), DataType::Int64),
        Field::new("started".into(), DataType::Boolean),
        Field::new("app".into(), DataType::String),
    ];
    for i in ADDITIVE {
        fields.push(Field::new(FEATURES[i].into(), DataType::Int64));
    }
    Schema::from_iter(fields)
}

fn is_parquet(p: &Path) -> Result<bool, AnalyticsError> {
    use std::io::Read;
    let mut f = std::fs::File::open(p).map_err(|e| file_err(p, e))?;
    let mut magic = [0u8; 4];
    Ok(f.read_exact(&mut magic).is_ok() && &magic == b"PAR1")
}

/// The `flow_window` lines of an EVE file (other event types are skipped).
fn flow_window_lines(p: &Path) -> Result<(Vec<u8>, u64), AnalyticsError> {
    let f = std::fs::File::open(p).map_err(|e| file_err(p, e))?;
    let mut out = Vec::new();
    let mut n = 0;
    for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
        let line = line.map_err(|e| file_err(p, format!("line {}: {e}", i + 1)))?;
        if line.contains("\"event_type\":\"flow_window\"") {
            out.extend_from_slice(line.as_bytes());
            out.push(b'\n');
            n += 1;
        }
    }
    Ok((out, n))
}

/// Reads flow logs (EVE JSON lines with `flow_window` events, or Parquet written by
/// `tapwatch report`) into one lazy frame, in file order.
pub fn scan_flow_log(paths: &[PathBuf]) -> Result<LazyFrame, AnalyticsError> {
    let schema = Arc::new(flow_log_schema());
    let mut frames = Vec::with_capacity(paths.len());
    for p in paths {
        let lf = if is_parquet(p)? {
            let s = p.display().to_string();
            LazyFrame::scan_parquet(PlRefPath::new(&s), Default::default())
                .map_err(|e| file_err(p, e))?
                .select(
                    schema
                        .iter_names()
                        .map(|n| col(n.clone()))
                        .collect::<Vec<_>>(),
                )
        } else {
            let (bytes, n) = flow_window_lines(p)?;
            if n == 0 {
                return Err(file_err(
                    p,
                    "no flow_window events (write the log with `tapwatch replay --flows`)",
                ));
            }
            JsonReader::new(Cursor::new(bytes))
                .with_json_format(JsonFormat::JsonLines)
                .with_schema(schema.clone())
                .finish()
                .map_err(|e| file_err(p, e))?
                .lazy()
        };
        frames.push(lf);
    }
    Ok(concat(frames, UnionArgs::default())?)
}

/// What a flow log tells of one device for its baseline.
#[derive(Clone, Debug, Default)]
pub struct DeviceFacts {
    /// Peers it opened flows to.
    pub peers: BTreeSet<IpAddr>,
    /// Services it offered ("tcp/1883 mqtt").
    pub services: BTreeSet<String>,
    /// Its addresses.
    pub ips: BTreeSet<IpAddr>,
}

/// What a flow log gives for training.
pub struct FlowLogWindows {
    /// Every device window, ordered by (window, device) like the device stage emits them.
    pub windows: Vec<WindowVector>,
    /// Rows read.
    pub rows: u64,
    pub first: Timestamp,
    pub last: Timestamp,
    pub window_secs: u64,
    /// Per device: peers it opened flows to, services it offered, its addresses (windows
    /// before the last one, which the end of input cuts).
    pub facts: BTreeMap<DeviceId, DeviceFacts>,
}

fn str_col<'a>(df: &'a DataFrame, name: &str) -> Result<&'a StringChunked, AnalyticsError> {
    Ok(df.column(name)?.str()?)
}

fn i64_col(df: &DataFrame, name: &str) -> Result<Int64Chunked, AnalyticsError> {
    Ok(df.column(name)?.cast(&DataType::Int64)?.i64()?.clone())
}

/// Computes the device window features of a flow log with group-bys.
pub fn window_features(lf: LazyFrame) -> Result<FlowLogWindows, AnalyticsError> {
    let started = col("started");
    let initiator = col("role").eq(lit("initiator"));
    let tcp_udp = col("proto").eq(lit("TCP")).or(col("proto").eq(lit("UDP")));

    // The earliest window is the first (partial) one; the last one is cut too. (Rows are not
    // in window order: an ended flow's rows are written when it ends.)
    let bounds = lf
        .clone()
        .select([
            col("window").min().alias("first"),
            col("window").max().alias("last"),
            col("window_secs").first().alias("secs"),
            len().alias("rows"),
        ])
        .collect()?;
    let first = i64_col(&bounds, "first")?.get(0).unwrap_or(0);
    let last = i64_col(&bounds, "last")?.get(0).unwrap_or(0);
    let secs = i64_col(&bounds, "secs")?.get(0).unwrap_or(60);
    let rows = i64_col(&bounds, "rows")?.get(0).unwrap_or(0);

    let mut aggs: Vec<Expr> = ADDITIVE
        .iter()
        .map(|&i| col(FEATURES[i]).sum().alias(FEATURES[i]))
        .collect();
    aggs.push(
        col("peer_ip")
            .filter(started.clone())
            .n_unique()
            .alias("peers"),
    );
    aggs.push(
        col("dest_port")
            .filter(started.clone().and(initiator.clone()).and(tcp_udp))
            .n_unique()
            .alias("dst_ports"),
    );
    let per_window = lf
        .clone()
        .group_by([col("device"), col("window")])
        .agg(aggs);
    // A peer is new in the first window the device opened a flow to it.
    let new_peers = lf
        .clone()
        .filter(started.clone().and(initiator.clone()))
        .group_by([col("device"), col("peer_ip")])
        .agg([col("window").min().alias("window")])
        .group_by([col("device"), col("window")])
        .agg([len().cast(DataType::Int64).alias("new_peers")]);
    let df = per_window
        .join(
            new_peers,
            [col("device"), col("window")],
            [col("device"), col("window")],
            JoinArgs::new(JoinType::Left),
        )
        .collect()?;

    let devices = str_col(&df, "device")?;
    let windows = i64_col(&df, "window")?;
    let mut cols: Vec<Int64Chunked> = Vec::with_capacity(N_FEATURES);
    for name in FEATURES {
        cols.push(i64_col(&df, name)?);
    }
    let mut out = Vec::with_capacity(df.height());
    for r in 0..df.height() {
        let dev = devices.get(r).unwrap_or_default();
        let Some(device) = DeviceId::parse(dev) else {
            return Err(AnalyticsError::File {
                path: String::new(),
                reason: format!("flow log: bad device {dev:?}"),
            });
        };
        let w = windows.get(r).unwrap_or(0);
        let mut values = [0.0; N_FEATURES];
        for (i, c) in cols.iter().enumerate() {
            values[i] = c.get(r).unwrap_or(0) as f64;
        }
        values[8] = values[8].min(MAX_NEW_PEERS as f64);
        out.push(WindowVector {
            device,
            window: Timestamp::from_secs(w.max(0) as u64),
            values,
            new_peers: Vec::new(),
            ip: None,
            partial: w <= first || w == last,
        });
    }
    out.sort_by_key(|v| (v.window, v.device));

    // Facts per device for the baselines.
    let facts_df = lf
        .filter(col("window").lt(lit(last)))
        .select([
            col("device"),
            col("device_ip"),
            col("role"),
            col("started"),
            col("peer_ip"),
            col("peer_device"),
            col("proto"),
            col("dest_port"),
            col("app"),
        ])
        .collect()?;
    let mut facts: BTreeMap<DeviceId, DeviceFacts> = BTreeMap::new();
    let (dev, dip, role, st) = (
        str_col(&facts_df, "device")?,
        str_col(&facts_df, "device_ip")?,
        str_col(&facts_df, "role")?,
        facts_df.column("started")?.bool()?,
    );
    let (pip, pdev, proto, app) = (
        str_col(&facts_df, "peer_ip")?,
        str_col(&facts_df, "peer_device")?,
        str_col(&facts_df, "proto")?,
        str_col(&facts_df, "app")?,
    );
    let port = i64_col(&facts_df, "dest_port")?;
    for r in 0..facts_df.height() {
        let Some(d) = dev.get(r).and_then(DeviceId::parse) else {
            continue;
        };
        let init = role.get(r) == Some("initiator");
        let e = facts.entry(d).or_default();
        if let Some(ip) = dip.get(r).and_then(|s| s.parse().ok()) {
            e.ips.insert(ip);
        }
        if init && st.get(r) == Some(true) {
            if let Some(ip) = pip.get(r).and_then(|s| s.parse().ok()) {
                e.peers.insert(ip);
            }
        }
        if let (true, Some(server), Some(a)) =
            (init, pdev.get(r).and_then(DeviceId::parse), app.get(r))
        {
            let p = proto.get(r).unwrap_or("").to_ascii_lowercase();
            let svc = format!("{p}/{} {a}", port.get(r).unwrap_or(0));
            facts.entry(server).or_default().services.insert(svc);
        }
    }
    Ok(FlowLogWindows {
        windows: out,
        rows: rows.max(0) as u64,
        first: Timestamp::from_secs(first.max(0) as u64),
        last: Timestamp::from_secs((last.max(0) as u64).saturating_add(secs.max(0) as u64)),
        window_secs: secs.max(1) as u64,
        facts,
    })
}

/// A learner fed from a flow log, as `tapwatch train` feeds it from captures.
pub fn learner_from_flow_log(
    paths: &[PathBuf],
    cfg: &crate::settings::DeviceConfig,
) -> Result<(Learner, FlowLogWindows), AnalyticsError> {
    let f = window_features(scan_flow_log(paths)?)?;
    let mut l = Learner::new(cfg);
    for w in f.windows.iter().filter(|w| !w.partial) {
        l.observe(w, None);
    }
    for (id, d) in &f.facts {
        l.add_facts(
            *id,
            d.peers.iter().copied(),
            d.services.iter().cloned(),
            d.ips.iter().copied(),
        );
    }
    Ok((l, f))
}

/// What `tapwatch report` wrote.
pub struct ReportSummary {
    pub files: Vec<PathBuf>,
    pub alerts: usize,
    pub devices: usize,
}

fn write_frame(df: &mut DataFrame, dir: &Path, name: &str) -> Result<[PathBuf; 2], AnalyticsError> {
    let csv = dir.join(format!("{name}.csv"));
    let parquet = dir.join(format!("{name}.parquet"));
    let f = std::fs::File::create(&csv).map_err(|e| file_err(&csv, e))?;
    CsvWriter::new(f)
        .include_header(true)
        .finish(df)
        .map_err(|e| file_err(&csv, e))?;
    let f = std::fs::File::create(&parquet).map_err(|e| file_err(&parquet, e))?;
    ParquetWriter::new(f)
        .finish(df)
        .map_err(|e| file_err(&parquet, e))?;
    Ok([csv, parquet])
}

/// The alert events of EVE files, as a table ordered by time.
fn alerts_frame(paths: &[PathBuf]) -> Result<DataFrame, AnalyticsError> {
    let (mut ts, mut kind, mut sig, mut sev, mut cat) = (vec![], vec![], vec![], vec![], vec![]);
    let (mut src, mut dst, mut dport, mut proto, mut sid) =
        (vec![], vec![], vec![], vec![], vec![]);
    for p in paths {
        let f = std::fs::File::open(p).map_err(|e| file_err(p, e))?;
        for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
            let line = line.map_err(|e| file_err(p, format!("line {}: {e}", i + 1)))?;
            if !line.contains("\"event_type\":\"alert\"") {
                continue;
            }
            let v: serde_json::Value = serde_json::from_str(&line)
                .map_err(|e| file_err(p, format!("line {}: {e}", i + 1)))?;
            let a = &v["alert"];
            let s = |x: &serde_json::Value| x.as_str().map(str::to_string);
            ts.push(s(&v["timestamp"]));
            kind.push(s(&a["kind"]));
            sig.push(s(&a["signature"]));
            cat.push(s(&a["category"]));
            sev.push(a["severity"].as_i64());
            sid.push(a["signature_id"].as_i64());
            src.push(s(&v["src_ip"]));
            dst.push(s(&v["dest_ip"]));
            dport.push(v["dest_port"].as_i64());
            proto.push(s(&v["proto"]));
        }
    }
    let n = ts.len();
    let df = DataFrame::new(
        n,
        vec![
            Column::new("timestamp".into(), ts),
            Column::new("kind".into(), kind),
            Column::new("signature_id".into(), sid),
            Column::new("signature".into(), sig),
            Column::new("category".into(), cat),
            Column::new("severity".into(), sev),
            Column::new("src_ip".into(), src),
            Column::new("dest_ip".into(), dst),
            Column::new("dest_port".into(), dport),
            Column::new("proto".into(), proto),
        ],
    )?;
    Ok(df
        .lazy()
        .sort(["timestamp"], Default::default())
        .collect()?)
}

/// `tapwatch report`: from EVE files written with `--flows`, writes to `dir`
/// `alerts.{csv,parquet}` (every alert, by time), `alert_timeline.{csv,parquet}` (per source and
/// kind: first, last, count; ordered by first), `devices.{csv,parquet}` (per device: first and last window, traffic,
/// peers, alerts raised by its addresses) and `flow_windows.parquet` (the flow log, which
/// `tapwatch train --flows` reads).
pub fn report(paths: &[PathBuf], dir: &Path) -> Result<ReportSummary, AnalyticsError> {
    std::fs::create_dir_all(dir).map_err(|e| file_err(dir, e))?;
    let mut files = Vec::new();
    let mut alerts = alerts_frame(paths)?;
    let n_alerts = alerts.height();
    files.extend(write_frame(&mut alerts, dir, "alerts")?);

    let flows = scan_flow_log(paths)?;
    let mut log = flows.clone().collect()?;
    let log_path = dir.join("flow_windows.parquet");
    let f = std::fs::File::create(&log_path).map_err(|e| file_err(&log_path, e))?;
    ParquetWriter::new(f)
        .finish(&mut log)
        .map_err(|e| file_err(&log_path, e))?;
    files.push(log_path);

    let secs = i64_col(&log, "window_secs")?.get(0).unwrap_or(60).max(1);
    let alerts_lf = alerts.clone().lazy();
    let mut timeline = alerts_lf
        .clone()
        .group_by([col("src_ip"), col("kind")])
        .agg([
            col("timestamp").min().alias("first"),
            col("timestamp").max().alias("last"),
            len().cast(DataType::Int64).alias("alerts"),
        ])
        .sort(["first", "src_ip", "kind"], Default::default())
        .collect()?;
    files.extend(write_frame(&mut timeline, dir, "alert_timeline")?);

    let ip_alerts = alerts_lf
        .group_by([col("src_ip")])
        .agg([len().cast(DataType::Int64).alias("alerts")]);
    let dev_ips = flows
        .clone()
        .group_by([col("device"), col("device_ip")])
        .agg([len().alias("n")])
        .join(
            ip_alerts,
            [col("device_ip")],
            [col("src_ip")],
            JoinArgs::new(JoinType::Left),
        )
        .group_by([col("device")])
        .agg([
            col("alerts").fill_null(lit(0)).sum().alias("alerts"),
            col("device_ip").n_unique().alias("addresses"),
        ]);
    let mut devices = flows
        .group_by([col("device")])
        .agg([
            col("window").min().alias("first_window"),
            (col("window").max() + lit(secs)).alias("last_window_end"),
            col("window").n_unique().alias("windows"),
            col("packets_out").sum(),
            col("packets_in").sum(),
            col("bytes_out").sum(),
            col("bytes_in").sum(),
            col("flows_out").sum(),
            col("flows_in").sum(),
            col("mqtt_publishes").sum(),
            col("failed_connections").sum(),
            col("peer_ip")
                .filter(col("started"))
                .n_unique()
                .alias("peers"),
        ])
        .join(
            dev_ips,
            [col("device")],
            [col("device")],
            JoinArgs::new(JoinType::Left),
        )
        .sort(["device"], Default::default())
        .collect()?;
    // Readable times beside the epoch seconds.
    for (from, to) in [
        ("first_window", "first_seen"),
        ("last_window_end", "last_seen"),
    ] {
        let secs = i64_col(&devices, from)?;
        let text: Vec<Option<String>> = secs
            .iter()
            .map(|v| v.map(|s| Timestamp::from_secs(s.max(0) as u64).rfc3339().to_string()))
            .collect();
        devices.with_column(Column::new(to.into(), text))?;
    }
    let n_devices = devices.height();
    files.extend(write_frame(&mut devices, dir, "devices")?);
    Ok(ReportSummary {
        files,
        alerts: n_alerts,
        devices: n_devices,
    })
}
