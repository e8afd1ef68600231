//! Rule files: TOML in `rules/`, compiled once at start-up into a typed [`RuleSet`].
//!
//! A rule names the signature of one kind of finding (sid, rev, message, category, severity)
//! and the thresholds of the detector that produces it. Any problem — a syntax error, an unknown
//! field, an unknown kind, a duplicate sid, a bad threshold — stops start-up with the file, the
//! line and the reason.

use super::Kind;
use crate::settings::{line_of, Lines};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use toml::Spanned;

/// A rule file problem, located.
#[derive(Debug, thiserror::Error)]
#[error("{file}:{line}: {reason}")]
pub struct RuleError {
    pub file: String,
    pub line: usize,
    pub reason: String,
}

/// The rule files shipped with tapwatch, compiled into the binary (used when no rules directory
/// is given and `./rules` does not exist).
pub const EMBEDDED: &[(&str, &str)] = &[
    (
        "rules/10-protocol.toml",
        include_str!("../../rules/10-protocol.toml"),
    ),
    (
        "rules/20-credentials.toml",
        include_str!("../../rules/20-credentials.toml"),
    ),
    (
        "rules/30-scan.toml",
        include_str!("../../rules/30-scan.toml"),
    ),
    (
        "rules/40-lateral.toml",
        include_str!("../../rules/40-lateral.toml"),
    ),
    (
        "rules/50-baseline.toml",
        include_str!("../../rules/50-baseline.toml"),
    ),
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    rule: Vec<Spanned<RawRule>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    sid: Spanned<u32>,
    rev: u32,
    kind: Spanned<String>,
    #[serde(default)]
    variant: String,
    signature: String,
    category: String,
    severity: Spanned<u8>,
    #[serde(default = "yes")]
    enabled: bool,
    suppress_secs: Option<u64>,
    #[serde(default)]
    params: toml::Table,
}

fn yes() -> bool {
    true
}

/// One compiled rule.
#[derive(Clone, Debug)]
pub struct Rule {
    pub sid: u32,
    pub rev: u32,
    pub kind: Kind,
    pub variant: String,
    pub signature: String,
    pub category: String,
    /// 1 (high) .. 3 (low), as in EVE.
    pub severity: u8,
    pub enabled: bool,
    /// Suppression window for repeats of the same finding (seconds of packet time); `None`
    /// takes the configured default.
    pub suppress_secs: Option<u64>,
    pub params: toml::Table,
    pub file: String,
    pub line: usize,
}

impl Rule {
    /// Reads this rule's `params` into a typed structure (unknown keys are errors).
    pub fn params<T: DeserializeOwned>(&self) -> Result<T, RuleError> {
        toml::Value::Table(self.params.clone())
            .try_into()
            .map_err(|e: toml::de::Error| RuleError {
                file: self.file.clone(),
                line: self.line,
                reason: format!("rule {} params: {}", self.sid, e.message()),
            })
    }

    /// An error located at this rule.
    pub fn error(&self, reason: impl Into<String>) -> RuleError {
        RuleError {
            file: self.file.clone(),
            line: self.line,
            reason: format!("rule {}: {}", self.sid, reason.into()),
        }
    }
}

/// All rules, indexed by kind (then variant).
#[derive(Clone, Debug, Default)]
pub struct RuleSet {
    rules: Vec<Rule>,
    /// Per [`Kind::index`]: (variant, rule index). A kind has one rule or a few, so a lookup
    /// scans them, with no key to build per finding.
    per_kind: Vec<Vec<(String, usize)>>,
    /// Where the rules came from (a directory, or "built-in").
    pub origin: String,
    /// Directory of the rule files, for data files they refer to (None for built-in rules).
    pub dir: Option<PathBuf>,
}

impl RuleSet {
    /// Loads every `*.toml` file of `dir`, in name order.
    pub fn load_dir(dir: &Path) -> Result<RuleSet, RuleError> {
        let err = |reason: String| RuleError {
            file: dir.display().to_string(),
            line: 0,
            reason,
        };
        let rd = std::fs::read_dir(dir).map_err(|e| err(format!("cannot read directory: {e}")))?;
        let mut files: Vec<PathBuf> = rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(err("no *.toml rule files".into()));
        }
        let mut texts = Vec::new();
        for f in &files {
            let text = std::fs::read_to_string(f).map_err(|e| RuleError {
                file: f.display().to_string(),
                line: 0,
                reason: e.to_string(),
            })?;
            texts.push((f.display().to_string(), text));
        }
        let mut rs = RuleSet::from_texts(texts.iter().map(|(f, t)| (f.as_str(), t.as_str())))?;
        rs.origin = dir.display().to_string();
        rs.dir = Some(dir.to_path_buf());
        Ok(rs)
    }

    /// The shipped rules built into the binary.
    pub fn embedded() -> Result<RuleSet, RuleError> {
        let mut rs = RuleSet::from_texts(EMBEDDED.iter().copied())?;
        rs.origin = "built-in".into();
        Ok(rs)
    }

    /// Compiles rule files given as (name, text).
    pub fn from_texts<'a>(
        files: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<RuleSet, RuleError> {
        let mut rs = RuleSet::default();
        let mut sids: BTreeMap<u32, (String, usize)> = BTreeMap::new();
        for (file, text) in files {
            let raw: RawFile = toml::from_str(text).map_err(|e| RuleError {
                file: file.into(),
                line: e.span().map_or(0, |s| line_of(text, s.start)),
                reason: e.message().to_string(),
            })?;
            let mut lines = Lines::new(text);
            for r in raw.rule {
                let line = lines.line_of(r.span().start);
                let r = r.into_inner();
                let at = |span: std::ops::Range<usize>, reason: String| RuleError {
                    file: file.into(),
                    line: line_of(text, span.start),
                    reason,
                };
                let kind = Kind::parse(r.kind.get_ref()).ok_or_else(|| {
                    at(
                        r.kind.span(),
                        format!(
                            "unknown kind {:?} (known: {})",
                            r.kind.get_ref(),
                            Kind::ALL.map(|k| k.as_str()).join(", ")
                        ),
                    )
                })?;
                let sid = *r.sid.get_ref();
                if sid == 0 {
                    return Err(at(r.sid.span(), "sid must be positive".into()));
                }
                if let Some((f, l)) = sids.get(&sid) {
                    return Err(at(
                        r.sid.span(),
                        format!("duplicate sid {sid} (first defined at {f}:{l})"),
                    ));
                }
                let severity = *r.severity.get_ref();
                if !(1..=3).contains(&severity) {
                    return Err(at(
                        r.severity.span(),
                        format!("severity {severity} out of range 1 (high) .. 3 (low)"),
                    ));
                }
                if rs.per_kind.len() < Kind::ALL.len() {
                    rs.per_kind.resize(Kind::ALL.len(), Vec::new());
                }
                let same = rs.per_kind.get(kind.index()).and_then(|v| {
                    v.iter()
                        .find(|(variant, _)| *variant == r.variant)
                        .map(|&(_, i)| i)
                });
                if let Some(other) = same {
                    let o: &Rule = &rs.rules[other];
                    return Err(RuleError {
                        file: file.into(),
                        line,
                        reason: format!(
                            "a second rule for kind {} variant {:?} (first: sid {} at {}:{})",
                            kind.as_str(),
                            r.variant,
                            o.sid,
                            o.file,
                            o.line
                        ),
                    });
                }
                sids.insert(sid, (file.to_string(), line));
                if let Some(v) = rs.per_kind.get_mut(kind.index()) {
                    v.push((r.variant.clone(), rs.rules.len()));
                }
                rs.rules.push(Rule {
                    sid,
                    rev: r.rev,
                    kind,
                    variant: r.variant,
                    signature: r.signature,
                    category: r.category,
                    severity,
                    enabled: r.enabled,
                    suppress_secs: r.suppress_secs,
                    params: r.params,
                    file: file.into(),
                    line,
                });
            }
        }
        Ok(rs)
    }

    /// The rule for `kind` and `variant`, falling back to the kind's default rule.
    pub fn get(&self, kind: Kind, variant: &str) -> Option<&Rule> {
        let mut default = None;
        for (v, i) in self.per_kind.get(kind.index()).into_iter().flatten() {
            if v == variant {
                return self.rules.get(*i);
            }
            if v.is_empty() {
                default = Some(*i);
            }
        }
        default.and_then(|i| self.rules.get(i))
    }

    /// The rule for `kind` and `variant` if present and enabled.
    pub fn enabled(&self, kind: Kind, variant: &str) -> Option<&Rule> {
        self.get(kind, variant).filter(|r| r.enabled)
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &str = r#"
[[rule]]
sid = 9000001
rev = 1
kind = "plaintext_mqtt"
signature = "MQTT in clear"
category = "Policy"
severity = 3
"#;

    #[test]
    fn shipped_rules_compile() {
        let rs = RuleSet::embedded().expect("shipped rules");
        assert!(rs.get(Kind::PlaintextMqtt, "").is_some());
    }

    #[test]
    fn errors_are_located() {
        let bad_kind = OK.replace("plaintext_mqtt", "plaintext_mqt");
        let e = RuleSet::from_texts([("a.toml", bad_kind.as_str())]).unwrap_err();
        assert_eq!((e.file.as_str(), e.line), ("a.toml", 5));
        assert!(e.reason.contains("unknown kind"), "{e}");

        let dup = format!("{OK}\n{}", OK.replace("plaintext_mqtt", "plaintext_http"));
        let e = RuleSet::from_texts([("b.toml", dup.as_str())]).unwrap_err();
        assert_eq!(e.line, 12);
        assert!(e.reason.contains("duplicate sid 9000001"), "{e}");

        let sev = OK.replace("severity = 3", "severity = 7");
        let e = RuleSet::from_texts([("c.toml", sev.as_str())]).unwrap_err();
        assert_eq!(e.line, 8);

        let unknown_field = OK.replace("rev = 1", "rev = 1\nrevv = 2");
        let e = RuleSet::from_texts([("d.toml", unknown_field.as_str())]).unwrap_err();
        assert_eq!(e.line, 5);
        assert!(e.reason.contains("revv"), "{e}");

        let syntax = OK.replace("sid = 9000001", "sid = = 1");
        let e = RuleSet::from_texts([("e.toml", syntax.as_str())]).unwrap_err();
        assert_eq!(e.line, 3);
        // Two rules for one kind and variant; another variant of the kind is fine and is
        // what `get` picks for it, the default rule for any other variant.
        let two = format!("{OK}\n{}", OK.replace("9000001", "9000002"));
        let e = RuleSet::from_texts([("f.toml", two.as_str())]).unwrap_err();
        assert_eq!(e.line, 11, "the second rule's [[rule]] line");
        assert!(
            e.reason.contains("a second rule for kind plaintext_mqtt"),
            "{e}"
        );
        let ws = OK
            .replace("9000001", "9000002")
            .replace("rev = 1", "rev = 1\nvariant = \"ws\"");
        let both = format!("{OK}\n{ws}");
        let rs = RuleSet::from_texts([("g.toml", both.as_str())]).expect("two variants");
        assert_eq!(
            rs.get(Kind::PlaintextMqtt, "ws").map(|r| r.sid),
            Some(9000002)
        );
        assert_eq!(
            rs.get(Kind::PlaintextMqtt, "").map(|r| r.sid),
            Some(9000001)
        );
        assert_eq!(
            rs.get(Kind::PlaintextMqtt, "other").map(|r| r.sid),
            Some(9000001)
        );
        assert!(rs.get(Kind::PlaintextHttp, "").is_none());
    }

    #[test]
    fn typed_params_reject_unknown_keys() {
        #[derive(Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        struct P {
            #[allow(dead_code)]
            count: u32,
        }
        let t = format!("{OK}[rule.params]\ncount = 5\n");
        let rs = RuleSet::from_texts([("f.toml", t.as_str())]).unwrap();
        let r = rs.get(Kind::PlaintextMqtt, "").unwrap();
        assert!(r.params::<P>().is_ok());
        let t = format!("{OK}[rule.params]\ncuont = 5\n");
        let rs = RuleSet::from_texts([("f.toml", t.as_str())]).unwrap();
        let e = rs
            .get(Kind::PlaintextMqtt, "")
            .unwrap()
            .params::<P>()
            .unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.reason.contains("cuont"), "{e}");
    }
}

#[cfg(test)]
mod embedded_tests {
    #[test]
    fn embedded_rules_are_the_shipped_files() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".toml"))
            .map(|n| format!("rules/{n}"))
            .collect();
        on_disk.sort();
        let embedded: Vec<String> = super::EMBEDDED.iter().map(|(n, _)| n.to_string()).collect();
        assert_eq!(embedded, on_disk, "add new rule files to EMBEDDED");
        for (name, text) in super::EMBEDDED {
            let disk =
                std::fs::read_to_string(dir.join(name.trim_start_matches("rules/"))).unwrap();
            assert_eq!(&disk, text);
        }
    }
}
