//! `mnemo-pd`: the placement driver server. Flags follow PD's; see
//! `mnemo_pd::config` and `deploy/config/pd.toml`.

use std::process::ExitCode;

use clap::Parser;
use mnemo_pd::config::{Flags, LogFormat};
use mnemo_pd::Config;
use tracing::{error, info};

#[tokio::main]
async fn main() -> ExitCode {
    let flags = Flags::parse();
    let config = match Config::load(&flags) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("mnemo-pd: {e}");
            return ExitCode::from(2);
        }
    };
    let json = matches!(config.log.format, LogFormat::Json);
    let telemetry = match mnemo_telemetry::init("mnemo-pd", &config.log.level, json, &config.trace()) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("mnemo-pd: {e}");
            return ExitCode::from(2);
        }
    };
    // Any panic ends the process (crash points with code 86): PD state is
    // shared by every task, and a half-dead PD must not keep serving.
    mnemo_raft_driver::failpoints::install_panic_hook();
    if let Err(e) = mnemo_raft_driver::failpoints::configure_from_env() {
        error!("{e}");
        return ExitCode::from(2);
    }
    info!(name = %config.name, data_dir = %config.data_dir.display(), client_urls = %config.client_urls, "starting");
    let handle = match mnemo_pd::start(config).await {
        Ok(h) => h,
        Err(e) => {
            error!(error = %e, "cannot start");
            return ExitCode::FAILURE;
        }
    };
    wait_for_signal().await;
    info!("signal received, stopping");
    handle.shutdown().await;
    let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
    ExitCode::SUCCESS
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
