//! The `streamhub` binary: see `streamhub --help`.

/// mimalloc, not the C library's allocator: see ARCHITECTURE.md §19.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    streamhub::cli::main()
}
