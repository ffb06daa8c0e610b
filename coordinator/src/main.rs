use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    fifty_shared::logging::init("info");
    fifty_shared::logging::exit_on_panic();
    let cli = fifty::cli::Cli::parse();
    match fifty::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
