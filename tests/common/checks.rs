//! `kiln doctor`'s checks as assertions (included by `common/mod.rs` and `common/dalle_checks.rs`).
#![allow(dead_code)]

use kiln::doctor::Check;

/// Prints every check (what it measured) and fails on the first that failed.
pub fn assert_passes(checks: kiln::Result<Vec<Check>>) -> Vec<Check> {
    let checks = checks.expect("the checks run");
    for c in &checks {
        let what = format!(
            "{} {} {}: {} = {:e}",
            c.family,
            c.precision,
            c.name,
            c.measure.as_str(),
            c.value
        );
        eprintln!("{what} (tol {:e})", c.tol);
        assert!(c.passed(), "{what} > {:e} {:?}", c.tol, c.note);
    }
    checks
}
