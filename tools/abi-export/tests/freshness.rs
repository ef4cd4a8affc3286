//! `abi/` must equal what `contracts/` compiles to; the Rust bindings are generated from it.

use subsettle_abi_export::{Artifact, compare, compile, repo_root, write};

#[test]
fn abi_dir_matches_the_contracts() {
    let root = repo_root();
    let artifacts = compile(&root).expect("contracts/ compiles (run scripts/bootstrap for solc)");
    assert!(artifacts.iter().any(|a| a.name == "TestUSDC"), "TestUSDC is deployable");
    let staleness = compare(&artifacts, &root.join("abi")).unwrap();
    assert!(
        staleness.is_fresh(),
        "abi/ is stale: {staleness:?}; regenerate it with `cargo run -p subsettle-abi-export`"
    );
}

#[test]
fn interfaces_are_not_exported() {
    let artifacts = compile(&repo_root()).unwrap();
    assert!(artifacts.iter().all(|a| a.name != "ITestUSDC"), "an interface has no bytecode to deploy");
}

#[test]
fn compare_reports_missing_changed_and_orphaned_files() {
    let dir = tempfile::tempdir().unwrap();
    let fresh = vec![
        Artifact { name: "A".into(), json: "{\"a\":1}\n".into() },
        Artifact { name: "B".into(), json: "{\"b\":1}\n".into() },
    ];
    write(&fresh, dir.path()).unwrap();
    assert!(compare(&fresh, dir.path()).unwrap().is_fresh());

    std::fs::write(dir.path().join("B.json"), "{\"b\":2}\n").unwrap();
    std::fs::write(dir.path().join("Gone.json"), "{}\n").unwrap();
    let with_c = [fresh.clone(), vec![Artifact { name: "C".into(), json: "{}\n".into() }]].concat();
    let staleness = compare(&with_c, dir.path()).unwrap();
    assert_eq!(staleness.missing, vec!["C".to_string()]);
    assert_eq!(staleness.changed, vec!["B".to_string()]);
    assert_eq!(staleness.orphaned, vec!["Gone".to_string()]);

    write(&with_c, dir.path()).unwrap();
    assert!(compare(&with_c, dir.path()).unwrap().is_fresh(), "write removes orphans and rewrites changes");
}
