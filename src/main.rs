//! The `customer-cluster` binary: clap → config → tracing → dispatch. No logic here: each
//! subcommand lives in its module and says how it ended ([`Ending`]), which decides the
//! output and the exit code.

use std::process::ExitCode;

use customer_cluster::cli::{self, Command, NodeArgs};
use customer_cluster::client::{self, commands, exit::Ending, import};
use customer_cluster::config::Config;
use customer_cluster::{bench, faults};

#[tokio::main]
async fn main() -> ExitCode {
    let ending = match cli::parse().command {
        Command::Node(args) => node(*args).await,
        Command::Status { args, opts } => commands::status_command(&opts, &args).await,
        Command::Events { args, opts } => client::events::command(&opts, &args).await,
        Command::Bench(args) => bench::command(&args).await,
        Command::BenchReport(args) => Ending::text(bench::compare::run(&args)),
        Command::Workload(args) => faults::command(&args).await,
        Command::CheckHistory(args) => faults::check_history_command(&args),
        Command::Import { args, opts } => import::command(&opts, &args).await,
        Command::Ping { args, opts } => Ending::line(commands::ping(&opts, &args).await),
        Command::Create { args, opts } => Ending::line(commands::create(&opts, &args).await),
        Command::Get { args, opts } => Ending::line(commands::get(&opts, &args).await),
        Command::Where { args, opts } => Ending::line(commands::where_is(&opts, &args).await),
        Command::List { args, opts } => Ending::line(commands::list(&opts, &args).await),
        Command::Update { args, opts } => Ending::line(commands::update(&opts, &args).await),
        Command::Delete { args, opts } => Ending::line(commands::delete(&opts, &args).await),
        Command::Completions { shell } => Ending::Done(cli::completions(shell)),
        Command::Man { dir } => Ending::text(cli::man(dir.as_deref())),
    };
    ending.finish()
}

/// `node`: load the config, start logging, run until SIGINT/SIGTERM.
async fn node(args: NodeArgs) -> Ending {
    let NodeArgs {
        config,
        settings,
        fault_hooks,
        secrets_in_argv,
    } = args;
    let hooks = match faults::hooks::from_specs(&fault_hooks) {
        Ok(h) => h,
        Err(e) => return Ending::failed(&e),
    };
    let config = match Config::load(config.as_deref(), settings) {
        Ok(c) => c,
        Err(e) => return Ending::failed(&e),
    };
    customer_cluster::telemetry::init_tracing(
        config.log_format,
        config.log_level.as_deref(),
        &config.name,
    );
    for flag in secrets_in_argv {
        tracing::warn!("{}", cli::secret_in_argv_warning(flag));
    }
    faults::hooks::install(&hooks);
    match customer_cluster::node::run(config).await {
        Ok(()) => Ending::Done(String::new()),
        Err(e) => {
            tracing::error!(error = %e, "node failed");
            Ending::failed(&e)
        }
    }
}
