//! `turnstile run`: the machines, with the job store, telemetry, the HTTP sidecar, the
//! per-machine sockets and `--watch`, until they stop or a signal arrives.
//!
//! The command goes in phases, each a function that hands the next what it needs:
//! [`run`] checks and loads everything the command line names (configs, store, options),
//! so that a mistake stops the process before any machine has started; it then builds the
//! telemetry and the async runtime, and [`run_machines`] binds the sidecar, starts the
//! machines and the sockets; [`supervise`] waits for the machines or a signal and stops
//! them; on the way out the sidecar closes, the saved states and the spans are flushed.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use turnstile_engine::config;
use turnstile_engine::instance::Instance;
use turnstile_engine::observe::ErrorKind;
use turnstile_engine::reload::{ConfigReloader, ReloadResult, WatchOptions, WatchedConfig};
use turnstile_engine::{ActionRegistry, Engine, MachineDef};
use turnstile_exporter::server;
use turnstile_exporter::telemetry::Telemetry;

use crate::args::RunArgs;
use crate::validate::print_diagnostics;
use crate::EXIT_INVALID;

/// The configs to reload (on `SIGHUP`, `POST /-/reload` and, with `--watch`, when they
/// change), the registry to check them with, and how to watch (`None` without `--watch`).
type Reload = (Vec<WatchedConfig>, ActionRegistry, Option<WatchOptions>);

/// What `run` needs besides the machines.
struct RunOptions {
    reload: Reload,
    queue_capacity: usize,
    stop_timeout: Duration,
    /// The sidecar, bound, not serving yet.
    bound: Option<server::Bound>,
    keep_serving: bool,
    /// `--persist`: machine states saved after each transition and restored at start.
    persist: Option<turnstile_engine::store::Persister>,
    /// `--socket-dir`: a Unix socket per machine there.
    sockets: Option<PathBuf>,
    /// The singleton machines' lease store and persister (see [`crate::singleton`]).
    singletons: Option<turnstile_engine::runtime::singleton::Singletons>,
    /// With a store: the machines registered there, events from other processes.
    bridge: Option<crate::bridge::BridgeSetup>,
    /// SIGHUP, SIGTERM and SIGINT, listened for since the store opened.
    signals: Signals,
}

/// `turnstile run`. `plugin_errors` are the `--plugins` libraries that failed to load,
/// reported to the telemetry as errors.
pub fn run(
    mut args: RunArgs,
    instance: Instance,
    registry: &ActionRegistry,
    plugin_errors: &[String],
) -> anyhow::Result<ExitCode> {
    if args.machine_name.is_some() && args.configs.len() != 1 {
        eprintln!("error: --machine-name needs exactly one config");
        return Ok(ExitCode::from(EXIT_INVALID));
    }
    let Some(defs) = load_all(&args.configs, args.machine_name.as_deref(), registry) else {
        return Ok(ExitCode::from(EXIT_INVALID));
    };
    let has_singletons = crate::singleton::check(&mut args, &defs)?;
    tracing::info!(target: "turnstile::run", incarnation = instance.incarnation(), "instance {}", instance.id());
    let stop_timeout = Duration::try_from_secs_f64(args.stop_timeout)
        .context("--stop-timeout must be a number of seconds")?;
    let reload = reload_options(&args, &defs, registry)?;
    let sidecar = match args.serve.sidecar_config() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(EXIT_INVALID));
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    // SIGHUP reloads the configs once the machines run; before that (the store may be
    // awaited for a minute) there is nothing to reload, and it must not end the process
    // (its default action). Tokio's handler, once installed, stays for the process.
    {
        let _in_runtime = rt.enter();
        if let Err(e) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            tracing::warn!(target: "turnstile::run", "cannot handle SIGHUP ({e}): it would end the process");
        }
    }
    // The sidecar binds first: a taken port fails before anything else, and while the
    // job store is awaited the port answers the probes (alive, not ready, why).
    let mut bound = match sidecar {
        Some(config) => match rt.block_on(server::Bound::bind(config)) {
            Ok(b) => Some(b),
            Err(e) => {
                eprintln!("error: {e}");
                return Ok(ExitCode::from(1));
            }
        },
        None => None,
    };
    let job_store = open_store(&rt, bound.as_ref(), &args, registry, &instance)?;
    // Right after the store opens, before any machine claims a job: a second live process
    // with this id is refused (exit 2).
    let registered = match &job_store {
        Some(s) => crate::db::register_instance(&**s, &instance, &args.store)?,
        None => false,
    };
    if let Some(b) = &mut bound {
        b.set_jobs(job_store.clone().map(|j| j as _));
    }
    // Listened for before anything outside can see the process work (the store's purge
    // and gauges below, the machines, the sidecar serving, the sockets): from here
    // SIGHUP reloads and SIGTERM/SIGINT stop it cleanly (handled by `supervise`) rather
    // than ending it by their default action. (While the store is awaited, SIGTERM still
    // ends the process at once: nothing runs yet.)
    let signals = {
        let _in_runtime = rt.enter();
        match Signals::listen() {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: {e:#}");
                return Ok(ExitCode::from(1));
            }
        }
    };
    // Built outside the async runtime: the span exporter has a blocking HTTP client.
    let telemetry = match Telemetry::new(args.serve.telemetry_config(&instance)) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: cannot set up span export: {e}");
            return Ok(ExitCode::from(EXIT_INVALID));
        }
    };
    let plugins: Vec<(String, String)> = registry
        .plugins()
        .into_iter()
        .map(|p| (p.name, p.version))
        .collect();
    telemetry.set_plugins(&plugins);
    for e in plugin_errors {
        telemetry.report_error(ErrorKind::Plugin, None, e);
    }
    if let Some(s) = &job_store {
        rt.spawn(crate::jobs_cli::job_metrics(s.clone(), telemetry.clone()));
        if let Some(retention) = args.store.job_retention {
            rt.spawn(crate::jobs_cli::purge_finished(s.clone(), retention));
        }
    }
    let persist = crate::db::persister(&args.store, job_store.as_ref());
    let singletons = match (&job_store, has_singletons) {
        (Some(store), true) => Some(crate::singleton::config(&args, store, persist.as_ref())?),
        _ => None,
    };
    let opts = RunOptions {
        reload,
        queue_capacity: args.queue_capacity,
        stop_timeout,
        keep_serving: args.serve.keep_serving && bound.is_some(),
        bound,
        persist,
        sockets: args.store.socket_dir.clone(),
        singletons,
        bridge: bridge_setup(job_store.as_ref(), &instance, &args),
        signals,
    };
    let code = rt.block_on(run_machines(defs, opts, &telemetry, registry));
    if let Some(s) = &job_store {
        // The machines have stopped: what they held and did not finish goes back to the
        // queue now (other processes take it at once) instead of when its lease expires.
        match s.release_held() {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(target: "turnstile::jobs", jobs = n, "unfinished jobs given back to the queue")
            }
            Err(e) => {
                tracing::warn!(target: "turnstile::jobs", "giving back unfinished jobs failed ({e}): they return to the queue when their leases expire")
            }
        }
        if registered {
            crate::db::unregister_instance(&**s, &instance);
        }
        // How well group commit shared transactions (`--log-level turnstile::store=debug`).
        let (writes, transactions) = turnstile_engine::store::Store::write_counts(&**s);
        tracing::debug!(target: "turnstile::store", writes, transactions, "job store writes");
    }
    // Machines have stopped and the sidecar is closed: flush the spans.
    telemetry.shutdown();
    // A plugin call stuck past its timeout keeps its blocking thread; do not wait
    // for it for ever on exit (dropping the runtime would).
    rt.shutdown_timeout(Duration::from_secs(1));
    code
}

/// Opens the job store when one is needed (see [`crate::db::open_for_run`]). Once
/// the store turns out to be unreachable (the first attempt failed), the bound sidecar
/// answers the probes while it is awaited: not ready, and the last reason. A store that
/// opens at once leaves the port alone (connections wait in the backlog, as for any start).
fn open_store(
    rt: &tokio::runtime::Runtime,
    bound: Option<&server::Bound>,
    args: &RunArgs,
    registry: &ActionRegistry,
    instance: &Instance,
) -> anyhow::Result<Option<Arc<dyn turnstile_engine::store::Store>>> {
    let why = Arc::new(std::sync::Mutex::new(String::new()));
    let starting = std::sync::Mutex::new(None);
    let store = crate::db::open_for_run(&args.store, registry, instance, &|reason: &str| {
        *why.lock().unwrap_or_else(|e| e.into_inner()) =
            format!("waiting for the job store: {reason}");
        let mut starting = starting.lock().unwrap_or_else(|e| e.into_inner());
        if let (None, Some(b)) = (&*starting, bound) {
            let _in_runtime = rt.enter();
            let why = why.clone();
            *starting =
                Some(b.starting(move || why.lock().unwrap_or_else(|e| e.into_inner()).clone()));
        }
    });
    if let Some(s) = starting.into_inner().unwrap_or_else(|e| e.into_inner()) {
        rt.block_on(s.finish());
    }
    store
}

/// Loads every config, printing its diagnostics; `None` when one cannot run.
/// `machine_name` (`--machine-name`) renames the machine.
fn load_all(
    configs: &[PathBuf],
    machine_name: Option<&str>,
    registry: &ActionRegistry,
) -> Option<Vec<Arc<MachineDef>>> {
    let mut defs = Vec::new();
    let mut failed = false;
    for path in configs {
        let loaded = config::load_path(path, registry);
        print_diagnostics(&loaded.diagnostics);
        match loaded.def {
            Some(def) => defs.push(match machine_name {
                Some(n) => Arc::new(def.renamed(n)),
                None => def,
            }),
            None => {
                eprintln!("error: {} cannot run: fix the errors above", path.display());
                failed = true;
            }
        }
    }
    (!failed).then_some(defs)
}

/// The configs to reload, each with the machine loaded from it, and how `--watch` watches
/// them (`None` without `--watch`).
fn reload_options(
    args: &RunArgs,
    defs: &[Arc<MachineDef>],
    registry: &ActionRegistry,
) -> anyhow::Result<Reload> {
    let watched = args
        .configs
        .iter()
        .zip(defs)
        .map(|(path, def)| WatchedConfig {
            path: path.clone(),
            rename: args.machine_name.clone(),
            def: def.clone(),
        })
        .collect();
    if !args.watch {
        return Ok((watched, registry.clone(), None));
    }
    let rescan = Duration::try_from_secs_f64(args.watch_interval)
        .ok()
        .filter(|d| !d.is_zero())
        .context("--watch-interval must be a positive number of seconds")?;
    let options = WatchOptions {
        rescan,
        ..WatchOptions::default()
    };
    Ok((watched, registry.clone(), Some(options)))
}

/// Starts the engine with the telemetry, the sidecar and the sockets, runs the machines
/// until [`supervise`] returns, then closes the sidecar and the sockets and flushes the
/// saved states.
async fn run_machines(
    defs: Vec<Arc<MachineDef>>,
    opts: RunOptions,
    telemetry: &Arc<Telemetry>,
    plugins: &ActionRegistry,
) -> anyhow::Result<ExitCode> {
    let mut builder = Engine::builder().queue_capacity(opts.queue_capacity);
    if let Some(p) = &opts.persist {
        builder = builder.persist(p.clone());
    }
    if let Some(s) = &opts.singletons {
        builder = builder.singletons(s.clone());
    }
    let engine = telemetry.install(builder, plugins);
    // The sidecar was bound before any machine runs and serves once every machine is
    // registered (no request sees a configured machine missing; early connections wait
    // in the backlog).
    let mut bound = opts.bound;
    let (configs, registry, watch) = opts.reload;
    let reloader = ConfigReloader::new(engine.clone(), registry, configs);
    if let Some(b) = &mut bound {
        b.set_reloader(Some(reloader.clone()));
    }
    let names: Vec<Arc<str>> = defs.iter().map(|d| d.name.clone()).collect();
    let (singles, plain): (Vec<_>, Vec<_>) = defs
        .iter()
        .partition(|d| opts.singletons.as_ref().is_some_and(|s| s.covers(d)));
    let singles: Vec<Arc<str>> = singles.iter().map(|d| d.name.clone()).collect();
    let plain: Vec<Arc<str>> = plain.iter().map(|d| d.name.clone()).collect();
    // Before the machines start: their first actions may send to other processes, and a
    // singleton that takes its lease at once registers through it.
    let chosen_id = opts.bridge.as_ref().is_some_and(|b| b.instance.chosen());
    let bridge = crate::bridge::start(
        opts.bridge,
        &engine,
        (&plain, &singles),
        opts.persist.as_ref(),
    );
    if let Err(e) = engine.spawn_all(defs) {
        eprintln!("error: cannot start the machines: {e}");
        crate::bridge::stop(bridge).await;
        return Ok(ExitCode::from(EXIT_INVALID));
    }
    // With `--persist`: the instances started at run time before a restart, live again
    // (of the definitions just loaded; this process's own, not another live process's).
    engine.restore_instances();
    crate::bridge::adopt(bridge.as_ref(), opts.persist.is_some(), chosen_id);
    let signals = opts.signals;
    let sidecar = bound.map(|b| b.serve(engine.clone(), telemetry.clone()));
    let sockets = match &opts.sockets {
        Some(dir) => {
            // The engine's observer (the telemetry `install` attached).
            let observer = engine.observer().cloned();
            match turnstile_engine::sockets::SocketServer::start(&engine, dir, &names, observer) {
                Ok((s, _failed)) => Some(s),
                Err(e) => {
                    eprintln!("error: {e}");
                    engine.shutdown();
                    engine.join().await;
                    crate::bridge::stop(bridge).await;
                    return Ok(ExitCode::from(1));
                }
            }
        }
        None => None,
    };
    let code = supervise(
        &engine,
        (&reloader, signals),
        watch,
        opts.stop_timeout,
        opts.keep_serving,
    )
    .await;
    if let Some(s) = sidecar {
        s.shutdown().await;
    }
    if let Some(s) = sockets {
        s.shutdown();
    }
    crate::bridge::stop(bridge).await;
    if let Some(p) = &opts.persist {
        // Every machine stopped (not one still running past --stop-timeout) and every
        // state saved: this process's live instances are released for another process
        // (or the next one to start) to take over.
        let stopped = tokio::time::timeout(Duration::ZERO, engine.join())
            .await
            .is_ok();
        let p = p.clone();
        let _ = tokio::task::spawn_blocking(move || {
            let saved = p.flush(Duration::from_secs(5));
            crate::bridge::release_instances(&p, stopped && saved);
        })
        .await;
    }
    code
}

/// What the event bridge needs when a store is open (see [`crate::bridge`]).
fn bridge_setup(
    store: Option<&Arc<dyn turnstile_engine::store::Store>>,
    instance: &Instance,
    args: &RunArgs,
) -> Option<crate::bridge::BridgeSetup> {
    Some(crate::bridge::BridgeSetup {
        store: store?.clone(),
        instance: instance.clone(),
        lease: Duration::try_from_secs_f64(args.store.job_lease).ok()?,
    })
}

/// The signals `supervise` handles, listened for from before anything outside can see the
/// process: a signal that arrives earlier than `supervise` waits is kept, not fatal.
struct Signals {
    hup: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn listen() -> anyhow::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            hup: signal(SignalKind::hangup()).context("cannot listen for SIGHUP")?,
            term: signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?,
        })
    }
}

/// Runs the machines until they all stop by themselves or `SIGINT`/`SIGTERM` arrives;
/// `SIGHUP` reloads every config (as `POST /-/reload` does) and the wait goes on.
async fn supervise(
    engine: &Engine,
    (reloader, mut signals): (&ConfigReloader, Signals),
    watch: Option<WatchOptions>,
    stop_timeout: Duration,
    keep_serving: bool,
) -> anyhow::Result<ExitCode> {
    // Dropped on the way out: watching stops.
    let watcher = match watch {
        Some(options) => match reloader.watch(options) {
            Ok(w) => Some(w),
            Err(e) => {
                eprintln!("error: --watch: {e}");
                engine.shutdown();
                engine.join().await;
                return Ok(ExitCode::from(1));
            }
        },
        None => None,
    };
    let watching = watcher.is_some();
    // Wait for every machine to stop by itself, or for a signal; then the same wait goes
    // on, bounded by --stop-timeout, while the machines shut down.
    let all_done = engine.join();
    tokio::pin!(all_done);
    let mut finished = false;
    loop {
        tokio::select! {
            () = &mut all_done, if !watching && !finished => {
                tracing::info!(target: "turnstile", "every machine reached a final state");
                if !keep_serving {
                    return Ok(ExitCode::SUCCESS);
                }
                tracing::info!(
                    target: "turnstile",
                    "--keep-serving: the sidecar stays up until SIGINT/SIGTERM"
                );
                finished = true;
            }
            _ = signals.hup.recv() => {
                tracing::info!(target: "turnstile", "SIGHUP: reloading every config");
                log_reload(&reloader.reload_all().await);
            }
            _ = signals.int.recv() => {
                tracing::info!(target: "turnstile", "SIGINT: stopping");
                break;
            }
            _ = signals.term.recv() => {
                tracing::info!(target: "turnstile", "SIGTERM: stopping");
                break;
            }
        }
    }
    if finished {
        return Ok(ExitCode::SUCCESS);
    }
    engine.shutdown();
    if tokio::time::timeout(stop_timeout, all_done).await.is_err() {
        eprintln!("error: machines did not stop within {stop_timeout:?}");
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

/// One log line summing up a reload on `SIGHUP` (each config has its own lines already).
fn log_reload(report: &turnstile_engine::reload::ReloadReport) {
    let count =
        |f: fn(&ReloadResult) -> bool| report.configs.iter().filter(|c| f(&c.outcome)).count();
    let reloaded = count(|o| matches!(o, ReloadResult::Reloaded(_)));
    let unchanged = count(|o| matches!(o, ReloadResult::Unchanged));
    let refused = count(|o| matches!(o, ReloadResult::Rejected { .. }));
    if refused == 0 {
        tracing::info!(target: "turnstile::reload", reloaded, unchanged, "reload finished");
    } else {
        tracing::warn!(
            target: "turnstile::reload",
            reloaded,
            unchanged,
            refused,
            "reload finished: {refused} config(s) refused, their previous config keeps running"
        );
    }
}
