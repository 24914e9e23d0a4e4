//! Model chooser: a small decision tree that predicts, from cheap per-series descriptors,
//! which forecasting model would win the backtest.
//!
//! Why: backtesting every candidate model on every SKU dominates a large nightly run.
//! Train the chooser on the series that were backtested (descriptors → winning model
//! index), then for the rest run only the predicted model, and still backtest where the
//! chooser is unsure ([`Chooser::predict_with_confidence`]).
//!
//! The tree is grown by `linfa_trees::DecisionTree` (Gini, depth ≤ [`MAX_DEPTH`], at least
//! [`MIN_LEAF`] samples per leaf) and then copied into our own node list, whose leaf labels
//! are recounted from the training data. That makes prediction deterministic: linfa picks
//! a leaf's majority class by iterating a `HashMap`, so exact ties are decided at random;
//! we break them towards the lower model index.
//!
//! Descriptor hygiene: NaN becomes 0 (e.g. `cv2` of a series with no demand) and ±∞
//! becomes ±1e300 (e.g. `adi` of a series that never sold), in training and prediction
//! alike. linfa sorts feature values with `partial_cmp`, which NaN would break.

use std::panic::{AssertUnwindSafe, catch_unwind};

use linfa::Dataset;
use linfa::prelude::Fit;
use linfa_trees::{DecisionTree, SplitQuality, TreeNode};
use ndarray::{Array1, Array2};

/// Descriptor names, in array order.
pub const DESCRIPTORS: &[&str] = &[
    "length",
    "adi",
    "cv2",
    "zero_share",
    "trend_strength",
    "seasonal_strength",
];
/// Number of descriptors.
pub const N_DESCRIPTORS: usize = 6;
const _: () = assert!(DESCRIPTORS.len() == N_DESCRIPTORS);

/// Fewest training samples; with fewer, the caller should backtest everything.
pub const MIN_SAMPLES: usize = 10;
/// Maximum tree depth.
pub const MAX_DEPTH: usize = 6;
/// Minimum samples per leaf.
pub const MIN_LEAF: f32 = 3.0;

/// Errors of this module.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ChooserError {
    #[error("need at least {need} samples to train, got {got}; backtest everything")]
    TooFewSamples { need: usize, got: usize },
    #[error("{descriptors} descriptor rows but {winners} winners")]
    LengthMismatch { descriptors: usize, winners: usize },
    #[error("n_classes must be at least 1")]
    NoClasses,
    #[error("winner {class} at index {index} is not below n_classes = {n_classes}")]
    ClassOutOfRange {
        index: usize,
        class: usize,
        n_classes: usize,
    },
    #[error("nothing to score")]
    Empty,
    #[error("decision tree: {0}")]
    Tree(String),
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
enum Node {
    Leaf {
        class: usize,
        confidence: f64,
    },
    /// `value <= threshold` goes left, as when linfa partitioned the training rows.
    Split {
        feature: usize,
        threshold: f64,
        left: usize,
        right: usize,
    },
}

/// Trained chooser.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Chooser {
    /// Root at index 0.
    nodes: Vec<Node>,
    n_classes: usize,
}

/// NaN → 0, ±∞ → ±1e300 (see module docs).
fn sanitize(d: &[f64; N_DESCRIPTORS]) -> [f64; N_DESCRIPTORS] {
    d.map(|v| {
        if v.is_nan() {
            0.0
        } else {
            v.clamp(-1e300, 1e300)
        }
    })
}

/// Trains a chooser; `winners[i]` is the index (< `n_classes`) of the model that won on
/// the series described by `descriptors[i]`. A single class present gives a chooser that
/// always predicts it.
pub fn train(
    descriptors: &[[f64; N_DESCRIPTORS]],
    winners: &[usize],
    n_classes: usize,
) -> Result<Chooser, ChooserError> {
    if descriptors.len() != winners.len() {
        return Err(ChooserError::LengthMismatch {
            descriptors: descriptors.len(),
            winners: winners.len(),
        });
    }
    if n_classes == 0 {
        return Err(ChooserError::NoClasses);
    }
    if let Some((index, &class)) = winners.iter().enumerate().find(|(_, c)| **c >= n_classes) {
        return Err(ChooserError::ClassOutOfRange {
            index,
            class,
            n_classes,
        });
    }
    let n = winners.len();
    if n < MIN_SAMPLES {
        return Err(ChooserError::TooFewSamples {
            need: MIN_SAMPLES,
            got: n,
        });
    }
    let rows: Vec<[f64; N_DESCRIPTORS]> = descriptors.iter().map(sanitize).collect();
    if winners.iter().all(|&c| c == winners[0]) {
        return Ok(Chooser {
            nodes: vec![Node::Leaf {
                class: winners[0],
                confidence: 1.0,
            }],
            n_classes,
        });
    }

    let records =
        Array2::from_shape_vec((n, N_DESCRIPTORS), rows.iter().flatten().copied().collect())
            .map_err(|e| ChooserError::Tree(e.to_string()))?;
    let dataset = Dataset::new(records, Array1::from(winners.to_vec()))
        .with_feature_names(DESCRIPTORS.iter().map(|s| s.to_string()).collect());
    let params = DecisionTree::params()
        .split_quality(SplitQuality::Gini)
        .max_depth(Some(MAX_DEPTH))
        .min_weight_leaf(MIN_LEAF)
        .min_weight_split(2.0 * MIN_LEAF);
    // linfa-trees asserts internally; a panic there must not take the worker down.
    let tree = catch_unwind(AssertUnwindSafe(|| params.fit(&dataset)))
        .map_err(|_| ChooserError::Tree("linfa-trees panicked".into()))?
        .map_err(|e| ChooserError::Tree(e.to_string()))?;

    let mut nodes = Vec::new();
    copy_tree(tree.root_node(), &mut nodes)?;
    let mut chooser = Chooser { nodes, n_classes };
    chooser.relabel(&rows, winners);
    Ok(chooser)
}

/// Copies linfa's tree into `nodes` (pre-order), returning the index of `node`.
fn copy_tree(node: &TreeNode<f64, usize>, nodes: &mut Vec<Node>) -> Result<usize, ChooserError> {
    let index = nodes.len();
    if node.is_leaf() {
        nodes.push(Node::Leaf {
            class: node.prediction().unwrap_or(0),
            confidence: 0.0,
        });
        return Ok(index);
    }
    let (feature, threshold, _) = node.split();
    let children = node.children();
    let (Some(Some(left)), Some(Some(right))) = (
        children.first().map(|c| c.as_deref()),
        children.get(1).map(|c| c.as_deref()),
    ) else {
        return Err(ChooserError::Tree(
            "internal node without two children".into(),
        ));
    };
    if feature >= N_DESCRIPTORS || !threshold.is_finite() {
        return Err(ChooserError::Tree(format!(
            "bad split on feature {feature} at {threshold}"
        )));
    }
    nodes.push(Node::Leaf {
        class: 0,
        confidence: 0.0,
    }); // placeholder
    let left = copy_tree(left, nodes)?;
    let right = copy_tree(right, nodes)?;
    nodes[index] = Node::Split {
        feature,
        threshold,
        left,
        right,
    };
    Ok(index)
}

impl Chooser {
    /// Index of the leaf reached by a (sanitized) descriptor row.
    fn leaf(&self, d: &[f64; N_DESCRIPTORS]) -> usize {
        let mut at = 0;
        // Each step moves to a higher index (pre-order), so this always terminates.
        while let Some(Node::Split {
            feature,
            threshold,
            left,
            right,
        }) = self.nodes.get(at)
        {
            at = if d[*feature] <= *threshold {
                *left
            } else {
                *right
            };
        }
        at
    }

    /// Recomputes every leaf's class and confidence from the training rows; ties go to
    /// the lower class index, leaves no row reaches keep linfa's label.
    fn relabel(&mut self, rows: &[[f64; N_DESCRIPTORS]], winners: &[usize]) {
        let mut counts = vec![vec![0usize; self.n_classes]; self.nodes.len()];
        for (row, &class) in rows.iter().zip(winners) {
            let leaf = self.leaf(row);
            if let Some(c) = counts.get_mut(leaf).and_then(|c| c.get_mut(class)) {
                *c += 1;
            }
        }
        for (node, counts) in self.nodes.iter_mut().zip(&counts) {
            let total: usize = counts.iter().sum();
            if let Node::Leaf { class, confidence } = node
                && total > 0
            {
                // max_by_key returns the last maximum; iterate in reverse to get the first.
                let (best, &count) = counts
                    .iter()
                    .enumerate()
                    .rev()
                    .max_by_key(|(_, c)| **c)
                    .unwrap_or((0, &0));
                *class = best;
                *confidence = count as f64 / total as f64;
            }
        }
    }

    /// Predicted winning model index.
    pub fn predict(&self, d: &[f64; N_DESCRIPTORS]) -> usize {
        self.predict_with_confidence(d).0
    }

    /// Predicted model index and the share of training series in the same leaf that this
    /// model won (1.0 for a pure leaf). Backtest when the confidence is low.
    pub fn predict_with_confidence(&self, d: &[f64; N_DESCRIPTORS]) -> (usize, f64) {
        match self.nodes.get(self.leaf(&sanitize(d))) {
            Some(Node::Leaf { class, confidence }) => (*class, *confidence),
            _ => (0, 0.0),
        }
    }

    /// Share of `winners` predicted correctly.
    pub fn accuracy(
        &self,
        descriptors: &[[f64; N_DESCRIPTORS]],
        winners: &[usize],
    ) -> Result<f64, ChooserError> {
        if descriptors.len() != winners.len() {
            return Err(ChooserError::LengthMismatch {
                descriptors: descriptors.len(),
                winners: winners.len(),
            });
        }
        if winners.is_empty() {
            return Err(ChooserError::Empty);
        }
        let hits = descriptors
            .iter()
            .zip(winners)
            .filter(|(d, w)| self.predict(d) == **w)
            .count();
        Ok(hits as f64 / winners.len() as f64)
    }

    /// Number of models the chooser was trained for.
    pub fn n_classes(&self) -> usize {
        self.n_classes
    }

    /// Number of leaves (1 for a constant chooser).
    pub fn n_leaves(&self) -> usize {
        self.nodes
            .iter()
            .filter(|n| matches!(n, Node::Leaf { .. }))
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Lcg(u64);
    impl Lcg {
        fn next_f64(&mut self) -> f64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((self.0 >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        }
    }

    fn random_descriptors(g: &mut Lcg) -> [f64; N_DESCRIPTORS] {
        [
            30.0 + 700.0 * g.next_f64(), // length
            1.0 + 3.0 * g.next_f64(),    // adi
            2.0 * g.next_f64(),          // cv2
            g.next_f64(),                // zero_share
            g.next_f64(),                // trend_strength
            g.next_f64(),                // seasonal_strength
        ]
    }

    /// `n` samples labelled by `rule`, with `noise` share of labels flipped at random.
    fn sample(
        n: usize,
        n_classes: usize,
        noise: f64,
        seed: u64,
        rule: impl Fn(&[f64; N_DESCRIPTORS]) -> usize,
    ) -> (Vec<[f64; N_DESCRIPTORS]>, Vec<usize>) {
        let mut g = Lcg(seed);
        (0..n)
            .map(|_| {
                let d = random_descriptors(&mut g);
                let class = if g.next_f64() < noise {
                    (g.next_f64() * n_classes as f64) as usize % n_classes
                } else {
                    rule(&d)
                };
                (d, class)
            })
            .unzip()
    }

    #[test]
    fn learns_adi_threshold() {
        let rule = |d: &[f64; N_DESCRIPTORS]| usize::from(d[1] > 1.32);
        let (train_d, train_w) = sample(600, 2, 0.05, 1, rule);
        let (test_d, test_w) = sample(400, 2, 0.0, 2, rule);
        let chooser = train(&train_d, &train_w, 2).unwrap();
        let acc = chooser.accuracy(&test_d, &test_w).unwrap();
        eprintln!("held-out accuracy {acc:.3}, leaves {}", chooser.n_leaves());
        assert!(acc > 0.9, "held-out accuracy {acc}");
        let (class, confidence) =
            chooser.predict_with_confidence(&[100.0, 3.0, 0.5, 0.2, 0.1, 0.1]);
        assert_eq!(class, 1);
        assert!(confidence > 0.5);
    }

    #[test]
    fn learns_syntetos_boylan_classes() {
        // 0 smooth, 1 intermittent, 2 lumpy/erratic.
        let rule = |d: &[f64; N_DESCRIPTORS]| match (d[1] > 1.32, d[2] > 0.49) {
            (false, false) => 0,
            (true, false) => 1,
            (_, true) => 2,
        };
        let (train_d, train_w) = sample(800, 3, 0.05, 3, rule);
        let (test_d, test_w) = sample(400, 3, 0.0, 4, rule);
        let chooser = train(&train_d, &train_w, 3).unwrap();
        let acc = chooser.accuracy(&test_d, &test_w).unwrap();
        eprintln!("held-out accuracy {acc:.3}, leaves {}", chooser.n_leaves());
        assert!(acc > 0.9, "held-out accuracy {acc}");
        assert!(chooser.n_leaves() <= 1 << MAX_DEPTH);
    }

    #[test]
    fn deterministic() {
        let rule = |d: &[f64; N_DESCRIPTORS]| usize::from(d[3] > 0.5);
        let (d, w) = sample(200, 2, 0.3, 5, rule);
        let a = train(&d, &w, 2).unwrap();
        for _ in 0..5 {
            assert_eq!(train(&d, &w, 2).unwrap(), a);
        }
    }

    #[test]
    fn single_class_always_predicted() {
        let (d, _) = sample(20, 3, 0.0, 6, |_| 0);
        let chooser = train(&d, &[2; 20], 3).unwrap();
        assert_eq!(chooser.n_leaves(), 1);
        assert_eq!(chooser.predict(&[f64::NAN; N_DESCRIPTORS]), 2);
        assert_eq!(chooser.predict_with_confidence(&d[0]), (2, 1.0));
        assert_eq!(chooser.accuracy(&d, &[2; 20]), Ok(1.0));
    }

    #[test]
    fn non_finite_descriptors_are_sanitized() {
        let rule = |d: &[f64; N_DESCRIPTORS]| usize::from(d[1] > 1.32);
        let (mut d, w) = sample(300, 2, 0.0, 7, rule);
        for row in d.iter_mut().step_by(7) {
            row[2] = f64::NAN;
            row[4] = f64::INFINITY;
        }
        d[1][1] = f64::INFINITY; // never sold: ADI infinite, winner stays whatever was drawn
        let chooser = train(&d, &w, 2).unwrap();
        assert!(chooser.accuracy(&d, &w).unwrap() > 0.95);
        assert_eq!(
            chooser.predict(&[100.0, f64::INFINITY, f64::NAN, 1.0, 0.0, 0.0]),
            1
        );
        assert_eq!(chooser.predict(&[f64::NAN; N_DESCRIPTORS]), 0); // adi 0 → class 0
    }

    #[test]
    fn bad_input_is_an_error() {
        let (d, w) = sample(30, 2, 0.0, 8, |d| usize::from(d[1] > 2.0));
        assert_eq!(
            train(&d[..9], &w[..9], 2),
            Err(ChooserError::TooFewSamples {
                need: MIN_SAMPLES,
                got: 9
            })
        );
        assert_eq!(
            train(&[], &[], 2),
            Err(ChooserError::TooFewSamples {
                need: MIN_SAMPLES,
                got: 0
            })
        );
        assert!(matches!(
            train(&d, &w[1..], 2),
            Err(ChooserError::LengthMismatch { .. })
        ));
        assert_eq!(train(&d, &w, 0), Err(ChooserError::NoClasses));
        let mut bad = w.clone();
        bad[4] = 5;
        assert_eq!(
            train(&d, &bad, 2),
            Err(ChooserError::ClassOutOfRange {
                index: 4,
                class: 5,
                n_classes: 2
            })
        );
        let chooser = train(&d, &w, 2).unwrap();
        assert_eq!(chooser.accuracy(&[], &[]), Err(ChooserError::Empty));
        assert!(matches!(
            chooser.accuracy(&d, &w[1..]),
            Err(ChooserError::LengthMismatch { .. })
        ));
    }
}
