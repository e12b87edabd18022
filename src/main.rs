//! The `streamhub` binary: see `streamhub --help`.

fn main() -> std::process::ExitCode {
    streamhub::cli::main()
}
