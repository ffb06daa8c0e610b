use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    fifty_shared::logging::init("info");
    let cli = fifty::cli::Cli::parse();
    match fifty::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
