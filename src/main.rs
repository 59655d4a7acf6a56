//! `workspace-start-operator run | mcp | start | logs | crd` (also `kubectl wsr start|logs` as a
//! plugin).

use std::process::ExitCode;

use workspace_start_operator::api::{crd, policy};
use workspace_start_operator::cli::{self, Command, CrdName};
use workspace_start_operator::client::{logs, mcp, start};
use workspace_start_operator::operator::run::{self, RunError};
use workspace_start_operator::process;

/// mimalloc (v3, transparent huge pages off for the process): with the single-threaded runtime
/// below it cut the operator's CPU per request by about a quarter at N=1000 (glibc malloc
/// 3.3–4.4 ms, mimalloc 2.7–3.1 ms; tools/bench/RESULTS.md, "Operator CPU and memory"). Huge
/// pages stay off because with them mimalloc's eagerly committed arena raised peak RSS from 34 to
/// 53–60 MiB.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = cli::parse();
    let result = match cli.command {
        Command::Start(args) => return start::main(*args),
        Command::Mcp(args) => return mcp::main(*args),
        Command::Logs(args) => return logs::main(*args),
        Command::Crd { name } => return print_crd(name),
        Command::Run(args) => {
            process::init_logging(args.process.log_format, &args.process.log_level);
            // One thread: the operator's work is many small I/O-bound tasks, and on one thread
            // no task is stolen or woken across threads and every free is thread-local (with the
            // multi-thread runtime mimalloc alone saved nothing: 4.0 ms per request). `mcp` and
            // `start` keep their own runtimes (src/client).
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt.block_on(run::run(*args)),
                Err(e) => Err(RunError::Metrics(e)),
            }
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "exiting");
            eprintln!("workspace-start-operator: {e}");
            ExitCode::FAILURE
        }
    }
}

fn print_crd(name: CrdName) -> ExitCode {
    let yaml = match name {
        CrdName::Workspacestartrequests => crd::crd_yaml(),
        CrdName::Workspacestartpolicies => policy::crd_yaml(),
    };
    match yaml {
        Ok(yaml) => {
            print!("{yaml}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("workspace-start-operator: cannot render the CRD: {e}");
            ExitCode::FAILURE
        }
    }
}
