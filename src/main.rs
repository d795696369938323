//! The binary: parse the command line, set up logging, run, map the result to an exit code.

use clap::Parser;
use onboarding_worker::cli::{self, Cli};

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let settings = match cli::settings(&cli) {
        Ok(s) => s,
        Err(exit) => {
            eprintln!("error: {:#}", exit.error);
            std::process::exit(exit.code);
        }
    };
    // `demo` sets up its own: a file, or stderr above its progress bars.
    if !matches!(cli.command, cli::Command::Demo { .. }) {
        onboarding_worker::telemetry::init(settings.worker.log_format, std::io::stderr);
    }
    match cli::execute(cli, settings).await {
        Ok(code) => std::process::exit(code),
        Err(exit) => {
            eprintln!("error: {:#}", exit.error);
            std::process::exit(exit.code);
        }
    }
}
