//! The `customer-cluster` binary: parse the command line and hand over. No logic here.

use std::process::ExitCode;

use clap::Parser;
use customer_cluster::cli::{Cli, Command, NodeArgs};
use customer_cluster::client::commands;
use customer_cluster::config::Config;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Node(args) => {
            let NodeArgs { config, settings } = *args;
            let config = match Config::load(config.as_deref(), settings) {
                Ok(c) => c,
                Err(e) => return fail(&e),
            };
            customer_cluster::telemetry::init_tracing(
                config.log_format,
                config.log_level.as_deref(),
                &config.name,
            );
            match customer_cluster::node::run(config).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "node failed");
                    fail(&e)
                }
            }
        }
        Command::Status { args, opts } => match args.watch {
            None => print(commands::status(&opts).await),
            Some(secs) => loop {
                let out = commands::status(&opts).await;
                print!("\x1b[2J\x1b[H");
                let _ = print(out);
                tokio::time::sleep(std::time::Duration::from_secs(secs.max(1))).await;
            },
        },
        Command::Bench(args) => match customer_cluster::bench::run(&args).await {
            Ok(result) => {
                print!("{}", result.render());
                if !args.cleanup || result.path.is_some() {
                    return ExitCode::SUCCESS;
                }
                match customer_cluster::bench::cleanup(&args, &result.run_tag).await {
                    Ok(n) => {
                        println!("  cleanup: removed the {n} customers this run created");
                        ExitCode::SUCCESS
                    }
                    Err(e) => fail(&e),
                }
            }
            Err(e) => fail(&e),
        },
        Command::BenchReport(args) => match customer_cluster::bench::compare::run(&args) {
            Ok(out) => {
                print!("{out}");
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e),
        },
        Command::Workload(args) => customer_cluster::faults::command(&args).await.finish(),
        Command::Import { args, opts } => {
            let client = match opts.client() {
                Ok(c) => c,
                Err(e) => return fail(&e),
            };
            match customer_cluster::client::import::run(&client, &args).await {
                Ok(summary) => {
                    println!("{}", summary.render());
                    if summary.rejected.is_empty() {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    }
                }
                Err(e) => fail(&e),
            }
        }
        Command::Ping { args, opts } => print(commands::ping(&opts, &args).await),
        Command::Create { args, opts } => print(commands::create(&opts, &args).await),
        Command::Get { args, opts } => print(commands::get(&opts, &args).await),
        Command::List { args, opts } => print(commands::list(&opts, &args).await),
        Command::Update { args, opts } => print(commands::update(&opts, &args).await),
        Command::Delete { args, opts } => print(commands::delete(&opts, &args).await),
    }
}

fn print(result: Result<String, customer_cluster::client::ClientError>) -> ExitCode {
    match result {
        Ok(out) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

fn fail(err: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("error: {err}");
    ExitCode::FAILURE
}
