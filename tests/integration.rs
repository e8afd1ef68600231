//! The integration suite: one test binary (ripgrep's layout), modules in tests/suite/.
#[path = "suite/util.rs"]
mod util;

#[cfg(feature = "analytics")]
#[path = "suite/analytics.rs"]
mod analytics;
#[path = "suite/baseline.rs"]
mod baseline;
#[path = "suite/capture.rs"]
mod capture;
#[path = "suite/cli.rs"]
mod cli;
#[path = "suite/eve.rs"]
mod eve;
#[path = "suite/hostile.rs"]
mod hostile;
#[path = "suite/lab.rs"]
mod lab;
#[path = "suite/live.rs"]
mod live;
#[path = "suite/parallel.rs"]
mod parallel;
#[path = "suite/protocols.rs"]
mod protocols;
#[path = "suite/reliability.rs"]
mod reliability;
#[path = "suite/robustness.rs"]
mod robustness;
#[path = "suite/scan.rs"]
mod scan;
#[path = "suite/scorer.rs"]
mod scorer;
