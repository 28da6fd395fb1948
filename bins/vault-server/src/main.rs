//! The `vault-server` binary; everything lives in the library.

fn main() -> std::process::ExitCode {
    vault_server::cli::main()
}
