//! `tapwatch`: clap arguments -> validated settings -> run -> exit code.

use clap::Parser;
use std::process::ExitCode;
use tapwatch::app::{self, AppError, Outcome, OutputOptions, ReplayOptions};
use tapwatch::cli::{Cli, Command, CommonArgs, OutputArgs};
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

fn output(o: &OutputArgs) -> OutputOptions {
    OutputOptions {
        path: o.output.clone(),
        flows: o.flows,
        discard: false,
    }
}

fn run(cli: Cli) -> Result<Outcome, AppError> {
    match cli.command {
        Command::Replay(a) => {
            let (s, rules) = settings(&a.common, Some(&a.out))?;
            let stop = app::stop_flag();
            let opts = ReplayOptions {
                inputs: a.files,
                output: output(&a.out),
                progress: true,
                quiet: a.out.quiet,
                bench: false,
            };
            Ok(app::replay(&s, rules, &opts, &stop)?.outcome)
        }
        Command::Bench(a) => {
            let (s, rules) = settings(&a.common, None)?;
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
            };
            let r = app::replay(&s, rules, &opts, &stop)?;
            print!("{}", app::bench_report(&r));
            Ok(r.outcome)
        }
        Command::Check(c) => {
            let (s, rules) = settings(&c, None)?;
            // Build every detector as a run would, so their parameters are checked too.
            tapwatch::detect::Detectors::new(&s, &rules)?;
            println!(
                "ok: config {}, {} rules from {}, {} home networks, {} zones",
                c.config
                    .as_ref()
                    .map_or("(defaults)".to_string(), |p| p.display().to_string()),
                rules.len(),
                rules.origin,
                s.home_net.len(),
                s.zones.len()
            );
            Ok(Outcome::Done)
        }
        Command::Live(a) => {
            let (mut s, rules) = settings(&a.common, Some(&a.out))?;
            if let Some(i) = a.stats_interval {
                s.stats_interval_secs = i;
            }
            live(&s, rules, &a)
        }
    }
}

#[cfg(feature = "live")]
fn live(s: &Settings, rules: RuleSet, a: &tapwatch::cli::LiveArgs) -> Result<Outcome, AppError> {
    let stop = app::stop_flag();
    let opts = tapwatch::capture::live::LiveOptions {
        interface: a.interface.clone(),
        filter: a.filter.clone(),
        snaplen: a.snaplen,
        promisc: a.promisc,
    };
    tapwatch::capture::live::run(s, rules, &opts, &output(&a.out), a.out.quiet, &stop)
}

#[cfg(not(feature = "live"))]
fn live(_: &Settings, _: RuleSet, _: &tapwatch::cli::LiveArgs) -> Result<Outcome, AppError> {
    Err(AppError::Usage(
        "this build has no live capture (rebuild with the `live` feature)".into(),
    ))
}
