//! The harness leaves nothing behind: its processes and directories are gone after drop, also when the test
//! panics. This binary holds a single test so that no other test keeps the shared Postgres cluster alive.

use std::path::Path;

use subsettle_testkit::{TestChain, TestDatabase};

fn is_running(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

#[tokio::test]
async fn services_stop_on_drop_and_on_panic() {
    // Normal drop.
    let chain = TestChain::spawn().unwrap();
    let db = TestDatabase::create().await.unwrap();
    let (anvil_pid, pg_pid) = (chain.pid(), db.server_pid());
    assert!(is_running(anvil_pid));
    drop(chain);
    drop(db);
    assert!(!is_running(anvil_pid), "anvil {anvil_pid} outlived its TestChain");
    if let Some(pid) = pg_pid {
        assert!(!is_running(pid), "postgres {pid} outlived the last TestDatabase");
    }

    // A panicking test: the services it started are stopped while the panic unwinds.
    let (tx, rx) = std::sync::mpsc::channel();
    let outcome = std::thread::spawn(move || {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            let chain = TestChain::spawn().unwrap();
            let db = TestDatabase::create().await.unwrap();
            tx.send((chain.pid(), db.server_pid())).unwrap();
            panic!("a failing test");
        })
    })
    .join();
    assert!(outcome.is_err(), "the inner test was meant to panic");
    let (anvil_pid, pg_pid) = rx.recv().unwrap();
    assert!(!is_running(anvil_pid), "anvil {anvil_pid} outlived a panicking test");
    if let Some(pid) = pg_pid {
        assert!(!is_running(pid), "postgres {pid} outlived a panicking test");
    }
}
