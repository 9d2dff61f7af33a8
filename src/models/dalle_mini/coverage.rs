//! A data-free key-coverage check: which module parameters a checkpoint's keys feed, which are
//! missing, unused or misshapen, from key lists alone (the full-size manifests in
//! `models/manifests/` stand in for the real checkpoints).

use std::collections::BTreeMap;

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Int, Tensor};

use super::weights::FlaxTarget;

/// Module parameter paths and shapes, read without materialising the (lazy) parameters.
pub fn param_shapes<B: Backend, M: Module<B>>(module: &M) -> BTreeMap<String, Vec<usize>> {
    struct Shapes {
        path: Vec<String>,
        out: BTreeMap<String, Vec<usize>>,
    }
    impl<B: Backend> ModuleVisitor<B> for Shapes {
        fn enter_module(&mut self, name: &str, _container: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _name: &str, _container: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            self.out
                .insert(self.path.join("."), param.lazy_shape().to_vec());
        }
        fn visit_int<const D: usize>(&mut self, _: &Param<Tensor<B, D, Int>>) {}
        fn visit_bool<const D: usize>(&mut self, _: &Param<Tensor<B, D, Bool>>) {}
    }
    let mut v = Shapes {
        path: Vec::new(),
        out: BTreeMap::new(),
    };
    module.visit(&mut v);
    v.out
}

/// A module path a file key feeds, with the shape it will have there.
pub type Feed = (String, Vec<usize>);
/// Maps a file key and its shape to what it feeds (`None`: ignored).
pub type FeedFn<'a> = dyn Fn(&str, &[usize]) -> Option<Vec<Feed>> + 'a;

/// Result of mapping a list of file keys onto module parameters without reading any data.
#[derive(Debug, Default)]
pub struct Coverage {
    pub missing: Vec<String>,
    pub unused: Vec<String>,
    pub ignored: Vec<String>,
    pub shape_errors: Vec<String>,
}

/// Maps `keys` (file key → shape) onto `params` (path → shape) with `target`, which returns the
/// module paths a key feeds (with the shape it will have) or `None` when it is ignored.
pub fn coverage(
    params: &BTreeMap<String, Vec<usize>>,
    keys: &BTreeMap<String, Vec<usize>>,
    target: &FeedFn<'_>,
) -> Coverage {
    let mut cov = Coverage::default();
    let mut seen = std::collections::BTreeSet::new();
    for (key, shape) in keys {
        let Some(targets) = target(key, shape) else {
            cov.ignored.push(key.clone());
            continue;
        };
        for (path, shape) in targets {
            match params.get(&path) {
                None => cov.unused.push(key.clone()),
                Some(want) if !same_layout(want, &shape) => cov
                    .shape_errors
                    .push(format!("{key} → {path}: {shape:?} vs {want:?}")),
                Some(_) => {
                    seen.insert(path);
                }
            }
        }
    }
    cov.missing = params
        .keys()
        .filter(|p| !seen.contains(*p))
        .cloned()
        .collect();
    cov
}

/// Equal shapes, or a 1×1 conv kernel feeding a `[o, i]` linear.
fn same_layout(want: &[usize], got: &[usize]) -> bool {
    want == got
        || (want.len() == 2 && got.len() == 4 && got[2] == 1 && got[3] == 1 && want == &got[..2])
}

/// The shape a flax leaf has after `FlaxTarget`'s slicing and permutation.
pub fn flax_target_shape(t: &FlaxTarget, shape: &[usize]) -> Vec<usize> {
    let s = if t.layer.is_some() {
        &shape[1..]
    } else {
        shape
    };
    match &t.permute {
        Some(p) => p.iter().map(|&a| s[a]).collect(),
        None => s.to_vec(),
    }
}
