//! The learned outlier detector and its model file.
//!
//! Window feature vectors (see [`crate::device::FEATURES`]) are transformed with `ln(1 + x)`,
//! standardised with the training median and a robust scale, and scored by a model trained with
//! linfa on the site's own normal traffic:
//! - `kmeans`: distance to the nearest k-means centroid;
//! - `gmm`: negative log-likelihood under a Gaussian mixture (computed here from the mixture's
//!   weights, means and covariances, as linfa's own probabilities saturate for far outliers).
//!
//! The alert threshold is calibrated on the training scores: the `quantile` (default 0.995) of
//! the training scores times `margin` (default 1.5), so that a network that keeps behaving as
//! it did in training stays quiet. Each alert names the features that deviate most from the
//! device's own median (or the site's, for a device not seen in training).
//!
//! The model file is JSON: format name and version, feature schema and list, window length,
//! scaler, model parameters, threshold, the per-device baselines, and provenance (captures with
//! their SHA-256, packet-time range, training date). Loading checks all of it and refuses a
//! mismatched or damaged file with the reason.

use crate::device::baseline::{median_mad, Baselines, Learner};
use crate::device::{DeviceId, WindowVector, FEATURES, FEATURE_SCHEMA, N_FEATURES};
use serde::{Deserialize, Serialize};
use std::path::Path;

pub const MODEL_FORMAT: &str = "tapwatch-model";
pub const MODEL_VERSION: u32 = 1;

/// Why a model file cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {reason}")]
pub struct ModelError {
    pub file: String,
    pub reason: String,
}

/// Robust standardisation of `ln(1 + x)`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Scaler {
    pub center: Vec<f64>,
    pub scale: Vec<f64>,
}

impl Scaler {
    pub fn fit(rows: &[[f64; N_FEATURES]]) -> Scaler {
        let mut center = Vec::with_capacity(N_FEATURES);
        let mut scale = Vec::with_capacity(N_FEATURES);
        for i in 0..N_FEATURES {
            let col: Vec<f64> = rows.iter().map(|r| r[i].max(0.0).ln_1p()).collect();
            let (m, mad) = median_mad(&col);
            let n = col.len().max(1) as f64;
            let mean = col.iter().sum::<f64>() / n;
            let sd = (col.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt();
            let mut s = 1.4826 * mad;
            if s < 0.25 {
                s = sd.max(0.25);
            }
            center.push(m);
            scale.push(s);
        }
        Scaler { center, scale }
    }

    pub fn transform(&self, v: &[f64; N_FEATURES]) -> [f64; N_FEATURES] {
        let mut z = [0.0; N_FEATURES];
        for i in 0..N_FEATURES {
            z[i] = (v[i].max(0.0).ln_1p() - self.center[i]) / self.scale[i];
        }
        z
    }
}

/// The scoring model.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Scorer {
    Kmeans {
        centroids: Vec<Vec<f64>>,
    },
    Gmm {
        weights: Vec<f64>,
        means: Vec<Vec<f64>>,
        /// Lower Cholesky factors of the covariances, row-major.
        cholesky: Vec<Vec<f64>>,
    },
}

impl Scorer {
    pub fn name(&self) -> &'static str {
        match self {
            Scorer::Kmeans { .. } => "kmeans",
            Scorer::Gmm { .. } => "gmm",
        }
    }

    /// Outlier score of a standardised vector (higher is more unusual).
    pub fn score(&self, z: &[f64; N_FEATURES]) -> f64 {
        match self {
            Scorer::Kmeans { centroids } => centroids
                .iter()
                .map(|c| {
                    c.iter()
                        .zip(z.iter())
                        .map(|(a, b)| (a - b).powi(2))
                        .sum::<f64>()
                        .sqrt()
                })
                .fold(f64::INFINITY, f64::min),
            Scorer::Gmm {
                weights,
                means,
                cholesky,
            } => {
                // log sum_k w_k N(z; mu_k, L_k L_k^T), by log-sum-exp.
                let d = N_FEATURES;
                let logs: Vec<f64> = weights
                    .iter()
                    .zip(means.iter())
                    .zip(cholesky.iter())
                    .map(|((w, mu), l)| {
                        // Solve L y = (z - mu) by forward substitution.
                        let mut y = [0.0; N_FEATURES];
                        let mut logdet = 0.0;
                        for i in 0..d {
                            let mut s = z[i] - mu[i];
                            for j in 0..i {
                                s -= l[i * d + j] * y[j];
                            }
                            let lii = l[i * d + i];
                            y[i] = s / lii;
                            logdet += lii.ln();
                        }
                        let m2: f64 = y.iter().map(|v| v * v).sum();
                        w.ln()
                            - 0.5 * m2
                            - logdet
                            - 0.5 * d as f64 * (2.0 * std::f64::consts::PI).ln()
                    })
                    .collect();
                let mx = logs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let lse = mx + logs.iter().map(|v| (v - mx).exp()).sum::<f64>().ln();
                -lse
            }
        }
    }
}

/// One capture used for training.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CaptureRef {
    pub path: String,
    pub sha256: String,
    pub packets: u64,
}

/// Where a model comes from.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Provenance {
    pub captures: Vec<CaptureRef>,
    /// Packet time of the first and last training packet.
    pub first_packet: String,
    pub last_packet: String,
    /// When training ran (wall clock, UTC).
    pub trained_at: String,
    pub tapwatch_version: String,
    pub windows: u64,
    pub devices: u64,
}

/// Threshold calibration.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Calibration {
    /// Quantile of the training scores taken (default 0.995).
    pub quantile: f64,
    /// Multiplier on that quantile (default 1.5).
    pub margin: f64,
}

/// A model file.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Model {
    pub format: String,
    pub format_version: u32,
    pub feature_schema: String,
    pub features: Vec<String>,
    pub window_secs: u64,
    pub scaler: Scaler,
    pub scorer: Scorer,
    pub threshold: f64,
    pub calibration: Calibration,
    pub baselines: Baselines,
    pub provenance: Provenance,
}

fn finite(v: &[f64]) -> bool {
    v.iter().all(|x| x.is_finite())
}

impl Model {
    /// Loads and checks a model file.
    pub fn load(path: &Path) -> Result<Model, ModelError> {
        let file = path.display().to_string();
        let err = |reason: String| ModelError {
            file: file.clone(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        Model::from_json(&text).map_err(err)
    }

    pub fn from_json(text: &str) -> Result<Model, String> {
        // Check the format first, for a clear message on other versions.
        let head: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| format!("line {}: not a valid model file: {e}", e.line()))?;
        if head.get("format").and_then(|v| v.as_str()) != Some(MODEL_FORMAT) {
            return Err(format!(
                "not a tapwatch model (format is not {MODEL_FORMAT:?})"
            ));
        }
        let v = head.get("format_version").and_then(|v| v.as_u64());
        if v != Some(u64::from(MODEL_VERSION)) {
            return Err(format!(
                "model format version {v:?}, this tapwatch reads version {MODEL_VERSION}: retrain with `tapwatch train`"
            ));
        }
        let mut m: Model =
            serde_json::from_value(head).map_err(|e| format!("malformed model: {e}"))?;
        m.check()?;
        m.baselines.reindex();
        Ok(m)
    }

    fn check(&self) -> Result<(), String> {
        if self.feature_schema != FEATURE_SCHEMA {
            return Err(format!(
                "feature schema {:?}, this tapwatch computes {FEATURE_SCHEMA:?}: retrain",
                self.feature_schema
            ));
        }
        if self.features != FEATURES {
            return Err(format!(
                "feature list {:?} differs from this tapwatch's {:?}",
                self.features, FEATURES
            ));
        }
        if self.window_secs == 0 {
            return Err("window_secs is 0".into());
        }
        let n = N_FEATURES;
        if self.scaler.center.len() != n || self.scaler.scale.len() != n {
            return Err(format!("scaler has the wrong length (expected {n})"));
        }
        if !finite(&self.scaler.center)
            || !finite(&self.scaler.scale)
            || self.scaler.scale.iter().any(|s| *s <= 0.0)
        {
            return Err("scaler holds non-finite or non-positive values".into());
        }
        match &self.scorer {
            Scorer::Kmeans { centroids } => {
                if centroids.is_empty() || centroids.iter().any(|c| c.len() != n || !finite(c)) {
                    return Err(
                        "k-means centroids missing, of the wrong length or not finite".into(),
                    );
                }
            }
            Scorer::Gmm {
                weights,
                means,
                cholesky,
            } => {
                let k = weights.len();
                if k == 0 || means.len() != k || cholesky.len() != k {
                    return Err("mixture components inconsistent".into());
                }
                if !finite(weights) || weights.iter().any(|w| *w <= 0.0) {
                    return Err("mixture weights must be positive".into());
                }
                if means.iter().any(|m| m.len() != n || !finite(m))
                    || cholesky.iter().any(|l| {
                        l.len() != n * n || !finite(l) || (0..n).any(|i| l[i * n + i] <= 0.0)
                    })
                {
                    return Err("mixture means or covariances malformed".into());
                }
            }
        }
        if !self.threshold.is_finite() {
            return Err("threshold is not finite".into());
        }
        for d in &self.baselines.devices {
            if DeviceId::parse(&d.device).is_none() {
                return Err(format!("baseline for unknown device id {:?}", d.device));
            }
            if d.median.len() != n || d.mad.len() != n || !finite(&d.median) || !finite(&d.mad) {
                return Err(format!("baseline of {} malformed", d.device));
            }
        }
        Ok(())
    }

    pub fn save(&self, path: &Path) -> Result<(), ModelError> {
        let text = serde_json::to_string_pretty(self).map_err(|e| ModelError {
            file: path.display().to_string(),
            reason: e.to_string(),
        })?;
        std::fs::write(path, text + "\n").map_err(|e| ModelError {
            file: path.display().to_string(),
            reason: e.to_string(),
        })
    }

    /// Score of a window vector.
    pub fn score(&self, v: &[f64; N_FEATURES]) -> f64 {
        self.scorer.score(&self.scaler.transform(v))
    }

    /// The features that deviate most, as (feature, value, reference median, ratio), most
    /// deviant first. The reference is the device's median when it has a baseline.
    pub fn explain(&self, w: &WindowVector, top: usize) -> Vec<(&'static str, f64, f64, f64)> {
        let dev = self.baselines.get(&w.device);
        let z = self.scaler.transform(&w.values);
        let mut idx: Vec<usize> = (0..N_FEATURES).collect();
        let dz = |i: usize| -> f64 {
            match dev {
                Some(d) => {
                    let m = d.median[i].max(0.0).ln_1p();
                    (w.values[i].max(0.0).ln_1p() - m).abs() / self.scaler.scale[i]
                }
                None => z[i].abs(),
            }
        };
        idx.sort_by(|a, b| dz(*b).total_cmp(&dz(*a)));
        idx.into_iter()
            .take(top)
            .map(|i| {
                let reference = match dev {
                    Some(d) => d.median[i],
                    None => self.scaler.center[i].exp_m1(),
                };
                let ratio = (w.values[i] + 1.0) / (reference + 1.0);
                (FEATURES[i], w.values[i], reference, ratio)
            })
            .collect()
    }
}

/// Which scorer to train.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScorerKind {
    Kmeans,
    Gmm,
}

impl ScorerKind {
    pub fn parse(s: &str) -> Option<ScorerKind> {
        match s {
            "kmeans" => Some(ScorerKind::Kmeans),
            "gmm" => Some(ScorerKind::Gmm),
            _ => None,
        }
    }
}

/// The q-quantile of scores.
pub fn quantile(scores: &[f64], q: f64) -> f64 {
    let mut v: Vec<f64> = scores.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((v.len() - 1) as f64 * q.clamp(0.0, 1.0)).round() as usize;
    v[i.min(v.len() - 1)]
}

/// Lower Cholesky factor of a symmetric positive-definite matrix (row-major), with a ridge
/// added until it succeeds.
fn cholesky(a: &[f64], n: usize) -> Vec<f64> {
    let mut ridge = 0.0;
    loop {
        let mut l = vec![0.0; n * n];
        let mut ok = true;
        'outer: for i in 0..n {
            for j in 0..=i {
                let mut s = a[i * n + j] + if i == j { ridge } else { 0.0 };
                for k in 0..j {
                    s -= l[i * n + k] * l[j * n + k];
                }
                if i == j {
                    if s <= 1e-12 {
                        ok = false;
                        break 'outer;
                    }
                    l[i * n + i] = s.sqrt();
                } else {
                    l[i * n + j] = s / l[j * n + j];
                }
            }
        }
        if ok {
            return l;
        }
        ridge = if ridge == 0.0 { 1e-6 } else { ridge * 10.0 };
    }
}

/// Trains a scorer on standardised rows with linfa. Deterministic (fixed seed).
pub fn train_scorer(z: &[[f64; N_FEATURES]], kind: ScorerKind) -> Result<Scorer, String> {
    use linfa::prelude::*;
    if z.len() < 10 {
        return Err(format!(
            "only {} training windows: need at least 10 (train on a longer capture)",
            z.len()
        ));
    }
    let x = ndarray::Array2::from_shape_fn((z.len(), N_FEATURES), |(i, j)| z[i][j]);
    let ds = linfa::DatasetBase::from(x);
    let rng = rand_xoshiro_seed();
    match kind {
        ScorerKind::Kmeans => {
            let k = (z.len() / 20).clamp(1, 8);
            let model = linfa_clustering::KMeans::params_with_rng(k, rng)
                .n_runs(4)
                .max_n_iterations(200)
                .tolerance(1e-5)
                .fit(&ds)
                .map_err(|e| format!("k-means: {e}"))?;
            let c = model.centroids();
            Ok(Scorer::Kmeans {
                centroids: c.outer_iter().map(|r| r.to_vec()).collect(),
            })
        }
        ScorerKind::Gmm => {
            // Fewer components when the data cannot support more (a component left empty).
            let kmax = (z.len() / 50).clamp(1, 4);
            let mut fitted = None;
            let mut last_err = String::new();
            for k in (1..=kmax).rev() {
                match linfa_clustering::GaussianMixtureModel::params_with_rng(k, rng.clone())
                    .n_runs(2)
                    .reg_covariance(1e-3)
                    .max_n_iterations(200)
                    .fit(&ds)
                {
                    Ok(m) => {
                        fitted = Some((k, m));
                        break;
                    }
                    Err(e) => last_err = e.to_string(),
                }
            }
            let (k, model) = fitted.ok_or_else(|| format!("Gaussian mixture: {last_err}"))?;
            let n = N_FEATURES;
            let covs = model.covariances();
            let cholesky_factors = (0..k)
                .map(|c| {
                    let a: Vec<f64> = (0..n * n).map(|ij| covs[[c, ij / n, ij % n]]).collect();
                    cholesky(&a, n)
                })
                .collect();
            Ok(Scorer::Gmm {
                weights: model.weights().to_vec(),
                means: model.means().outer_iter().map(|r| r.to_vec()).collect(),
                cholesky: cholesky_factors,
            })
        }
    }
}

fn rand_xoshiro_seed() -> rand_xoshiro::Xoshiro256Plus {
    use rand::SeedableRng;
    rand_xoshiro::Xoshiro256Plus::seed_from_u64(0x7461_7077)
}

/// Trains a complete model from what a learner gathered.
pub fn train(
    learner: &Learner,
    window_secs: u64,
    kind: ScorerKind,
    calibration: Calibration,
    provenance: Provenance,
) -> Result<(Model, Vec<f64>), String> {
    let rows = &learner.all;
    let scaler = Scaler::fit(rows);
    let z: Vec<[f64; N_FEATURES]> = rows.iter().map(|r| scaler.transform(r)).collect();
    let scorer = train_scorer(&z, kind)?;
    let scores: Vec<f64> = z.iter().map(|r| scorer.score(r)).collect();
    let q = quantile(&scores, calibration.quantile);
    // For k-means a distance; for the mixture a negative log-likelihood, which can be negative:
    // put the margin on its distance above the median.
    let threshold = match kind {
        ScorerKind::Kmeans => q * calibration.margin,
        ScorerKind::Gmm => {
            let med = quantile(&scores, 0.5);
            med + (q - med) * calibration.margin
        }
    };
    let model = Model {
        format: MODEL_FORMAT.into(),
        format_version: MODEL_VERSION,
        feature_schema: FEATURE_SCHEMA.into(),
        features: FEATURES.iter().map(|s| s.to_string()).collect(),
        window_secs,
        scaler,
        scorer,
        threshold,
        calibration,
        baselines: learner.build(),
        provenance,
    };
    Ok((model, scores))
}

/// Area under the ROC curve of scores against labels (Mann-Whitney U; ties count half).
pub fn auc(scores: &[f64], labels: &[bool]) -> f64 {
    let mut pairs: Vec<(f64, bool)> = scores.iter().copied().zip(labels.iter().copied()).collect();
    pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (mut rank_sum, mut pos) = (0.0, 0usize);
    let n = pairs.len();
    let mut i = 0;
    while i < n {
        let mut j = i;
        while j + 1 < n && pairs[j + 1].0 == pairs[i].0 {
            j += 1;
        }
        let avg_rank = (i + j) as f64 / 2.0 + 1.0;
        for p in &pairs[i..=j] {
            if p.1 {
                rank_sum += avg_rank;
                pos += 1;
            }
        }
        i = j + 1;
    }
    let neg = n - pos;
    if pos == 0 || neg == 0 {
        return f64::NAN;
    }
    (rank_sum - (pos * (pos + 1)) as f64 / 2.0) / (pos as f64 * neg as f64)
}

/// Precision, recall and AUC of a model on labelled windows.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Evaluation {
    pub windows: usize,
    pub positives: usize,
    pub flagged: usize,
    pub true_flagged: usize,
    pub precision: f64,
    pub recall: f64,
    pub auc: f64,
}

pub fn evaluate(model: &Model, windows: &[WindowVector], labels: &[bool]) -> Evaluation {
    let scores: Vec<f64> = windows.iter().map(|w| model.score(&w.values)).collect();
    let flagged: Vec<bool> = scores.iter().map(|s| *s > model.threshold).collect();
    let positives = labels.iter().filter(|l| **l).count();
    let nflag = flagged.iter().filter(|f| **f).count();
    let tp = flagged
        .iter()
        .zip(labels)
        .filter(|(f, l)| **f && **l)
        .count();
    Evaluation {
        windows: windows.len(),
        positives,
        flagged: nflag,
        true_flagged: tp,
        precision: if nflag == 0 {
            1.0
        } else {
            tp as f64 / nflag as f64
        },
        recall: if positives == 0 {
            1.0
        } else {
            tp as f64 / positives as f64
        },
        auc: auc(&scores, labels),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_of_perfect_and_random_rankings() {
        assert_eq!(auc(&[0.1, 0.2, 0.9, 0.8], &[false, false, true, true]), 1.0);
        assert_eq!(auc(&[0.9, 0.8, 0.1, 0.2], &[false, false, true, true]), 0.0);
        assert_eq!(auc(&[0.5, 0.5], &[false, true]), 0.5);
    }

    #[test]
    fn quantiles() {
        let v: Vec<f64> = (0..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), 50.0);
        assert_eq!(quantile(&v, 1.0), 100.0);
        assert_eq!(quantile(&[], 0.5), 0.0);
    }

    #[test]
    fn cholesky_solves_and_gmm_scores_far_points_higher() {
        let n = N_FEATURES;
        let mut eye = vec![0.0; n * n];
        for i in 0..n {
            eye[i * n + i] = 4.0;
        }
        let l = cholesky(&eye, n);
        assert!((l[0] - 2.0).abs() < 1e-12);
        let g = Scorer::Gmm {
            weights: vec![1.0],
            means: vec![vec![0.0; n]],
            cholesky: vec![l],
        };
        let near = g.score(&[0.1; N_FEATURES]);
        let far = g.score(&[5.0; N_FEATURES]);
        assert!(far > near + 10.0, "{near} {far}");
    }
}
