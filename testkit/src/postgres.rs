//! A throwaway Postgres and one fresh database per test.
//!
//! With `DATABASE_URL` set, databases are created on that server (the URL's user must be allowed to create
//! databases). Otherwise the harness runs its own cluster: `initdb` into a temporary directory and `postgres` on
//! a free port, as the `postgres` user when running as root (Postgres refuses root). All tests of a process share
//! that cluster while any of them holds a database; when the last [`TestDatabase`] drops, the server stops and
//! its directory is removed. Each test's database is dropped with it.

use std::{
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicU64, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

// Database names are generated here from digits and a fixed prefix, never from input, so formatting them
// into DDL (which cannot take bind parameters) is safe.
use sqlx::{AssertSqlSafe, Connection, Executor, PgConnection, PgPool, postgres::PgPoolOptions};

use crate::{HarnessError, toolchain::postgres_bin_dir};

/// How long a fresh cluster may take to accept connections before the harness gives up.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a cluster may take to shut down after SIGINT (fast shutdown) before it is killed.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts at starting on a free port; another process may take the port between probe and bind.
const START_ATTEMPTS: usize = 3;

/// The server shared by the tests of this process while any of them holds a database.
static SHARED: Mutex<Weak<Server>> = Mutex::new(Weak::new());
/// Distinguishes the databases of one process.
static NEXT_DATABASE: AtomicU64 = AtomicU64::new(0);

/// A database created for one test. Dropping it drops the database (and, for the last one, stops the cluster).
#[derive(Debug)]
pub struct TestDatabase {
    name: String,
    url: String,
    server: Arc<Server>,
}

impl TestDatabase {
    /// Creates a fresh, empty database, starting the throwaway cluster first if none is running.
    pub async fn create() -> Result<Self, HarnessError> {
        let server = tokio::task::spawn_blocking(shared_server)
            .await
            .map_err(|e| HarnessError::Start { service: "postgres", reason: e.to_string() })??;
        let name = format!(
            "subsettle_test_{}_{}_{}",
            std::process::id(),
            NEXT_DATABASE.fetch_add(1, Ordering::Relaxed),
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0)
        );
        let mut admin = PgConnection::connect(&server.admin_url()).await?;
        admin.execute(AssertSqlSafe(format!(r#"CREATE DATABASE "{name}""#))).await?;
        admin.close().await?;
        let url = server.database_url(&name);
        Ok(Self { name, url, server })
    }

    /// The database's connection URL, for handing to a daemon under test.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A small connection pool to this database.
    pub async fn pool(&self) -> Result<PgPool, HarnessError> {
        Ok(PgPoolOptions::new().max_connections(5).connect(&self.url).await?)
    }

    /// The process id of the harness's own cluster, `None` when using `DATABASE_URL`.
    pub fn server_pid(&self) -> Option<u32> {
        match self.server.as_ref() {
            Server::Owned(cluster) => Some(cluster.pid),
            Server::External { .. } => None,
        }
    }

    /// The TCP port of the server this database lives on.
    pub fn server_port(&self) -> Option<u16> {
        match self.server.as_ref() {
            Server::Owned(cluster) => Some(cluster.port),
            Server::External { .. } => None,
        }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        // Drop runs inside the test's async runtime, which cannot be blocked on; a thread with its own
        // runtime drops the database before the server handle (a field) is released.
        let admin_url = self.server.admin_url();
        let name = self.name.clone();
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(async {
                let mut admin = PgConnection::connect(&admin_url).await.map_err(std::io::Error::other)?;
                admin
                    .execute(AssertSqlSafe(format!(r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#)))
                    .await
                    .map_err(std::io::Error::other)?;
                admin.close().await.map_err(std::io::Error::other)
            })
        })
        .join();
        if let Ok(Err(e)) | Err(e) = dropped.map_err(|_| std::io::Error::other("panicked")) {
            eprintln!("testkit: could not drop database {}: {e}", self.name);
        }
    }
}

/// Where test databases are created.
#[derive(Debug)]
enum Server {
    /// The harness's own cluster.
    Owned(Cluster),
    /// A server the environment provides through `DATABASE_URL`.
    External { url: url::Url },
}

impl Server {
    fn admin_url(&self) -> String {
        match self {
            Self::Owned(cluster) => format!("postgres://postgres@127.0.0.1:{}/postgres", cluster.port),
            Self::External { url } => url.to_string(),
        }
    }

    fn database_url(&self, name: &str) -> String {
        match self {
            Self::Owned(cluster) => format!("postgres://postgres@127.0.0.1:{}/{name}", cluster.port),
            Self::External { url } => {
                let mut url = url.clone();
                url.set_path(name);
                url.to_string()
            }
        }
    }
}

/// Returns the running shared server or starts one.
fn shared_server() -> Result<Arc<Server>, HarnessError> {
    let mut shared = SHARED.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(server) = shared.upgrade() {
        return Ok(server);
    }
    let server = Arc::new(match std::env::var("DATABASE_URL") {
        Ok(text) if !text.is_empty() => Server::External {
            url: text.parse().map_err(|e| HarnessError::Start {
                service: "postgres",
                reason: format!("DATABASE_URL is not a URL: {e}"),
            })?,
        },
        _ => Server::Owned(Cluster::start()?),
    });
    *shared = Arc::downgrade(&server);
    Ok(server)
}

/// A Postgres cluster in a temporary directory, run by a supervisor thread that owns the process.
///
/// The supervisor thread lives exactly as long as the cluster. That matters because the server is started with
/// a parent-death signal, which Linux sends when the *thread* that spawned it ends: spawned from a test's thread,
/// the server would stop under the other tests still using it.
#[derive(Debug)]
struct Cluster {
    port: u16,
    pid: u32,
    stop: Option<mpsc::Sender<()>>,
    supervisor: Option<JoinHandle<()>>,
    // Dropped last: the data directory goes once the server has stopped.
    _dir: tempfile::TempDir,
}

impl Cluster {
    fn start() -> Result<Self, HarnessError> {
        let bin = postgres_bin_dir()?;
        let owner = ClusterOwner::for_current_user()?;
        let dir = tempfile::Builder::new()
            .prefix("subsettle-testkit-pg-")
            .tempdir()
            .map_err(HarnessError::io("create the cluster directory"))?;
        owner.chown(dir.path())?;
        let data = dir.path().join("data");
        init_cluster(&bin, &owner, &data)?;

        let mut last_error = String::new();
        for _ in 0..START_ATTEMPTS {
            let port = free_port()?;
            let (ready_tx, ready_rx) = mpsc::channel();
            let (stop_tx, stop_rx) = mpsc::channel();
            let (bin, owner, dir_path) = (bin.clone(), owner.clone(), dir.path().to_path_buf());
            let supervisor = std::thread::Builder::new()
                .name("testkit-postgres".into())
                .spawn(move || supervise(&bin, &owner, &dir_path, port, ready_tx, stop_rx))
                .map_err(HarnessError::io("start the postgres supervisor thread"))?;
            match ready_rx.recv() {
                Ok(Ok(pid)) => {
                    return Ok(Self { port, pid, stop: Some(stop_tx), supervisor: Some(supervisor), _dir: dir });
                }
                Ok(Err(reason)) => last_error = reason,
                Err(_) => last_error = "the supervisor thread ended without an answer".into(),
            }
            let _ = supervisor.join();
        }
        Err(HarnessError::Start { service: "postgres", reason: last_error })
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        drop(self.stop.take()); // a closed channel is the stop signal
        if let Some(supervisor) = self.supervisor.take() {
            let _ = supervisor.join();
        }
    }
}

/// Runs on the supervisor thread: starts the server, reports readiness (its pid) or the reason it failed, then
/// waits for the stop signal and shuts the server down.
fn supervise(
    bin: &Path,
    owner: &ClusterOwner,
    dir: &Path,
    port: u16,
    ready: mpsc::Sender<Result<u32, String>>,
    stop: mpsc::Receiver<()>,
) {
    let log_path = dir.join("postgres.log");
    let mut child = match spawn_server(bin, owner, dir, port, &log_path) {
        Ok(child) => child,
        Err(e) => {
            let _ = ready.send(Err(e.to_string()));
            return;
        }
    };
    if let Err(reason) = wait_until_ready(bin, port, &mut child, &log_path) {
        shut_down(&mut child);
        let _ = ready.send(Err(reason));
        return;
    }
    if ready.send(Ok(child.id())).is_err() {
        shut_down(&mut child);
        return;
    }
    // Blocks until the cluster handle is dropped (the sender closes) or a stop is sent.
    let _ = stop.recv();
    shut_down(&mut child);
}

fn init_cluster(bin: &Path, owner: &ClusterOwner, data: &Path) -> Result<(), HarnessError> {
    let output = owner
        .command(bin.join("initdb"))
        .arg("-D")
        .arg(data)
        .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync", "--no-instructions"])
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .output()
        .map_err(HarnessError::io("run initdb"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(HarnessError::Start {
            service: "postgres",
            reason: format!("initdb failed: {}", String::from_utf8_lossy(&output.stderr)),
        })
    }
}

fn spawn_server(bin: &Path, owner: &ClusterOwner, dir: &Path, port: u16, log: &Path) -> Result<Child, HarnessError> {
    let log_file = std::fs::File::create(log).map_err(HarnessError::io("create the postgres log"))?;
    let mut command = owner.command(bin.join("postgres"));
    command
        .arg("-D")
        .arg(dir.join("data"))
        .arg("-p")
        .arg(port.to_string())
        .arg("-k")
        .arg(dir)
        .args(["-c", "listen_addresses=127.0.0.1"])
        .args(["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"])
        .args(["-c", "max_connections=300"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file);
    stop_with_parent(&mut command);
    command.spawn().map_err(HarnessError::io("spawn postgres"))
}

/// Asks the kernel to send the server a fast-shutdown signal if the test process dies without dropping it
/// (killed, or exiting without unwinding), so no server outlives the tests.
#[allow(unsafe_code)]
fn stop_with_parent(command: &mut Command) {
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGINT) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

fn wait_until_ready(bin: &Path, port: u16, child: &mut Child, log: &Path) -> Result<(), String> {
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            return Err(format!("postgres exited with {status}:\n{text}"));
        }
        let ready = Command::new(bin.join("pg_isready"))
            .args(["-q", "-h", "127.0.0.1", "-p", &port.to_string(), "-t", "1"])
            .status()
            .is_ok_and(|status| status.success());
        if ready {
            return Ok(());
        }
        if Instant::now() > deadline {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            return Err(format!("not ready after {STARTUP_TIMEOUT:?}:\n{text}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Fast shutdown (SIGINT: disconnect clients, stop), then SIGKILL if it hangs.
#[allow(unsafe_code)]
fn shut_down(child: &mut Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: plain kill(2) on our own child's pid, which has not been reaped yet.
        unsafe {
            libc::kill(pid, libc::SIGINT);
        }
    }
    let deadline = Instant::now() + SHUTDOWN_TIMEOUT;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn free_port() -> Result<u16, HarnessError> {
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").map_err(HarnessError::io("find a free port"))?;
    Ok(listener.local_addr().map_err(HarnessError::io("find a free port"))?.port())
}

/// The OS user the cluster runs as: the current user, or `postgres` when running as root.
#[derive(Debug, Clone)]
struct ClusterOwner {
    ids: Option<(u32, u32)>,
}

impl ClusterOwner {
    fn for_current_user() -> Result<Self, HarnessError> {
        #[allow(unsafe_code)]
        // SAFETY: geteuid cannot fail and has no preconditions.
        let is_root = unsafe { libc::geteuid() } == 0;
        if !is_root {
            return Ok(Self { ids: None });
        }
        let id = |flag: &str| -> Result<u32, HarnessError> {
            let output = Command::new("id").args([flag, "postgres"]).output().map_err(HarnessError::io("run id"))?;
            String::from_utf8_lossy(&output.stdout).trim().parse().map_err(|_| HarnessError::MissingTool {
                tool: "the `postgres` OS user",
                looked: "id postgres".into(),
                fix: "Postgres refuses to run as root: install the server package (`apt-get install -y postgresql`), \
                      which creates the user, or run the tests as a non-root user",
            })
        };
        Ok(Self { ids: Some((id("-u")?, id("-g")?)) })
    }

    fn command(&self, program: PathBuf) -> Command {
        let mut command = Command::new(program);
        if let Some((uid, gid)) = self.ids {
            command.uid(uid).gid(gid);
        }
        command
    }

    fn chown(&self, path: &Path) -> Result<(), HarnessError> {
        match self.ids {
            Some((uid, gid)) => {
                std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(HarnessError::io("chown the cluster directory"))
            }
            None => Ok(()),
        }
    }
}
