//! `tapwatch`: clap arguments -> validated settings -> run -> exit code.

use clap::Parser;
use std::process::ExitCode;
use tapwatch::analysis::Learning;
use tapwatch::app::{self, AppError, Outcome, OutputOptions, ReplayOptions};
use tapwatch::cli::{Cli, Command, CommonArgs, ModelArgs, OutputArgs};
use tapwatch::detect::learned::Model;
use tapwatch::detect::rules::RuleSet;
use tapwatch::settings::{parse_cidrs, Settings};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(Outcome::Done) => ExitCode::SUCCESS,
        Ok(Outcome::Interrupted) => ExitCode::from(130),
        Err(e) => {
            eprintln!("tapwatch: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn settings(c: &CommonArgs, out: Option<&OutputArgs>) -> Result<(Settings, RuleSet), AppError> {
    let mut s = match &c.config {
        Some(p) => Settings::from_file(p)?,
        None => Settings::default(),
    };
    if let Some(h) = &c.home_net {
        s.home_net = parse_cidrs(h).map_err(|e| AppError::Usage(format!("--home-net: {e}")))?;
    }
    if let Some(o) = out {
        s.alert.reveal_secrets |= o.reveal_secrets;
    }
    let rules = app::load_rules(c.rules.as_deref())?;
    Ok((s, rules))
}

/// The model and learning mode of a run; the model's window length wins.
fn model(m: &ModelArgs, s: &mut Settings) -> Result<(Option<Model>, Learning), AppError> {
    if let Some(d) = &m.learn_for {
        let secs = tapwatch::time::parse_duration_secs(d)
            .map_err(|e| AppError::Usage(format!("--learn-for: {e}")))?;
        return Ok((None, Learning::Online { secs }));
    }
    if m.no_model {
        return Ok((None, Learning::Frozen));
    }
    let model = app::load_model(m.model.as_deref())?;
    if let Some(md) = &model {
        s.device.window_secs = md.window_secs;
        s.flow.window_secs = md.window_secs;
    }
    Ok((model, Learning::Frozen))
}

fn output(o: &OutputArgs) -> OutputOptions {
    OutputOptions {
        path: o.output.clone(),
        flows: o.flows,
        discard: false,
        rotation: tapwatch::alert::Rotation {
            max_bytes: o.rotate_size,
            max_secs: o.rotate_secs,
        },
    }
}

fn run(cli: Cli) -> Result<Outcome, AppError> {
    match cli.command {
        Command::Replay(a) => {
            let (mut s, rules) = settings(&a.common, Some(&a.out))?;
            let (model, learning) = model(&a.model, &mut s)?;
            let stop = app::stop_flag();
            let opts = ReplayOptions {
                inputs: a.files,
                output: output(&a.out),
                progress: true,
                quiet: a.out.quiet,
                bench: false,
                model,
                learning,
                workers: a.workers.count(),
            };
            Ok(app::replay(&s, rules, &opts, &stop)?.outcome)
        }
        Command::Bench(a) => {
            let (mut s, rules) = settings(&a.common, None)?;
            let (model, learning) = model(&a.model, &mut s)?;
            let stop = app::stop_flag();
            let opts = ReplayOptions {
                inputs: a.files,
                output: OutputOptions {
                    discard: true,
                    ..Default::default()
                },
                progress: false,
                quiet: true,
                bench: true,
                model,
                learning,
                workers: a.workers.count(),
            };
            let anon = tapwatch::stats::AnonPeak::start();
            let r = app::replay(&s, rules, &opts, &stop)?;
            print!(
                "{}",
                app::bench_report(&r, anon.stop(), tapwatch::cli::cores())
            );
            Ok(r.outcome)
        }
        Command::Check(c) => {
            let (s, rules) = settings(&c.common, None)?;
            // Build every detector as a run would, so their parameters are checked too.
            tapwatch::analysis::Analysis::new(&s, &rules, None, Learning::Frozen)?;
            let model = app::load_model(c.model.as_deref())?;
            println!(
                "ok: config {}, {} rules from {}, {} home networks, {} zones, model {}",
                c.common
                    .config
                    .as_ref()
                    .map_or("(defaults)".to_string(), |p| p.display().to_string()),
                rules.len(),
                rules.origin,
                s.home_net.len(),
                s.zones.len(),
                model.as_ref().map_or("(none)".to_string(), |m| format!(
                    "{} ({} devices, threshold {:.3})",
                    m.scorer.name(),
                    m.baselines.devices.len(),
                    m.threshold
                ))
            );
            Ok(Outcome::Done)
        }
        Command::Train(a) => {
            let (s, rules) = settings(&a.common, None)?;
            let stop = app::stop_flag();
            app::train(&s, rules, &a, &stop)
        }
        Command::Report(a) => app::report(&a),
        Command::Inventory(a) => {
            let (s, rules) = settings(&a.common, None)?;
            let stop = app::stop_flag();
            app::inventory(&s, rules, &a.files, a.json, &stop)
        }
        Command::Live(a) => {
            let (mut s, rules) = settings(&a.common, Some(&a.out))?;
            if let Some(i) = a.stats_interval {
                s.stats_interval_secs = i;
            }
            let (model, learning) = model(&a.model, &mut s)?;
            live(&s, rules, &a, model, learning)
        }
    }
}

#[cfg(feature = "live")]
fn live(
    s: &Settings,
    rules: RuleSet,
    a: &tapwatch::cli::LiveArgs,
    model: Option<Model>,
    learning: Learning,
) -> Result<Outcome, AppError> {
    let stop = app::stop_flag();
    let opts = tapwatch::capture::live::LiveOptions {
        interface: a.interface.clone(),
        filter: a.filter.clone(),
        snaplen: a.snaplen,
        promisc: a.promisc,
        model,
        learning,
        user: a.user.clone(),
        workers: a.workers.count(),
    };
    tapwatch::capture::live::run(s, rules, &opts, &output(&a.out), a.out.quiet, &stop)
}

#[cfg(not(feature = "live"))]
fn live(
    _: &Settings,
    _: RuleSet,
    _: &tapwatch::cli::LiveArgs,
    _: Option<Model>,
    _: Learning,
) -> Result<Outcome, AppError> {
    Err(AppError::Usage(
        "this build has no live capture (rebuild with the `live` feature)".into(),
    ))
}
